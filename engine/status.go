package engine

import (
	"time"

	"github.com/grain-ebpf/grain/engine/hook"
)

// Status is what `grain status` prints.
type Status struct {
	Policies   string   `json:"policies"`
	PolicyHash string   `json:"policy_hash"`
	Rules      []string `json:"rules"`
	// Monitored are the rules in monitor mode: they report would_drop
	// and would_signal, and drop nothing.
	Monitored  []string `json:"monitored,omitempty"`
	Interfaces []string `json:"interfaces"`
	// Verdicts count the packets rules judged, per interface and verdict
	// (would_drop for monitored drops), since grain started.
	Verdicts []InterfaceCounter `json:"verdicts,omitempty"`
	// InterfaceHooks says where the packet program runs on each interface:
	// "xdp", "xdp generic" (veth without tcx) or "tcx ingress" (veth).
	InterfaceHooks map[string]string `json:"interface_hooks,omitempty"`
	LastReload     time.Time         `json:"last_reload"`
	LastResult     string            `json:"last_result"`
	LastError      string            `json:"last_error,omitempty"`
	LastSuccess    time.Time         `json:"last_success"`
	ReloadsOK      uint64            `json:"reloads_succeeded"`
	ReloadsError   uint64            `json:"reloads_failed"`
	// Unjudged counts the packets the program passed without judging them.
	Unjudged PacketStats `json:"unjudged_packets"`
	// Hooks are the kernel hooks in force and how each is attached.
	Hooks []hook.Attachment `json:"hooks,omitempty"`
}
