// Package policies loads a directory tree of CUE policy files as one
// snapshot, validates it against the embedded schema and decodes it into
// typed Go values. Every error it returns carries the file:line:col of the
// user's file.
package policies

import (
	"slices"
	"time"
)

// Snapshot is one consistent load of a policy tree.
type Snapshot struct {
	// Root is the directory the snapshot was loaded from.
	Root string
	// Files are the .cue files that made up the snapshot, sorted.
	Files []string
	// Hash is TreeHash of the bytes the snapshot was evaluated from.
	Hash string
	// Policies sorted by name.
	Policies []Policy
	// Pipeline is the tree's event pipeline (pipeline.go); nil when the
	// tree declares none.
	Pipeline *Pipeline
}

// Position names a place in a user's policy file.
type Position struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
}

// Policy is one named, validated policy.
type Policy struct {
	// Name is the top-level field name that declares the policy.
	Name string
	// Pos is where the policy is declared.
	Pos Position
	// Priority orders rules: lower first; ties are broken by Name.
	Priority int
	// XDP is set for packet policies; Hook for kernel-function,
	// tracepoint and syscall policies. Exactly one is set.
	XDP  *XDPHook
	Hook *KernelHook
	// Match selects packets. Zero value matches every IP packet.
	Match PacketMatch
	// Then is the action of a packet policy: "drop", "pass" or "count".
	Then string
	// Emit, when set, sends an event for each matched packet or call.
	Emit *Emit
	// Mode is ModeMonitor for a policy that judges, counts and emits, but
	// drops nothing and sends no signal; empty (enforce) otherwise.
	Mode string
}

// Monitored reports that the policy only reports what it would enforce.
func (p Policy) Monitored() bool { return p.Mode == ModeMonitor }

// The modes of a policy (the schema's mode field).
const (
	ModeEnforce = "enforce"
	ModeMonitor = "monitor"
)

// XDPHook says where a packet policy is attached.
type XDPHook struct {
	// Interfaces are interface names the generic XDP program is attached to.
	Interfaces []string
}

// PacketMatch holds the packet conditions of a policy; all given conditions
// must hold (AND); a list inside one condition is an OR of its elements.
type PacketMatch struct {
	// Protocols: any of "tcp", "udp", "icmp", "icmpv6". Empty: any.
	Protocols []string
	// SourceCIDRs and DestinationCIDRs are IPv4 or IPv6 prefixes in
	// canonical form ("10.0.0.0/8", "fd00::/64"). Empty: any address.
	SourceCIDRs      []string
	DestinationCIDRs []string
	// SourcePorts and DestinationPorts are inclusive ranges. Empty: any.
	SourcePorts      []PortRange
	DestinationPorts []PortRange
	// TCPFlags lists flags that must be set ("syn") or clear ("!ack").
	TCPFlags []string
	// Interfaces restricts the rule to packets arriving on these
	// interfaces. Empty: every interface the policy is attached to.
	Interfaces []string
	// Payload contents, all of which must hold (AND).
	Payload []Content
	// ServerNames are the TLS server names (SNI) of which the first
	// segment of a ClientHello must ask for one: lowercased names
	// ("example.com") or suffix patterns ("*.example.com"). Empty: any
	// packet, hello or not.
	ServerNames []string
	// ServerNamesPos is where tls_sni is written.
	ServerNamesPos Position
}

// PortRange is an inclusive port range; a single port has First == Last.
type PortRange struct {
	First uint16
	Last  uint16
}

// Content is one Suricata/Snort-style content condition on the L4 payload.
type Content struct {
	// Pattern is the decoded byte string (|hex| escapes resolved).
	Pattern []byte
	// Offset is where the search starts, in bytes from the payload start.
	Offset int
	// Depth is how many bytes from Offset the pattern must lie within;
	// 0 means up to the end of the scan window.
	Depth int
	// NoCase makes ASCII letters match either case.
	NoCase bool
	// Negate inverts the condition: the pattern must not occur.
	Negate bool
	// Pos is where the content is written.
	Pos Position
}

// Emit describes the event sent for each matched packet or call.
type Emit struct {
	Event  string
	Fields []string
	// RateLimit is the most events per second the rule emits; 0 means no
	// limit. Events over it are counted, not sent.
	RateLimit int
	// Dedup (xdp policies) is how long after sending an event the kernel
	// counts, instead of sending, events equal to it in their fields and
	// interface; 0 sends every event.
	Dedup time.Duration
}

// payloadEmitFields are the xdp emit fields read from the L4 payload: their
// events carry its first bytes.
var payloadEmitFields = []string{"payload", "dns_qname", "tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4"}

// TLSEmitFields are the xdp emit fields decoded from a TLS ClientHello:
// their events carry a whole first segment (bpf.EmitHelloBytes).
var TLSEmitFields = []string{"tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4"}

// CarriesHello reports whether the event has fields decoded from a TLS
// ClientHello.
func (e *Emit) CarriesHello() bool {
	return slices.ContainsFunc(e.Fields, func(f string) bool { return slices.Contains(TLSEmitFields, f) })
}

// CarriesPayload reports whether the event has fields read from the L4
// payload (a larger record, never deduplicated).
func (e *Emit) CarriesPayload() bool {
	return slices.ContainsFunc(e.Fields, func(f string) bool { return slices.Contains(payloadEmitFields, f) })
}

// KernelHook is a policy on a kernel event: a kernel function's entry or
// return, a tracepoint, or system calls.
type KernelHook struct {
	// Kind is "kprobe" (function entry), "kretprobe" (function return),
	// "tracepoint" or "syscall" (raw syscall tracepoint filtered by number).
	Kind string
	// Target is the kernel function ("tcp_v4_connect"), the tracepoint as
	// "category/name" ("sched/sched_process_exec"), or, for Kind
	// "syscall", empty (Syscalls holds the names).
	Target string
	// Syscalls are the system call names of a "syscall" hook ("openat").
	Syscalls []string
	// Attach chooses the mechanism of a function hook: "auto" (fentry/fexit
	// where the kernel has BTF trampolines, else kprobe/kretprobe),
	// "kprobe" or "fentry". Empty for other kinds.
	Attach string
	// Args are the values the program reads at the hook, in order.
	Args []Arg
	// Selectors filter calls in the kernel: a call is selected when any
	// selector holds (OR); a selector holds when all its filters do (AND).
	// None: every call is selected.
	Selectors []Selector
	// Count aggregates selected calls in the kernel; nil: no counting.
	Count *Count
	// Signal is sent to the calling process on a selected call ("SIGKILL");
	// empty: none.
	Signal string
	// Pos is where the hook is written.
	Pos Position
}

// Arg is one typed value read at the hook.
type Arg struct {
	// Name is how match, emit and count refer to the value: given by the
	// user or "arg<index>", "ret", or the tracepoint field's name.
	Name string
	// Source says where the value comes from: "arg" (function or syscall
	// argument Index), "ret" (return value of a kretprobe/fexit), or
	// "field" (tracepoint field Field).
	Source string
	Index  int
	Field  string
	// Type is one of ArgTypes.
	Type string
	Pos  Position
}

// ArgTypes are the types an argument can be read as:
//   - int, uint: a signed or unsigned 64-bit integer (narrower integers are
//     sign- or zero-extended);
//   - string: NUL-terminated string at a kernel pointer; user_string: at a
//     user pointer; both read at most MaxStringLen bytes (bpf limits);
//   - sock: a struct sock *, giving family, saddr, daddr, sport, dport;
//   - sockaddr: a struct sockaddr * in user memory, giving family, daddr,
//     dport;
//   - file: a struct file *, giving its path; path: a struct path *;
//   - fd: a file descriptor of the calling process, giving its path.
var ArgTypes = []string{"int", "uint", "string", "user_string", "sock", "sockaddr", "file", "path", "fd"}

// Selector is one set of ANDed filters.
type Selector struct {
	Filters []Filter
	Pos     Position
}

// Filter is one condition on a process property or an argument.
type Filter struct {
	// Field is a process property ("pid", "tgid", "uid", "gid", "comm",
	// "cgroup"), an argument's Name, or a derived field of a sock or
	// sockaddr argument ("family", "saddr", "daddr", "sport", "dport") or
	// of a file/path/fd argument ("<name>" is its path).
	Field string
	// Op is "eq", "ne", "in", "notin", "prefix", "range" or "cidr".
	// eq/ne take one value, in/notin a set; prefix is a string prefix
	// (comm, paths, strings); range an inclusive integer range; cidr
	// address prefixes.
	Op string
	// Exactly one of the value lists is used, by the field's type.
	Ints    []int64
	Ranges  [][2]int64
	Strings []string
	CIDRs   []string // canonical, as PacketMatch's
	// Cgroup filters give paths; the engine resolves them to cgroup ids.
	Pos Position
}

// Count aggregates selected calls in the kernel by labels.
type Count struct {
	// Metric is the metric name ("process.execs"); grain prefixes "grain.".
	Metric string
	// By are the labels: process properties, argument names or derived
	// fields, as Filter.Field. Empty: one total per rule.
	By []string
	// Sum is an integer argument to add up instead of counting calls
	// (bytes sent); empty: count calls.
	Sum string
}

// ProcessFields are the process context fields every probe event can carry
// and every selector can filter on. exe, container and host are added in
// userspace; they can be emitted but not filtered in the kernel.
var ProcessFields = []string{"pid", "tgid", "ppid", "uid", "gid", "comm", "cgroup", "exe", "container", "host"}
