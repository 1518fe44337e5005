// Package vethbench holds the short runs of the real-traffic benchmarks
// (run.sh, cidr.sh): a few thousand packets, one round, so that the scripts
// keep working; the figures themselves come from full runs.
package vethbench

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/benchscript"
)

// runScript runs script's short mode with env and returns its report.
func runScript(t *testing.T, script string, env ...string) string {
	t.Helper()
	return benchscript.Run(t, "../..", script, []string{"ip", "taskset"}, env...)
}

// row returns the table row that starts with "| desc |" and has count in
// its second column ("" for any).
func row(report, desc, count string) string {
	for _, l := range strings.Split(report, "\n") {
		cells := strings.Split(l, "|")
		if len(cells) > 3 && strings.TrimSpace(cells[1]) == desc && (count == "" || strings.TrimSpace(cells[2]) == count) {
			return l
		}
	}
	return ""
}

// Every configuration of cidr.sh gives a row for every count, or a note
// that its tool is missing; the script itself checks that each flood
// passed or was dropped as it must.
func TestCIDRScriptShort(t *testing.T) {
	out := runScript(t, "bench/veth/cidr.sh", "N=3000", "RUNS=1", "COUNTS=1 100")
	if row(out, "no filter", "") == "" {
		t.Errorf("no row for no filter")
	}
	for _, c := range []struct{ tool, desc string }{
		{"iptables", "iptables, one rule per prefix"},
		{"ipset", "ipset hash:net + one iptables rule"},
		{"nft", "nftables set, flags interval"},
		{"xdp-filter", "xdp-filter (addresses, not prefixes; informational)"},
		{"grain", "grain, match saddr: [prefixes]"},
	} {
		if strings.Contains(out, "- "+c.tool+": skipped") {
			t.Logf("%s: skipped by the script (its tool is missing)", c.tool)
			continue
		}
		for _, count := range []string{"1", "100"} {
			if row(out, c.desc, count) == "" {
				t.Errorf("no row for %s with %s prefixes", c.desc, count)
			}
		}
	}
	for _, want := range []string{"- 100 prefixes, miss: grain", "- grain 1 -> 100 prefixes, miss:", "Command: sudo N=3000 RUNS=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
}

// run.sh gives a row for each of its default configurations and the
// ratios of its goals.
func TestRunScriptShort(t *testing.T) {
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("iptables is missing")
	}
	out := runScript(t, "bench/veth/run.sh", "N=3000", "RUNS=1")
	for _, desc := range []string{"no filter", "XDP pass-all (informational)", "XDP drop-all (the floor)", "iptables raw string --algo bm"} {
		if row(out, desc, "") == "" {
			t.Errorf("no row for %s", desc)
		}
	}
	if !strings.Contains(out, "| grain, ") {
		t.Errorf("no row for grain")
	}
	for _, want := range []string{"- flood 1, cost above the floor (drop-all):", "- flood 2, cost above no filter:", "Command: sudo N=3000 RUNS=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
}
