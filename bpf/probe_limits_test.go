package bpf

import (
	"os"
	"regexp"
	"testing"
)

// TestProbeLimitsMatchHeader checks every numeric #define of probe.h against
// its Go mirror in probe_limits.go.
func TestProbeLimitsMatchHeader(t *testing.T) {
	src, err := os.ReadFile("probe.h")
	if err != nil {
		t.Fatal(err)
	}
	goConsts := map[string]int{
		"GENERATIONS":       ProbeGenerations,
		"MAX_HOOKS":         ProbeMaxHooks,
		"MAX_RULES":         ProbeMaxRules,
		"MAX_FILTERS":       ProbeMaxFilters,
		"MAX_ARGS":          ProbeMaxArgs,
		"MAX_HOOK_RULES":    ProbeMaxHookRules,
		"MAX_SELECTORS":     ProbeMaxSelectors,
		"MAX_SEL_FILTERS":   ProbeMaxSelFilters,
		"MAX_INLINE":        ProbeMaxInline,
		"MAX_RANGES":        ProbeMaxRanges,
		"MAX_LABELS":        ProbeMaxLabels,
		"LABEL_BYTES":       ProbeLabelBytes,
		"STR_LEN":           ProbeStrLen,
		"MATCH_LEN":         ProbeMatchLen,
		"PATH_DEPTH":        ProbePathDepth,
		"SYSCALLS":          ProbeSyscalls,
		"SYSCALL_HOOKS":     ProbeSyscallHooks,
		"SET_ENTRIES":       ProbeSetEntries,
		"STRING_ENTRIES":    ProbeStringEntries,
		"COUNT_ENTRIES":     ProbeCountEntries,
		"EVENT_MAX":         ProbeEventMax,
		"KIND_KPROBE":       ProbeKindKprobe,
		"KIND_KRETPROBE":    ProbeKindKretprobe,
		"KIND_FENTRY":       ProbeKindFentry,
		"KIND_FEXIT":        ProbeKindFexit,
		"KIND_TRACEPOINT":   ProbeKindTracepoint,
		"KIND_SYSCALL":      ProbeKindSyscall,
		"SRC_ARG":           ProbeSrcArg,
		"SRC_RET":           ProbeSrcRet,
		"SRC_FIELD":         ProbeSrcField,
		"T_INT":             ProbeTInt,
		"T_UINT":            ProbeTUint,
		"T_STRING":          ProbeTString,
		"T_USTRING":         ProbeTUstring,
		"T_SOCK":            ProbeTSock,
		"T_SOCKADDR":        ProbeTSockaddr,
		"T_FILE":            ProbeTFile,
		"T_PATH":            ProbeTPath,
		"T_FD":              ProbeTFd,
		"FIELD_SIGNED":      ProbeFieldSigned,
		"FIELD_DATA_LOC":    ProbeFieldDataLoc,
		"FIELD_ARRAY":       ProbeFieldArray,
		"F_PID":             ProbeFPid,
		"F_TGID":            ProbeFTgid,
		"F_PPID":            ProbeFPpid,
		"F_UID":             ProbeFUid,
		"F_GID":             ProbeFGid,
		"F_COMM":            ProbeFComm,
		"F_CGROUP":          ProbeFCgroup,
		"F_ARG":             ProbeFArg,
		"F_SYSCALL":         ProbeFSyscall,
		"SUB_NUM":           ProbeSubNum,
		"SUB_STR":           ProbeSubStr,
		"SUB_FAMILY":        ProbeSubFamily,
		"SUB_SADDR":         ProbeSubSaddr,
		"SUB_DADDR":         ProbeSubDaddr,
		"SUB_SPORT":         ProbeSubSport,
		"SUB_DPORT":         ProbeSubDport,
		"OP_IN":             ProbeOpIn,
		"OP_RANGE":          ProbeOpRange,
		"OP_SET":            ProbeOpSet,
		"HOOK_STASH":        ProbeHookStash,
		"STASH_ENTRIES":     ProbeStashEntries,
		"NEST_LEVELS":       ProbeNestLevels,
		"OP_COMM":           ProbeOpComm,
		"COMM_INLINE":       ProbeCommInline,
		"R_SMALL_KEY":       ProbeRSmallKey,
		"SMALL_LABEL_BYTES": ProbeSmallLabelBytes,
		"OP_TRIE":           ProbeOpTrie,
		"R_EMIT":            ProbeREmit,
		"R_COUNT":           ProbeRCount,
		"R_SIGNAL":          ProbeRSignal,
		"R_SUM":             ProbeRSum,
		"EV_TRUNCATED":      ProbeEvTruncated,
	}
	define := regexp.MustCompile(`(?m)^#define GRAIN_PROBE_(\w+)\s+(.+?)\s*(/\*.*)?$`)
	values := map[string]int{}
	for _, m := range define.FindAllStringSubmatch(string(src), -1) {
		name, expr := m[1], m[2]
		if name == "H" {
			continue
		}
		v, ok := evalDefine(regexp.MustCompile(`GRAIN_PROBE_`).ReplaceAllString(expr, "GRAIN_"), values)
		if !ok {
			t.Fatalf("cannot evaluate #define GRAIN_PROBE_%s %s", name, expr)
		}
		values[name] = v
		want, ok := goConsts[name]
		if !ok {
			t.Errorf("GRAIN_PROBE_%s has no Go mirror in probe_limits.go", name)
			continue
		}
		if want != v {
			t.Errorf("GRAIN_PROBE_%s = %d in probe.h, %d in probe_limits.go", name, v, want)
		}
	}
	for name := range goConsts {
		if _, ok := values[name]; !ok {
			t.Errorf("probe_limits.go mirrors GRAIN_PROBE_%s, which probe.h does not define", name)
		}
	}
}
