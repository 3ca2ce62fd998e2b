package config

import (
	"strings"
	"testing"
)

func TestParseServiceFlags(t *testing.T) {
	for _, tc := range []struct {
		in, name, addr, err string
	}{
		{"db:5432", "", "db:5432", ""},
		{"[::1]:5432", "", "[::1]:5432", ""},
		{"db=db:5432", "db", "db:5432", ""},
		{"default=db:5432", "", "db:5432", ""},
		{"=db:5432", "", "", "1 to 64 characters"},
		{"d b=db:5432", "", "", "use letters, digits"},
		{"db=", "", "", "no backend after '='"},
	} {
		name, addr, err := ParseForward(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseForward(%q) error %v, want one saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || name != tc.name || addr != tc.addr {
			t.Errorf("ParseForward(%q) = %q, %q, %v; want %q, %q", tc.in, name, addr, err, tc.name, tc.addr)
		}
	}
	for _, tc := range []struct {
		in, addr, name, err string
	}{
		{"127.0.0.1:5432", "127.0.0.1:5432", "", ""},
		{"127.0.0.1:5432=db", "127.0.0.1:5432", "db", ""},
		{"[::1]:6379=cache-1", "[::1]:6379", "cache-1", ""},
		{":5000=default", ":5000", "", ""},
		{"=db", "", "", "no address before '='"},
		{"127.0.0.1:1=-x", "", "", "starting with a letter or digit"},
	} {
		addr, name, err := ParseListen(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseListen(%q) error %v, want one saying %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || name != tc.name || addr != tc.addr {
			t.Errorf("ParseListen(%q) = %q, %q, %v; want %q, %q", tc.in, addr, name, err, tc.addr, tc.name)
		}
	}
	a, err := ParseAllow("db=app1,SHA256:abc")
	if err != nil || a.Service != "db" || len(a.Keys) != 2 || a.Keys[1] != "SHA256:abc" {
		t.Errorf("ParseAllow = %+v, %v", a, err)
	}
	if _, err := ParseAllow("db"); err == nil || !strings.Contains(err.Error(), "SERVICE=KEY") {
		t.Errorf("ParseAllow(db) error %v, want the syntax", err)
	}
}

func TestValidateServices(t *testing.T) {
	key, pub, _ := keyFiles(t)
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
		{"named only", func(c *Exit) { c.Services = []ExitService{{"db", "db:5432"}} }, ""},
		{"default and named", func(c *Exit) { c.Forward = "a:1"; c.Services = []ExitService{{"db", "db:5432"}} }, ""},
		{"none", func(c *Exit) {}, "--forward is required"},
		{"duplicate", func(c *Exit) { c.Services = []ExitService{{"db", "a:1"}, {"db", "b:2"}} }, `service "db" is forwarded twice`},
		{"bad backend", func(c *Exit) { c.Services = []ExitService{{"db", "nohost"}} }, "service db's backend"},
		{"allow unknown service", func(c *Exit) {
			c.Services = []ExitService{{"db", "a:1"}}
			c.Access = []Access{{"cache", []string{"app1"}}}
		}, `no service "cache": name one of db`},
		{"allow default without one", func(c *Exit) {
			c.Services = []ExitService{{"db", "a:1"}}
			c.Access = []Access{{"default", []string{"app1"}}}
		}, `no service "default"`},
		{"allow twice", func(c *Exit) {
			c.Services = []ExitService{{"db", "a:1"}}
			c.Access = []Access{{"db", []string{"app1"}}, {"db", []string{"app2"}}}
		}, "restricted twice"},
		{"proxy protocol", func(c *Exit) {
			c.Forward = "a:1"
			c.Services = []ExitService{{"db", "a:1"}}
			c.ProxyProtocol = []string{"db", "default"}
		}, ""},
		{"proxy protocol unknown service", func(c *Exit) {
			c.Services = []ExitService{{"db", "a:1"}}
			c.ProxyProtocol = []string{"dbx"}
		}, `--proxy-protocol dbx: the exit has no service "dbx": name one of db`},
		{"proxy protocol twice", func(c *Exit) {
			c.Services = []ExitService{{"db", "a:1"}}
			c.ProxyProtocol = []string{"db", "db"}
		}, "twice"},
		// An empty list (allow: [] in a file) must not open the service to every key.
		{"allow no key", func(c *Exit) {
			c.Services = []ExitService{{"db", "a:1"}}
			c.Access = []Access{{"db", []string{}}}
		}, `names no key, which would not mean "every key": list the keys that may reach db`},
		{"allow nil keys", func(c *Exit) {
			c.Forward = "a:1"
			c.Access = []Access{{"default", nil}}
		}, "or remove the rule (the allow: key) to let every authorized key reach it"},
		{"allow empty key", func(c *Exit) {
			c.Services = []ExitService{{"db", "a:1"}}
			c.Access = []Access{{"db", []string{"app1", ""}}}
		}, "empty key name"},
	} {
		err := exit(tc.adjust)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.err)
		}
	}

	entry := func(listen string, ls ...EntryListener) error {
		c := DefaultEntry()
		c.Key, c.PeerKey, c.Peers = key, pub, []string{"exit:7000"}
		c.Listen, c.Listeners = listen, ls
		return c.Validate()
	}
	if err := entry("", EntryListener{Addr: "127.0.0.1:0", Service: "db"}, EntryListener{Addr: "127.0.0.1:0", Service: "cache"}); err != nil {
		t.Errorf("two named listeners: %v", err)
	}
	if err := entry(""); err == nil || !strings.Contains(err.Error(), "--listen is required") {
		t.Errorf("no listener: %v", err)
	}
	if err := entry("127.0.0.1:5000", EntryListener{Addr: "127.0.0.1:5000", Service: "db"}); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("one address twice: %v", err)
	}
	if err := entry("", EntryListener{Addr: "nohost", Service: "db"}); err == nil || !strings.Contains(err.Error(), "service db") {
		t.Errorf("bad named address: %v", err)
	}
}
