package policies

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"

	"github.com/grain-ebpf/grain/schema"
)

func pos(file string, line, col int) Position {
	return Position{File: file, Line: line, Column: col}
}

// wantTree is testdata/tree decoded.
func wantTree() *Snapshot {
	web := filepath.Join("testdata", "tree", "web.cue")
	ssh := filepath.Join("testdata", "tree", "lan", "ssh.cue")
	mod := filepath.Join("testdata", "tree", "cue.mod", "module.cue")
	return &Snapshot{
		Root:  filepath.Join("testdata", "tree"),
		Files: []string{mod, ssh, web},
		Policies: []Policy{
			{
				Name:     "block_http",
				Pos:      pos(web, 2, 1),
				Priority: 1000,
				XDP:      &XDPHook{Interfaces: []string{"eth0"}},
				Match: PacketMatch{
					Protocols: []string{"tcp"},
					Payload:   []Content{{Pattern: []byte("HTTP/1.1"), Pos: pos(web, 6, 12)}},
				},
				Then: "drop",
				Emit: &Emit{Event: "http_blocked", Fields: []string{"saddr", "daddr", "sport", "dport"}, Dedup: DefaultDedup},
			},
			{
				Name:     "count_tls",
				Pos:      pos(web, 12, 1),
				Priority: 5,
				XDP:      &XDPHook{Interfaces: []string{"eth0", "eth1"}},
				Match: PacketMatch{
					Protocols:        []string{"tcp", "udp"},
					DestinationPorts: []PortRange{{443, 443}, {8443, 8444}},
					Payload: []Content{
						{Pattern: []byte{0x16, 0x03}, Depth: 2, Pos: pos(web, 19, 4)},
						{Pattern: []byte("h2"), Offset: 10, Depth: 100, NoCase: true, Pos: pos(web, 20, 4)},
						{Pattern: []byte("|x"), Negate: true, Pos: pos(web, 21, 4)},
					},
				},
				Then: "count",
			},
			{
				Name:     "ssh_from_lan",
				Pos:      pos(ssh, 5, 1),
				Priority: 10,
				XDP:      &XDPHook{},
				Match: PacketMatch{
					Protocols:        []string{"tcp"},
					SourceCIDRs:      []string{"10.0.0.0/8"},
					DestinationCIDRs: []string{"192.168.1.7/32", "fd00::/64"},
					SourcePorts:      []PortRange{{22, 22}},
					TCPFlags:         []string{"syn", "!ack"},
					Interfaces:       []string{"eth0"},
				},
				Then: "pass",
				Emit: &Emit{Event: "ssh", Fields: []string{"saddr", "sport"}, Dedup: DefaultDedup},
			},
		},
	}
}

func checkSnapshot(t *testing.T, got, want *Snapshot) {
	t.Helper()
	if got.Root != want.Root {
		t.Errorf("Root = %q, want %q", got.Root, want.Root)
	}
	if !reflect.DeepEqual(got.Files, want.Files) {
		t.Errorf("Files = %q, want %q", got.Files, want.Files)
	}
	if len(got.Policies) != len(want.Policies) {
		t.Fatalf("got %d policies, want %d", len(got.Policies), len(want.Policies))
	}
	for i := range want.Policies {
		g, w := got.Policies[i], want.Policies[i]
		if !reflect.DeepEqual(g, w) {
			t.Errorf("policy %d:\n got %s\nwant %s", i, dump(g), dump(w))
		}
	}
}

// dump shows a policy with its pointers followed.
func dump(p Policy) string {
	return fmt.Sprintf("%+v xdp=%+v emit=%+v", p, p.XDP, p.Emit)
}

func mustLoad(t *testing.T, root string) *Snapshot {
	t.Helper()
	s, err := Load(root)
	if err != nil {
		t.Fatalf("Load(%q): %v", root, err)
	}
	return s
}

func TestLoadTree(t *testing.T) {
	checkSnapshot(t, mustLoad(t, filepath.Join("testdata", "tree")), wantTree())
}

// The tree holds broken .cue files in .cache/, _drafts/, .hidden.cue,
// _draft.cue and a broken notes.txt: loading succeeds only if all are
// skipped, and Files shows exactly what was read (with the module file,
// cue.mod/module.cue).
func TestLoadSkipsHiddenUnderscoreAndOtherFiles(t *testing.T) {
	s := mustLoad(t, filepath.Join("testdata", "tree"))
	for _, f := range s.Files {
		if strings.Contains(f, "/.") || strings.Contains(f, "/_") || !strings.HasSuffix(f, ".cue") {
			t.Errorf("loaded %s, which should be skipped", f)
		}
	}
}

func TestLoadSingleFile(t *testing.T) {
	file := filepath.Join("testdata", "tree", "web.cue")
	s := mustLoad(t, file)
	if !reflect.DeepEqual(s.Files, []string{file}) || len(s.Policies) != 2 {
		t.Errorf("got files %q and %d policies, want [%s] and 2", s.Files, len(s.Policies), file)
	}
}

func TestLoadEmptyDirectory(t *testing.T) {
	s := mustLoad(t, t.TempDir())
	if len(s.Files) != 0 || len(s.Policies) != 0 {
		t.Errorf("got %+v, want an empty snapshot", s)
	}
}

func TestLoadMissingRoot(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope"))
	if err == nil {
		t.Fatal("no error")
	}
	var list ErrorList
	if errors.As(err, &list) {
		t.Errorf("a missing root is not a policy error: %v", err)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v does not wrap os.ErrNotExist", err)
	}
}

func writeFile(t *testing.T, name, src string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

const webPolicy = `web: {
	xdp: interfaces: ["eth0"]
	then: "drop"
}
`

// Kubernetes mounts a ConfigMap as links: name -> ..data/name, and
// ..data -> ..<timestamp>/, the directory that really holds the files.
func TestLoadFollowsSymlinkedFilesLikeConfigMaps(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "..2024_01_01", "web.cue"), webPolicy)
	for _, l := range []struct{ target, name string }{
		{"..2024_01_01", "..data"},
		{filepath.Join("..data", "web.cue"), "web.cue"},
	} {
		if err := os.Symlink(l.target, filepath.Join(dir, l.name)); err != nil {
			t.Fatal(err)
		}
	}
	s := mustLoad(t, dir)
	want := filepath.Join(dir, "web.cue")
	if !reflect.DeepEqual(s.Files, []string{want}) {
		t.Errorf("Files = %q, want [%s]", s.Files, want)
	}
	if len(s.Policies) != 1 || s.Policies[0].Pos != pos(want, 1, 1) {
		t.Errorf("Policies = %+v, want web at %s:1:1", s.Policies, want)
	}
}

func TestLoadDoesNotFollowSymlinkedDirectories(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "real", "web.cue"), webPolicy)
	// A link back up the tree would loop if directories were followed.
	if err := os.Symlink(dir, filepath.Join(dir, "real", "loop")); err != nil {
		t.Fatal(err)
	}
	s := mustLoad(t, dir)
	if len(s.Files) != 1 {
		t.Errorf("Files = %q, want only real/web.cue", s.Files)
	}
}

func TestLoadSymlinkedRoot(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "real", "web.cue"), webPolicy)
	link := filepath.Join(dir, "current")
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	s := mustLoad(t, link)
	// Paths are named under the root as the caller gave it.
	if want := []string{filepath.Join(link, "web.cue")}; !reflect.DeepEqual(s.Files, want) {
		t.Errorf("Files = %q, want %q", s.Files, want)
	}
}

func TestLoadDuplicateNamesAcrossFiles(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "dup"))
	want := "testdata/dup/b.cue:7:1: policy web: declared again; first declared at testdata/dup/a.cue:1:1: a policy name must be unique across all packages and files"
	if err == nil || err.Error() != want {
		t.Errorf("got error\n%v\nwant\n%s", err, want)
	}
}

// A policy may be written in several parts within one file; CUE unifies
// them, and the policy is positioned at its first part.
func TestLoadPolicyInPartsWithinOneFile(t *testing.T) {
	s, err := LoadBytes("parts.cue", []byte(`web: xdp: interfaces: ["eth0"]
"block-http": then: "pass"
"block-http": xdp: interfaces: []
web: then: "drop"
`))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name, then string
		pos        Position
	}{
		{"block-http", "pass", pos("parts.cue", 2, 1)},
		{"web", "drop", pos("parts.cue", 1, 1)},
	}
	if len(s.Policies) != len(want) {
		t.Fatalf("got %d policies, want %d", len(s.Policies), len(want))
	}
	for i, w := range want {
		if p := s.Policies[i]; p.Name != w.name || p.Then != w.then || p.Pos != w.pos {
			t.Errorf("policy %d = %s %s at %s, want %s %s at %s", i, p.Name, p.Then, p.Pos, w.name, w.then, w.pos)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		file string
		want []string
	}{
		{"missing_then.cue", []string{
			`missing_then.cue:1:1: policy block_http: missing then: add then: "drop" | "pass" | "count"`,
		}},
		{"misspelt_field.cue", []string{
			`misspelt_field.cue:3:2: policy typo_top: matc: field not allowed; did you mean match?`,
			`misspelt_field.cue:9:9: policy typo_match: match.paylod: field not allowed; did you mean payload?`,
			`misspelt_field.cue:15:35: policy typo_content: match.payload[0].ofset: field not allowed; did you mean offset?`,
			`misspelt_field.cue:22:2: policy unknown_field: colour: field not allowed; allowed fields: priority, xdp, kprobe, kretprobe, tracepoint, syscall, attach, args, match, then, emit, count, signal, mode`,
			`misspelt_field.cue:29:38: policy typo_and_bad_port: match.dport: got 70000, want a port 0..65535, a range string "first-last" or a list of them`,
			`misspelt_field.cue:29:45: policy typo_and_bad_port: match.protocl: field not allowed; did you mean protocol?`,
			`misspelt_field.cue:35:28: policy typos_in_a_list: match[0].dprt: field not allowed; did you mean dport?`,
			`misspelt_field.cue:35:64: policy typos_in_a_list: match[1].dport: got 99999, want a port 0..65535, a range string "first-last" or a list of them`,
			`misspelt_field.cue:36:8: policy typos_in_a_list: then: got "dorp", want "drop", "pass" or "count"`,
		}},
		{"wrong_type.cue", []string{
			`wrong_type.cue:3:8: policy numeric_then: then: got 3, want "drop", "pass" or "count"`,
			`wrong_type.cue:8:8: policy unknown_action: then: got "reject", want "drop", "pass" or "count"`,
		}},
		{"ports.cue", []string{
			`ports.cue:3:16: policy big_port: match.dport: got 70000, want a port 0..65535, a range string "first-last" or a list of them`,
			`ports.cue:9:21: policy big_port_in_list: match.sport[1]: got 70000, want a port 0..65535 or a range string "first-last"`,
			`ports.cue:15:21: policy reversed_range: match.dport[1]: invalid range "2000-1000": the first port is greater than the last; write "1000-2000"`,
			`ports.cue:21:16: policy range_too_big: match.dport: invalid range "1-65536": ports must be 0..65535`,
		}},
		{"addresses.cue", []string{
			`addresses.cue:3:16: policy long_prefix: match.saddr: "10.0.0.0/33": the prefix length must be 0..32`,
			`addresses.cue:9:31: policy not_an_address: match.daddr[1]: "10.0.0.300" is not an IP address: want an address or CIDR such as "10.0.0.0/8", "fd00::/64" or "192.0.2.1"`,
		}},
		{"tcp_flags.cue", []string{
			`tcp_flags.cue:3:28: policy unknown_flag: match.tcp_flags[1]: got "sin", want a flag fin, syn, rst, psh, ack, urg, ece or cwr ("!" prefix: must be clear)`,
			`tcp_flags.cue:9:28: policy set_and_clear: match.tcp_flags[1]: ack must be both set and clear: no packet matches; remove "ack" or "!ack"`,
			`tcp_flags.cue:15:38: policy flags_without_tcp: match.tcp_flags: tcp_flags need protocol tcp, but protocol is udp`,
		}},
		{"emit.cue", []string{
			`emit.cue:4:39: policy unknown_emit_field: emit.fields[1]: unknown field "ttl"; want one of saddr, daddr, sport, dport, protocol, tcp_flags, len, ifindex, payload, dns_qname, tls_sni, tls_version, tls_legacy_version, tls_alpn, tls_ja4`,
			`emit.cue:10:2: policy no_event: emit: missing event: add event: "name"`,
			`emit.cue:16:28: policy dedup_too_long: emit.dedup: dedup "90m" is longer than the longest window, "60m": use a shorter one`,
			`emit.cue:22:28: policy dedup_not_a_duration: emit.dedup: got "1 second", want a duration in ms, s or m, e.g. "1s", "250ms" or "0s" (every event)`,
			`emit.cue:28:51: policy dedup_of_payload: emit.dedup: events with payload, dns_qname or tls_* fields are not deduplicated (the kernel does not compare payloads): remove dedup or set it to "0s"`,
			`emit.cue:33:28: policy dedup_on_a_kernel_hook: emit.dedup: dedup is for xdp policies; a kernel hook's events are limited with rate_limit: remove it`,
		}},
		{"no_hook.cue", []string{
			`no_hook.cue:1:1: policy hookless: no hook: add xdp: interfaces: ["eth0"], kprobe: "function", kretprobe: "function", tracepoint: "category/name" or syscall: "name"`,
		}},
		{"patterns.cue", []string{
			`patterns.cue:3:18: policy odd_hex: match.payload: bad hex block at byte 0 of "|48 5|": odd number of hex digits: write each byte as two digits, e.g. |0A|`,
			`patterns.cue:9:29: policy unbalanced: match.payload.contains: unbalanced | at byte 4 of "GET |0D 0A": hex bytes go between two pipes, a literal pipe is |7C|`,
			`patterns.cue:15:48: policy short_depth: match.payload.depth: depth 4 is shorter than the pattern (8 bytes), so it can never match: use depth >= 8`,
			`patterns.cue:21:18: policy empty_pattern: match.payload: empty pattern: a content needs at least one byte`,
			`patterns.cue:27:18: policy both_kinds: match.payload: a content has contains or startswith, not both`,
			`patterns.cue:33:45: policy anchored_depth: match.payload.depth: startswith is anchored, its depth is the pattern length (3): remove depth, or use contains with depth`,
		}},
		{"probe.cue", []string{
			`probe.cue:3:14: policy two_hooks: tracepoint: a policy has one hook, this one has kprobe and tracepoint: split it into one policy per hook`,
			`probe.cue:7:14: policy no_action: a kernel hook needs an action: add emit: {event: "name"}, count: {metric: "name"} or signal: "SIGKILL"`,
			`probe.cue:12:10: policy xdp_with_probe_fields: signal: signal is for kernel hooks (kprobe, kretprobe, tracepoint, syscall), not xdp: remove it`,
			`probe.cue:16:8: policy probe_with_then: then: then is the verdict of xdp policies; a kernel hook acts with emit, count or signal: remove it`,
			`probe.cue:21:35: policy bad_args: args[1]: a policy reads at most one sock or sockaddr argument, whose fields are family, saddr, daddr, sport and dport`,
			`probe.cue:21:73: policy bad_args: args[2].field: field names a tracepoint field; a kprobe hook's arguments are numbered: write index: 0`,
			`probe.cue:21:92: policy bad_args: args[3]: the name comm is taken (by a process field or another argument): give this argument another name: name: "..."`,
			`probe.cue:28:10: policy bad_match: match.dport: dport is an integer: want a number or a range "first-last", the range "443-80" is reversed: write "80-443"`,
			`probe.cue:29:18: policy bad_match: match.process.comm: a comm is at most 15 bytes (the kernel truncates process names), so "a-very-long-process-name" never matches: write "a-very-long-pro"`,
			`probe.cue:30:15: policy bad_match: match.args.skk: no argument is named skk; did you mean sk?`,
			`probe.cue:31:13: policy bad_match: match.protocol: protocol is a packet condition, for xdp policies only`,
			`probe.cue:33:43: policy bad_match: emit.fields[1]: unknown field "dadr"; did you mean daddr?`,
			`probe.cue:37:77: policy daddr_without_sock: args[1].type: a system call's arguments are integers, user memory or file descriptors: use one of int, uint, user_string, sockaddr, fd`,
			`probe.cue:38:18: policy daddr_without_sock: match[0].daddr: daddr needs a sock or sockaddr argument: add args: [{index: 0, type: "sock"}]`,
			`probe.cue:39:32: policy daddr_without_sock: count.by[0]: exe is looked up in userspace and cannot key a count in the kernel: count by tgid or comm`,
			`probe.cue:39:45: policy daddr_without_sock: count.sum: sum names an int or uint argument to add up; filename is not one`,
			`probe.cue:44:25: policy prefix_not_string: match.args.filename: got a struct, want a value, a range "first-last" (integers), a CIDR (addresses), a list of them, {not: ...} or {prefix: "..."}`,
		}},
		{"syntax.cue", []string{
			`syntax.cue:3:15: expected '}', found 'EOF'`,
		}},
		{"reference.cue", []string{
			`reference.cue:3:8: policy uses_missing: then: reference "action" not found`,
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dir := filepath.Join("testdata", "errors")
			s, err := Load(filepath.Join(dir, tc.file))
			if err == nil {
				t.Fatalf("no error; loaded %+v", s)
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, not ErrorList: %v", err, err)
			}
			for _, e := range list {
				if e.Pos.File != filepath.Join(dir, tc.file) {
					t.Errorf("error %q is not positioned in the user's file", e)
				}
			}
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				want[i] = filepath.Join(dir, w)
			}
			if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%s\nwant\n%s", err, strings.Join(want, "\n"))
			}
		})
	}
}

// All files are checked and every problem reported, not only the first.
func TestLoadReportsErrorsFromAllFiles(t *testing.T) {
	_, err := Load(filepath.Join("testdata", "errors"))
	var list ErrorList
	if !errors.As(err, &list) {
		t.Fatalf("got %v, want an ErrorList", err)
	}
	files := map[string]bool{}
	for _, e := range list {
		files[filepath.Base(e.Pos.File)] = true
	}
	entries, _ := os.ReadDir(filepath.Join("testdata", "errors"))
	if len(files) != len(entries) {
		t.Errorf("errors in %d files, want all %d", len(files), len(entries))
	}
}

func TestLoadBytes(t *testing.T) {
	s, err := LoadBytes("inline.cue", []byte(`package x
web: {
	xdp: interfaces: ["eth0"]
	match: payload: {startswith: "GET ", offset: 2}
	then: "drop"
}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Content{Pattern: []byte("GET "), Offset: 2, Depth: 4, Pos: pos("inline.cue", 4, 18)}
	if got := s.Policies[0].Match.Payload; len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Errorf("payload = %+v, want [%+v]", got, want)
	}
}

// A user's file called schema.cue must not be taken for the schema.
func TestLoadUserFileNamedLikeTheSchema(t *testing.T) {
	_, err := LoadBytes("schema.cue", []byte("web: {\n\txdp: interfaces: []\n\tthen: 3\n}\n"))
	want := `schema.cue:3:8: policy web: then: got 3, want "drop", "pass" or "count"`
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

func TestLoadUsesUserDefinitions(t *testing.T) {
	_, err := LoadBytes("defs.cue", []byte(`#Web: xdp: interfaces: ["eth0"]
web: #Web & {
	then: "drop"
}`))
	want := `defs.cue:3:2: policy web: then: field not allowed by a closed definition in this file: add "..." to the definition to leave it open`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got\n%v\nwant a line\n%s", err, want)
	}
}

// Each load has its own cue.Context (a shared one grows with every
// reload); many loads in a row must keep giving the same answer.
func TestLoadManyTimes(t *testing.T) {
	root := filepath.Join("testdata", "tree")
	want := wantTree()
	// The snapshot names the bytes it was evaluated from.
	hash, err := TreeHash(root)
	if err != nil {
		t.Fatal(err)
	}
	want.Hash = hash
	for range 200 {
		s, err := Load(root)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(s, want) {
			checkSnapshot(t, s, want)
			t.FailNow()
		}
	}
}

func TestErrorListIsSortedOnePerLine(t *testing.T) {
	l := ErrorList{
		{Pos: pos("b.cue", 1, 1), Policy: "z", Msg: "second"},
		{Pos: pos("a.cue", 9, 2), Msg: "first"},
	}
	want := "a.cue:9:2: first\nb.cue:1:1: policy z: second"
	if got := l.Error(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if (ErrorList{}).Err() != nil {
		t.Error("an empty ErrorList is a non-nil error")
	}
}

func TestDecodePattern(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: "HTTP/1.1", want: "HTTP/1.1"},
		{in: "|48 54 54 50|/1.1", want: "HTTP/1.1"},
		{in: "|48545450|", want: "HTTP"},
		{in: "|0d 0A|", want: "\r\n"},
		{in: "a|7C|b", want: "a|b"},
		{in: "|00||ff|", want: "\x00\xff"},
		{in: "|  41   42 |", want: "AB"},
		{in: "", wantErr: "empty pattern"},
		{in: "abc|", wantErr: "unbalanced | at byte 3"},
		{in: "|41 4|", wantErr: "odd number of hex digits"},
		{in: "|4 1|", wantErr: "odd number of hex digits"},
		{in: "|4g|", wantErr: `'g' is not a hex digit`},
		{in: "||", wantErr: "no hex bytes"},
	} {
		got, err := decodePattern(tc.in)
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("decodePattern(%q) error = %v, want one containing %q", tc.in, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || string(got) != tc.want):
			t.Errorf("decodePattern(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseCIDR(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.0/8":      "10.0.0.0/8",
		"10.1.2.3/8":      "10.0.0.0/8",
		"192.0.2.1":       "192.0.2.1/32",
		"fd00::1/64":      "fd00::/64",
		"2001:db8::1":     "2001:db8::1/128",
		"0.0.0.0/0":       "0.0.0.0/0",
		"::ffff:10.0.0.1": "::ffff:10.0.0.1/128",
	} {
		p, err := parseCIDR(in)
		if err != nil || p.String() != want {
			t.Errorf("parseCIDR(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"10.0.0.0/33", "fd00::/129", "10.0.0.0/-1", "10.0.0.0/x", "10.0.0", "host", "fe80::1%eth0", "10.0.0.0/08"} {
		if p, err := parseCIDR(in); err == nil {
			t.Errorf("parseCIDR(%q) = %v, want an error", in, p)
		}
	}
}

func TestClosest(t *testing.T) {
	names := []string{"priority", "xdp", "match", "then", "emit"}
	for in, want := range map[string]string{
		"matc": "match", "mtach": "match", "prio": "priority", "thne": "then", "colour": "", "x": "",
	} {
		if got := closest(in, names); got != want {
			t.Errorf("closest(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestEverySchemaFieldIsDescribed keeps fieldWants and structDefinitions in
// step with schema.cue: a field without a description would fall back to
// CUE's raw messages.
func TestEverySchemaFieldIsDescribed(t *testing.T) {
	s := cuecontext.New().CompileString(schema.Source)
	for path, def := range structDefinitions {
		v := s.LookupPath(cue.ParsePath(def))
		if !v.Exists() {
			t.Errorf("structDefinitions[%q]: no %s in the schema", path, def)
			continue
		}
		fields := definitionFields(v)
		if len(fields) == 0 {
			t.Errorf("%s has no fields", def)
		}
		for _, f := range fields {
			p := strings.TrimPrefix(path+"."+f, ".")
			if fieldWants[p] == "" {
				t.Errorf("fieldWants has no entry for %s", p)
			}
		}
	}
}

// The examples of kernel hooks decode to exactly these policies.
func TestLoadHookExamples(t *testing.T) {
	load := func(dir string) Policy {
		t.Helper()
		s, err := Load(filepath.Join("..", "examples", dir))
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Policies) == 0 {
			t.Fatalf("%s: no policies", dir)
		}
		p := s.Policies[0]
		// Positions are checked elsewhere; compare the rest.
		p.Pos = Position{}
		p.Hook.Pos = Position{}
		for i := range p.Hook.Args {
			p.Hook.Args[i].Pos = Position{}
		}
		for i := range p.Hook.Selectors {
			p.Hook.Selectors[i].Pos = Position{}
			for j := range p.Hook.Selectors[i].Filters {
				p.Hook.Selectors[i].Filters[j].Pos = Position{}
			}
		}
		return p
	}
	for _, tc := range []struct {
		dir  string
		want Policy
	}{
		{"file-access", Policy{Name: "etc_opens", Priority: 1000,
			Hook: &KernelHook{Kind: "syscall", Syscalls: []string{"openat", "openat2"},
				Args:      []Arg{{Name: "filename", Source: "arg", Index: 1, Type: "user_string"}},
				Selectors: []Selector{{Filters: []Filter{{Field: "filename", Op: "prefix", Strings: []string{"/etc/"}}}}},
			},
			Emit: &Emit{Event: "file_open", Fields: []string{"tgid", "uid", "comm", "exe", "filename"}, RateLimit: 1000},
		}},
		{"process-exec", Policy{Name: "execs", Priority: 1000,
			Hook: &KernelHook{Kind: "tracepoint", Target: "sched/sched_process_exec",
				Args:  []Arg{{Name: "filename", Source: "field", Index: -1, Field: "filename", Type: "string"}},
				Count: &Count{Metric: "process.execs", By: []string{"comm", "uid"}},
			},
			Emit: &Emit{Event: "exec", Fields: []string{"pid", "ppid", "uid", "comm", "filename", "cgroup", "container"}},
		}},
		{"kill-on-open", Policy{Name: "kill_on_canary", Priority: 1000,
			Hook: &KernelHook{Kind: "syscall", Syscalls: []string{"openat", "openat2"},
				Args:      []Arg{{Name: "filename", Source: "arg", Index: 1, Type: "user_string"}},
				Selectors: []Selector{{Filters: []Filter{{Field: "filename", Op: "eq", Strings: []string{"/tmp/grain-canary"}}}}},
				Signal:    "SIGKILL",
			},
			Emit: &Emit{Event: "killed_on_open", Fields: []string{"tgid", "comm", "exe", "filename"}},
		}},
		{"udp-traffic", Policy{Name: "udp_sent", Priority: 1000,
			Hook: &KernelHook{Kind: "kprobe", Target: "udp_sendmsg", Attach: "auto",
				Args: []Arg{{Name: "arg0", Source: "arg", Index: 0, Type: "sock"},
					{Name: "size", Source: "arg", Index: 2, Type: "uint"}},
				Count: &Count{Metric: "udp.bytes_sent", By: []string{"comm", "daddr", "dport"}, Sum: "size"},
			},
		}},
	} {
		if got := load(tc.dir); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v\n got probe %+v\nwant probe %+v", tc.dir, got, tc.want, got.Hook, tc.want.Hook)
		}
	}
}

// Selectors: a list of matches is ORed, and each value form maps to its
// operator.
func TestLoadHookSelectors(t *testing.T) {
	s, err := LoadBytes("sel.cue", []byte(`
connects: {
	kretprobe: "tcp_v4_connect"
	attach: "kprobe"
	args: [{index: 0, type: "sock", name: "sk"}, {ret: true, type: "int"}]
	match: [
		{process: {comm: ["curl", "wget"], uid: {not: 0}}, daddr: ["10.0.0.0/8", "fd00::1"]},
		{process: {pid: "100-200", comm: {prefix: "py"}, cgroup: "/system.slice"}, dport: [80, 443], args: ret: {not: [0, 1]}},
	]
	emit: event: "c"
}`))
	if err != nil {
		t.Fatal(err)
	}
	h := s.Policies[0].Hook
	if h.Kind != "kretprobe" || h.Target != "tcp_v4_connect" || h.Attach != "kprobe" {
		t.Errorf("hook %+v", h)
	}
	var got [][]string
	for _, sel := range h.Selectors {
		var fs []string
		for _, f := range sel.Filters {
			fs = append(fs, fmt.Sprintf("%s %s %v%v%v%v", f.Field, f.Op, f.Ints, f.Ranges, f.Strings, f.CIDRs))
		}
		got = append(got, fs)
	}
	want := [][]string{
		{"daddr cidr [][][][10.0.0.0/8 fd00::1/128]", "uid ne [0][][][]", "comm in [][][curl wget][]"},
		{"dport in [80 443][][][]", "pid range [][[100 200]][][]", "comm prefix [][][py][]", "cgroup in [][][/system.slice][]", "ret notin [0 1][][][]"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("selectors\n got %q\nwant %q", got, want)
	}
}
