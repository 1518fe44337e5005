package policies

// What the user sees about each schema field when CUE rejects it. CUE's own
// messages name the schema's internals ("conflicting values 3 and \"count\"
// (mismatched types int and string)", once per branch of a disjunction);
// these say in one line what the field takes. Keys are field paths inside a
// policy; "[]" stands for any list element and is tried before the bare
// path. TestEverySchemaFieldIsDescribed keeps this in step with the schema.
var fieldWants = map[string]string{
	"":                         "a policy: a struct with xdp, match, then and optionally priority and emit",
	"priority":                 "an integer 0..1000000 (lower runs first)",
	"xdp":                      `a struct {interfaces: ["eth0", ...]}`,
	"xdp.interfaces":           `a list of interface names, e.g. ["eth0"]`,
	"xdp.interfaces[]":         "an interface name or glob (veth*): 1 to 15 characters, no spaces, / or :",
	"match":                    "a struct of conditions: protocol, saddr, daddr, sport, dport, tcp_flags, interface, payload",
	"match.protocol":           `"tcp", "udp", "icmp", "icmpv6" or a list of them`,
	"match.protocol[]":         `"tcp", "udp", "icmp" or "icmpv6"`,
	"match.saddr":              `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1") or a list of them`,
	"match.saddr[]":            `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1")`,
	"match.daddr":              `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1") or a list of them`,
	"match.daddr[]":            `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1")`,
	"match.sport":              `a port 0..65535, a range string "first-last" or a list of them`,
	"match.sport[]":            `a port 0..65535 or a range string "first-last"`,
	"match.dport":              `a port 0..65535, a range string "first-last" or a list of them`,
	"match.dport[]":            `a port 0..65535 or a range string "first-last"`,
	"match.tcp_flags":          `a flag fin, syn, rst, psh, ack, urg, ece or cwr ("!" prefix: must be clear) or a list of them`,
	"match.tcp_flags[]":        `a flag fin, syn, rst, psh, ack, urg, ece or cwr ("!" prefix: must be clear)`,
	"match.interface":          "an interface name or glob (1 to 15 characters, no spaces, / or :) or a list of them",
	"match.interface[]":        "an interface name or glob (veth*): 1 to 15 characters, no spaces, / or :",
	"match.payload":            `a pattern string, a content {contains: "..."} or {startswith: "..."}, or a list of them`,
	"match.payload[]":          `a pattern string or a content {contains: "..."} or {startswith: "..."}`,
	"match.payload.contains":   `a pattern string, e.g. "HTTP/1.1" or "|48 54 54 50|"`,
	"match.payload.startswith": `a pattern string, e.g. "GET " or "|16 03|"`,
	"match.payload.offset":     "an integer >= 0: where the search starts, in bytes from the payload start",
	"match.payload.depth":      "an integer >= 1: how many bytes from offset the pattern must lie within",
	"match.payload.nocase":     "true or false",
	"match.payload.not":        "true or false",
	"then":                     `"drop", "pass" or "count"`,
	"emit":                     `a struct {event: "name", fields: [...]}`,
	"emit.event":               "a name made of letters, digits, _ . and -, starting with a letter or _",
	"emit.fields":              "a list of saddr, daddr, sport, dport, protocol, tcp_flags, len, ifindex",
	"emit.fields[]":            "one of saddr, daddr, sport, dport, protocol, tcp_flags, len, ifindex",
}

// requiredHints say how to add a required field that is missing.
var requiredHints = map[string]string{
	"then":           `add then: "drop" | "pass" | "count"`,
	"xdp.interfaces": `add interfaces: ["eth0"] (or [] to take them from --interface)`,
	"emit.event":     `add event: "name"`,
}

// structDefinitions names the schema definition that closes the struct at
// each path, so a misspelt field can be compared with the allowed ones.
var structDefinitions = map[string]string{
	"":              "#Policy",
	"xdp":           "#XDP",
	"match":         "#Match",
	"match.payload": "#Content",
	"emit":          "#Emit",
}
