package kubernetes

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// TestAgentsRunAsDeployed runs the exit and the entry of the manifests with
// their containers' args and environment, their Secrets and ConfigMaps laid
// out as the kubelet lays out such volumes (each file a symlink through
// ..data into a timestamped directory, modes from defaultMode and fsGroup),
// then runs their containers' exec probes until each passes and carries
// bytes from the entry through the exit to a backend. What the cluster
// would give differently is replaced: the mounts are under a temporary
// directory, and --listen, the exit's --forward, the entry's --peer and the
// status addresses are loopback ports of this machine.
func TestAgentsRunAsDeployed(t *testing.T) {
	bin := tunnelBinary(t)
	m, err := load(os.DirFS("."))
	if err != nil {
		t.Fatal(err)
	}
	c := &checker{m: m, help: tunnelHelp(t)}
	c.check()
	if len(c.problems) > 0 {
		t.Fatalf("the manifests have problems (TestManifests lists them): %s", c.problems[0])
	}
	agents := map[string]*agent{}
	for _, a := range c.agents {
		if agents[a.role] != nil {
			t.Fatalf("more than one %s in the manifests: this test runs one of each", a.role)
		}
		agents[a.role] = a
	}
	if agents["exit"] == nil || agents["entry"] == nil {
		t.Fatal("the manifests need an exit and an entry")
	}

	dir := t.TempDir()
	files := makeGeneratedFiles(t, bin, m, filepath.Join(dir, "kustomization"))
	backend := echoServer(t)

	exit := startAgent(t, bin, agents["exit"], m, files, filepath.Join(dir, "exit"), map[string]string{
		"listen": "127.0.0.1:0", "forward": backend,
	})
	entry := startAgent(t, bin, agents["entry"], m, files, filepath.Join(dir, "entry"), map[string]string{
		"listen": "127.0.0.1:0", "peer": exit.addr,
	})
	for _, p := range []*agentProcess{exit, entry} {
		for _, probe := range []*corev1.Probe{p.a.c.StartupProbe, p.a.c.LivenessProbe, p.a.c.ReadinessProbe} {
			if probe != nil && probe.Exec != nil {
				p.waitProbe(t, bin, probe.Exec.Command)
			}
		}
	}

	conn, err := net.Dial("tcp", entry.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := []byte("select 42; -- through the entry and the exit, as deployed\n")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the tunnel: got %q, %v; want %q\nexit:\n%s\nentry:\n%s", got, err, msg, exit.logs(), entry.logs())
	}
}

// makeGeneratedFiles makes, under dir, the files that kustomization.yaml's
// generators read, as README.md says: key pairs with tunnel keygen, and a
// password. It returns each file's content by its path in the
// kustomization.
func makeGeneratedFiles(t *testing.T, bin string, m *manifests, dir string) map[string][]byte {
	files := map[string][]byte{}
	for _, f := range m.generatedFiles() {
		p := filepath.Join(dir, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		switch ext := path.Ext(f); ext {
		case ".key", ".pub":
			base := strings.TrimSuffix(p, ext)
			if out, err := exec.Command(bin, "keygen", "--if-missing", "--out", base).CombinedOutput(); err != nil {
				t.Fatalf("tunnel keygen --out %s: %v\n%s", base, err, out)
			}
		default:
			if err := os.WriteFile(p, []byte("not-a-secret"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files[f] = data
	}
	return files
}

// echoServer listens on loopback and echoes each connection until its
// client half-closes it; it stands in for the database.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return ln.Addr().String()
}

// agentProcess is an agent of the manifests running on this machine.
type agentProcess struct {
	a      *agent
	addr   string   // where it listens
	status string   // where its status endpoint listens
	env    []string // its container's environment, with the status address it got

	mu    sync.Mutex
	lines []string // its log
}

func (p *agentProcess) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "")
}

// startAgent mounts a's volumes under root, starts it with its args (the
// flags in set replaced, paths moved under root) and waits for its
// listening lines.
func startAgent(t *testing.T, bin string, a *agent, m *manifests, files map[string][]byte, root string, set map[string]string) *agentProcess {
	for _, vm := range a.c.VolumeMounts {
		mountVolume(t, a, m, files, vm, filepath.Join(root, vm.MountPath))
	}
	args := []string{a.role}
	for _, arg := range a.c.Args[1:] {
		name, value, ok := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		switch v, replaced := set[name]; {
		case replaced:
			value = v
		case strings.HasPrefix(value, "/"):
			value = filepath.Join(root, value)
		case !ok:
			args = append(args, arg)
			continue
		}
		args = append(args, "--"+name+"="+value)
	}
	var env []string
	for _, e := range a.c.Env {
		switch {
		case e.Name == "TUNNEL_STATUS_ADDR":
			env = append(env, e.Name+"=127.0.0.1:0")
		case e.ValueFrom == nil:
			env = append(env, e.Name+"="+e.Value)
		}
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{a: a}
	addrs := make(chan [2]string, 2) // message, addr
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		r := bufio.NewReader(stderr)
		for {
			line, err := r.ReadString('\n')
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
			var l struct{ Message, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && (l.Message == "listening" || l.Message == "status endpoint listening") {
				addrs <- [2]string{l.Message, l.Addr}
			}
			if err != nil {
				cmd.Wait()
				return
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for p.addr == "" || p.status == "" {
		select {
		case got := <-addrs:
			if got[0] == "listening" {
				p.addr = got[1]
			} else {
				p.status = got[1]
			}
		case <-exited:
			t.Fatalf("tunnel %s exited (%v): args %q, environment %q:\n%s", a.role, cmd.ProcessState, args, env, p.logs())
		case <-time.After(time.Minute):
			t.Fatalf("tunnel %s did not say where it listens within a minute:\n%s", a.role, p.logs())
		}
	}
	for _, e := range env {
		if strings.HasPrefix(e, "TUNNEL_STATUS_ADDR=") {
			e = "TUNNEL_STATUS_ADDR=" + p.status
		}
		p.env = append(p.env, e)
	}
	return p
}

// mountVolume lays out at dir the Secret or ConfigMap volume that vm mounts,
// as the kubelet does: the files in a timestamped directory, a ..data
// symlink to it, and a symlink through ..data for each file; a Secret's
// files of mode defaultMode, with the group read bit that an fsGroup adds.
func mountVolume(t *testing.T, a *agent, m *manifests, files map[string][]byte, vm corev1.VolumeMount, dir string) {
	vol := a.pod.volume(vm.Name)
	var gens []generator
	var name string
	var mode os.FileMode = 0o644
	var items []corev1.KeyToPath
	switch {
	case vol.Secret != nil:
		gens, name, items = m.kust.SecretGenerator, vol.Secret.SecretName, vol.Secret.Items
		if vol.Secret.DefaultMode != nil {
			mode = os.FileMode(*vol.Secret.DefaultMode)
		}
		if sc := a.pod.spec.Spec.SecurityContext; sc != nil && sc.FSGroup != nil {
			mode |= 0o440
		}
	case vol.ConfigMap != nil:
		gens, name, items = m.kust.ConfigMapGenerator, vol.ConfigMap.Name, vol.ConfigMap.Items
	default:
		t.Fatalf("%s: volume %s is neither a Secret nor a ConfigMap", a.what, vm.Name)
	}
	content := map[string][]byte{} // by key
	for _, g := range gens {
		if g.Name != name {
			continue
		}
		for _, f := range g.Files {
			key, p, ok := strings.Cut(f, "=")
			if !ok {
				key, p = path.Base(f), f
			}
			content[key] = files[p]
		}
	}
	if len(items) == 0 {
		for key := range content {
			items = append(items, corev1.KeyToPath{Key: key, Path: key})
		}
	}
	const stamp = "..2026_01_01_00_00_00.000000001"
	if err := os.MkdirAll(filepath.Join(dir, stamp), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		p := filepath.Join(dir, stamp, it.Path)
		if err := os.WriteFile(p, content[it.Key], 0o600); err != nil {
			t.Fatal(err)
		}
		itemMode := mode
		if it.Mode != nil {
			itemMode = os.FileMode(*it.Mode)
		}
		if err := os.Chmod(p, itemMode); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..data", it.Path), filepath.Join(dir, it.Path)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(stamp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// waitProbe runs the probe's command (tunnel healthcheck …) in the agent's
// environment until it passes, for up to a minute.
func (p *agentProcess) waitProbe(t *testing.T, bin string, command []string) {
	if len(command) == 0 || command[0] != "tunnel" {
		t.Fatalf("%s: probe %q does not run tunnel", p.a.what, command)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		cmd := exec.Command(bin, command[1:]...)
		cmd.Env = p.env
		out, err := cmd.CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: probe %q still fails after a minute: %v\n%s\nits log:\n%s", p.a.what, command, err, out, p.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
