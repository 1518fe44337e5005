package bpf

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestLimitsMatchHeader checks every numeric #define of grain.h against its
// Go mirror, so that `grain check` and codegen enforce the C program's limits.
func TestLimitsMatchHeader(t *testing.T) {
	src, err := os.ReadFile("grain.h")
	if err != nil {
		t.Fatal(err)
	}
	goConsts := map[string]int{
		"GENERATIONS": Generations, "MAX_RULES": MaxRules, "BITMAP_WORDS": BitmapWords,
		"MAX_CONTENTS": MaxContents, "MAX_CONTENTS_PER_RULE": MaxContentsPerRule,
		"MAX_CONTENT_LEN": MaxContentLen, "SCAN_WINDOW": ScanWindow, "PREFILTER_SPAN": PrefilterSpan,
		"MAX_PORT_CLASSES": MaxPortClasses, "MAX_CIDR_ENTRIES": MaxCIDREntries,
		"MAX_IFACE_ENTRIES": MaxIfaceEntries, "MAX_IPV6_EXT_HEADERS": MaxIPv6ExtHeaders,
		"BM_PROTO": BitmapRegionProto, "BM_FLAGS": BitmapRegionFlags, "BM_AUX": BitmapRegionAux,
		"BM_SPORT": BitmapRegionSport, "BM_DPORT": BitmapRegionDport, "BM_CIDR": BitmapRegionCIDR,
		"BM_PER_GEN":       BitmapsPerGen,
		"AUX_SRC4_DEFAULT": AuxSrc4Default, "AUX_DST4_DEFAULT": AuxDst4Default,
		"AUX_SRC6_DEFAULT": AuxSrc6Default, "AUX_DST6_DEFAULT": AuxDst6Default,
		"AUX_IFACE_DEFAULT": AuxIfaceDefault, "AUX_NO_PORTS": AuxNoPorts, "AUX_NOT_TCP": AuxNotTCP,
		"AUX_ALL": AuxAll,
		"F_PROTO": FieldProto, "F_SRC": FieldSrc, "F_DST": FieldDst, "F_SPORT": FieldSport,
		"F_DPORT": FieldDport, "F_FLAGS": FieldFlags, "F_IFACE": FieldIface,
		"PORT_DIR_SRC": PortDirSrc, "PORT_DIR_DST": PortDirDst,
		"CIDR_SRC4": CIDRSrc4, "CIDR_DST4": CIDRDst4, "CIDR_SRC6": CIDRSrc6, "CIDR_DST6": CIDRDst6,
		"ACTION_COUNT": ActionCount, "ACTION_DROP": ActionDrop, "ACTION_PASS": ActionPass,
		"RULE_EMIT": RuleEmit, "RULE_EMIT_PAYLOAD": RuleEmitPayload, "RULE_QUICK": RuleQuick, "RULE_QUICK_ONLY": RuleQuickOnly, "EMIT_PAYLOAD_BYTES": EmitPayloadBytes, "CONTENT_NOCASE": ContentNoCase, "CONTENT_NEGATE": ContentNegate,
		"CONTENT_ANCHORED": ContentAnchored,
		"DEDUP_SADDR":      DedupSaddr, "DEDUP_DADDR": DedupDaddr, "DEDUP_SPORT": DedupSport, "DEDUP_DPORT": DedupDport,
		"DEDUP_PROTOCOL": DedupProtocol, "DEDUP_TCP_FLAGS": DedupTCPFlags, "DEDUP_LEN": DedupLen,
		"STAT_NOT_IP": StatNotIP, "STAT_MALFORMED": StatMalformed,
		"STAT_NO_CONFIG": StatNoConfig, "STAT_MAX": StatMax,
		"IFACE_SLOTS": IfaceSlots, "VERDICTS": Verdicts,
		"GATE_TCP": GateTCP, "GATE_UDP": GateUDP, "GATES": Gates,
	}
	define := regexp.MustCompile(`(?m)^#define GRAIN_(\w+)\s+(.+?)\s*(/\*.*)?$`)
	values := map[string]int{}
	for _, m := range define.FindAllStringSubmatch(string(src), -1) {
		name, expr := m[1], m[2]
		if name == "H" {
			continue
		}
		v, ok := evalDefine(expr, values)
		if !ok {
			t.Fatalf("cannot evaluate #define GRAIN_%s %s", name, expr)
		}
		values[name] = v
		want, ok := goConsts[name]
		if !ok {
			t.Errorf("GRAIN_%s has no Go mirror in limits.go", name)
			continue
		}
		if want != v {
			t.Errorf("GRAIN_%s = %d in grain.h, %d in limits.go", name, v, want)
		}
	}
	for name := range goConsts {
		if _, ok := values[name]; !ok {
			t.Errorf("limits.go mirrors GRAIN_%s, which grain.h does not define", name)
		}
	}
}

// evalDefine evaluates the small expressions grain.h uses: integers, other
// GRAIN_ names, parentheses, + * / and <<.
func evalDefine(expr string, known map[string]int) (int, bool) {
	expr = strings.TrimSpace(expr)
	for strings.HasPrefix(expr, "(") && strings.HasSuffix(expr, ")") && balanced(expr[1:len(expr)-1]) {
		expr = strings.TrimSpace(expr[1 : len(expr)-1])
	}
	for _, op := range []string{"+", "<<", "*", "/"} {
		depth := 0
		for i := len(expr) - 1; i >= 0; i-- {
			switch expr[i] {
			case ')':
				depth++
			case '(':
				depth--
			}
			if depth == 0 && strings.HasPrefix(expr[i:], op) && i > 0 {
				a, ok1 := evalDefine(expr[:i], known)
				b, ok2 := evalDefine(expr[i+len(op):], known)
				if !ok1 || !ok2 {
					return 0, false
				}
				switch op {
				case "+":
					return a + b, true
				case "<<":
					return a << b, true
				case "*":
					return a * b, true
				default:
					return a / b, true
				}
			}
		}
	}
	if v, ok := known[strings.TrimPrefix(expr, "GRAIN_")]; ok && strings.HasPrefix(expr, "GRAIN_") {
		return v, true
	}
	v, err := strconv.Atoi(expr)
	return v, err == nil
}

func balanced(s string) bool {
	depth := 0
	for _, c := range s {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
			if depth < 0 {
				return false
			}
		}
	}
	return depth == 0
}
