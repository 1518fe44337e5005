// Package generation switches a rule set's tables between two generations,
// the way both halves of grain's engine (packet rules and kernel hooks) do
// it: every table exists twice, the BPF programs read one word that says
// which generation is active, a reload writes the inactive generation
// (Prepare: it may fail, nothing reads it yet) and flips the word
// (Commit). The package also owns what goes with that: the RCU grace
// period that says no program still reads a generation, the epochs that
// tell rule ids of successive rule sets apart, the names of rule sets
// whose events may still be read, and the map writes a generation needs.
//
// A Switch's Prepare and Commit are called by one goroutine at a time (the
// half's lock); Lookup and the reader's Fence run beside them.
package generation

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Count is how many generations every table has: the one in force and the
// one a reload writes.
const Count = 2

// Rule ids in the kernel are epoch<<IndexBits | index. The BPF programs
// copy them into events and count keys without reading their bits, so the
// layout is userspace's alone; IndexBits covers the largest rule table of
// either half (bpf.MaxRules, bpf.HookMaxRules: a test checks).
const (
	IndexBits = 11
	MaxEpoch  = 1<<(32-IndexBits) - 1
)

// RuleID is the id of rule index of the rule set of epoch.
func RuleID(epoch uint32, index int) uint32 { return epoch<<IndexBits | uint32(index) }

// EpochOf is the epoch of a rule id.
func EpochOf(id uint32) uint32 { return id >> IndexBits }

// IndexOf is the rule index of a rule id.
func IndexOf(id uint32) int { return int(id & (1<<IndexBits - 1)) }

// MaxRetired bounds the replaced rule sets kept named for an event reader:
// far more than reloads come between two reads of a ring. With no reader
// (or one stalled behind a blocked sink) nothing passes the fence, and past
// this bound the oldest names go, so that reloads cannot grow memory
// without bound; their late events are then unnamed.
const MaxRetired = 64

// Options configure a Switch.
type Options struct {
	// Activate writes the one word that makes generation gen the one the
	// programs read. On an error it must have changed nothing.
	Activate func(gen uint32) error
	// Staged, when set, calls fn with the rule id of every event a program
	// has produced but not yet put into the ring buffer (bpf.XDP's per-CPU
	// stages): a replaced rule set is named until none of its events is
	// staged.
	Staged func(fn func(id uint32)) error
}

// Switch is the generation switch of one half: which generation is
// active, the epoch of its rules, and the names of the rule sets whose
// events may still be read. R is the half's rule type.
type Switch[R any] struct {
	grace    *Grace
	activate func(gen uint32) error
	staged   func(fn func(id uint32)) error

	active, epoch uint32 // guarded by the caller (Prepare, Commit)

	namesMu sync.RWMutex
	byEpoch map[uint32][]R
	retired []uint32 // epochs replaced, still in byEpoch (Fence)
	// nretired is len(retired), for a reader that finds the ring empty
	// after nearly every record to look at without the lock.
	nretired atomic.Int32
}

// New creates a Switch with its grace-period map. Generation 0 is active,
// at epoch 0, until Adopt or the first Commit says otherwise.
func New[R any](opts Options) (*Switch[R], error) {
	if opts.Activate == nil {
		return nil, errors.New("generation: Options.Activate is required")
	}
	g, err := NewGrace()
	if err != nil {
		return nil, err
	}
	return &Switch[R]{grace: g, activate: opts.Activate, staged: opts.Staged, byEpoch: map[uint32][]R{}}, nil
}

// Close frees the grace-period map.
func (s *Switch[R]) Close() error { return s.grace.Close() }

// Active is the generation the programs read.
func (s *Switch[R]) Active() uint32 { return s.active }

// Epoch is the epoch of the rule set in force.
func (s *Switch[R]) Epoch() uint32 { return s.epoch }

// Adopt takes over the state an earlier process left in the kernel:
// generation active is in force with rules of epoch.
func (s *Switch[R]) Adopt(active, epoch uint32) {
	s.active, s.epoch = active&1, epoch&MaxEpoch
}

// AdoptNames names the rules of epoch, which an earlier process wrote: the
// rule set in force (epoch is Epoch()), or a replaced one whose events may
// still be read, named until the reader has read them.
func (s *Switch[R]) AdoptNames(epoch uint32, rules []R) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	s.byEpoch[epoch] = rules
	s.retireLocked(epoch, s.epoch)
}

// WaitGracePeriod returns once every program run that began before it has
// ended.
func (s *Switch[R]) WaitGracePeriod() error { return s.grace.Wait() }

// Pending is a rule set written into the inactive generation (Prepare),
// which no program reads until Commit.
type Pending[R any] struct {
	s     *Switch[R]
	Gen   uint32 // the generation written
	Epoch uint32 // the epoch of its rule ids
	rules []R
	done  bool
}

// Prepare writes the inactive generation: it waits until no program can
// still be reading it (it may have been active until the last Commit),
// then calls write with the generation and the epoch its rule ids carry
// (RuleID). On an error from write the generation may be half written,
// which nothing reads; the rules in force are untouched either way.
func (s *Switch[R]) Prepare(rules []R, write func(gen, epoch uint32) error) (*Pending[R], error) {
	if err := s.grace.Wait(); err != nil {
		return nil, fmt.Errorf("wait for an RCU grace period: %w", err)
	}
	p := &Pending[R]{s: s, Gen: 1 - s.active, Epoch: (s.epoch + 1) & MaxEpoch, rules: rules}
	if err := write(p.Gen, p.Epoch); err != nil {
		return nil, err
	}
	return p, nil
}

// Commit puts the prepared generation in force: one word, which each
// program run reads once, so it sees the old rules or the new, never a
// mix. Its rules are named before the flip (the first event may follow
// at once); the replaced rule set stays named until the event reader has
// read every event it can still send (Fence). On an error nothing changed.
func (p *Pending[R]) Commit() error {
	if p.done {
		return errors.New("generation: a prepared generation is committed once")
	}
	p.done = true
	s := p.s
	s.namesMu.Lock()
	s.byEpoch[p.Epoch] = p.rules
	s.namesMu.Unlock()
	err := s.activate(p.Gen)
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	if err != nil {
		delete(s.byEpoch, p.Epoch)
		return fmt.Errorf("activate generation %d: %w", p.Gen, err)
	}
	old := s.epoch
	s.active, s.epoch = p.Gen, p.Epoch
	if _, named := s.byEpoch[old]; named {
		s.retireLocked(old, p.Epoch)
	}
	return nil
}

// Lookup names the rule an event's rule id refers to, if its rule set is
// still named.
func (s *Switch[R]) Lookup(id uint32) (R, bool) {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	rules, index := s.byEpoch[EpochOf(id)], IndexOf(id)
	if index >= len(rules) {
		var zero R
		return zero, false
	}
	return rules[index], true
}

// Named counts the rule sets named, and of them those replaced.
func (s *Switch[R]) Named() (named, retired int) {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	return len(s.byEpoch), len(s.retired)
}

// Retired counts the replaced rule sets whose events a reader may still
// read.
func (s *Switch[R]) Retired() int {
	_, retired := s.Named()
	return retired
}

// retireLocked records that the rule set of epoch old was replaced by
// current's. An epoch number in use again (after 2^21 commits) is not
// retired. s.namesMu must be held.
func (s *Switch[R]) retireLocked(old, current uint32) {
	s.retired = slices.DeleteFunc(s.retired, func(r uint32) bool { return r == current })
	if old != current && !slices.Contains(s.retired, old) {
		s.retired = append(s.retired, old)
	}
	for len(s.retired) > MaxRetired {
		delete(s.byEpoch, s.retired[0])
		s.retired = slices.Delete(s.retired, 0, 1)
	}
	s.nretired.Store(int32(len(s.retired)))
}

// anyRetired reports, without the lock, whether some rule set is retired.
func (s *Switch[R]) anyRetired() bool { return s.nretired.Load() > 0 }

// retiredEpochs implements retirement for the Fence.
func (s *Switch[R]) retiredEpochs() []uint32 {
	s.namesMu.RLock()
	defer s.namesMu.RUnlock()
	return slices.Clone(s.retired)
}

// settled returns the retired epochs whose events are all in the ring, or
// none: every program run that may still have read a replaced generation
// ends within a grace period of the flip, and its events are then staged
// or in the ring; a stage sends its events within a batch's time, so a
// retired epoch still staged is asked about again at the reader's next
// poll.
func (s *Switch[R]) settled() []uint32 {
	retired := s.retiredEpochs()
	if s.grace.Wait() != nil {
		return nil // closed meanwhile: the names stay, which is safe
	}
	if s.staged != nil {
		staged := false
		err := s.staged(func(id uint32) {
			staged = staged || slices.Contains(retired, EpochOf(id))
		})
		if err != nil || staged {
			return nil
		}
	}
	return retired
}

// forget drops the names of retired epochs whose events were all read.
func (s *Switch[R]) forget(epochs []uint32) {
	s.namesMu.Lock()
	defer s.namesMu.Unlock()
	for _, epoch := range epochs {
		// still retired: not the epoch of a rule set committed since
		if i := slices.Index(s.retired, epoch); i >= 0 {
			s.retired = slices.Delete(s.retired, i, i+1)
			delete(s.byEpoch, epoch)
		}
	}
	s.nretired.Store(int32(len(s.retired)))
}
