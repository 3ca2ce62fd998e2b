package container

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

func checkRequirements(t *testing.T) {
	t.Helper()
	if testing.Short() && !harness.InCI() {
		t.Skip("skipping in -short mode: builds images and runs docker-compose")
	}
	harness.RequireOrSkip(t, "root (the container test needs it for Docker)", os.Geteuid() == 0)
	for _, tool := range []string{"docker", "docker-compose", "ldd", "tcpdump"} {
		_, err := exec.LookPath(tool)
		harness.RequireOrSkip(t, tool+" (apt-get install docker.io docker-compose tcpdump)", err == nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput()
	harness.RequireOrSkip(t, fmt.Sprintf("the Docker engine (start dockerd; docker info: %v: %s)", err, bytes.TrimSpace(out)), err == nil)
	_, err = hostBusybox()
	harness.RequireOrSkip(t, fmt.Sprintf("a static busybox (%v)", err), err == nil)
	_, _, err = hostPostgres()
	harness.RequireOrSkip(t, fmt.Sprintf("a PostgreSQL server (%v)", err), err == nil)
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// buildCacheTag names the Dockerfile's build stage from the latest run. It
// keeps that stage as build cache for the next run, and when the next run
// replaces it, the old one is removed, so cache does not pile up.
const buildCacheTag = "tunnel-test-build:latest"

// buildTunnelImage runs `docker build` on the repository's Dockerfile with
// the locally imported build base and an empty runtime base (the defaults),
// and tags the image tunnelImage, removed again in t.Cleanup.
func buildTunnelImage(ctx context.Context, t *testing.T, buildBase, tunnelImage string) {
	t.Helper()
	start := time.Now()
	build := func(args ...string) {
		t.Helper()
		args = append([]string{"build",
			"--build-arg", "BUILD_IMAGE=" + buildBase,
			"--build-arg", "RUNTIME_IMAGE=scratch",
			"--file", filepath.Join(harness.ModuleRoot(t), "Dockerfile"),
		}, args...)
		cmd := exec.CommandContext(ctx, "docker", append(args, harness.ModuleRoot(t))...)
		// The legacy builder resolves FROM against local images only, which
		// is what a machine without a registry needs.
		cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	oldCache := imageID(ctx, buildCacheTag)
	build("--target", "build", "--tag", buildCacheTag)
	if newCache := imageID(ctx, buildCacheTag); oldCache != "" && oldCache != newCache {
		// Untagged now; removing it drops the layers only it used.
		exec.CommandContext(ctx, "docker", "rmi", oldCache).Run()
	}
	build("--tag", tunnelImage)
	t.Cleanup(func() {
		if out, err := exec.Command("docker", "rmi", tunnelImage).CombinedOutput(); err != nil {
			t.Errorf("docker rmi %s: %v: %s", tunnelImage, err, out)
		}
	})
	t.Logf("image %s: built in %v", tunnelImage, time.Since(start).Round(time.Millisecond))

	user, err := exec.CommandContext(ctx, "docker", "image", "inspect", "--format", "{{.Config.User}}|{{json .Config.Entrypoint}}|{{.Size}}", tunnelImage).Output()
	if err != nil {
		t.Fatalf("docker image inspect: %v", err)
	}
	fields := strings.Split(strings.TrimSpace(string(user)), "|")
	if len(fields) != 3 || fields[0] != "65532:65532" || fields[1] != `["tunnel"]` {
		t.Errorf("image config user|entrypoint|size = %q, want user 65532:65532 and entrypoint [\"tunnel\"]", fields)
	}
	t.Logf("image %s: %s bytes", tunnelImage, fields[len(fields)-1])
}

// project is one docker-compose project of examples/compose.
type project struct {
	t    *testing.T
	name string
	file string
	env  []string
}

// compose runs docker-compose for the project and returns its standard
// output; on failure the error carries standard error too.
func (p *project) compose(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"--project-name", p.name, "--file", p.file, "--ansi", "never"}, args...)
	cmd := exec.CommandContext(ctx, "docker-compose", args...)
	cmd.Env = p.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("docker-compose %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String(), nil
}

func (p *project) mustCompose(ctx context.Context, args ...string) string {
	p.t.Helper()
	out, err := p.compose(ctx, args...)
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

// container returns the id of the service's container.
func (p *project) container(ctx context.Context, service string) string {
	p.t.Helper()
	id := strings.TrimSpace(p.mustCompose(ctx, "ps", "-q", service))
	if id == "" || strings.Contains(id, "\n") {
		p.t.Fatalf("service %s: container ids %q, want one", service, id)
	}
	return id
}

// ip returns the container's address on the project network net.
func (p *project) ip(ctx context.Context, id, net string) string {
	p.t.Helper()
	format := fmt.Sprintf(`{{with index .NetworkSettings.Networks %q}}{{.IPAddress}}{{end}}`, p.name+"_"+net)
	out, err := exec.CommandContext(ctx, "docker", "inspect", "--format", format, id).Output()
	if err != nil {
		p.t.Fatalf("docker inspect %s: %v", id, err)
	}
	ip := strings.TrimSpace(string(out))
	if ip == "" {
		p.t.Fatalf("container %s has no address on network %s", id, net)
	}
	return ip
}

// logs returns the container's output (stdout and stderr).
func logs(ctx context.Context, t *testing.T, id string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "docker", "logs", id).CombinedOutput()
	if err != nil {
		t.Fatalf("docker logs %s: %v\n%s", id, err, out)
	}
	return string(out)
}

// psql runs psql in service with the given extra arguments and returns its
// unaligned, tuples-only output.
func (p *project) psql(ctx context.Context, service string, env []string, args ...string) (string, error) {
	cmd := []string{"exec", "-T"}
	for _, e := range env {
		cmd = append(cmd, "-e", e)
	}
	cmd = append(cmd, service, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1")
	out, err := p.compose(ctx, append(cmd, args...)...)
	return strings.TrimSpace(out), err
}

var fingerprintRE = regexp.MustCompile(`SHA256:[A-Za-z0-9+/]{43}`)

// TestComposeExample runs examples/compose with images built here: an
// application container reaches PostgreSQL through the entry and exit
// sidecars, and cannot reach it directly.
func TestComposeExample(t *testing.T) {
	checkRequirements(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()

	buildBase := ensureBuildBase(ctx, t)
	pgImage := ensurePostgres(ctx, t)
	name := "tunnelct" + randomHex(t, 4) // compose project and image tag
	tunnelImage := "tunnel-test:" + name
	buildTunnelImage(ctx, t, buildBase, tunnelImage)

	password := randomHex(t, 12)
	p := &project{
		t:    t,
		name: name,
		file: filepath.Join(harness.ModuleRoot(t), "examples", "compose", "docker-compose.yml"),
		env: append(os.Environ(),
			"TUNNEL_IMAGE="+tunnelImage,
			"POSTGRES_IMAGE="+pgImage,
			"APP_IMAGE="+pgImage,
			"POSTGRES_PASSWORD="+password,
		),
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			out, _ := p.compose(ctx, "ps")
			t.Logf("docker-compose ps:\n%s", out)
			out, _ = p.compose(ctx, "logs", "--no-color", "--timestamps")
			t.Logf("docker-compose logs:\n%s", out)
		}
		if _, err := p.compose(ctx, "down", "--volumes", "--remove-orphans", "--timeout", "5"); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})

	upStart := time.Now()
	p.mustCompose(ctx, "up", "--detach", "--no-build")
	t.Logf("docker-compose up: %v", time.Since(upStart).Round(time.Millisecond))

	// Through the tunnel: retry while the sidecars and PostgreSQL come up.
	var got string
	var err error
	deadline := time.Now().Add(90 * time.Second)
	for {
		got, err = p.psql(ctx, "app", nil, "-c", "SELECT 6 * 7")
		if err == nil && got == "42" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app -> entry -> exit -> db: got %q, %v; want 42", got, err)
		}
		time.Sleep(time.Second)
	}
	t.Logf("first query through the tunnel after %v", time.Since(upStart).Round(time.Millisecond))

	exitID := p.container(ctx, "exit")
	dbID := p.container(ctx, "db")
	exitBackIP := p.ip(ctx, exitID, "back")
	dbIP := p.ip(ctx, dbID, "back")

	// The app's session lands in this very database, and PostgreSQL sees it
	// coming from the exit sidecar.
	token := "token-" + randomHex(t, 8)
	got, err = p.psql(ctx, "app", nil,
		"-c", "CREATE TABLE probe (v text)",
		"-c", fmt.Sprintf("INSERT INTO probe VALUES ('%s')", token),
		"-c", "SELECT host(inet_client_addr())")
	if err != nil {
		t.Fatal(err)
	}
	if got != exitBackIP {
		t.Errorf("client address seen by PostgreSQL = %q, want the exit sidecar's %s", got, exitBackIP)
	}
	got, err = p.psql(ctx, "db", nil, "-U", "app", "-d", "appdb", "-c", "SELECT v FROM probe")
	if err != nil {
		t.Fatal(err)
	}
	if got != token {
		t.Errorf("row read inside the db container = %q, want %q written by the app", got, token)
	}

	// A larger result set (20000 rows, about 0.7 MB) arrives through the
	// tunnel exactly as PostgreSQL returns it locally.
	const rows = "SELECT i, md5(i::text) FROM generate_series(1, 20000) i"
	got, err = p.psql(ctx, "app", nil, "-c", rows)
	if err != nil {
		t.Fatal(err)
	}
	want, err := p.psql(ctx, "db", nil, "-U", "app", "-d", "appdb", "-c", rows)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(want, "\n") + 1; n != 20000 || got != want {
		t.Errorf("20000 rows: %d bytes through the tunnel, %d bytes (%d rows) locally; they differ", len(got), len(want), n)
	}

	// No direct path: the database listens on its back-network address (the
	// db container itself connects to it), but the app reaches neither that
	// address nor the name "db".
	if _, err := p.psql(ctx, "db", []string{"PGPASSWORD=" + password, "PGCONNECT_TIMEOUT=5"}, "-h", dbIP, "-U", "app", "-d", "appdb", "-c", "SELECT 1"); err != nil {
		t.Fatalf("control: db container cannot reach %s:5432 itself: %v", dbIP, err)
	}
	for _, host := range []string{dbIP, "db"} {
		out, err := p.psql(ctx, "app", []string{"PGCONNECT_TIMEOUT=3"}, "-h", host, "-p", "5432", "-c", "SELECT 1")
		if err == nil {
			t.Errorf("app reached PostgreSQL directly at %s:5432 (output %q); want no route outside the tunnel", host, out)
		} else {
			t.Logf("direct app -> %s:5432 fails as intended: %s", host, lastLine(err.Error()))
		}
	}

	// On the wire: a fresh value crosses the front network (app -> entry) in
	// the clear, which shows the capture works, and never crosses the transit
	// network (entry -> exit) in the clear.
	secret := "secret-" + randomHex(t, 16)
	front := startCapture(ctx, t, p.bridge(ctx, "front"))
	transit := startCapture(ctx, t, p.bridge(ctx, "transit"))
	if got, err := p.psql(ctx, "app", nil, "-c", fmt.Sprintf("SELECT '%s'", secret)); err != nil || got != secret {
		t.Fatalf("query through the tunnel: got %q, %v; want %q", got, err, secret)
	}
	frontBytes, transitBytes := front.stop(t), transit.stop(t)
	if !bytes.Contains(frontBytes, []byte(secret)) {
		t.Errorf("capture on the front network (%d bytes) lacks the query text: capture broken?", len(frontBytes))
	}
	if bytes.Contains(transitBytes, []byte(secret)) {
		t.Errorf("the query text crossed the transit network in the clear")
	}
	if len(transitBytes) < 512 {
		t.Errorf("capture on the transit network holds only %d bytes: tunnel traffic not seen", len(transitBytes))
	}
	t.Logf("captured %d bytes on front, %d on transit", len(frontBytes), len(transitBytes))

	// The sidecars survive a restart of the exit (the entry comes back to it).
	p.mustCompose(ctx, "restart", "--timeout", "10", "exit")
	deadline = time.Now().Add(60 * time.Second)
	for {
		got, err = p.psql(ctx, "app", nil, "-c", "SELECT 'again'")
		if err == nil && got == "again" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after restarting exit: got %q, %v; want again", got, err)
		}
		time.Sleep(time.Second)
	}

	// Logs: the entry pinned the key keygen-exit made, and both agents listen.
	exitFP := fingerprintRE.FindString(logs(ctx, t, p.container(ctx, "keygen-exit")))
	entryFP := fingerprintRE.FindString(logs(ctx, t, p.container(ctx, "keygen-entry")))
	if exitFP == "" || entryFP == "" || exitFP == entryFP {
		t.Errorf("keygen fingerprints: entry %q, exit %q; want two distinct SHA256:... values", entryFP, exitFP)
	}
	entryLog := logs(ctx, t, p.container(ctx, "entry"))
	established := false
	for _, line := range strings.Split(entryLog, "\n") {
		established = established || strings.Contains(line, "session established") && strings.Contains(line, exitFP)
	}
	if !established {
		t.Errorf("entry log lacks \"session established\" with the exit's fingerprint %s:\n%s", exitFP, entryLog)
	}
	exitLog := logs(ctx, t, exitID)
	if !strings.Contains(exitLog, `"listening"`) {
		t.Errorf("exit log lacks \"listening\":\n%s", exitLog)
	}

	// SIGTERM (docker stop) is a clean shutdown: exit code 0.
	entryID := p.container(ctx, "entry")
	p.mustCompose(ctx, "stop", "--timeout", "20", "entry", "exit")
	for _, id := range []string{entryID, exitID} {
		out, err := exec.CommandContext(ctx, "docker", "inspect", "--format", "{{.State.ExitCode}}", id).Output()
		if err != nil {
			t.Fatalf("docker inspect %s: %v", id, err)
		}
		if code := strings.TrimSpace(string(out)); code != "0" {
			t.Errorf("container %s exit code after docker stop = %s, want 0", id, code)
		}
	}
	t.Logf("container test took %v", time.Since(start).Round(time.Millisecond))
}

// bridge returns the host interface of the project network net.
func (p *project) bridge(ctx context.Context, net string) string {
	p.t.Helper()
	out, err := exec.CommandContext(ctx, "docker", "network", "inspect", "--format",
		`{{.Id}} {{index .Options "com.docker.network.bridge.name"}}`, p.name+"_"+net).Output()
	if err != nil {
		p.t.Fatalf("docker network inspect %s: %v", net, err)
	}
	f := strings.Fields(string(out))
	if len(f) == 2 {
		return f[1]
	}
	if len(f) == 0 || len(f[0]) < 12 {
		p.t.Fatalf("docker network inspect %s: %q", net, out)
	}
	return "br-" + f[0][:12]
}

// capture is a running tcpdump writing raw packets to a file.
type capture struct {
	cmd  *exec.Cmd
	file string
	done chan error
}

// startCapture captures TCP on the host interface iface until stop.
func startCapture(ctx context.Context, t *testing.T, iface string) *capture {
	t.Helper()
	c := &capture{file: filepath.Join(t.TempDir(), iface+".pcap"), done: make(chan error, 1)}
	// --immediate-mode: without it the kernel hands packets over in blocks
	// up to a second late, and a capture stopped within that time writes
	// none (seen: a front capture of 24 bytes, the file header alone).
	c.cmd = exec.CommandContext(ctx, "tcpdump", "-i", iface, "-s", "0", "-U", "--immediate-mode", "-n", "-w", c.file, "tcp")
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("tcpdump on %s: %v", iface, err)
	}
	// tcpdump says "listening on IFACE" once it captures.
	listening := make(chan string, 1)
	go func() {
		var all []byte
		buf := make([]byte, 512)
		said := false
		for {
			n, err := stderr.Read(buf)
			all = append(all, buf[:n]...)
			if !said && bytes.Contains(all, []byte("listening on")) {
				said = true
				listening <- ""
			}
			if err != nil {
				if !said {
					listening <- string(all)
				}
				c.done <- c.cmd.Wait()
				return
			}
		}
	}()
	select {
	case msg := <-listening:
		if msg != "" {
			t.Fatalf("tcpdump on %s: %s", iface, msg)
		}
	case <-time.After(20 * time.Second):
		c.cmd.Process.Kill()
		t.Fatalf("tcpdump on %s: not listening after 20s", iface)
	}
	t.Cleanup(func() { c.cmd.Process.Kill() })
	return c
}

// stop ends the capture and returns the captured file's bytes.
func (c *capture) stop(t *testing.T) []byte {
	t.Helper()
	time.Sleep(500 * time.Millisecond) // let the last packets reach the file
	c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	data, err := os.ReadFile(c.file)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
