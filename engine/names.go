package engine

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"

	"github.com/grain-ebpf/grain/codegen"
)

// generationNames is what a generation's rules are called, kept in the
// pinned rule_names map (bpf.XDP.SaveRuleNames) beside the rules: a grain
// that adopts the pinned state names the events of the adopted rule sets,
// which may still wait in the ring or in a stage, and counts their
// counters, rather than reading events it cannot name or count.
type generationNames struct {
	Epoch uint32         `json:"epoch"`
	Rules []codegen.Rule `json:"rules"`
}

// saveRuleNames keeps the names of generation gen, written at epoch. Names
// too long to keep are not: a restarted grain then names that generation's
// events unknown-rule-N, as before names were kept.
func (e *Engine) saveRuleNames(gen, epoch uint32, rules []codegen.Rule) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if err := json.NewEncoder(zw).Encode(generationNames{Epoch: epoch, Rules: rules}); err != nil {
		return fmt.Errorf("encode rule names: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("encode rule names: %w", err)
	}
	names := buf.Bytes()
	if err := e.xdp.SaveRuleNames(gen, names); err != nil {
		e.log.Warn("the rule names are not kept for a restarted grain", "error", err.Error())
		return e.xdp.SaveRuleNames(gen, nil)
	}
	return nil
}

// loadRuleNames returns the names an earlier grain kept for generation gen
// (ok false when it kept none).
func (e *Engine) loadRuleNames(gen uint32) (names generationNames, ok bool, err error) {
	b, err := e.xdp.RuleNames(gen)
	if err != nil || len(b) == 0 {
		return names, false, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err == nil {
		var raw []byte
		if raw, err = io.ReadAll(zr); err == nil {
			err = json.Unmarshal(raw, &names)
		}
	}
	if err != nil {
		return names, false, fmt.Errorf("decode the rule names of generation %d: %w", gen, err)
	}
	return names, true, nil
}

// adoptRuleNames names the rule sets of both pinned generations: the
// active one (epoch) is counted as this engine's own, the other one is
// retired, named until the reader has read its events. e.mu need not be
// held: New calls it before the engine is shared.
func (e *Engine) adoptRuleNames(active, epoch uint32) error {
	for gen := uint32(0); gen < uint32(len(e.rules)); gen++ {
		names, ok, err := e.loadRuleNames(gen)
		if err != nil {
			return err
		}
		if !ok || (gen == active && names.Epoch != epoch) {
			continue // not what the rules map holds: unnamed
		}
		e.gen.AdoptNames(names.Epoch, names.Rules)
		if gen == active {
			// Its counters count from when the earlier grain wrote it:
			// they include its events still unread, which this engine
			// reads (and the pipeline counts as received).
			e.rules[gen] = names.Rules
		}
	}
	return nil
}
