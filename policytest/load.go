// Package policytest loads the tests that live beside the policies
// (*_test.cue files, schema/test.cue) and runs them: every frame of a case
// through the reference evaluator of the Plan, and through a Judge of the
// real programs when one is given, comparing what each does with what the
// case expects and with each other.
package policytest

import (
	"fmt"
	"io/fs"
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
		switch {
		case (rc.Packet == nil) == (rc.Pcap == ""):
			fail("give one of packet (a frame by its fields) and pcap (a file of frames)")
			continue
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
		if e := c.Expect; e.Verdict == nil && e.Policy == nil && e.Counted == nil && e.Event == nil && !e.NoEvent && e.Unjudged == nil {
			fail("expect checks nothing: give a verdict, policy, counted, event, no_event or unjudged")
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
