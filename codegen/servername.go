package codegen

import (
	"fmt"
	"slices"
	"strings"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

// checkServerNameLimit checks a tls_sni name or pattern (already checked
// and lowercased by policies) against what the kernel compares: names of
// at most bpf.TLSMaxName bytes; a "*." pattern's shortest match has a
// one-byte label in front of it.
func checkServerNameLimit(pattern string) error {
	name, wildcard := strings.CutPrefix(pattern, "*.")
	shortest := len(name)
	if wildcard {
		shortest += 2
	}
	if shortest > bpf.TLSMaxName {
		return fmt.Errorf("%q: the packet program compares server names of at most %d bytes (bpf/grain.h: GRAIN_TLS_MAX_NAME), and no name this long or longer ever matches: shorten it", pattern, bpf.TLSMaxName)
	}
	return nil
}

// buildServerNames fills the tls_sni tables: one class per distinct name
// or pattern, holding the rules without tls_sni and those of every entry
// whose key is a prefix of its key (bpf/tls.h: the kernel's longest-prefix
// lookup finds the longest entry that matches a name, and every entry that
// matches the name is a prefix of that one).
func buildServerNames(t *Tables, rules []rule) error {
	t.NoServerName = indices(len(rules), func(i int) bool { return len(rules[i].sni) == 0 })
	var patterns []string
	byPattern := map[string][]int{}
	for i, r := range rules {
		for _, p := range r.sni {
			if _, seen := byPattern[p]; !seen {
				patterns = append(patterns, p)
			}
			byPattern[p] = append(byPattern[p], i)
		}
	}
	if len(patterns) > bpf.MaxSNIEntries {
		seen := map[string]bool{}
		for _, r := range rules {
			for _, p := range r.sni {
				seen[p] = true
				if len(seen) > bpf.MaxSNIEntries {
					return policies.ErrorList{{Pos: r.policy.Match.ServerNamesPos, Policy: r.policy.Name,
						Msg: fmt.Sprintf("match.tls_sni: too many distinct server names and patterns in all packet policies: %d, the packet program holds at most %d (bpf/grain.h: GRAIN_MAX_SNI_ENTRIES); this policy goes over: use \"*.\" patterns or remove some", len(patterns), bpf.MaxSNIEntries)}}
				}
			}
		}
	}
	slices.Sort(patterns)
	keys := map[string]string{}
	for _, p := range patterns {
		k := ServerNameKey(p)
		keys[p] = string(k.Name[:k.Prefixlen/8-1])
	}
	for _, p := range patterns {
		set := slices.Clone(t.NoServerName)
		for _, q := range patterns {
			if strings.HasPrefix(keys[p], keys[q]) {
				set = append(set, byPattern[q]...)
			}
		}
		slices.Sort(set)
		t.ServerNames = append(t.ServerNames, ServerNameClass{Pattern: p, Rules: slices.Compact(set)})
	}
	return nil
}
