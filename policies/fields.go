package policies

// What the user sees about each schema field when CUE rejects it. CUE's own
// messages name the schema's internals ("conflicting values 3 and \"count\"
// (mismatched types int and string)", once per branch of a disjunction);
// these say in one line what the field takes. Keys are field paths inside a
// policy; "[]" stands for any list element and is tried before the bare
// path. TestEverySchemaFieldIsDescribed keeps this in step with the schema.
var fieldWants = map[string]string{
	"":                          "a policy: a struct with one hook (xdp, kprobe, kretprobe, tracepoint, syscall), match, and then (xdp) or emit/count/signal",
	"kprobe":                    `a kernel function name, e.g. "tcp_v4_connect"`,
	"kretprobe":                 `a kernel function name, e.g. "tcp_sendmsg"`,
	"tracepoint":                `a tracepoint "category/name", e.g. "sched/sched_process_exec"`,
	"syscall":                   `a system call name ("openat"), a list of them, or "*" for every one`,
	"syscall[]":                 `a system call name, e.g. "openat"`,
	"attach":                    `"auto", "kprobe" or "fentry"`,
	"args":                      `a list of arguments, e.g. [{index: 0, type: "sock"}]`,
	"args[]":                    `an argument {index: N | field: "name" | ret: true, type: "...", name?: "..."}`,
	"args.index":                "an argument number 0..5",
	"args.field":                `a tracepoint field name, e.g. "filename"`,
	"args.ret":                  "true (the return value)",
	"args.type":                 `one of "int", "uint", "string", "user_string", "sock", "sockaddr", "file", "path", "fd"`,
	"args.name":                 "a name of lower-case letters, digits and _",
	"count":                     `a struct {metric: "name", by?: [...], sum?: "arg"}`,
	"count.metric":              `a metric name of lower-case letters, digits, _ and ., e.g. "process.execs"`,
	"count.by":                  "a list of field names",
	"count.by[]":                "a field name: a process field or an argument name",
	"count.sum":                 "the name of an int or uint argument",
	"signal":                    `"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGSTOP", "SIGUSR1" or "SIGUSR2"`,
	"match.process":             "a struct of process conditions: pid, tgid, uid, gid, comm, cgroup",
	"match.process.pid":         `a number, a range "first-last", a list of them, or {not: ...}`,
	"match.process.tgid":        `a number, a range "first-last", a list of them, or {not: ...}`,
	"match.process.uid":         `a number, a range "first-last", a list of them, or {not: ...}`,
	"match.process.gid":         `a number, a range "first-last", a list of them, or {not: ...}`,
	"match.process.comm":        `a process name, a list of them, {prefix: "..."} or {not: ...}`,
	"match.process.cgroup":      `a cgroup v2 path such as "/system.slice/nginx.service", or a list of them`,
	"match.args":                `a struct of argument conditions by argument name, e.g. {filename: {prefix: "/etc/"}}`,
	"match.args.*":              `a value, a range "first-last" (integers), a CIDR (addresses), a list of them, {not: ...} or {prefix: "..."}`,
	"match.args.*.not":          "a value or a list of values",
	"match.args.*.prefix":       "a string or a list of strings",
	"match.process.comm.prefix": "a string or a list of strings",
	"match.process.comm.not":    "a process name or a list of them",
	"emit.rate_limit":           "an integer >= 1: events per second",
	"emit.dedup":                `a duration in ms, s or m, e.g. "1s", "250ms" or "0s" (every event)`,
	"priority":                  "an integer 0..1000000 (lower runs first)",
	"xdp":                       `a struct {interfaces: ["eth0", ...]}`,
	"xdp.interfaces":            `a list of interface names, e.g. ["eth0"]`,
	"xdp.interfaces[]":          "an interface name or glob (veth*): 1 to 15 characters, no spaces, / or :",
	"match":                     "a struct of conditions: protocol, saddr, daddr, sport, dport, tcp_flags, interface, payload",
	"match.protocol":            `"tcp", "udp", "icmp", "icmpv6" or a list of them`,
	"match.protocol[]":          `"tcp", "udp", "icmp" or "icmpv6"`,
	"match.saddr":               `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1") or a list of them`,
	"match.saddr[]":             `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1")`,
	"match.daddr":               `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1") or a list of them`,
	"match.daddr[]":             `an address or CIDR string ("10.0.0.0/8", "fd00::/64", "192.0.2.1")`,
	"match.sport":               `a port 0..65535, a range string "first-last" or a list of them`,
	"match.sport[]":             `a port 0..65535 or a range string "first-last"`,
	"match.dport":               `a port 0..65535, a range string "first-last" or a list of them`,
	"match.dport[]":             `a port 0..65535 or a range string "first-last"`,
	"match.tcp_flags":           `a flag fin, syn, rst, psh, ack, urg, ece or cwr ("!" prefix: must be clear) or a list of them`,
	"match.tcp_flags[]":         `a flag fin, syn, rst, psh, ack, urg, ece or cwr ("!" prefix: must be clear)`,
	"match.interface":           "an interface name or glob (1 to 15 characters, no spaces, / or :) or a list of them",
	"match.interface[]":         "an interface name or glob (veth*): 1 to 15 characters, no spaces, / or :",
	"match.payload":             `a pattern string, a content {contains: "..."} or {startswith: "..."}, or a list of them`,
	"match.payload[]":           `a pattern string or a content {contains: "..."} or {startswith: "..."}`,
	"match.payload.contains":    `a pattern string, e.g. "HTTP/1.1" or "|48 54 54 50|"`,
	"match.payload.startswith":  `a pattern string, e.g. "GET " or "|16 03|"`,
	"match.payload.offset":      "an integer >= 0: where the search starts, in bytes from the payload start",
	"match.payload.depth":       "an integer >= 1: how many bytes from offset the pattern must lie within",
	"match.payload.nocase":      "true or false",
	"match.payload.not":         "true or false",
	"then":                      `"drop", "pass" or "count"`,
	"emit":                      `a struct {event: "name", fields: [...]}`,
	"emit.event":                "a name made of letters, digits, _ . and -, starting with a letter or _",
	"emit.fields":               "a list of field names: for xdp saddr, daddr, sport, dport, protocol, tcp_flags, len, ifindex, payload, dns_qname; for kernel hooks process fields and argument names",
	"emit.fields[]":             "a field name of lower-case letters, digits and _",
}

// requiredHints say how to add a required field that is missing.
var requiredHints = map[string]string{
	"then":           `add then: "drop" | "pass" | "count"`,
	"args.type":      `add type: "int" (or uint, string, user_string, sock, sockaddr, file, path, fd)`,
	"count.metric":   `add metric: "name"`,
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
	"args":          "#Arg",
	"count":         "#Count",
	"match.process": "#ProcessMatch",
}
