// Package policies loads a directory tree of CUE policy files as one
// snapshot, validates it against the embedded schema and decodes it into
// typed Go values. Every error it returns carries the file:line:col of the
// user's file.
package policies

// Snapshot is one consistent load of a policy tree.
type Snapshot struct {
	// Root is the directory the snapshot was loaded from.
	Root string
	// Files are the .cue files that made up the snapshot, sorted.
	Files []string
	// Policies sorted by name.
	Policies []Policy
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
	// XDP is set for packet policies.
	XDP *XDPHook
	// Match selects packets. Zero value matches every IP packet.
	Match PacketMatch
	// Then is the action: "drop", "pass" or "count".
	Then string
	// Emit, when set, sends an event for each matched packet.
	Emit *Emit
}

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

// Emit describes the event sent for each matched packet.
type Emit struct {
	Event  string
	Fields []string
}
