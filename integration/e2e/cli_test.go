package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// TestKeygen checks the key files keygen writes, that "tunnel fingerprint"
// agrees with it on both files, and that it refuses to overwrite without
// --force.
func TestKeygen(t *testing.T) {
	t.Parallel()
	bin := harness.Build(t)
	dir := t.TempDir()
	key, pub, fp := harness.Keygen(t, bin, dir, "k")
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode: %v, %v; want 0600", fi.Mode(), err)
	}
	for file, header := range map[string]string{key: "-----BEGIN PRIVATE KEY-----", pub: "-----BEGIN PUBLIC KEY-----"} {
		b, err := os.ReadFile(file)
		if err != nil || !strings.HasPrefix(string(b), header) {
			t.Errorf("%s does not start with %s", file, header)
		}
		out, stderr, code := harness.Run(t, bin, time.Minute, "fingerprint", file)
		if code != 0 || strings.TrimSpace(out) != fp {
			t.Errorf("tunnel fingerprint %s: %q (exit %d, stderr %q), want %s", file, out, code, stderr, fp)
		}
	}
	before, _ := os.ReadFile(key)
	_, stderr, code := harness.Run(t, bin, time.Minute, "keygen", "--out", filepath.Join(dir, "k"), "--bits", "2048")
	if code == 0 {
		t.Errorf("keygen over existing files succeeded, want a refusal")
	}
	checkOneLine(t, stderr, "k.key", "force")
	if after, _ := os.ReadFile(key); string(after) != string(before) {
		t.Errorf("keygen without --force changed %s", key)
	}
}

// TestFlagErrors: bad settings make "tunnel exit" stop at once with a
// non-zero code and one clear line on stderr naming the problem.
func TestFlagErrors(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	bin := r.Bin
	missing := filepath.Join(t.TempDir(), "missing.key")
	for _, tc := range []struct {
		name    string
		args    []string
		mention []string // each must appear on the line (case-insensitive)
	}{
		{"missing key file", []string{"--forward", "127.0.0.1:9", "--key", missing, "--authorized-keys", r.Entry.Pub},
			[]string{"--key", missing}},
		{"bad forward address", []string{"--forward", "no-port-here", "--key", r.Exit.Key, "--authorized-keys", r.Entry.Pub},
			[]string{"--forward", "no-port-here"}},
		{"public key as key", []string{"--forward", "127.0.0.1:9", "--key", r.Exit.Pub, "--authorized-keys", r.Entry.Pub},
			[]string{r.Exit.Pub, "private"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"exit", "--listen", "127.0.0.1:0", "--log-format", "json"}, tc.args...)
			stdout, stderr, code := harness.Run(t, bin, 30*time.Second, args...)
			if code == 0 || code == -1 {
				t.Errorf("exit code %d, want a non-zero exit (not a signal); stdout %q", code, stdout)
			}
			checkOneLine(t, stderr, tc.mention...)
		})
	}
}

// checkOneLine checks that stderr is one line that mentions every one of
// words (case-insensitive).
func checkOneLine(t *testing.T, stderr string, words ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || lines[0] == "" {
		t.Errorf("stderr has %d lines, want exactly one:\n%s", len(lines), stderr)
	}
	for _, w := range words {
		if !strings.Contains(strings.ToLower(stderr), strings.ToLower(w)) {
			t.Errorf("stderr does not mention %q:\n%s", w, stderr)
		}
	}
	t.Logf("stderr: %s", strings.TrimSpace(stderr))
}

// TestDemo runs "tunnel demo" to completion and checks what it shows for
// each message: the client's plaintext, the same plaintext at the backend,
// and on the wire between entry and exit one record (its 4-byte length
// field = the bytes that follow) in which no 8-byte piece of the plaintext
// appears.
func TestDemo(t *testing.T) {
	t.Parallel()
	bin := harness.Build(t)
	stdout, stderr, code := harness.Run(t, bin, 2*time.Minute, "demo")
	if code != 0 {
		t.Fatalf("tunnel demo: exit code %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	msgs := parseDemo(t, stdout)
	if len(msgs) == 0 {
		t.Fatalf("no \"── Message\" sections in the demo output:\n%s", stdout)
	}
	t.Logf("demo showed %d messages", len(msgs))
	for i, m := range msgs {
		t.Logf("message %d: %d plaintext bytes, %d on the wire", i+1, len(m.client), len(m.wire))
		if len(m.client) == 0 || len(m.wire) == 0 {
			t.Errorf("message %d: client %q, wire %d bytes", i+1, m.client, len(m.wire))
			continue
		}
		if !bytes.Equal(m.client, m.backend) {
			t.Errorf("message %d: client sent %q, backend shows %q", i+1, m.client, m.backend)
		}
		if len(m.wire) <= len(m.client) {
			t.Errorf("message %d: %d wire bytes for %d plaintext bytes", i+1, len(m.wire), len(m.client))
		}
		if len(m.wire) >= 4 && int(binary.BigEndian.Uint32(m.wire)) != len(m.wire)-4 {
			t.Errorf("message %d: record length field %d, but %d bytes follow it",
				i+1, binary.BigEndian.Uint32(m.wire), len(m.wire)-4)
		}
		for j := 0; j+8 <= len(m.client); j++ {
			if bytes.Contains(m.wire, m.client[j:j+8]) {
				t.Errorf("message %d: plaintext piece %q appears on the wire", i+1, m.client[j:j+8])
				break
			}
		}
	}
	if !strings.Contains(stdout, "Checked:") {
		t.Errorf("demo output has no \"Checked:\" line:\n%s", stdout)
	}
	for _, line := range strings.Split(stdout, "\n") {
		if strings.Contains(line, "/s") && strings.Contains(line, "MiB in") {
			t.Logf("demo throughput (race-built binary: %v): %s", harness.RaceBuild(), strings.TrimSpace(line))
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", stdout)
	}
}

// demoMessage is one "── Message N ──" section of the demo's output.
type demoMessage struct {
	client, wire, backend []byte
}

// parseDemo reads the message sections: after "client sent (N bytes):" and
// "backend received (N bytes):" come Go-quoted string lines, after "on the
// wire ... (N bytes):" hexdump lines ("0000  00 11 ...  |ascii|"). It
// checks each section's byte count against what follows it.
func parseDemo(t *testing.T, out string) []demoMessage {
	t.Helper()
	var msgs []demoMessage
	var cur *[]byte
	want := 0
	header := regexp.MustCompile(`^(client sent|on the wire.*|backend received) \((\d+) bytes\):$`)
	hexLine := regexp.MustCompile(`^[0-9a-f]{4,}  ((?:[0-9a-f]{2} {1,2})*[0-9a-f]{2})`)
	check := func() {
		if cur != nil && len(*cur) != want {
			t.Errorf("demo section announced %d bytes but shows %d", want, len(*cur))
		}
	}
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		switch m := header.FindStringSubmatch(trimmed); {
		case strings.HasPrefix(trimmed, "── Message "):
			check()
			msgs = append(msgs, demoMessage{})
			cur = nil
		case m != nil && len(msgs) > 0:
			check()
			want, _ = strconv.Atoi(m[2])
			last := &msgs[len(msgs)-1]
			switch {
			case m[1] == "client sent":
				cur = &last.client
			case m[1] == "backend received":
				cur = &last.backend
			default:
				cur = &last.wire
			}
		case cur == nil || trimmed == "" || !strings.HasPrefix(line, " "):
			check()
			cur = nil
		case cur == &msgs[len(msgs)-1].wire:
			hm := hexLine.FindStringSubmatch(trimmed)
			if hm == nil {
				t.Fatalf("demo: cannot parse hexdump line %q", line)
			}
			b, err := hex.DecodeString(strings.ReplaceAll(hm[1], " ", ""))
			if err != nil {
				t.Fatalf("demo: hexdump line %q: %v", line, err)
			}
			*cur = append(*cur, b...)
		default:
			s, err := strconv.Unquote(trimmed)
			if err != nil {
				t.Fatalf("demo: cannot unquote %q: %v", line, err)
			}
			*cur = append(*cur, s...)
		}
	}
	check()
	return msgs
}
