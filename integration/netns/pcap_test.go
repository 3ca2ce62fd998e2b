package netns

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// capture is a tcpdump writing the TCP packets of one interface to a pcap
// file.
type capture struct {
	name, file string
	cmd        *exec.Cmd
	done       chan struct{}
	stderr     harness.SyncBuffer
}

// startCapture starts tcpdump on iface inside ns, writing to file, and
// waits until it captures. Packets are handed over as they come
// (--immediate-mode; else the kernel batches them for up to a second and
// tcpdump stopped within that second writes none) and written as they come
// (-U), so that stopping it with SIGINT leaves a complete file.
func startCapture(t *testing.T, ns, iface, file string) *capture {
	t.Helper()
	c := &capture{name: "tcpdump on " + iface + " in " + ns, file: file, done: make(chan struct{})}
	c.cmd = exec.Command("ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", "0",
		"-Z", "root", "-w", file, "tcp")
	c.cmd.Stderr = &c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", c.name, err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			c.cmd.Process.Kill()
			<-c.done
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for !bytes.Contains([]byte(c.stderr.String()), []byte("listening on")) {
		select {
		case <-c.done:
			t.Fatalf("%s exited (%s): %s", c.name, c.cmd.ProcessState, c.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not capturing after 15s: %s", c.name, c.stderr.String())
		}
	}
	return c
}

var droppedRE = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// stop ends tcpdump with SIGINT, checks that it exited cleanly and dropped
// nothing, and returns the parsed capture.
func (c *capture) stop(t *testing.T) *pcapSummary {
	t.Helper()
	c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s still running 15s after SIGINT", c.name)
	}
	stderr := c.stderr.String()
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("%s exited with %s: %s", c.name, c.cmd.ProcessState, stderr)
	}
	m := droppedRE.FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("%s: no drop count in its output: %s", c.name, stderr)
	}
	if n, _ := strconv.Atoi(m[1]); n != 0 {
		t.Fatalf("%s dropped %d packets: the capture is incomplete: %s", c.name, n, stderr)
	}
	data, err := os.ReadFile(c.file)
	if err != nil {
		t.Fatal(err)
	}
	s, err := parsePcap(data)
	if err != nil {
		t.Fatalf("%s: %s: %v", c.name, c.file, err)
	}
	s.raw = data
	t.Logf("%s: %s", c.name, strings.ReplaceAll(strings.TrimSpace(stderr), "\n", "; "))
	return s
}

// flowKey is one direction of one TCP connection.
type flowKey struct{ src, dst netip.AddrPort }

func (k flowKey) String() string { return k.src.String() + ">" + k.dst.String() }

// pcapSummary is what a capture holds.
type pcapSummary struct {
	raw          []byte // the whole file
	packets      int
	payloadBytes int64              // TCP payload, retransmissions included
	streams      map[flowKey][]byte // each direction's payload in sequence order
}

// count returns how often needle occurs in the capture: in the raw file
// and, so that one split across segments is found too, in the stitched
// streams; the larger of the two.
func (s *pcapSummary) count(needle []byte) int {
	inStreams := 0
	for _, b := range s.streams {
		inStreams += bytes.Count(b, needle)
	}
	return max(inStreams, bytes.Count(s.raw, needle))
}

// segment is the payload of one TCP segment.
type segment struct {
	seq  uint32
	data []byte
}

// parsePcap reads a classic pcap file of Ethernet frames (what tcpdump -w
// writes for a veth) and collects the TCP payloads over IPv4. A truncated
// packet is an error: the checks need every byte.
func parsePcap(data []byte) (*pcapSummary, error) {
	if len(data) < 24 {
		return nil, errors.New("pcap: shorter than its header")
	}
	var bo binary.ByteOrder
	switch magic := binary.LittleEndian.Uint32(data); magic {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, fmt.Errorf("pcap: unknown magic %#x (pcapng is not supported)", magic)
	}
	if lt := bo.Uint32(data[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want 1 (Ethernet)", lt)
	}
	s := &pcapSummary{streams: make(map[flowKey][]byte)}
	segs := make(map[flowKey][]segment)
	for rest := data[24:]; len(rest) > 0; {
		if len(rest) < 16 {
			return nil, errors.New("pcap: truncated record header")
		}
		incl, orig := bo.Uint32(rest[8:]), bo.Uint32(rest[12:])
		if uint64(len(rest)-16) < uint64(incl) {
			return nil, errors.New("pcap: truncated record")
		}
		if incl < orig {
			return nil, fmt.Errorf("pcap: packet %d captured %d of %d bytes", s.packets+1, incl, orig)
		}
		frame := rest[16 : 16+incl]
		rest = rest[16+incl:]
		s.packets++
		key, seq, payload, ok := tcpPayload(frame)
		if !ok || len(payload) == 0 {
			continue
		}
		s.payloadBytes += int64(len(payload))
		segs[key] = append(segs[key], segment{seq, payload})
	}
	for key, list := range segs {
		s.streams[key] = stitch(list)
	}
	return s, nil
}

// tcpPayload extracts the TCP payload of an Ethernet frame carrying IPv4.
func tcpPayload(frame []byte) (key flowKey, seq uint32, payload []byte, ok bool) {
	if len(frame) < 14 {
		return key, 0, nil, false
	}
	etherType, ip := binary.BigEndian.Uint16(frame[12:]), frame[14:]
	if etherType == 0x8100 && len(ip) >= 4 { // one VLAN tag
		etherType, ip = binary.BigEndian.Uint16(ip[2:]), ip[4:]
	}
	if etherType != 0x0800 || len(ip) < 20 || ip[0]>>4 != 4 || ip[9] != 6 {
		return key, 0, nil, false
	}
	ihl, total := int(ip[0]&0x0f)*4, int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || total < ihl || total > len(ip) {
		return key, 0, nil, false
	}
	tcp := ip[ihl:total]
	if len(tcp) < 20 {
		return key, 0, nil, false
	}
	doff := int(tcp[12]>>4) * 4
	if doff < 20 || doff > len(tcp) {
		return key, 0, nil, false
	}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), binary.BigEndian.Uint16(tcp[0:]))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), binary.BigEndian.Uint16(tcp[2:]))
	return flowKey{src, dst}, binary.BigEndian.Uint32(tcp[4:]), tcp[doff:], true
}

// stitch puts one direction's segments in sequence order, dropping what
// retransmissions repeat. Sequence numbers are taken relative to the first
// segment, so a wrap of the 32-bit space does not matter.
func stitch(list []segment) []byte {
	base := list[0].seq
	rel := func(s segment) int64 { return int64(int32(s.seq - base)) }
	slices.SortStableFunc(list, func(a, b segment) int {
		return int(rel(a) - rel(b))
	})
	var out []byte
	next := rel(list[0])
	for _, s := range list {
		off := rel(s)
		end := off + int64(len(s.data))
		if end <= next {
			continue
		}
		if off < next {
			s.data = s.data[next-off:]
		}
		out = append(out, s.data...) // a gap (a packet not seen) is closed up
		next = end
	}
	return out
}

// TestParsePcap checks the parser on a file built by hand: two segments of
// one flow out of order, with an overlapping retransmission, and a marker
// split across them.
func TestParsePcap(t *testing.T) {
	frame := func(seq uint32, payload string) []byte {
		ip := make([]byte, 20+20+len(payload))
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
		ip[9] = 6
		copy(ip[12:], []byte{10, 0, 0, 1})
		copy(ip[16:], []byte{10, 0, 0, 2})
		tcp := ip[20:]
		binary.BigEndian.PutUint16(tcp[0:], 1234)
		binary.BigEndian.PutUint16(tcp[2:], 80)
		binary.BigEndian.PutUint32(tcp[4:], seq)
		tcp[12] = 5 << 4
		copy(tcp[20:], payload)
		return append(append(make([]byte, 12), 0x08, 0x00), ip...)
	}
	var file []byte
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0xa1b2c3d4)
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	file = append(file, hdr...)
	var base uint32 = 0xfffffffa // the sequence space wraps inside the flow
	// "head-MARKER-TAIL" as three segments out of order, the middle one a
	// retransmission overlapping both others.
	for _, f := range [][]byte{frame(base+9, "ER-TAIL"), frame(base, "head-MARK"), frame(base+4, "-MARKER")} {
		rec := make([]byte, 16)
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(f)))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(f)))
		file = append(append(file, rec...), f...)
	}
	s, err := parsePcap(file)
	if err != nil {
		t.Fatal(err)
	}
	s.raw = file
	if s.packets != 3 || s.payloadBytes != 23 {
		t.Errorf("packets %d, payload %d; want 3, 23", s.packets, s.payloadBytes)
	}
	key := flowKey{netip.MustParseAddrPort("10.0.0.1:1234"), netip.MustParseAddrPort("10.0.0.2:80")}
	if got := string(s.streams[key]); got != "head-MARKER-TAIL" {
		t.Errorf("stream %q, want %q", got, "head-MARKER-TAIL")
	}
	if n := s.count([]byte("MARKER")); n != 1 {
		t.Errorf("count(MARKER) = %d, want 1", n)
	}
	if _, err := parsePcap(file[:len(file)-1]); err == nil {
		t.Error("a truncated file parsed without error")
	}
}
