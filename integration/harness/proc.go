package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Line is one line the process wrote to stderr. Fields holds the decoded
// JSON object, or nil when the line is not JSON.
type Line struct {
	Raw    string
	Fields map[string]any
}

// Message returns the "message" field of a JSON line, or "".
func (l Line) Message() string { return l.String("message") }

// String returns the field key of a JSON line when it is a string, or "".
func (l Line) String(key string) string {
	s, _ := l.Fields[key].(string)
	return s
}

// Proc is a running tunnel process started by Start. Its methods are safe
// for concurrent use.
type Proc struct {
	name   string
	cmd    *exec.Cmd
	done   chan struct{} // closed once the process has exited and its output is read
	stdout SyncBuffer

	mu      sync.Mutex
	lines   []Line
	changed chan struct{} // closed and replaced whenever a line is added
}

// Start starts bin with args followed by "--log-format json", collects the
// lines it writes to stderr and its stdout, and kills it (SIGKILL) in
// t.Cleanup if it is still running. The cleanup fails the test if the
// process reported a data race (Build makes race-enabled binaries under
// -race), panicked or died of a fatal runtime error, and, when the test
// has failed, logs the process's stderr lines. args usually begin with the
// subcommand, e.g. Start(t, bin, "exit", "--listen", "127.0.0.1:0", ...).
func Start(t testing.TB, bin string, args ...string) *Proc {
	t.Helper()
	return StartEnv(t, bin, nil, args...)
}

// StartEnv is Start with env ("KEY=value") added to the test's environment.
func StartEnv(t testing.TB, bin string, env []string, args ...string) *Proc {
	t.Helper()
	name := filepath.Base(bin)
	if len(args) > 0 {
		name += " " + args[0]
	}
	return startNamed(t, name, env, append([]string{bin}, args...))
}

// startNamed is StartEnv for the command argv (argv[0] is the program),
// called name in messages.
func startNamed(t testing.TB, name string, env []string, argv []string) *Proc {
	t.Helper()
	argv = append(slices.Clone(argv), "--log-format", "json")
	cmd := exec.Command(argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	p := &Proc{name: name, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	cmd.Stdout = &p.stdout
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", strings.Join(argv, " "), err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			p.add(sc.Text())
		}
		io.Copy(io.Discard, stderr) // after an over-long line: never block the process
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			cmd.Process.Kill()
			<-p.done
		}
		if l, ok := p.crashed(); ok {
			t.Errorf("%s reported a data race or crashed: %s", p.name, l)
		}
		if t.Failed() {
			t.Logf("stderr of %s (pid %d, %s):\n%s", p.name, cmd.Process.Pid, p.cmd.ProcessState, p.LogText())
		}
	})
	return p
}

func (p *Proc) add(raw string) {
	l := Line{Raw: raw}
	var m map[string]any
	if json.Unmarshal([]byte(raw), &m) == nil {
		l.Fields = m
	}
	p.mu.Lock()
	p.lines = append(p.lines, l)
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// crashed returns the first stderr line of a race detector report, a panic
// or a fatal runtime error.
func (p *Proc) crashed() (string, bool) {
	for _, l := range p.Logs() {
		if isCrashLine(l.Raw) {
			return l.Raw, true
		}
	}
	return "", false
}

// isCrashLine reports whether line starts a race detector report, a panic
// or a fatal runtime error.
func isCrashLine(line string) bool {
	return strings.HasPrefix(line, "WARNING: DATA RACE") || strings.HasPrefix(line, "panic: ") ||
		strings.HasPrefix(line, "fatal error: ")
}

// Pid returns the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Logs returns a copy of the stderr lines written so far.
func (p *Proc) Logs() []Line {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Line(nil), p.lines...)
}

// LogText returns the stderr lines written so far, joined by newlines.
func (p *Proc) LogText() string {
	var b strings.Builder
	for _, l := range p.Logs() {
		b.WriteString(l.Raw)
		b.WriteByte('\n')
	}
	return b.String()
}

// Stdout returns what the process has written to stdout so far.
func (p *Proc) Stdout() string {
	return p.stdout.String()
}

// Count returns how many stderr lines so far satisfy match.
func (p *Proc) Count(match func(Line) bool) int {
	n := 0
	for _, l := range p.Logs() {
		if match(l) {
			n++
		}
	}
	return n
}

// Contains returns a matcher for lines that contain every one of substrs,
// each either in the raw text or, for a JSON line, in one of its decoded
// string values (so JSON escaping does not matter).
func Contains(substrs ...string) func(Line) bool {
	return func(l Line) bool {
		for _, s := range substrs {
			if !l.contains(s) {
				return false
			}
		}
		return true
	}
}

func (l Line) contains(s string) bool {
	if strings.Contains(l.Raw, s) {
		return true
	}
	for _, v := range l.Fields {
		if str, ok := v.(string); ok && strings.Contains(str, s) {
			return true
		}
	}
	return false
}

// Level returns a matcher for JSON lines whose "level" is level.
func Level(level string) func(Line) bool {
	return func(l Line) bool { return l.String("level") == level }
}

// All returns a matcher for lines that satisfy every one of matchers.
func All(matchers ...func(Line) bool) func(Line) bool {
	return func(l Line) bool {
		for _, m := range matchers {
			if !m(l) {
				return false
			}
		}
		return true
	}
}

// MessageIs returns a matcher for JSON lines whose "message" is msg.
func MessageIs(msg string) func(Line) bool {
	return func(l Line) bool { return l.Message() == msg }
}

// WaitLine waits until the n-th (counting from 1) stderr line satisfying
// match has been written and returns it. It fails the test, showing the
// logs, when timeout passes or the process exits first.
func (p *Proc) WaitLine(t testing.TB, n int, timeout time.Duration, what string, match func(Line) bool) Line {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0 // lines already examined
	found := 0
	for {
		p.mu.Lock()
		lines, changed := p.lines[seen:], p.changed
		seen = len(p.lines)
		p.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				if found++; found == n {
					return l
				}
			}
		}
		select {
		case <-changed:
		case <-p.done:
			p.mu.Lock()
			more := len(p.lines) > seen
			p.mu.Unlock()
			if more {
				continue
			}
			t.Fatalf("%s exited (%s) before logging %s (occurrence %d); stderr:\n%s",
				p.name, p.cmd.ProcessState, what, n, p.LogText())
		case <-deadline.C:
			t.Fatalf("%s did not log %s (occurrence %d) within %v; stderr:\n%s",
				p.name, what, n, timeout, p.LogText())
		}
	}
}

// WaitMessage waits for the n-th (counting from 1) JSON line whose
// "message" is msg and returns it; see WaitLine.
func (p *Proc) WaitMessage(t testing.TB, n int, timeout time.Duration, msg string) Line {
	t.Helper()
	return p.WaitLine(t, n, timeout, fmt.Sprintf("message %q", msg), MessageIs(msg))
}

// CheckNoErrors fails the test for every line the process has logged at
// level error so far.
func (p *Proc) CheckNoErrors(t testing.TB) {
	t.Helper()
	for _, l := range p.Logs() {
		if Level("error")(l) {
			t.Errorf("%s logged an error line: %s", p.name, l.Raw)
		}
	}
}

// WaitLog waits for a stderr line containing substr and returns it; see
// WaitLine.
func (p *Proc) WaitLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	return p.WaitLine(t, 1, timeout, fmt.Sprintf("a line containing %q", substr), Contains(substr)).Raw
}

// ListenAddr waits (up to 30 s) for the "listening" log line and returns its
// "addr" field, the address the agent actually bound.
func (p *Proc) ListenAddr(t testing.TB) string {
	t.Helper()
	l := p.WaitLine(t, 1, 30*time.Second, `message "listening"`, MessageIs("listening"))
	addr := l.String("addr")
	if addr == "" {
		t.Fatalf("%s: listening line without an addr field: %s", p.name, l.Raw)
	}
	return addr
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done returns a channel closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the process to exit and returns its exit
// code. It returns -1 when the process was ended by a signal, and -2 when it
// was still running after timeout (it is left running; the test's cleanup
// kills it).
func (p *Proc) Wait(timeout time.Duration) int {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		return -2
	}
}

// Stop sends SIGTERM and waits up to timeout for the process to exit,
// failing the test if it does not; it returns the exit code (see Wait).
func (p *Proc) Stop(t testing.TB, timeout time.Duration) int {
	t.Helper()
	if err := p.Signal(syscall.SIGTERM); err != nil && !p.Exited() {
		t.Fatalf("%s: SIGTERM: %v", p.name, err)
	}
	code := p.Wait(timeout)
	if code == -2 {
		t.Fatalf("%s still running %v after SIGTERM; stderr:\n%s", p.name, timeout, p.LogText())
	}
	return code
}

// StatusKiB returns a field given in kB of /proc/PID/status, such as
// "VmRSS" or "VmHWM", in KiB.
func StatusKiB(pid int, field string) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: %q: %w", pid, sc.Text(), err)
			}
			return n, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("/proc/%d/status: %w", pid, err)
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s line", pid, field)
}
