// Package codegen turns typed policies into a Plan: the generic programs to
// load, where to attach them and the content of every map they read. It is
// pure Go and deterministic: the same policies give a byte-identical Plan.
//
// codegen is the one place that turns policies into the bytes the kernel
// reads. A Plan holds them twice: in a readable form (Rules, Contents,
// Tables, HookPlan.Hooks and .Rules), which tests, events and counts
// name things by, and in the kernel's form (Plan.Maps, HookPlan.Maps),
// which the engine copies into the maps verbatim. The engine adds only what
// depends on the running machine or on the moment: interface indexes,
// cgroup ids, tracepoint field offsets and argument widths, kprobe or
// fentry, syscall numbers of its architecture, and the generation and
// epoch of a write (map key offsets, rule ids).
//
// The kernel's form is the bpf package's generated mirrors of the C
// structs (bpf.Rule, bpf.Content, bpf.HookFilter, ...), each in a
// Kernel wrapper that adds only its JSON form; not a byte-level form of
// codegen's own. A second hand-kept mirror of each struct could drift from
// the C source and from what the engine writes; with the generated types a
// change to a C struct is a compile error where it matters and a change in
// the goldens (codegen/testdata/*.golden.json) everywhere else, since the
// JSON is derived field by field from the struct. Keys that hold a
// generation (bpf.CIDRKey.Generation, the Filter of probe value and string
// keys) and rule ids are zero in the Plan; array maps are listed by index
// within one generation.
package codegen

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Plan is everything the engine writes into the kernel for one rule set.
type Plan struct {
	Programs    []Program    `json:"programs"`
	Attachments []Attachment `json:"attachments"`
	// Fields are the packet fields some rule constrains; the XDP program
	// looks up only these.
	Fields   []string  `json:"fields"`
	Rules    []Rule    `json:"rules"`
	Contents []Content `json:"contents"`
	Tables   Tables    `json:"tables"`
	// Maps is every entry the XDP program reads for this rule set, in the
	// kernel's form (maps.go).
	Maps XDPMaps `json:"maps"`
	// Hooks holds the kernel-hook policies (codegen/hook.go); nil when
	// there are none.
	Hooks *HookPlan `json:"probes,omitempty"`
}

// Program names one generic program of the bpf package.
type Program struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// Attachment attaches a program to one interface.
type Attachment struct {
	Program   string `json:"program"`
	Interface string `json:"interface"`
}

// Rule is one policy in priority order; its index is its bit in every
// bitmap.
type Rule struct {
	Index    int    `json:"index"`
	Policy   string `json:"policy"`
	Position string `json:"position"`
	Priority int    `json:"priority"`
	Action   string `json:"action"`
	// Monitor: the policy is in monitor mode, so a drop is reported as
	// would_drop and the packet passes (Verdict).
	Monitor  bool     `json:"monitor,omitempty"`
	Contents []int    `json:"contents,omitempty"`
	Event    string   `json:"event,omitempty"`
	Fields   []string `json:"fields,omitempty"`
	// EmitPayload makes the rule's events carry the start of the L4
	// payload (bpf.EmitPayloadBytes at most), for the fields decoded from
	// it.
	EmitPayload bool `json:"emit_payload,omitempty"`
	// EmitHello makes the payload a whole first segment
	// (bpf.EmitHelloBytes), for the TLS fields decoded from a ClientHello.
	EmitHello bool `json:"emit_hello,omitempty"`
	// ServerNames are the rule's tls_sni names and patterns (an OR).
	ServerNames []string `json:"tls_sni,omitempty"`
	// DedupNs is the rule's deduplication window in nanoseconds
	// (policies.Emit.Dedup); 0 sends every event.
	DedupNs int64 `json:"dedup_ns,omitempty"`
	// RateLimit is the most events per second the rule sends
	// (policies.Emit.RateLimit); 0 is no limit.
	RateLimit int `json:"rate_limit,omitempty"`
}

// The verdict a monitored drop rule reports: it decides the packet as a
// drop would, and the packet passes.
const WouldDrop = "would_drop"

// Verdict is what the rule reports for a packet it decides or counts:
// its action, or WouldDrop for a drop rule in monitor mode.
func (r Rule) Verdict() string {
	if r.Monitor && r.Action == "drop" {
		return WouldDrop
	}
	return r.Action
}

// Content is one payload condition as the XDP program evaluates it.
type Content struct {
	Index int `json:"index"`
	// Pattern and Mask are pre-masked: (payload byte & mask) == pattern.
	Pattern  Hex  `json:"pattern"`
	Mask     Hex  `json:"mask"`
	Offset   int  `json:"offset"`
	End      int  `json:"end"`
	NoCase   bool `json:"nocase,omitempty"`
	Negate   bool `json:"negate,omitempty"`
	Anchored bool `json:"anchored,omitempty"`
	// Prefilter holds the two pattern positions checked eight payload
	// positions at a time before a full compare, the rarer byte first.
	Prefilter [2]int `json:"prefilter"`
}

// Tables hold the classification bitmaps, each written as the list of rule
// indices whose bit is set.
type Tables struct {
	// Protocol maps an L4 protocol number to its candidate rules; numbers
	// not listed use Default.
	Protocol KeyedTable `json:"protocol"`
	// TCPFlags maps a TCP flags byte to its candidate rules (all 256 keys
	// when the field is used); NotTCP is used for other protocols.
	TCPFlags KeyedTable `json:"tcp_flags"`
	NotTCP   RuleSet    `json:"not_tcp"`
	// NoPorts holds the rules for packets without ports (ICMP, fragments).
	NoPorts          RuleSet     `json:"no_ports"`
	SourcePorts      []PortClass `json:"source_ports"`
	DestinationPorts []PortClass `json:"destination_ports"`
	// CIDRs hold one entry per distinct prefix; the defaults hold the rules
	// for an address no prefix contains.
	CIDRs        []CIDRClass        `json:"cidrs"`
	CIDRDefaults map[string]RuleSet `json:"cidr_defaults"`
	// PrefixLengths per CIDR field, longest first: the lookups an IPv6
	// address tries (an IPv4 address tries those its /16's index entry
	// names, Maps.SourceIndex4).
	PrefixLengths map[string][]int `json:"prefix_lengths"`
	Interfaces    []InterfaceEntry `json:"interfaces"`
	// InterfaceDefault holds the rules for an interface not listed.
	InterfaceDefault RuleSet `json:"interface_default"`
	// ServerNames hold one entry per distinct tls_sni name or pattern,
	// with the rules of every pattern that matches all it matches
	// (bpf/tls.h); NoServerName holds the rules for a packet that is not
	// a ClientHello, has no server name, or one no entry matches.
	ServerNames  []ServerNameClass `json:"server_names,omitempty"`
	NoServerName RuleSet           `json:"no_server_name"`
	All          RuleSet           `json:"all"`
}

// KeyedTable is a small array-indexed bitmap table.
type KeyedTable struct {
	Default RuleSet    `json:"default"`
	Entries []KeyedSet `json:"entries,omitempty"`
}

// KeyedSet is the rule set of one key.
type KeyedSet struct {
	Key   int     `json:"key"`
	Rules RuleSet `json:"rules"`
}

// PortClass is an inclusive run of ports that every rule treats alike.
type PortClass struct {
	First int     `json:"first"`
	Last  int     `json:"last"`
	Rules RuleSet `json:"rules"`
}

// CIDRClass is one prefix of one address field with the rules whose
// prefixes contain it.
type CIDRClass struct {
	Field  string  `json:"field"`
	Prefix string  `json:"prefix"`
	Rules  RuleSet `json:"rules"`
}

// ServerNameClass is one tls_sni name ("example.com") or suffix pattern
// ("*.example.com") with the rules of the patterns that contain it.
type ServerNameClass struct {
	Pattern string  `json:"pattern"`
	Rules   RuleSet `json:"rules"`
}

// InterfaceEntry holds the rules that apply to packets from one interface.
type InterfaceEntry struct {
	Interface string  `json:"interface"`
	Rules     RuleSet `json:"rules"`
}

// RuleSet is a set of rule indices, ascending: one bitmap. It marshals as
// compact ranges ("0-2,7") so that large plans stay readable.
type RuleSet []int

// MarshalJSON writes the set as a string of ranges.
func (s RuleSet) MarshalJSON() ([]byte, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return json.Marshal(b.String())
}

// Hex marshals bytes as a hex string, readable in `grain compile` output.
type Hex []byte

// MarshalJSON writes the bytes as space-separated hex pairs.
func (h Hex) MarshalJSON() ([]byte, error) {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, len(h)*3)
	for i, b := range h {
		if i > 0 {
			out = append(out, ' ')
		}
		out = append(out, digits[b>>4], digits[b&15])
	}
	return json.Marshal(string(out))
}

// JSON renders the plan, indented, with a trailing newline.
func (p *Plan) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
