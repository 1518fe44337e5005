package codegen

import (
	"fmt"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

// TestHooksShared: policies on one attach point share a hook, and an
// argument both read takes one slot.
func TestHooksShared(t *testing.T) {
	plan, err := Compile(load(t, `
a: {
	tracepoint: "sched/sched_process_exec"
	args: [{field: "filename", type: "string"}]
	emit: event: "exec"
}
b: {
	tracepoint: "sched/sched_process_exec"
	args: [{field: "pid", type: "int", name: "newpid"}, {field: "filename", type: "string", name: "file"}]
	count: {metric: "m", by: ["file"]}
}
c: {
	syscall: ["openat", "open"]
	count: metric: "m"
}
d: {
	syscall: ["open", "openat"]
	count: metric: "m"
}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := plan.Hooks
	if len(p.Hooks) != 2 || len(p.Hooks[0].Args) != 2 || fmt.Sprint(p.Hooks[0].Rules) != "[0 1]" || fmt.Sprint(p.Hooks[1].Rules) != "[2 3]" {
		t.Fatalf("hooks %+v", p.Hooks)
	}
	if l := p.Rules[1].Count.Labels[0]; l.Slot != 0 || l.Part != "str" || l.Size != 64 {
		t.Fatalf("label %+v: want slot 0 (shared with a's filename)", l)
	}
	// syscalls:* tracepoint strings are user memory.
	plan, err = Compile(load(t, `x: {tracepoint: "syscalls/sys_enter_openat", args: [{field: "filename", type: "string"}], emit: event: "e"}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if typ := plan.Hooks.Hooks[0].Args[0].Type; typ != "user_string" {
		t.Fatalf("syscalls tracepoint string read as %s", typ)
	}
}

// TestHookFilterForms: values beyond the inline limit move to a hash set;
// strings, prefixes and CIDRs go to the trie; cgroups stay paths.
func TestHookFilterForms(t *testing.T) {
	var many []string
	for i := range bpf.HookMaxInline + 1 {
		many = append(many, fmt.Sprint(1000+i))
	}
	plan, err := Compile(load(t, fmt.Sprintf(`
x: {
	kprobe: "tcp_connect"
	args: [{index: 0, type: "sock"}]
	match: {
		process: {uid: [%s], pid: [1, 2], comm: {prefix: "cu"}, cgroup: "/a"}
		daddr: ["10.0.0.0/8"]
		dport: "80-90"
	}
	emit: event: "e"
}`, strings.Join(many, ", "))), Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range plan.Hooks.Rules[0].Selectors[0].Filters {
		got[f.Field] = f.Op
	}
	want := map[string]string{"uid": "set", "pid": "in", "comm": "comm", "cgroup": "cgroup", "daddr": "trie", "dport": "range"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ops %v, want %v", got, want)
	}
}

// TestHookLimits: what the programs cannot hold is an error at the
// policy, naming the limit.
func TestHookLimits(t *testing.T) {
	long := strings.Repeat("x", bpf.HookMatchLen+1)
	for _, c := range []struct{ src, want string }{
		{`x: {syscall: "nosuchcall", count: metric: "m"}`, "no system call is named nosuchcall"},
		{`x: {syscall: "openat", args: [{index: 1, type: "user_string", name: "f"}], match: args: f: "` + long + `", count: metric: "m"}`, "longer than the 247 bytes"},
		{`x: {syscall: "close", args: [{index: 0, type: "int", name: "fd"}], match: args: fd: ["1-2", "3-4", "5-6", "7-8", "9-10"], count: metric: "m"}`, "at most 4 ranges"},
		{`x: {syscall: "openat", args: [{index: 1, type: "user_string", name: "f"}, {index: 2, type: "user_string", name: "g"}, {index: 3, type: "user_string", name: "h"}], count: {metric: "m", by: ["f", "g", "h"]}}`, "take more than the 96 bytes"},
		{`x: {syscall: "close", match: [` + strings.Repeat(`{process: pid: 1},`, bpf.HookMaxSelectors+1) + `], count: metric: "m"}`, "at most 4 match selectors"},
	} {
		_, err := Compile(load(t, c.src), Options{})
		var list policies.ErrorList
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.src, err, c.want)
		} else if !errorsAs(err, &list) || list[0].Policy != "x" {
			t.Errorf("%s: error %#v does not name the policy", c.src, err)
		}
	}
}

func errorsAs(err error, list *policies.ErrorList) bool {
	l, ok := err.(policies.ErrorList)
	*list = l
	return ok
}

// TestCountAtHand: a hook whose one rule only counts, unfiltered, by
// labels every call has at hand in three words is planned for the short
// count path, with its label fields in order; any other hook is not.
func TestCountAtHand(t *testing.T) {
	for _, c := range []struct {
		src    string
		rule   uint16
		fields uint32
	}{
		{`x: {syscall: "getppid", count: {metric: "m", by: ["comm"]}}`, 1, bpf.HookFComm},
		{`x: {tracepoint: "sched/sched_process_exec", count: {metric: "m", by: ["tgid", "comm"]}}`, 1, bpf.HookFTgid | bpf.HookFComm<<8},
		{`x: {syscall: "getppid", count: {metric: "m", by: ["pid", "tgid", "syscall"]}}`, 1, bpf.HookFPid | bpf.HookFTgid<<8 | bpf.HookFSyscall<<16},
		{`x: {syscall: "getppid", match: process: comm: "x", count: {metric: "m", by: ["comm"]}}`, 0, 0},
		{`x: {syscall: "getppid", args: [{index: 0, type: "int", name: "a"}], count: {metric: "m", by: ["comm"], sum: "a"}}`, 0, 0},
		{`x: {syscall: "getppid", count: {metric: "m", by: ["uid"]}}`, 0, 0},
		{`x: {syscall: "getppid", count: {metric: "m", by: ["comm", "pid", "tgid"]}}`, 0, 0},
		{`x: {syscall: "getppid", count: {metric: "m"}}`, 0, 0},
		{`x: {syscall: "getppid", count: {metric: "m", by: ["comm"]}, emit: {event: "e"}}`, 0, 0},
		{`x: {syscall: "getppid", count: {metric: "m", by: ["comm"]}}` + "\n" + `y: {syscall: "getppid", count: {metric: "n", by: ["comm"]}}`, 0, 0},
	} {
		plan, err := Compile(load(t, c.src), Options{})
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		h := plan.Hooks.Maps.Hooks[0].Value
		if h.CountRule != c.rule || h.CountFields != c.fields || h.CountId != 0 {
			t.Errorf("%s: count_rule %d, count_fields %#x, count_id %d; want %d, %#x, 0 (the engine sets the id)",
				c.src, h.CountRule, h.CountFields, h.CountId, c.rule, c.fields)
		}
	}
}
