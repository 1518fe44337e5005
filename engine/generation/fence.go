package generation

// Fence is an event reader's progress towards forgetting the names of
// replaced rule sets. Once no program runs them (a grace period after the
// flip) and no stage holds their events, all of them are in the ring,
// within the bytes it held then: when the reader has read as many, or
// found the ring empty, it has read them all. The grace period and the
// look at the stages run beside the reader, which goes on reading
// meanwhile. One goroutine, the ring's only reader, uses a Fence.
type Fence struct {
	s       retirement
	epochs  []uint32      // passed the fence: all their events are in the ring
	ahead   int           // ring bytes to read before they are all read
	settled chan []uint32 // the result of settled, while it runs
}

// retirement is what a Fence needs of its Switch, whatever its rule type.
type retirement interface {
	anyRetired() bool
	retiredEpochs() []uint32
	settled() []uint32
	forget(epochs []uint32)
}

// Fence returns a fence for the reader of the ring the programs of s
// write their events to.
func (s *Switch[R]) Fence() *Fence { return &Fence{s: s} }

// Read counts one record of n bytes read from the ring.
func (f *Fence) Read(n int) {
	if f.epochs == nil {
		return
	}
	// A record takes its 8-byte header and is padded to 8 bytes.
	f.ahead -= (n + 8 + 7) &^ 7
	if f.ahead <= 0 {
		f.s.forget(f.epochs)
		f.epochs = nil
	}
}

// Drained is called when the reader found the ring empty: the epochs past
// the fence are forgotten, and those retired since are taken to the fence.
// available says how many bytes the ring holds now.
func (f *Fence) Drained(available func() int) {
	if f.epochs != nil {
		f.s.forget(f.epochs)
		f.epochs = nil
	}
	if f.settled != nil {
		select {
		case epochs := <-f.settled:
			f.settled = nil
			if len(epochs) > 0 {
				// Their events are all in the ring now: within what it
				// holds (read by this goroutine, the ring's only reader).
				f.epochs, f.ahead = epochs, available()
				if f.ahead == 0 {
					f.s.forget(f.epochs)
					f.epochs = nil
				}
			}
		default:
		}
		return
	}
	if f.s.anyRetired() {
		settled := make(chan []uint32, 1)
		f.settled = settled
		go func() { settled <- f.s.settled() }()
	}
}
