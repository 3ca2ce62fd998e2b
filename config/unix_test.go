package config

import (
	"io/fs"
	"strings"
	"testing"
)

// TestUnixAddresses: unix:PATH is a listen address of the entry and a
// backend of the exit, by flag syntax and in validation; a mode goes with
// a UNIX socket only.
func TestUnixAddresses(t *testing.T) {
	if addr, name, err := ParseListen("unix:/run/app/db.sock=db"); err != nil || addr != "unix:/run/app/db.sock" || name != "db" {
		t.Errorf("ParseListen(unix:/run/app/db.sock=db) = %q, %q, %v", addr, name, err)
	}
	if name, addr, err := ParseForward("db=unix:/var/run/postgresql/.s.PGSQL.5432"); err != nil || addr != "unix:/var/run/postgresql/.s.PGSQL.5432" || name != "db" {
		t.Errorf("ParseForward(db=unix:...) = %q, %q, %v", name, addr, err)
	}
	if name, addr, err := ParseForward("unix:/run/app.sock"); err != nil || addr != "unix:/run/app.sock" || name != "" {
		t.Errorf("ParseForward(unix:/run/app.sock) = %q, %q, %v", name, addr, err)
	}
	if n, a := Network("unix:/run/a.sock"); n != "unix" || a != "/run/a.sock" {
		t.Errorf("Network(unix:/run/a.sock) = %q, %q", n, a)
	}
	if n, a := Network("db:5432"); n != "tcp" || a != "db:5432" {
		t.Errorf("Network(db:5432) = %q, %q", n, a)
	}

	key, pub, _ := keyFiles(t)
	entry := func(adjust func(*Entry)) error {
		c := DefaultEntry()
		c.Key, c.PeerKey, c.Peers = key, pub, []string{"exit:7000"}
		adjust(&c)
		return c.Validate()
	}
	long := "unix:/" + strings.Repeat("x", 107)
	for _, tc := range []struct {
		name   string
		adjust func(*Entry)
		err    string
	}{
		{"unix default", func(c *Entry) { c.Listen = "unix:/run/app.sock" }, ""},
		{"unix named with mode", func(c *Entry) {
			c.Listeners = []EntryListener{{Addr: "unix:/run/db.sock", Service: "db", Mode: 0o660}}
		}, ""},
		{"listen-mode", func(c *Entry) { c.Listen, c.ListenMode = "unix:/run/app.sock", 0o600 }, ""},
		{"relative", func(c *Entry) { c.Listen = "unix:app.sock" }, "absolute path"},
		{"no path", func(c *Entry) { c.Listen = "unix:" }, "has no path"},
		{"too long", func(c *Entry) { c.Listen = long }, "at most 107"},
		{"twice", func(c *Entry) {
			c.Listen = "unix:/run/a.sock"
			c.Listeners = []EntryListener{{Addr: "unix:/run/a.sock", Service: "db"}}
		}, "given twice"},
		{"mode on tcp", func(c *Entry) {
			c.Listeners = []EntryListener{{Addr: "127.0.0.1:1", Service: "db", Mode: 0o660}}
		}, "a mode is for a UNIX socket"},
		{"listen-mode without unix", func(c *Entry) { c.ListenMode = 0o660 }, "applies to no listener"},
	} {
		err := entry(tc.adjust)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("entry %s: Validate() = %v, want %q", tc.name, err, tc.err)
		}
	}
	c := DefaultEntry()
	c.Listen, c.ListenMode = "unix:/run/a.sock", 0o600
	c.Listeners = []EntryListener{{Addr: "unix:/run/b.sock", Service: "b", Mode: 0o660}, {Addr: "127.0.0.1:1", Service: "c"}}
	var modes []fs.FileMode
	for _, l := range c.AllListeners() {
		modes = append(modes, l.Mode)
	}
	if len(modes) != 3 || modes[0] != 0o600 || modes[1] != 0o660 || modes[2] != 0 {
		t.Errorf("AllListeners modes %v, want [600 660 0]: --listen-mode for a UNIX socket without its own", modes)
	}

	exit := func(adjust func(*Exit)) error {
		c := DefaultExit()
		c.Key, c.AuthorizedKeys = key, pub
		adjust(&c)
		return c.Validate()
	}
	for _, tc := range []struct {
		name   string
		adjust func(*Exit)
		err    string
	}{
		{"unix default", func(c *Exit) { c.Forward = "unix:/var/run/postgresql/.s.PGSQL.5432" }, ""},
		{"unix named", func(c *Exit) { c.Services = []ExitService{{"db", "unix:/run/db.sock"}} }, ""},
		{"relative", func(c *Exit) { c.Services = []ExitService{{"db", "unix:db.sock"}} }, "absolute path"},
		{"listen on unix", func(c *Exit) { c.Forward, c.Listen = "a:1", "unix:/run/exit.sock" }, "over TCP only"},
	} {
		err := exit(tc.adjust)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("exit %s: Validate() = %v, want %q", tc.name, err, tc.err)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]fs.FileMode{"0660": 0o660, "660": 0o660, "0600": 0o600, "777": 0o777} {
		if m, err := ParseMode(in); err != nil || m != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, m, err, want)
		}
	}
	for _, in := range []string{"", "0", "0800", "1777", "rw-rw----", "0x1b0"} {
		if m, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q) = %v, want an error", in, m)
		}
	}
}
