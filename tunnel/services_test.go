package tunnel

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/config"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// namedBackend answers every connection with its name and closes it; it
// counts the connections it accepted.
func namedBackend(t *testing.T, name string, accepted *atomic.Int64) string {
	return backend(t, func(c *net.TCPConn) {
		if accepted != nil {
			accepted.Add(1)
		}
		c.Write([]byte(name))
		c.Close()
	})
}

// readAll connects to addr and returns what it reads until EOF. A
// connection the entry resets (the exit refused its stream) may be reset
// before the dial returns: that reads nothing too.
func readAll(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if errors.Is(err, syscall.ECONNRESET) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestServicesShareSession: one entry with a listener per service, one
// exit with a backend per service; each application reaches its service's
// backend, over one session, and each service counts its own streams.
func TestServicesShareSession(t *testing.T) {
	xs := ExitSettings{}
	xs.Services = []ExitService{{Backend: namedBackend(t, "A", nil)}, {Name: "db", Backend: namedBackend(t, "DB", nil)}, {Name: "cache", Backend: namedBackend(t, "CACHE", nil)}}
	lns := []ServiceListener{{Listener: loopback(t)}, {Listener: loopback(t), Service: "db"}, {Listener: loopback(t), Service: "cache"}, {Listener: loopback(t), Service: "nope"}}
	x, n := startServices(t, xs, lns)

	for _, tc := range []struct {
		listener int
		want     string
	}{{0, "A"}, {1, "DB"}, {2, "CACHE"}, {3, ""}, {1, "DB"}} {
		if got := readAll(t, lns[tc.listener].Listener.Addr().String()); got != tc.want {
			t.Errorf("listener for %q: read %q, want %q", lns[tc.listener].Service, got, tc.want)
		}
	}
	if got := x.Stats().Sessions; got != 1 {
		t.Errorf("exit has %d sessions, want 1 for every service", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ns, xs := n.Stats().Services, x.Stats().Services
		if ns["db"].StreamsTotal == 2 && xs["db"].StreamsTotal == 2 && ns["db"].Streams == 0 &&
			xs["cache"].StreamsTotal == 1 && xs["default"].StreamsTotal == 1 &&
			ns["nope"].StreamsRefused == 1 && xs["db"].BytesToApp == 4 {
			if _, ok := xs["nope"]; ok {
				t.Errorf("the exit's /status lists a service the entry named: %+v", xs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("per-service counters not as expected:\nentry %+v\nexit  %+v", ns, xs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAccessControl: a service restricted to another key is refused with
// status 3 before the exit dials its backend, the log line naming key and
// service; an unknown service gets status 1 with a message listing only
// the services this key may reach.
func TestAccessControl(t *testing.T) {
	var dbDials, cacheDials atomic.Int64
	db, cache := namedBackend(t, "DB", &dbDials), namedBackend(t, "CACHE", &cacheDials)
	other, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	otherFP := handshake.Fingerprint(&other.PublicKey)
	entryFP := handshake.Fingerprint(&testKeys()[0].PublicKey)
	ks := testKeys()
	auth, err := handshake.NewKeySet(&ks[0].PublicKey, &other.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	xs := ExitSettings{}
	xs.Services = []ExitService{{Name: "db", Backend: db}, {Name: "cache", Backend: cache}, {Name: "secret", Backend: db}}
	xs.Access = []AccessRule{{Service: "db", Keys: []string{otherFP}}, {Service: "secret", Keys: []string{otherFP}}}
	logs := &logBuffer{}
	x, err := NewExit(ExitConfig{Settings: xs, Key: ks[1], Authorized: auth}, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	ln := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sess := dialSession(t, ln.Addr().String(), "")

	st := openRaw(t, sess, streamHeader{service: "db"}.marshal())
	st.Write(make([]byte, 100<<10)) // application bytes after the header: never forwarded
	s, msg := answer(t, st)
	st.Close()
	if s != StatusRefused || !strings.Contains(msg, entryFP) || !strings.Contains(msg, `"db"`) {
		t.Errorf("restricted service: status %d %q, want 3 naming the key and the service", s, msg)
	}
	l := logs.wait(t, msg)
	if l["service"] != "db" || l["peer_fingerprint"] != entryFP || l["status"] != float64(StatusRefused) {
		t.Errorf("refusal log line lacks the service or the key: %v", l)
	}

	st = openRaw(t, sess, streamHeader{service: "nope"}.marshal())
	s, msg = answer(t, st)
	st.Close()
	if s != StatusUnknownService || !strings.Contains(msg, "cache") || strings.Contains(msg, "db") || strings.Contains(msg, "secret") {
		t.Errorf("unknown service: status %d %q, want 1 listing cache and neither db nor secret", s, msg)
	}

	st = openRaw(t, sess, streamHeader{service: "cache"}.marshal())
	if s, msg := answer(t, st); s != StatusOK {
		t.Errorf("open service: status %d %q, want 0", s, msg)
	}
	st.Close()
	// The backend counts the exit's dial when it accepts it, which may be a
	// moment after the exit answered.
	for deadline := time.Now().Add(5 * time.Second); cacheDials.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if dbDials.Load() != 0 || cacheDials.Load() != 1 {
		t.Errorf("backend dials: db %d, cache %d; want 0 and 1 (refused before dialing)", dbDials.Load(), cacheDials.Load())
	}
}

// TestResolveAccess: rules name keys by fingerprint or by file name; a
// name or fingerprint that matches no authorized key is reported.
func TestResolveAccess(t *testing.T) {
	dir := t.TempDir()
	keys := make([]*rsa.PublicKey, 3)
	for i := range keys {
		k, err := handshake.GenerateKey(handshake.MinKeyBits)
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = &k.PublicKey
	}
	write := func(name string, ks ...*rsa.PublicKey) {
		var b []byte
		for _, k := range ks {
			p, err := handshake.MarshalPublicKeyPEM(k)
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, p...)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("app1.pub", keys[0])
	write("app2.pem", keys[1], keys[2])
	auth, err := handshake.LoadAuthorizedKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	fp := func(i int) string { return handshake.Fingerprint(keys[i]) }
	a, unresolved := resolveAccess([]AccessRule{
		{Service: "db", Keys: []string{"app1"}},
		{Service: "cache", Keys: []string{"app2", fp(0)}},
		{Service: config.DefaultService, Keys: []string{fp(2)}},
	}, auth)
	if len(unresolved) != 0 {
		t.Fatalf("unresolved %v", unresolved)
	}
	for _, tc := range []struct {
		service serviceName
		key     int
		want    bool
	}{
		{"db", 0, true}, {"db", 1, false}, {"db", 2, false},
		{"cache", 0, true}, {"cache", 1, true}, {"cache", 2, true},
		{"", 0, false}, {"", 2, true},
		{"open", 1, true},
	} {
		if got := a.allows(tc.service, fp(tc.key)); got != tc.want {
			t.Errorf("allows(%q, key %d) = %v, want %v", tc.service, tc.key, got, tc.want)
		}
	}
	_, unresolved = resolveAccess([]AccessRule{{Service: "db", Keys: []string{"app3", "SHA256:bm90IGEga2V5", "app1"}}}, auth)
	if got := ruleKeys(unresolved); !slices.Equal(got, []string{"db=app3", "db=SHA256:bm90IGEga2V5"}) {
		t.Errorf("unresolved = %v, want db=app3 and the unknown fingerprint", got)
	}
	msg := (&UnknownKeysError{Rules: unresolved}).Error()
	if want := "the access rule for service db names app3, SHA256:bm90IGEga2V5, which are not among the authorized keys"; !strings.Contains(msg, want) || strings.Contains(msg, "--") {
		t.Errorf("error %q does not say which rule, in the settings' terms", msg)
	}
}

// TestAccessReload: a reload resolves the rules against the new keys, and
// a narrowed rule refuses the next stream of a session already up (issue
// 17: before, a session kept the rules it began with, for ever); a rule
// whose key file is gone admits nobody and is logged.
func TestAccessReload(t *testing.T) {
	ks := testKeys()
	other, err := handshake.GenerateKey(handshake.MinKeyBits)
	if err != nil {
		t.Fatal(err)
	}
	keyDir := func(files map[string]*rsa.PublicKey) *handshake.KeySet {
		dir := t.TempDir()
		for name, k := range files {
			p, err := handshake.MarshalPublicKeyPEM(k)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), p, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		set, err := handshake.LoadAuthorizedKeys(dir)
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	xs := ExitSettings{}
	xs.Services = []ExitService{{Name: "db", Backend: namedBackend(t, "DB", nil)}, {Name: "cache", Backend: namedBackend(t, "CACHE", nil)}}
	xs.Access = []AccessRule{{Service: "db", Keys: []string{"app1"}}}
	xs.DrainTimeout, xs.DialTimeout = time.Second, time.Second
	logs := &logBuffer{}
	x, err := NewExit(ExitConfig{Settings: xs, Key: ks[1], Authorized: keyDir(map[string]*rsa.PublicKey{"app1.pub": &ks[0].PublicKey})}, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	ln := loopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { x.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	status := func(sess *session.Session, service string) Status {
		t.Helper()
		st := openRaw(t, sess, streamHeader{service: service}.marshal())
		defer st.Close()
		s, _ := answer(t, st)
		return s
	}

	before := dialSession(t, ln.Addr().String(), "")
	if s := status(before, "db"); s != StatusOK {
		t.Fatalf("db for app1: status %d, want 0", s)
	}
	// app1.pub now holds another key; the entry's key is app2.pub.
	if _, err := x.Reload(ks[1], keyDir(map[string]*rsa.PublicKey{"app1.pub": &other.PublicKey, "app2.pub": &ks[0].PublicKey})); err != nil {
		t.Fatal(err)
	}
	if s := status(before, "db"); s != StatusRefused {
		t.Errorf("db on the session made before the reload: status %d, want 3 (the narrowed rule reaches live sessions)", s)
	}
	after := dialSession(t, ln.Addr().String(), "")
	if s := status(after, "db"); s != StatusRefused {
		t.Errorf("db for a key that is app2 now: status %d, want 3", s)
	}
	// No app1 at all: the rule admits nobody, and says so.
	if _, err := x.Reload(ks[1], keyDir(map[string]*rsa.PublicKey{"app2.pub": &ks[0].PublicKey})); err != nil {
		t.Fatal(err)
	}
	if l := logs.wait(t, "access rules name keys that are no longer among the authorized keys: they admit nobody; name the keys that replace them"); !strings.Contains(fmt.Sprint(l["rules"]), "db=app1") {
		t.Errorf("the reload's warning does not name the rule: %v", l)
	}
	last := dialSession(t, ln.Addr().String(), "")
	if s, c := status(last, "db"), status(last, "cache"); s != StatusRefused || c != StatusOK {
		t.Errorf("after the rule's key went: db %d, cache %d; want 3 and 0", s, c)
	}
}
