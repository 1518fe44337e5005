package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/pcap"
)

// policyRepo is a git repository made by a test, in the current
// directory's place for commands that read revisions.
type policyRepo struct {
	t   *testing.T
	dir string
}

func newPolicyRepo(t *testing.T) *policyRepo {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git missing: the policy-repository tests make a real repository")
	}
	r := &policyRepo{t: t, dir: t.TempDir()}
	r.git("init", "-q", "-b", "main")
	r.git("config", "user.email", "test@grain.invalid")
	r.git("config", "user.name", "grain test")
	return r
}

func (r *policyRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = r.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// write writes files (path relative to the repository → content).
func (r *policyRepo) write(files map[string]string) {
	r.t.Helper()
	for name, src := range files {
		path := filepath.Join(r.dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *policyRepo) commit(msg string) string {
	r.t.Helper()
	r.git("add", "-A")
	r.git("commit", "-q", "-m", msg)
	return r.git("rev-parse", "HEAD")
}

// writePcap writes frames as a classic pcap file.
func writePcap(t *testing.T, path string, frames ...[]byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := pcap.NewWriter(f)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	for i, fr := range frames {
		if err := w.Write(t0.Add(time.Duration(i)*time.Millisecond), fr); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// runIn runs grain's command line with dir as the current directory.
func runIn(t *testing.T, dir string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

const repoPolicies = `block_http: {
	priority: 20
	xdp: interfaces: ["eth0"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "http_blocked", fields: ["saddr", "sport"]}
}
allow_admin: {
	priority: 10
	xdp: interfaces: ["eth0"]
	match: {protocol: "tcp", saddr: "10.9.0.0/16"}
	then: "pass"
}
count_dns: {
	xdp: interfaces: ["eth0"]
	match: {protocol: "udp", dport: 53}
	then: "count"
}
`

const repoTests = `tests: {
	http11_dropped: {
		packet: {protocol: "tcp", saddr: "10.0.0.2", sport: 40000, dport: 80, payload: "GET / HTTP/1.1\r\n"}
		expect: {verdict: "drop", policy: "block_http", event: fields: {saddr: "10.0.0.2", sport: 40000}}
	}
	admin_passes: {
		packet: {protocol: "tcp", saddr: "10.9.1.1", dport: 80, payload: "GET / HTTP/1.1\r\n"}
		expect: {verdict: "pass", policy: "allow_admin", no_event: true}
	}
	captured: {
		pcap: "testdata/http.pcap"
		expect: verdict: "drop"
	}
}
`

// TestGrainTest runs `grain test` end to end on a repository made here:
// a tree that does what its tests say (exit 0), an edit that breaks it
// (exit 1, one line per failure with file:line:col), JSON, JUnit,
// coverage, usage and load errors (exit 2), and with root the same cases
// through the kernel.
func TestGrainTest(t *testing.T) {
	vmtest.HostOnly(t, "the reference evaluator needs no kernel; --kernel runs BPF_PROG_TEST_RUN on the same tables on every kernel")
	r := newPolicyRepo(t)
	http := func(src string) []byte {
		return pktbuild.TCP4(src, "10.0.0.1", 40000, 80, pktbuild.ACK, []byte("GET / HTTP/1.1\r\n")).Bytes()
	}
	r.write(map[string]string{"policies/web.cue": repoPolicies, "policies/web_test.cue": repoTests})
	writePcap(t, filepath.Join(r.dir, "policies/testdata/http.pcap"), http("10.0.0.2"), http("10.0.0.3"))
	r.commit("policies and tests")

	if code, out, errOut := runIn(t, r.dir, "test", "policies"); code != 0 || out != "3 passed, 0 failed\n" {
		t.Errorf("grain test: exit %d, %q %q; want 0 and 3 passed", code, out, errOut)
	}
	if code, out, _ := runIn(t, r.dir, "test", "--coverage", "policies"); code != 0 ||
		out != "policies/web.cue:14:1: policy count_dns: no case exercises it\n3 passed, 0 failed\n" {
		t.Errorf("grain test --coverage: exit %d, %q", code, out)
	}
	junit := filepath.Join(t.TempDir(), "junit.xml")
	if code, out, _ := runIn(t, r.dir, "test", "--format", "json", "--junit", junit, "policies"); code != 0 {
		t.Errorf("grain test --format json: exit %d, %s", code, out)
	} else {
		var rep struct {
			Passed, Failed int
			Cases          []struct {
				Name, Position string
				Frames         int
				Passed         bool
			}
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Passed != 3 || len(rep.Cases) != 3 ||
			rep.Cases[2].Name != "captured" || rep.Cases[2].Frames != 2 || rep.Cases[2].Position != "policies/web_test.cue:10:2" {
			t.Errorf("JSON report %s: %v", out, err)
		}
	}

	// The payload edited so that the policy no longer does what its tests
	// say: every HTTP/1.1 case fails, each frame of the pcap case too.
	r.write(map[string]string{"policies/web.cue": strings.Replace(repoPolicies, `payload: "HTTP/1.1"`, `payload: "HTTP/2"`, 1)})
	r.commit("match HTTP/2")
	want := `policies/web_test.cue:2:2: test http11_dropped: verdict: expected drop, got pass
policies/web_test.cue:2:2: test http11_dropped: policy: expected block_http, got none
policies/web_test.cue:2:2: test http11_dropped: event: expected an event of none with saddr=10.0.0.2, sport=40000, got no event
policies/web_test.cue:10:2: test captured: frame 1: verdict: expected drop, got pass
policies/web_test.cue:10:2: test captured: frame 2: verdict: expected drop, got pass
1 passed, 2 failed
`
	code, out, _ := runIn(t, r.dir, "test", "--junit", junit, "policies")
	if code != 1 || out != want {
		t.Errorf("grain test of the broken edit: exit %d\n%s\nwant exit 1\n%s", code, out, want)
	}
	var suites struct {
		Suite struct {
			Tests    int `xml:"tests,attr"`
			Failures int `xml:"failures,attr"`
			Cases    []struct {
				Name    string  `xml:"name,attr"`
				Failure *string `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if b, err := os.ReadFile(junit); err != nil || xml.Unmarshal(b, &suites) != nil {
		t.Errorf("JUnit file: %v\n%s", err, b)
	} else if s := suites.Suite; s.Tests != 3 || s.Failures != 2 || len(s.Cases) != 3 || s.Cases[0].Failure == nil || s.Cases[1].Failure != nil {
		t.Errorf("JUnit report: %+v", s)
	}

	if os.Geteuid() == 0 {
		if code, out, errOut := runIn(t, r.dir, "test", "--kernel", "policies"); code != 1 || out != want {
			t.Errorf("grain test --kernel of the broken edit: exit %d\n%s%s\nwant exit 1\n%s", code, out, errOut, want)
		}
		r.git("checkout", "-q", "HEAD~1")
		if code, out, errOut := runIn(t, r.dir, "test", "--kernel", "policies"); code != 0 || out != "3 passed, 0 failed\n" {
			t.Errorf("grain test --kernel: exit %d, %q %q", code, out, errOut)
		}
	}

	// Usage and files that do not load: exit 2.
	r.write(map[string]string{"bad/web.cue": repoPolicies, "bad/web_test.cue": `tests: t: {packet: {protocol: "tcp", dport: 80}, expect: verdit: "drop"}` + "\n"})
	if code, _, errOut := runIn(t, r.dir, "test", "bad"); code != 2 || !strings.Contains(errOut, "bad/web_test.cue:1:") {
		t.Errorf("a misspelt expectation: exit %d, %q; want 2 and its position", code, errOut)
	}
	if code, _, _ := runIn(t, r.dir, "test", "--format", "yaml", "policies"); code != 2 {
		t.Errorf("--format yaml: exit %d, want 2", code)
	}
}

// TestGrainTestCalls: kernel-hook cases, a call by its process and
// arguments, on a repository made here: the policies that select it, the
// signal, the signal a monitored policy would send, counts and event
// fields; and the failures when the policy no longer selects the call.
func TestGrainTestCalls(t *testing.T) {
	vmtest.HostOnly(t, "the reference evaluator needs no kernel")
	r := newPolicyRepo(t)
	policy := `kill_canary: {
	syscall: ["openat", "openat2"]
	args: [{index: 1, type: "user_string", name: "filename"}]
	match: args: filename: "/tmp/canary"
	signal: "SIGKILL"
	emit: {event: "canary", fields: ["tgid", "filename"]}
}
watch_secrets: {
	syscall: "openat"
	mode: "monitor"
	args: [{index: 1, type: "user_string", name: "filename"}]
	match: {args: filename: {prefix: "/etc/secrets/"}, process: comm: "curl"}
	signal: "SIGTERM"
	count: {metric: "secret.opens", by: ["comm"]}
}
`
	tests := `tests: {
	canary_killed: {
		call: {syscall: "openat", tgid: 77, comm: "sh", args: [-100, "/tmp/canary", 0]}
		expect: {policies: ["kill_canary"], signal: "SIGKILL", event: fields: {tgid: 77, filename: "/tmp/canary"}}
	}
	secret_watched: {
		call: {syscall: "openat", comm: "curl", args: [-100, "/etc/secrets/key", 0]}
		expect: {policies: ["watch_secrets"], signal: "", would_signal: "SIGTERM", counts: ["secret.opens"], no_event: true}
	}
	other_process_ignored: {
		call: {syscall: "openat", comm: "cat", args: [-100, "/etc/secrets/key", 0]}
		expect: policies: []
	}
}
`
	r.write(map[string]string{"hooks/hooks.cue": policy, "hooks/hooks_test.cue": tests})
	r.commit("hook policies")
	if code, out, errOut := runIn(t, r.dir, "test", "--coverage", "hooks"); code != 0 || out != "3 passed, 0 failed\n" {
		t.Errorf("grain test: exit %d, %q %q; want 0, 3 passed", code, out, errOut)
	}
	r.write(map[string]string{"hooks/hooks.cue": strings.Replace(policy, `comm: "curl"`, `comm: "wget"`, 1)})
	want := `hooks/hooks_test.cue:6:2: test secret_watched: policies: expected [watch_secrets], got []
hooks/hooks_test.cue:6:2: test secret_watched: would_signal: expected SIGTERM, got none
hooks/hooks_test.cue:6:2: test secret_watched: counts: expected [secret.opens], got []
2 passed, 1 failed
`
	if code, out, _ := runIn(t, r.dir, "test", "hooks"); code != 1 || out != want {
		t.Errorf("grain test of the edit: exit %d\n%s\nwant exit 1\n%s", code, out, want)
	}
	// A packet expectation in a call case is refused.
	r.write(map[string]string{"hooks/hooks_test.cue": `tests: t: {call: {syscall: "openat"}, expect: verdict: "drop"}` + "\n"})
	if code, _, errOut := runIn(t, r.dir, "test", "hooks"); code != 2 || !strings.Contains(errOut, "hooks/hooks_test.cue:1:8: test t: verdict, policy, counted and unjudged are for packets") {
		t.Errorf("a verdict for a call: exit %d, %q", code, errOut)
	}
}
