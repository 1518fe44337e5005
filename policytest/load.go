// Package policytest loads the tests that live beside the policies
// (*_test.cue files, schema/test.cue) and runs them: every frame of a case
// through the reference evaluator of the Plan, and through a Judge of the
// real programs when one is given, comparing what each does with what the
// case expects and with each other.
package policytest

import (
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/cuecontext"
	cueerrors "cuelang.org/go/cue/errors"

	"github.com/grain-ebpf/grain/pcap"
	"github.com/grain-ebpf/grain/policies"
	"github.com/grain-ebpf/grain/reference"
	"github.com/grain-ebpf/grain/schema"
)

// Suffix names test files: never loaded as policies.
const Suffix = "_test.cue"

// Case is one test case.
type Case struct {
	Name string
	Pos  policies.Position
	// Frames are the case's frames: one built from its packet fields, or
	// those of its pcap file.
	Frames [][]byte
	// Pcap is the file the frames came from, "" for a packet case.
	Pcap string
	// Call is the kernel-hook call of a call case (no Frames).
	Call *reference.Call
	// Interface the frames arrive on; "" for the Plan's first.
	Interface string
	Expect    Expect
}

// Expect is what a case expects (schema #Expect); nil pointers and
// slices are not checked.
type Expect struct {
	Verdict  *string   `json:"verdict,omitempty"`
	Policy   *string   `json:"policy,omitempty"`
	Counted  *[]string `json:"counted,omitempty"`
	Event    *Event    `json:"event,omitempty"`
	NoEvent  bool      `json:"no_event,omitempty"`
	Unjudged *string   `json:"unjudged,omitempty"`
	// Calls.
	Policies    *[]string `json:"policies,omitempty"`
	Signal      *string   `json:"signal,omitempty"`
	WouldSignal *string   `json:"would_signal,omitempty"`
	Counts      *[]string `json:"counts,omitempty"`
}

// Event is an expected event: its policy, name and some of its fields.
type Event struct {
	Policy string         `json:"policy,omitempty"`
	Name   string         `json:"name,omitempty"`
	Fields map[string]any `json:"fields,omitempty"`
}

// Error is a problem in a test file, positioned.
type Error struct {
	Pos  policies.Position
	Test string
	Msg  string
}

func (e Error) Error() string {
	if e.Test != "" {
		return fmt.Sprintf("%s: test %s: %s", e.Pos, e.Test, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Pos, e.Msg)
}

// Errors are all the problems of the test files.
type Errors []Error

func (l Errors) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Files lists the test files under dir (sorted), skipping what the policy
// loader skips: hidden and underscore names, cue.mod.
func Files(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != dir && (strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_") || d.Name() == "cue.mod") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), Suffix) {
			out = append(out, path)
		}
		return nil
	})
	slices.Sort(out)
	return out, err
}

// testSchema is the policy schema and the test schema as one source: the
// test schema refers to the policy schema's definitions.
func testSchema() string {
	return schema.Source + "\n" + strings.Replace(schema.TestSource, "package schema\n", "", 1)
}

// rawCase is #Test as it decodes.
type rawCase struct {
	Packet    *rawPacket `json:"packet"`
	Call      *rawCall   `json:"call"`
	Pcap      string     `json:"pcap"`
	Interface string     `json:"interface"`
	Expect    Expect     `json:"expect"`
}

type rawPacket struct {
	Protocol   string   `json:"protocol"`
	Saddr      string   `json:"saddr"`
	Daddr      string   `json:"daddr"`
	Sport      int      `json:"sport"`
	Dport      int      `json:"dport"`
	TCPFlags   []string `json:"tcp_flags"`
	VLAN       []int    `json:"vlan"`
	Payload    string   `json:"payload"`
	PayloadHex string   `json:"payload_hex"`
}

// Load reads every test file under dir. Problems come as Errors, each
// with its file:line:col.
func Load(dir string) ([]Case, error) {
	files, err := Files(dir)
	if err != nil {
		return nil, err
	}
	ctx := cuecontext.New()
	sch := ctx.CompileString(testSchema(), cue.Filename(schema.TestFilename))
	if err := sch.Err(); err != nil {
		return nil, fmt.Errorf("policytest: embedded test schema: %w", err)
	}
	def := sch.LookupPath(cue.ParsePath(schema.TestFileDefinition))
	var cases []Case
	var errs Errors
	for _, file := range files {
		c, e := loadFile(ctx, def, file)
		cases = append(cases, c...)
		errs = append(errs, e...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return cases, nil
}

func position(file string, p interface {
	Line() int
	Column() int
}) policies.Position {
	return policies.Position{File: file, Line: p.Line(), Column: p.Column()}
}

func loadFile(ctx *cue.Context, def cue.Value, file string) ([]Case, Errors) {
	src, err := os.ReadFile(file)
	if err != nil {
		return nil, Errors{{Pos: policies.Position{File: file}, Msg: err.Error()}}
	}
	raw := ctx.CompileBytes(src, cue.Filename(file))
	if err := raw.Err(); err != nil {
		return nil, cueErrors(file, "", err)
	}
	v := raw.Unify(def)
	if err := v.Validate(cue.Concrete(true)); err != nil {
		return nil, cueErrors(file, "", err)
	}
	it, err := v.LookupPath(cue.ParsePath("tests")).Fields()
	if err != nil {
		return nil, Errors{{Pos: policies.Position{File: file}, Msg: "no tests: add tests: {name: {packet: ..., expect: ...}}"}}
	}
	rawTests := raw.LookupPath(cue.ParsePath("tests"))
	var cases []Case
	var errs Errors
	for it.Next() {
		name := it.Selector().Unquoted()
		cv := it.Value()
		// Positions come from the file's own value: the unified one's
		// may lie in the schema.
		c := Case{Name: name, Pos: labelPosition(file, rawTests.LookupPath(cue.MakePath(it.Selector())))}
		fail := func(format string, args ...any) {
			errs = append(errs, Error{Pos: c.Pos, Test: name, Msg: fmt.Sprintf(format, args...)})
		}
		var rc rawCase
		if err := cv.Decode(&rc); err != nil {
			fail("%v", err)
			continue
		}
		c.Interface, c.Expect = rc.Interface, rc.Expect
		given := 0
		for _, b := range []bool{rc.Packet != nil, rc.Pcap != "", rc.Call != nil} {
			if b {
				given++
			}
		}
		e := &c.Expect
		packetOnly := e.Verdict != nil || e.Policy != nil || e.Counted != nil || e.Unjudged != nil
		callOnly := e.Policies != nil || e.Signal != nil || e.WouldSignal != nil || e.Counts != nil
		switch {
		case given != 1:
			fail("give one of packet (a frame by its fields), pcap (a file of frames) and call (a kernel-hook call)")
			continue
		case rc.Call != nil && packetOnly:
			fail("verdict, policy, counted and unjudged are for packets; a call expects policies, signal, would_signal, counts, event")
			continue
		case rc.Call == nil && callOnly:
			fail("policies, signal, would_signal and counts are for calls; a packet expects verdict, policy, counted, unjudged, event")
			continue
		case rc.Call != nil:
			call, err := rc.Call.call()
			if err != nil {
				fail("call: %v", err)
				continue
			}
			c.Call = call
		case rc.Packet != nil:
			p := rc.Packet
			frame, err := Packet{Protocol: p.Protocol, Saddr: p.Saddr, Daddr: p.Daddr, Sport: p.Sport, Dport: p.Dport,
				TCPFlags: p.TCPFlags, VLANs: p.VLAN, Payload: p.Payload, PayloadHex: p.PayloadHex}.Frame()
			if err != nil {
				fail("packet: %v", err)
				continue
			}
			c.Frames = [][]byte{frame}
		default:
			path := rc.Pcap
			if !filepath.IsAbs(path) {
				path = filepath.Join(filepath.Dir(file), path)
			}
			f, err := os.Open(path)
			if err != nil {
				fail("pcap: %v", err)
				continue
			}
			c.Frames, err = pcap.ReadAll(f)
			f.Close()
			if err != nil {
				fail("pcap %s: %v", path, err)
				continue
			}
			if len(c.Frames) == 0 {
				fail("pcap %s holds no frames", path)
				continue
			}
			c.Pcap = path
		}
		if !packetOnly && !callOnly && e.Event == nil && !e.NoEvent {
			fail("expect checks nothing: give a verdict, policy, counted, event, no_event or unjudged (packets), or policies, signal, would_signal, counts, event, no_event (calls)")
			continue
		}
		cases = append(cases, c)
	}
	return cases, errs
}

// labelPosition is where the field holding v is declared in file: the
// label before its value.
func labelPosition(file string, v cue.Value) policies.Position {
	if f, ok := v.Source().(*ast.Field); ok {
		return position(file, f.Label.Pos())
	}
	return position(file, v.Pos())
}

// cueErrors turns CUE's errors into positioned ones, in the test file
// where CUE knows a position there.
func cueErrors(file, test string, err error) Errors {
	var out Errors
	for _, e := range cueerrors.Errors(err) {
		pos := policies.Position{File: file}
		for _, p := range cueerrors.Positions(e) {
			if p.Filename() == file {
				pos = position(file, p)
				break
			}
		}
		format, args := e.Msg()
		msg := fmt.Sprintf(format, args...)
		if path := e.Path(); len(path) > 0 {
			msg = strings.Join(path, ".") + ": " + msg
		}
		out = append(out, Error{Pos: pos, Test: test, Msg: msg})
	}
	return out
}

type rawCall struct {
	Syscall    string         `json:"syscall"`
	Kprobe     string         `json:"kprobe"`
	Kretprobe  string         `json:"kretprobe"`
	Tracepoint string         `json:"tracepoint"`
	PID        uint32         `json:"pid"`
	TGID       uint32         `json:"tgid"`
	PPID       uint32         `json:"ppid"`
	UID        uint32         `json:"uid"`
	GID        uint32         `json:"gid"`
	Comm       string         `json:"comm"`
	Cgroup     string         `json:"cgroup"`
	Args       []any          `json:"args"`
	Ret        int64          `json:"ret"`
	Fields     map[string]any `json:"fields"`
}

// call turns the call's fields into the reference evaluator's Call.
func (rc *rawCall) call() (*reference.Call, error) {
	c := &reference.Call{PID: rc.PID, TGID: rc.TGID, PPID: rc.PPID, UID: rc.UID, GID: rc.GID, Comm: rc.Comm,
		Cgroup: rc.Cgroup, Ret: reference.Value{Int: rc.Ret}}
	n := 0
	for _, h := range [][2]string{{"syscall", rc.Syscall}, {"kprobe", rc.Kprobe}, {"kretprobe", rc.Kretprobe}, {"tracepoint", rc.Tracepoint}} {
		if h[1] != "" {
			c.Kind, c.Target = h[0], h[1]
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("give the hook: one of syscall, kprobe, kretprobe and tracepoint")
	}
	if len(rc.Args) > len(c.Args) {
		return nil, fmt.Errorf("args: %d values; a hook reads at most %d", len(rc.Args), len(c.Args))
	}
	for i, a := range rc.Args {
		v, err := value(a)
		if err != nil {
			return nil, fmt.Errorf("args[%d]: %v", i, err)
		}
		c.Args[i] = v
	}
	if len(rc.Fields) > 0 {
		c.Fields = map[string]reference.Value{}
		for k, a := range rc.Fields {
			v, err := value(a)
			if err != nil {
				return nil, fmt.Errorf("fields.%s: %v", k, err)
			}
			c.Fields[k] = v
		}
	}
	return c, nil
}

// number is an integer as CUE decodes it into an interface.
func number(x any) (int64, bool) {
	switch x := x.(type) {
	case int:
		return int64(x), true
	case int64:
		return x, true
	case float64:
		return int64(x), true
	}
	return 0, false
}

// value converts a #TestValue as CUE decodes it.
func value(a any) (reference.Value, error) {
	if n, ok := number(a); ok {
		return reference.Value{Int: n}, nil
	}
	switch a := a.(type) {
	case string:
		return reference.Value{Str: a}, nil
	case map[string]any:
		var v reference.Value
		for k, x := range a {
			n, _ := number(x)
			switch k {
			case "family":
				v.Family = uint16(n)
			case "sport":
				v.Sport = uint16(n)
			case "dport":
				v.Dport = uint16(n)
			case "saddr", "daddr":
				s, _ := x.(string)
				addr, err := netip.ParseAddr(s)
				if err != nil {
					return v, fmt.Errorf("%s %q: not an address", k, s)
				}
				if k == "saddr" {
					v.Saddr = addr
				} else {
					v.Daddr = addr
				}
			}
		}
		if v.Family == 0 {
			v.Family = 2
			if (v.Daddr.IsValid() && v.Daddr.Is6()) || (v.Saddr.IsValid() && v.Saddr.Is6()) {
				v.Family = 10
			}
		}
		return v, nil
	}
	return reference.Value{}, fmt.Errorf("%v: want an integer, a string or a socket address", a)
}
