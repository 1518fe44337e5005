package generation

import (
	"runtime"
	"sync"

	"github.com/cilium/ebpf"
)

// PutBatch writes values at keys, in one batch where the kernel supports
// it (Linux 5.6), one entry at a time otherwise.
func PutBatch[K, V any](m *ebpf.Map, keys []K, values []V) error {
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchUpdate(keys, values, nil); err == nil {
		return nil
	}
	for i := range keys {
		if err := m.Put(keys[i], values[i]); err != nil {
			return err
		}
	}
	return nil
}

// PutRange writes values at consecutive array keys from first (PutBatch).
func PutRange[V any](m *ebpf.Map, first uint32, values []V) error {
	keys := make([]uint32, len(values))
	for i := range keys {
		keys[i] = first + uint32(i)
	}
	return PutBatch(m, keys, values)
}

// DeleteStale removes the entries of hash map m whose key stale selects:
// the entries of a generation about to be rewritten.
func DeleteStale[K any](m *ebpf.Map, stale func(K) bool) error {
	var k K
	var keys []K
	var v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		if stale(k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

var possibleCPUs = sync.OnceValue(func() int {
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return runtime.NumCPU() // sysfs unreadable: the CPUs Go sees
	}
	return n
})

// PossibleCPUs is the number of values a per-CPU map entry holds.
func PossibleCPUs() int { return possibleCPUs() }
