package main

import (
	"bytes"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tunnel-dev/tunnel/config"
)

// TestServiceFlags: services from repeated flags and from the config file,
// with the old single-flag usage unchanged.
func TestServiceFlags(t *testing.T) {
	dir := t.TempDir()
	exitFile := writeFile(t, filepath.Join(dir, "exit.yaml"), `
exit:
  forward: fallback:80
  services:
    db:
      forward: db:5432
      allow: [app1, "SHA256:abc"]
      proxy-protocol: true
    cache:
      forward: redis:6379
`)
	entryFile := writeFile(t, filepath.Join(dir, "entry.yaml"), `
entry:
  services:
    - listen: 127.0.0.1:5432
      service: db
    - listen: 127.0.0.1:6379
      service: cache
`)
	exit := func(args ...string) (config.Exit, error) {
		t.Helper()
		c, _, err := parse(args, new(bytes.Buffer), new(bytes.Buffer), &configSource{})
		if err != nil {
			return config.Exit{}, err
		}
		return c.Exit.settings()
	}
	entry := func(args ...string) (config.Entry, error) {
		t.Helper()
		c, _, err := parse(args, new(bytes.Buffer), new(bytes.Buffer), &configSource{})
		if err != nil {
			return config.Entry{}, err
		}
		return c.Entry.settings()
	}

	x, err := exit("exit", "--forward", "db:5432")
	if err != nil || x.Forward != "db:5432" || x.Services != nil || x.Access != nil {
		t.Errorf("single --forward: %+v, %v", x, err)
	}
	x, err = exit("exit", "--forward", "db=db:5432", "--forward", "cache=redis:6379", "--forward", "a:1", "--allow", "db=app1,SHA256:abc")
	wantServices := []config.ExitService{{Name: "db", Forward: "db:5432"}, {Name: "cache", Forward: "redis:6379"}}
	if err != nil || x.Forward != "a:1" || !reflect.DeepEqual(x.Services, wantServices) ||
		!reflect.DeepEqual(x.Access, []config.Access{{Service: "db", Keys: []string{"app1", "SHA256:abc"}}}) {
		t.Errorf("repeated --forward and --allow: %+v, %v", x, err)
	}
	x, err = exit("--config", exitFile, "exit")
	wantServices = []config.ExitService{{Name: "cache", Forward: "redis:6379"}, {Name: "db", Forward: "db:5432"}}
	if err != nil || x.Forward != "fallback:80" || !reflect.DeepEqual(x.Services, wantServices) ||
		!reflect.DeepEqual(x.Access, []config.Access{{Service: "db", Keys: []string{"app1", "SHA256:abc"}}}) {
		t.Errorf("services from the file: %+v, %v", x, err)
	}
	if !reflect.DeepEqual(x.ProxyProtocol, []string{"db"}) {
		t.Errorf("proxy-protocol from the file: %q, want db", x.ProxyProtocol)
	}
	// An allow: with no keys is a rule with no keys, which Validate refuses,
	// whether the file says allow: [] or allow: alone; not "every key".
	for _, allow := range []string{"allow: []", "allow:", "allow: null", "allow: ~"} {
		f := writeFile(t, filepath.Join(dir, "empty-allow.yaml"), "exit:\n  services:\n    db:\n      forward: db:5432\n      "+allow+"\n")
		x, err = exit("--config", f, "exit")
		if err != nil || len(x.Access) != 1 || x.Access[0].Service != "db" || len(x.Access[0].Keys) != 0 {
			t.Errorf("%s in the file: access %+v, %v; want a rule for db with no keys", allow, x.Access, err)
		}
		x, err = exit("exit", "--services", "{db: {forward: db:5432, "+allow+" }}")
		if err != nil || len(x.Access) != 1 || len(x.Access[0].Keys) != 0 {
			t.Errorf("--services with %s: access %+v, %v; want a rule for db with no keys", allow, x.Access, err)
		}
	}
	x, err = exit("exit", "--forward", "a:1", "--forward", "db=b:2", "--proxy-protocol", "db,default")
	if err != nil || !reflect.DeepEqual(x.ProxyProtocol, []string{"db", "default"}) {
		t.Errorf("--proxy-protocol db,default: %q, %v", x.ProxyProtocol, err)
	}

	n, err := entry("entry")
	if err != nil || n.Listen != config.DefaultEntryListen || n.Listeners != nil {
		t.Errorf("no --listen: %+v, %v", n, err)
	}
	n, err = entry("entry", "--listen", "127.0.0.1:7")
	if err != nil || n.Listen != "127.0.0.1:7" || n.Listeners != nil {
		t.Errorf("single --listen: %+v, %v", n, err)
	}
	n, err = entry("entry", "--listen", "127.0.0.1:5432=db", "--listen", "127.0.0.1:6379=cache")
	wantListeners := []config.EntryListener{{Addr: "127.0.0.1:5432", Service: "db"}, {Addr: "127.0.0.1:6379", Service: "cache"}}
	if err != nil || n.Listen != "" || !reflect.DeepEqual(n.Listeners, wantListeners) {
		t.Errorf("named --listen: %+v, %v", n, err)
	}
	n, err = entry("--config", entryFile, "entry")
	if err != nil || n.Listen != "" || !reflect.DeepEqual(n.Listeners, wantListeners) {
		t.Errorf("services from the file: %+v, %v", n, err)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"exit", "--forward", "a:1", "--forward", "b:2"}, "the default service is given twice"},
		{[]string{"exit", "--forward", "db=a:1", "--forward", "db=b:2"}, `service "db" is given twice`},
		{[]string{"exit", "--forward", "d b=a:1"}, "use letters, digits"},
		{[]string{"exit", "--allow", "db"}, "SERVICE=KEY"},
		{[]string{"exit", "--services", "{db: {forwrd: a:1}}"}, "field forwrd not found"},
		{[]string{"exit", "--services", "{db: {forward: a:1, allow: k}}"}, "services: db: allow: "},
		{[]string{"entry", "--listen", "=db"}, "no address before '='"},
		{[]string{"entry", "--services", "[{service: db}]"}, "has no listen"},
	} {
		var err error
		if tc.args[0] == "exit" {
			_, err = exit(tc.args...)
		} else {
			_, err = entry(tc.args...)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}

// TestUnixSocketFlags: UNIX socket listeners and their modes from flags,
// the environment and the config file, where YAML reads an unquoted 0660
// as octal.
func TestUnixSocketFlags(t *testing.T) {
	dir := t.TempDir()
	entry := func(args ...string) (config.Entry, error) {
		t.Helper()
		c, _, err := parse(args, new(bytes.Buffer), new(bytes.Buffer), &configSource{})
		if err != nil {
			return config.Entry{}, err
		}
		return c.Entry.settings()
	}
	n, err := entry("entry", "--listen", "unix:/run/app/a.sock", "--listen", "unix:/run/app/db.sock=db", "--listen-mode", "0660")
	want := []config.EntryListener{{Addr: "unix:/run/app/a.sock", Mode: 0o660}, {Addr: "unix:/run/app/db.sock", Service: "db", Mode: 0o660}}
	if err != nil || !reflect.DeepEqual(n.AllListeners(), want) {
		t.Errorf("--listen unix:... --listen-mode 0660: %+v, %v; want %+v", n.AllListeners(), err, want)
	}
	file := writeFile(t, filepath.Join(dir, "entry.yaml"), `
entry:
  listen-mode: 0600
  services:
    - listen: unix:/run/app/db.sock
      service: db
      mode: 0660
    - listen: unix:/run/app/cache.sock
      service: cache
      mode: "0640"
    - listen: unix:/run/app/other.sock
      service: other
`)
	n, err = entry("--config", file, "entry")
	want = []config.EntryListener{
		{Addr: "unix:/run/app/db.sock", Service: "db", Mode: 0o660},
		{Addr: "unix:/run/app/cache.sock", Service: "cache", Mode: 0o640},
		{Addr: "unix:/run/app/other.sock", Service: "other", Mode: 0o600},
	}
	if err != nil || !reflect.DeepEqual(n.AllListeners(), want) {
		t.Errorf("modes from the file: %+v, %v; want %+v", n.AllListeners(), err, want)
	}
	t.Setenv("TUNNEL_LISTEN_MODE", "0606")
	if n, err = entry("entry", "--listen", "unix:/run/a.sock"); err != nil || n.ListenMode != 0o606 {
		t.Errorf("TUNNEL_LISTEN_MODE=0606: mode %04o, %v", n.ListenMode, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"entry", "--listen", "unix:/a.sock", "--listen-mode", "rw"}, "not permission bits in octal"},
		{[]string{"entry", "--services", "[{listen: unix:/a.sock, service: db, mode: 660}]"}, "write them in octal with a leading 0"},
	} {
		if _, err := entry(tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}
