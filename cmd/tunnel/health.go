package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// healthcheckCmd is `tunnel healthcheck [URL]`: for container images that have no shell or curl
// (Docker's HEALTHCHECK, an exec probe). It exits 0 when the endpoint answers 2xx and 1
// otherwise, whatever went wrong, since Docker gives exit status 2 a meaning of its own.
type healthcheckCmd struct {
	URL        string        `arg:"" optional:"" help:"What to ask: a URL, or a path on --status-addr (default /readyz)." placeholder:"URL|PATH"`
	StatusAddr string        `help:"The agent's --status-addr, read from TUNNEL_STATUS_ADDR or the config file as the agent reads it; a port alone, or a host of 0.0.0.0 or ::, means 127.0.0.1." placeholder:"ADDR"`
	Timeout    time.Duration `help:"Give up after this long." default:"5s"`
}

// Run asks the URL and prints the answer's status line, and its body when it is not 2xx.
func (c *healthcheckCmd) Run(e *env) error {
	url, err := c.target()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", url, err)
	}
	// No proxy from the environment: the status endpoint is local.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("healthcheck %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", url, resp.Status)
	return nil
}

// target is the URL to ask: URL if it is one, else URL (default /readyz) as a path on the
// status address.
func (c *healthcheckCmd) target() (string, error) {
	if strings.Contains(c.URL, "://") {
		return c.URL, nil
	}
	path := c.URL
	if path == "" {
		path = "/readyz"
	}
	if !strings.HasPrefix(path, "/") {
		return "", fmt.Errorf("healthcheck %q: give a URL (http://127.0.0.1:9070/readyz) or a path (/readyz)", c.URL)
	}
	if c.StatusAddr == "" {
		return "", errors.New("healthcheck: no address to ask: give a URL, or --status-addr (TUNNEL_STATUS_ADDR) as the agent has it")
	}
	host, port, err := net.SplitHostPort(c.StatusAddr)
	if err != nil {
		return "", fmt.Errorf("healthcheck: --status-addr %q is not host:port: write it as the agent has it, e.g. :9070", c.StatusAddr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}
