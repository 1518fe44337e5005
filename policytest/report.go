package policytest

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

// line is one failure as `grain test` prints it.
func (r *Result) line(f Failure) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: test %s: ", r.Case.Pos, r.Case.Name)
	if len(r.Case.Frames) > 1 || r.Case.Pcap != "" {
		fmt.Fprintf(&b, "frame %d: ", f.Frame)
	}
	if f.What == "kernel" {
		fmt.Fprintf(&b, "the kernel disagrees: %s, %s", f.Expected, f.Got)
	} else {
		fmt.Fprintf(&b, "%s: expected %s, got %s", f.What, f.Expected, f.Got)
	}
	return b.String()
}

// WriteText prints one line per failure, the uncovered policies when
// coverage is asked for, then "N passed, N failed".
func (rep *Report) WriteText(w io.Writer, coverage bool) error {
	var b strings.Builder
	for i := range rep.Results {
		r := &rep.Results[i]
		for _, f := range r.Failures {
			b.WriteString(r.line(f))
			b.WriteByte('\n')
		}
	}
	if coverage {
		for _, r := range rep.Uncovered {
			fmt.Fprintf(&b, "%s: policy %s: no case exercises it\n", r.Position, r.Policy)
		}
		for _, r := range rep.UncoveredHooks {
			fmt.Fprintf(&b, "%s: policy %s: no case exercises it\n", r.Position, r.Policy)
		}
	}
	if rep.CallsNotInKernel > 0 {
		fmt.Fprintf(&b, "%d call cases checked on the reference evaluator only: the kernel runs a hook program only in the calling thread's own process context\n", rep.CallsNotInKernel)
	}
	fmt.Fprintf(&b, "%d passed, %d failed\n", rep.Passed, rep.Failed)
	_, err := io.WriteString(w, b.String())
	return err
}

type jsonCase struct {
	Name     string    `json:"name"`
	Position string    `json:"position"`
	Frames   int       `json:"frames"`
	Passed   bool      `json:"passed"`
	Failures []Failure `json:"failures,omitempty"`
}

type jsonReport struct {
	Passed    int        `json:"passed"`
	Failed    int        `json:"failed"`
	Cases     []jsonCase `json:"cases"`
	Uncovered []string   `json:"uncovered,omitempty"`
}

// WriteJSON prints the report as one JSON object.
func (rep *Report) WriteJSON(w io.Writer, coverage bool) error {
	out := jsonReport{Passed: rep.Passed, Failed: rep.Failed, Cases: []jsonCase{}}
	for _, r := range rep.Results {
		out.Cases = append(out.Cases, jsonCase{Name: r.Case.Name, Position: r.Case.Pos.String(), Frames: len(r.Case.Frames),
			Passed: len(r.Failures) == 0, Failures: r.Failures})
	}
	if coverage {
		out.Uncovered = []string{}
		for _, r := range rep.Uncovered {
			out.Uncovered = append(out.Uncovered, r.Policy)
		}
		for _, r := range rep.UncoveredHooks {
			out.Uncovered = append(out.Uncovered, r.Policy)
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

type junitSuites struct {
	XMLName xml.Name   `xml:"testsuites"`
	Suites  []junitRun `xml:"testsuite"`
}

type junitRun struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	File      string        `xml:"file,attr"`
	Line      int           `xml:"line,attr"`
	Failure   *junitFailure `xml:"failure"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML (one testsuite named suite,
// one testcase per case, classname its file), as CI systems read it.
func (rep *Report) WriteJUnit(w io.Writer, suite string) error {
	run := junitRun{Name: suite, Tests: len(rep.Results), Failures: rep.Failed}
	for i := range rep.Results {
		r := &rep.Results[i]
		c := junitCase{Name: r.Case.Name, Classname: r.Case.Pos.File, File: r.Case.Pos.File, Line: r.Case.Pos.Line}
		if len(r.Failures) > 0 {
			var lines []string
			for _, f := range r.Failures {
				lines = append(lines, r.line(f))
			}
			c.Failure = &junitFailure{Message: fmt.Sprintf("%d expectation(s) not met", len(r.Failures)), Text: strings.Join(lines, "\n")}
		}
		run.Cases = append(run.Cases, c)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(junitSuites{Suites: []junitRun{run}}); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}
