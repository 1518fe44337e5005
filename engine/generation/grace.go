package generation

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// Grace waits for RCU grace periods: updating a map-of-maps slot returns
// only after one, after which no BPF program run (XDP and tc programs,
// and tracing programs, run under rcu_read_lock) that began before the
// update still runs, so none still reads a generation that was active
// before.
type Grace struct {
	outer, inner *ebpf.Map
}

// NewGrace creates the one-slot map of maps that Wait updates.
func NewGrace() (*Grace, error) {
	spec := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create grace-period map: %w", err)
	}
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: spec})
	if err != nil {
		inner.Close()
		return nil, fmt.Errorf("create grace-period map (needs map-in-map support): %w", err)
	}
	return &Grace{outer: outer, inner: inner}, nil
}

// Wait returns once every program run that began before it has ended.
func (g *Grace) Wait() error { return g.outer.Put(uint32(0), g.inner) }

// Close frees the maps; a Wait after it fails.
func (g *Grace) Close() error {
	err := g.outer.Close()
	if err2 := g.inner.Close(); err == nil {
		err = err2
	}
	return err
}
