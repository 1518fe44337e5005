package hook

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/generation"
)

// RuleCounter counts what one kernel-hook policy did since the engine
// started, summed over every rule set that was in force.
type RuleCounter struct {
	Policy string `json:"policy"`
	// Hits are the calls its selectors selected.
	Hits   uint64 `json:"hits"`
	Events uint64 `json:"events"`
	// EventsLost found the ring buffer full; EventsRateLimited were over the
	// policy's rate limit.
	EventsLost        uint64 `json:"events_lost"`
	EventsRateLimited uint64 `json:"events_limited"`
	Signals           uint64 `json:"signals"`
	// WouldSignals are the hits of a policy in monitor mode that has a
	// signal: the signals enforcing would have sent.
	WouldSignals uint64 `json:"would_signals,omitempty"`
	// CountErrors are calls not counted because the count map was full.
	CountErrors uint64 `json:"count_errors"`
}

// Plus is c with o's counts added; it takes o's policy.
func (c RuleCounter) Plus(o RuleCounter) RuleCounter {
	c.Policy = o.Policy
	c.Hits += o.Hits
	c.Events += o.Events
	c.EventsLost += o.EventsLost
	c.EventsRateLimited += o.EventsRateLimited
	c.Signals += o.Signals
	c.WouldSignals += o.WouldSignals
	c.CountErrors += o.CountErrors
	return c
}

// CountSample is one in-kernel aggregation: a metric with its labels.
type CountSample struct {
	Metric string  `json:"metric"`
	Policy string  `json:"policy"`
	Labels []Label `json:"labels,omitempty"`
	// Calls counts the selected calls; Sum adds up the policy's sum
	// argument (0 without one); Value is Sum for a sum metric, else Calls.
	Calls uint64 `json:"calls"`
	Sum   uint64 `json:"sum"`
	Value uint64 `json:"value"`
	// IsSum tells that Value is a sum.
	IsSum bool `json:"is_sum,omitempty"`
}

// Label is one label of a count.
type Label struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

func (s *CountSample) key() string {
	var b strings.Builder
	b.WriteString(s.Policy)
	b.WriteByte(0)
	b.WriteString(s.Metric)
	for _, l := range s.Labels {
		b.WriteByte(0)
		b.WriteString(l.Name)
		b.WriteByte('=')
		b.WriteString(l.Value)
	}
	return b.String()
}

// ruleCounters sums by policy the per-CPU counters of the rules of the
// generations gens, and the hits still pending in the count slots: a call
// counted at hand (count_at_hand) leaves its hit in its slot beside its
// count, and the slot's flush moves it to the rule's counter. The counters
// are read around the slots (aroundSlots) as countSamples reads the maps,
// for the same reason: a hit is never counted twice. With harvestEpoch set
// gens is that epoch's one generation; a live read may miss a hit on its
// way, and Counters keeps what it reports from going back.
func (e *Hooks) ruleCounters(gens []uint32, harvestEpoch *uint32, into generation.Tally[RuleCounter]) error {
	var read generation.Tally[RuleCounter]
	after, err := e.aroundSlots(harvestEpoch, "hits", func() error {
		read = generation.Tally[RuleCounter]{}
		for _, gen := range gens {
			if err := e.generationRuleCounters(gen, read); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := range after {
		if p := &after[i]; p.Hits != 0 && p.SeqEnd == p.Seq {
			e.addPendingHits(gens, p, read)
		}
	}
	into.AddAll(read)
	return nil
}

// addPendingHits adds a slot's pending hits to the policy of its rule when
// that rule is of one of the generations gens.
func (e *Hooks) addPendingHits(gens []uint32, p *bpf.HookCountPending, into generation.Tally[RuleCounter]) {
	epoch, index := generation.EpochOf(p.Key.RuleId), generation.IndexOf(p.Key.RuleId)
	for _, gen := range gens {
		g := e.written[gen]
		if g == nil || g.epoch != epoch || index >= len(g.rules) {
			continue
		}
		r := g.rules[index]
		c := RuleCounter{Policy: r.Policy, Hits: p.Hits}
		if r.Monitor && r.Signal != "" {
			c.WouldSignals = p.Hits
		}
		into.Add(r.Policy, c)
	}
}

// generationRuleCounters sums the per-CPU counters of the rules of
// generation gen by policy.
func (e *Hooks) generationRuleCounters(gen uint32, into generation.Tally[RuleCounter]) error {
	g := e.written[gen]
	if g == nil {
		return nil
	}
	var perCPU []bpf.HookCounter
	for i, r := range g.rules {
		if err := e.p.Maps().Counters.Lookup(gen*bpf.HookMaxRules+uint32(i), &perCPU); err != nil {
			return fmt.Errorf("read hook counters: %w", err)
		}
		for _, v := range perCPU {
			c := RuleCounter{Policy: r.Policy, Hits: v.Hits, Events: v.Events, EventsLost: v.EventsLost,
				EventsRateLimited: v.EventsLimited, Signals: v.Signals, CountErrors: v.CountErrors}
			if r.Monitor && r.Signal != "" {
				c.WouldSignals = v.Hits
			}
			into.Add(r.Policy, c)
		}
	}
	return nil
}

// countSamples reads the count maps and the kernel's pending counts (the
// write-combining slots, bpf.HookCountPending): the samples of the epochs
// of the generations still in the maps; with harvestEpoch set, the entries
// of that epoch are folded into the totals and deleted instead.
//
// A count moves only from a slot to a map, so the maps are read first and
// the slots after: a read never counts a call twice, and it counts every
// call when no slot moved its count into a map while the maps were read.
// The slots are read before and after the maps, and the read repeats while
// one moved (its sequence changed). A harvested epoch takes no new calls
// (its generation is no longer read), so its read repeats until its slots
// stood still: exact. A live read gives up after a few tries (a busy
// machine flushes slots all the time) and may then miss what moved;
// CountSnapshot keeps the counts it reports from going back.
func (e *Hooks) countSamples(harvestEpoch *uint32) (map[string]*CountSample, error) {
	var out map[string]*CountSample
	var deleteKeys func()
	after, err := e.aroundSlots(harvestEpoch, "counts", func() (err error) {
		out, deleteKeys, err = e.mapCounts(harvestEpoch)
		return err
	})
	if err != nil {
		return nil, err
	}
	for i := range after {
		p := &after[i]
		if p.Calls == 0 || p.SeqEnd != p.Seq {
			continue // nothing pending, or its key was changing
		}
		key := pendingKey(p)
		e.addCount(out, harvestEpoch, &key, []bpf.HookCount{{Calls: p.Calls, Sum: p.Sum}})
	}
	deleteKeys()
	return out, nil
}

// aroundSlots runs read (of the maps a slot's flush adds to) between two
// reads of the count slots, and repeats it while a slot moved: with
// harvestEpoch, until that epoch's slots stood still (an error after
// maxHarvestReads); else at most maxLiveReads times. It returns the slots
// of the last read after. what names what is read, for the error.
func (e *Hooks) aroundSlots(harvestEpoch *uint32, what string, read func() error) ([]bpf.HookCountPending, error) {
	tries := maxLiveReads
	if harvestEpoch != nil {
		tries = maxHarvestReads
	}
	for try := 1; ; try++ {
		before, err := e.pendingCounts()
		if err != nil {
			return nil, err
		}
		if err := read(); err != nil {
			return nil, err
		}
		after, err := e.pendingCounts()
		if err != nil {
			return nil, err
		}
		still := harvestEpoch == nil && noSlotMoved(before, after) || harvestEpoch != nil && pendingStill(before, after, *harvestEpoch)
		if still || try == tries && harvestEpoch == nil {
			return after, nil
		}
		if try == tries {
			return nil, fmt.Errorf("read hook %s: the pending counts of epoch %d kept moving over %d reads", what, *harvestEpoch, tries)
		}
	}
}

// maxHarvestReads bounds the reads of a harvest: each repeat needs a slot
// of the harvested epoch to have moved into the maps, which happens once per
// CPU and nesting level. maxLiveReads bounds a live read's.
const (
	maxHarvestReads = 1000
	maxLiveReads    = 10
)

// noSlotMoved reports whether no slot's key changed between the reads
// before and after (same CPUs and levels, in order), and neither read
// caught one changing.
func noSlotMoved(before, after []bpf.HookCountPending) bool {
	if len(before) != len(after) {
		return false
	}
	for i := range before {
		b, a := &before[i], &after[i]
		if b.Seq != a.Seq || b.SeqEnd != b.Seq || a.SeqEnd != a.Seq {
			return false
		}
	}
	return true
}

// mapCounts reads the count maps; deleteKeys deletes the entries to delete
// (harvested, or of a rule set long gone).
func (e *Hooks) mapCounts(harvestEpoch *uint32) (out map[string]*CountSample, deleteKeys func(), err error) {
	out = map[string]*CountSample{}
	maps := e.p.Maps()
	// Rules whose labels fit in few bytes count in the small-key map.
	var small bpf.HookCountKeySmall
	var key bpf.HookCountKey
	var perCPU []bpf.HookCount
	var staleSmall []bpf.HookCountKeySmall
	it := maps.CountsSmall.Iterate()
	for it.Next(&small, &perCPU) {
		key = widenCountKey(small)
		if e.addCount(out, harvestEpoch, &key, perCPU) {
			staleSmall = append(staleSmall, small)
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("read hook counts: %w", err)
	}
	var stale []bpf.HookCountKey
	it = maps.Counts.Iterate()
	for it.Next(&key, &perCPU) {
		if e.addCount(out, harvestEpoch, &key, perCPU) {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("read hook counts: %w", err)
	}
	return out, func() {
		for _, k := range staleSmall {
			maps.CountsSmall.Delete(k)
		}
		for _, k := range stale {
			maps.Counts.Delete(k)
		}
	}, nil
}

func widenCountKey(small bpf.HookCountKeySmall) bpf.HookCountKey {
	key := bpf.HookCountKey{RuleId: small.RuleId}
	copy(key.Labels[:], small.Labels[:])
	return key
}

// pendingKey is a slot's key as the count map holds it: a small key's
// bytes past its size are left from an earlier key.
func pendingKey(p *bpf.HookCountPending) bpf.HookCountKey {
	if p.Small == 0 {
		return p.Key
	}
	var small bpf.HookCountKeySmall
	small.RuleId = p.Key.RuleId
	copy(small.Labels[:], p.Key.Labels[:])
	return widenCountKey(small)
}

// pendingCounts reads the write-combining slot of every nesting level of
// every CPU, in the map's order (bpf.HookCountSlot), in one batch.
func (e *Hooks) pendingCounts() ([]bpf.HookCountPending, error) {
	m := e.p.Maps().CountPending
	n := int(m.MaxEntries())
	keys := make([]uint32, n)
	all := make([]bpf.HookCountPending, n)
	var cursor ebpf.MapBatchCursor
	got, err := m.BatchLookup(&cursor, keys, all, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read pending hook counts: %w", err)
	}
	if got != n {
		return nil, fmt.Errorf("read pending hook counts: %d of %d slots", got, n)
	}
	return all, nil
}

// pendingStill reports whether no slot holding a count of epoch changed
// between the reads before and after (same CPUs and levels, in order).
func pendingStill(before, after []bpf.HookCountPending, epoch uint32) bool {
	if len(before) != len(after) {
		return false
	}
	for i := range before {
		b, a := &before[i], &after[i]
		holds := func(p *bpf.HookCountPending) bool {
			return p.Calls != 0 && generation.EpochOf(p.Key.RuleId) == epoch
		}
		if !holds(b) && !holds(a) {
			continue
		}
		if b.Seq != a.Seq || b.SeqEnd != b.Seq || a.SeqEnd != a.Seq || b.Calls != a.Calls {
			return false
		}
	}
	return true
}

// addCount adds one count entry to out; it reports whether the entry is to
// be deleted (harvested, or of a rule set long gone).
func (e *Hooks) addCount(out map[string]*CountSample, harvestEpoch *uint32, key *bpf.HookCountKey, perCPU []bpf.HookCount) bool {
	epoch := generation.EpochOf(key.RuleId)
	if harvestEpoch != nil && epoch != *harvestEpoch {
		return false
	}
	rules := e.rulesOfEpoch(epoch)
	index := generation.IndexOf(key.RuleId)
	if rules == nil || index >= len(rules) || rules[index].Count == nil {
		return harvestEpoch == nil && !e.epochInMaps(epoch)
	}
	s := decodeCountKey(rules[index], key)
	for _, v := range perCPU {
		s.Calls += v.Calls
		s.Sum += v.Sum
	}
	k := s.key()
	if t, ok := out[k]; ok {
		t.Calls += s.Calls
		t.Sum += s.Sum
	} else {
		out[k] = s
	}
	return harvestEpoch != nil
}

func (e *Hooks) rulesOfEpoch(epoch uint32) []codegen.HookRule {
	for _, g := range e.written {
		if g != nil && g.epoch == epoch {
			return g.rules
		}
	}
	return nil
}

func (e *Hooks) epochInMaps(epoch uint32) bool {
	for _, g := range e.written {
		if g != nil && g.epoch == epoch {
			return true
		}
	}
	return false
}

// totalSamples returns the counts of the rules of generation gen that
// count without labels: the kernel keeps them in the rules' counters.
func (e *Hooks) totalSamples(gen uint32) (map[string]*CountSample, error) {
	out := map[string]*CountSample{}
	g := e.written[gen]
	if g == nil {
		return out, nil
	}
	var perCPU []bpf.HookCounter
	for i, r := range g.rules {
		if r.Count == nil || len(r.Count.Labels) > 0 {
			continue
		}
		if err := e.p.Maps().Counters.Lookup(gen*bpf.HookMaxRules+uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read hook counters: %w", err)
		}
		s := &CountSample{Metric: r.Count.Metric, Policy: r.Policy, IsSum: r.Count.Sum != ""}
		for _, v := range perCPU {
			s.Calls += v.Hits
			s.Sum += v.Sum
		}
		addSamples(out, map[string]*CountSample{s.key(): s})
	}
	return out, nil
}

// harvest folds generation gen's counters and counts into the totals
// before gen is rewritten (after a grace period, so they are final).
func (e *Hooks) harvest(gen uint32) error {
	g := e.written[gen]
	if g == nil {
		return nil
	}
	if err := e.ruleCounters([]uint32{gen}, &g.epoch, e.ruleTotals); err != nil {
		return err
	}
	samples, err := e.countSamples(&g.epoch)
	if err != nil {
		return err
	}
	addSamples(e.countTotals, samples)
	totals, err := e.totalSamples(gen)
	if err != nil {
		return err
	}
	addSamples(e.countTotals, totals)
	return nil
}

func addSamples(into map[string]*CountSample, from map[string]*CountSample) {
	for k, s := range from {
		if t, ok := into[k]; ok {
			t.Calls += s.Calls
			t.Sum += s.Sum
			continue
		}
		c := *s
		c.Labels = slices.Clone(s.Labels)
		into[k] = &c
	}
}

// decodeCountKey turns a count key into a sample with named labels.
func decodeCountKey(r codegen.HookRule, key *bpf.HookCountKey) *CountSample {
	s := &CountSample{Metric: r.Count.Metric, Policy: r.Policy, IsSum: r.Count.Sum != ""}
	for _, l := range r.Count.Labels {
		if l.Offset+l.Size > len(key.Labels) {
			continue
		}
		b := key.Labels[l.Offset : l.Offset+l.Size]
		var v string
		switch {
		case l.Kind == "comm" || l.Part == "str":
			if i := slices.Index(b, 0); i >= 0 {
				b = b[:i]
			}
			v = string(b)
		case l.Part == "saddr" || l.Part == "daddr":
			v = labelAddr(b).String()
		case l.Kind == "syscall":
			n := int(le64(b))
			if v = bpf.SyscallName("", n); v == "" {
				v = strconv.Itoa(n)
			}
		case l.Kind == "arg" && l.Part == "num":
			v = strconv.FormatInt(int64(le64(b)), 10)
		default:
			v = strconv.FormatUint(le64(b), 10)
		}
		s.Labels = append(s.Labels, Label{Name: l.Name, Value: v})
	}
	return s
}

// labelAddr reads a 16-byte address label: an IPv4 address fills the first
// 4 bytes and leaves the others zero (the key has no family; an IPv6
// address with 12 trailing zero bytes reads as IPv4).
func labelAddr(b []byte) netip.Addr {
	v4 := true
	for _, x := range b[4:16] {
		if x != 0 {
			v4 = false
		}
	}
	if v4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16([16]byte(b[:16]))
}

func le64(b []byte) uint64 {
	var v uint64
	for i := 0; i < 8 && i < len(b); i++ {
		v |= uint64(b[i]) << (8 * i)
	}
	return v
}

// CountSnapshot returns every in-kernel aggregation since the engine
// started (cumulative across reloads), sorted by metric, policy and labels.
// The kernel keeps the counts; this reads them (no event per call).
func (e *Hooks) CountSnapshot() ([]CountSample, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sum := map[string]*CountSample{}
	addSamples(sum, e.countTotals)
	cur, err := e.countSamples(nil)
	if err != nil {
		return nil, err
	}
	addSamples(sum, cur)
	for gen := uint32(0); gen < bpf.HookGenerations; gen++ {
		totals, err := e.totalSamples(gen)
		if err != nil {
			return nil, err
		}
		addSamples(sum, totals)
	}
	out := make([]CountSample, 0, len(sum))
	for k, s := range sum {
		if last, ok := e.reported[k]; ok && s.Calls < last[0] {
			s.Calls, s.Sum = last[0], last[1] // this read missed a count on its way to the map
		}
		e.reported[k] = [2]uint64{s.Calls, s.Sum}
		s.Value = s.Calls
		if s.IsSum {
			s.Value = s.Sum
		}
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b CountSample) int {
		if c := strings.Compare(a.Metric, b.Metric); c != 0 {
			return c
		}
		return strings.Compare(a.key(), b.key())
	})
	return out, nil
}

// Counters returns per-policy counters of the kernel-hook policies since the
// engine started, summed over every rule set that was in force.
func (e *Hooks) Counters() ([]RuleCounter, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sum := generation.Tally[RuleCounter]{}
	sum.AddAll(e.ruleTotals)
	gens := make([]uint32, 0, bpf.HookGenerations)
	for gen := uint32(0); gen < bpf.HookGenerations; gen++ {
		gens = append(gens, gen)
	}
	if err := e.ruleCounters(gens, nil, sum); err != nil {
		return nil, err
	}
	out := sum.Sorted(func(a, b RuleCounter) int { return strings.Compare(a.Policy, b.Policy) })
	for i := range out {
		c := &out[i]
		if last, ok := e.reportedHits[c.Policy]; ok && c.Hits < last {
			c.Hits = last // this read missed a hit on its way to its counter
		}
		e.reportedHits[c.Policy] = c.Hits
	}
	return out, nil
}

// Nesting counts, since the programs were loaded, the kernel calls
// whose hook program started while another grain hook program was
// running on the same CPU: a hook firing in an interrupt (raw tracepoints
// and raw sys_enter are not kept from nesting by the kernel) or a
// preempted fentry/fexit program. Each program works in a per-CPU scratch
// level; bpf.HookNestLevels levels serve that many programs at once on a
// CPU.
type Nesting struct {
	// Nested calls were served in a deeper scratch level, as usual.
	Nested uint64 `json:"nested"`
	// Skipped calls found every level busy: no policy saw them (not
	// counted, not emitted).
	Skipped uint64 `json:"skipped"`
}

// Nesting sums the nesting counters of every CPU.
func (e *Hooks) Nesting() (Nesting, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var n Nesting
	if e.p == nil {
		return n, nil
	}
	var perCPU []bpf.HookNesting
	if err := e.p.Maps().Nesting.Lookup(uint32(0), &perCPU); err != nil {
		return n, fmt.Errorf("read hook nesting counters: %w", err)
	}
	for _, v := range perCPU {
		n.Nested += v.Nested
		n.Skipped += v.Skipped
	}
	return n, nil
}
