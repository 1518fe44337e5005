package generation

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The rule id layout holds every rule index of either half, and its
// parts come back out.
func TestRuleIDsHoldEveryRuleOfBothHalves(t *testing.T) {
	for name, n := range map[string]int{"bpf.MaxRules": bpf.MaxRules, "bpf.HookMaxRules": bpf.HookMaxRules} {
		if n > 1<<IndexBits {
			t.Errorf("%s is %d, more than the %d rule indexes of IndexBits %d", name, n, 1<<IndexBits, IndexBits)
		}
	}
	for _, c := range []struct {
		epoch uint32
		index int
	}{{0, 0}, {1, 5}, {MaxEpoch, 1<<IndexBits - 1}, {12345, 2047}} {
		id := RuleID(c.epoch, c.index)
		if EpochOf(id) != c.epoch || IndexOf(id) != c.index {
			t.Errorf("RuleID(%d, %d) = %#x reads back as epoch %d, index %d", c.epoch, c.index, id, EpochOf(id), IndexOf(id))
		}
	}
}

// testSwitch is a Switch whose active word is a real one-slot array map.
func testSwitch(t *testing.T, staged func(func(uint32)) error) (*Switch[string], *ebpf.Map, *error) {
	t.Helper()
	vmtest.RequireRoot(t)
	word, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { word.Close() })
	var failActivate error
	s, err := New[string](Options{
		Activate: func(gen uint32) error {
			if failActivate != nil {
				return failActivate
			}
			return word.Put(uint32(0), gen)
		},
		Staged: staged,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, word, &failActivate
}

func commit(t *testing.T, s *Switch[string], rules ...string) *Pending[string] {
	t.Helper()
	p, err := s.Prepare(rules, func(gen, epoch uint32) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	return p
}

func activeWord(t *testing.T, word *ebpf.Map) uint32 {
	t.Helper()
	var v uint32
	if err := word.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// Prepare writes the inactive generation and names nothing; Commit flips
// the word and names the new rules; a write or an activation that fails
// leaves the generation in force, its epoch and its names as they were.
func TestCommitFlipsOneWordAndAFailureChangesNothing(t *testing.T) {
	s, word, failActivate := testSwitch(t, nil)
	first := commit(t, s, "a0", "a1")
	if first.Gen != 1 || s.Active() != 1 || activeWord(t, word) != 1 || s.Epoch() != first.Epoch {
		t.Fatalf("after the first commit: generation %d (word %d), epoch %d; want generation 1 at epoch %d", s.Active(), activeWord(t, word), s.Epoch(), first.Epoch)
	}

	var wrote []uint32
	p, err := s.Prepare([]string{"b0"}, func(gen, epoch uint32) error {
		wrote = append(wrote, gen, epoch)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(wrote, []uint32{0, first.Epoch + 1}) {
		t.Errorf("Prepare wrote generation/epoch %v, want [0 %d]: the inactive one, the next epoch", wrote, first.Epoch+1)
	}
	if _, ok := s.Lookup(RuleID(p.Epoch, 0)); ok {
		t.Error("a prepared rule set is named before its commit")
	}
	*failActivate = errors.New("refused")
	if err := p.Commit(); err == nil {
		t.Fatal("Commit succeeded though the activation failed")
	}
	if s.Active() != 1 || activeWord(t, word) != 1 || s.Epoch() != first.Epoch {
		t.Errorf("after a failed commit: generation %d (word %d), epoch %d; want generation 1 at epoch %d still", s.Active(), activeWord(t, word), s.Epoch(), first.Epoch)
	}
	if _, ok := s.Lookup(RuleID(p.Epoch, 0)); ok {
		t.Error("the rules of a failed commit are named")
	}
	if r, ok := s.Lookup(RuleID(first.Epoch, 1)); !ok || r != "a1" {
		t.Errorf("rule 1 of the rule set in force is %q, %v; want a1", r, ok)
	}
	if _, retired := s.Named(); retired != 0 {
		t.Errorf("a failed commit retired %d rule sets", retired)
	}

	*failActivate = nil
	if _, err := s.Prepare([]string{"c0"}, func(gen, epoch uint32) error { return errors.New("map full") }); err == nil {
		t.Fatal("Prepare succeeded though its write failed")
	}
	if s.Active() != 1 || s.Epoch() != first.Epoch {
		t.Errorf("after a failed write: generation %d, epoch %d; want 1 at %d", s.Active(), s.Epoch(), first.Epoch)
	}
}

// A replaced rule set stays named until the reader's fence says every
// event it can still send was read; with no reader, past MaxRetired rule
// sets the oldest names go, and the set in force stays named.
func TestReplacedNamesLastUntilTheReaderReadThem(t *testing.T) {
	s, _, _ := testSwitch(t, nil)
	old := commit(t, s, "old")
	cur := commit(t, s, "current")
	if r, ok := s.Lookup(RuleID(old.Epoch, 0)); !ok || r != "old" {
		t.Fatalf("the replaced rule set is not named before any read: %q %v", r, ok)
	}
	f := s.Fence()
	// The ring holds 40 bytes of events when the fence settles: two
	// records of 12 bytes (24 with header and padding each) read them.
	drainUntilSettled(t, f, func() int { return 40 })
	if _, ok := s.Lookup(RuleID(old.Epoch, 0)); !ok {
		t.Fatal("the replaced names went before the reader read what the ring held")
	}
	f.Read(12)
	if _, ok := s.Lookup(RuleID(old.Epoch, 0)); !ok {
		t.Fatal("the replaced names went after 24 of the 40 bytes were read")
	}
	f.Read(12)
	if _, ok := s.Lookup(RuleID(old.Epoch, 0)); ok {
		t.Error("the replaced names stay after the reader read every event they could send")
	}
	if r, ok := s.Lookup(RuleID(cur.Epoch, 0)); !ok || r != "current" {
		t.Errorf("the rule set in force is %q, %v; want named current", r, ok)
	}

	for range 3 * MaxRetired {
		commit(t, s, "many")
	}
	named, retired := s.Named()
	if retired != MaxRetired || named != MaxRetired+1 {
		t.Errorf("after %d commits and no reader: %d named, %d retired; want %d retired and the set in force", 3*MaxRetired, named, retired, MaxRetired)
	}
	if _, ok := s.Lookup(RuleID(s.Epoch(), 0)); !ok {
		t.Error("the rule set in force lost its names")
	}
}

// A replaced rule set with an event still staged (not yet in the ring)
// stays named however often the reader finds the ring empty.
func TestStagedEventsKeepTheirRuleSetNamed(t *testing.T) {
	var stagedID uint32
	staging := true
	s, _, _ := testSwitch(t, func(fn func(uint32)) error {
		if staging {
			fn(stagedID)
		}
		return nil
	})
	old := commit(t, s, "old")
	stagedID = RuleID(old.Epoch, 0)
	commit(t, s, "current")
	f := s.Fence()
	for range 5 {
		drainUntilSettled(t, f, func() int { return 0 })
	}
	if _, ok := s.Lookup(stagedID); !ok {
		t.Fatal("the rule set of a staged event was forgotten")
	}
	staging = false
	drainUntilSettled(t, f, func() int { return 0 })
	if _, ok := s.Lookup(stagedID); ok {
		t.Error("the rule set stays named after its last event left the stage and the ring was empty")
	}
}

// drainUntilSettled tells the fence the ring is empty until the look at
// grace period and stages that this starts beside the reader has answered.
func drainUntilSettled(t *testing.T, f *Fence, available func() int) {
	t.Helper()
	f.Drained(available)
	for deadline := time.Now().Add(10 * time.Second); f.settled != nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the fence's grace period did not end in 10 s")
		}
		f.Drained(available)
	}
}

// Names an earlier process kept are adopted: the set in force as it is,
// the other as replaced.
func TestAdoptedNames(t *testing.T) {
	s, _, _ := testSwitch(t, nil)
	s.Adopt(1, 7)
	s.AdoptNames(7, []string{"in force"})
	s.AdoptNames(6, []string{"replaced"})
	if named, retired := s.Named(); named != 2 || retired != 1 {
		t.Errorf("%d named, %d retired; want 2 and 1", named, retired)
	}
	p := commit(t, s, "next")
	if p.Gen != 0 || p.Epoch != 8 {
		t.Errorf("the commit after adoption wrote generation %d at epoch %d; want 0 at 8", p.Gen, p.Epoch)
	}
	if r, ok := s.Lookup(RuleID(7, 0)); !ok || r != "in force" {
		t.Errorf("adopted rule set: %q %v", r, ok)
	}
}

// PutRange writes consecutive keys; DeleteStale removes only what its
// predicate selects.
func TestMapWrites(t *testing.T) {
	vmtest.RequireRoot(t)
	arr, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer arr.Close()
	if err := PutRange(arr, 4, []uint64{10, 11, 12}); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[uint32]uint64{3: 0, 4: 10, 5: 11, 6: 12, 7: 0} {
		var got uint64
		if err := arr.Lookup(k, &got); err != nil || got != want {
			t.Errorf("key %d: %d, %v; want %d", k, got, err, want)
		}
	}
	hash, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 1, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer hash.Close()
	if err := PutBatch(hash, []uint32{1, 2, 3, 4}, []uint8{1, 1, 1, 1}); err != nil {
		t.Fatal(err)
	}
	if err := DeleteStale(hash, func(k uint32) bool { return k%2 == 0 }); err != nil {
		t.Fatal(err)
	}
	var left []uint32
	var k uint32
	var v uint8
	for it := hash.Iterate(); it.Next(&k, &v); {
		left = append(left, k)
	}
	slices.Sort(left)
	if !slices.Equal(left, []uint32{1, 3}) {
		t.Errorf("after deleting the even keys: %v, want [1 3]", left)
	}
	if n := PossibleCPUs(); n < 1 {
		t.Errorf("PossibleCPUs() = %d", n)
	}
}
