package pipeline

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/grain-ebpf/grain/policies"
)

// Redacted replaces the value of a redacted field.
const Redacted = "REDACTED"

// Stages is a compiled pipeline declaration. It is used by the pipeline's
// goroutine only: the sampling and rate-limit state lives here and starts
// afresh with each reload.
type Stages struct {
	filters  []filter
	samples  []sample
	limits   []rateLimit
	rewrites []rewrite
	host     string // enrichment; empty: none
	cgroups  *cgroupCache
	hashKey  []byte
}

type selector []string // event names; empty: every event

func (s selector) applies(name string) bool {
	return len(s) == 0 || slices.Contains(s, name)
}

type filter struct {
	events selector
	field  string
	strs   []string
	nums   []uint64
	cidrs  []netip.Prefix
}

func (f *filter) matches(v *Field) bool {
	switch v.Kind {
	case Addr:
		for _, p := range f.cidrs {
			if p.Contains(v.Addr.Unmap()) {
				return true
			}
		}
		if len(f.strs) > 0 {
			return slices.Contains(f.strs, v.Addr.String())
		}
	case Uint:
		return slices.Contains(f.nums, v.Num)
	default:
		return slices.Contains(f.strs, v.Str)
	}
	return false
}

type sample struct {
	events selector
	oneIn  uint64
	seen   map[string]uint64
}

type rateLimit struct {
	events    selector
	perSecond float64
	burst     float64
	buckets   map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func (r *rateLimit) allow(name string, now time.Time) bool {
	b := r.buckets[name]
	if b == nil {
		b = &bucket{tokens: r.burst, last: now}
		r.buckets[name] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(r.burst, b.tokens+d.Seconds()*r.perSecond)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

type rewrite struct {
	policies.Rewrite
	events selector
}

// Compile turns a tree's pipeline declaration into stages; nil gives the
// empty pipeline, which passes every event unchanged.
func Compile(p *policies.Pipeline) (*Stages, error) {
	s := &Stages{}
	if p == nil {
		return s, nil
	}
	for _, f := range p.Filters {
		c := filter{events: f.Events, field: f.Field, cidrs: f.CIDRs}
		for i, v := range f.Equals {
			if f.Ints[i] {
				n, err := strconv.ParseUint(v, 10, 64)
				if err == nil {
					c.nums = append(c.nums, n)
					continue
				}
			}
			c.strs = append(c.strs, v)
		}
		s.filters = append(s.filters, c)
	}
	for _, x := range p.Samples {
		s.samples = append(s.samples, sample{events: x.Events, oneIn: uint64(x.OneIn), seen: map[string]uint64{}})
	}
	for _, x := range p.RateLimits {
		s.limits = append(s.limits, rateLimit{events: x.Events, perSecond: x.PerSecond, burst: float64(x.Burst),
			buckets: map[string]*bucket{}})
	}
	for _, x := range p.Rewrites {
		s.rewrites = append(s.rewrites, rewrite{Rewrite: x, events: x.Events})
	}
	if p.Enrich.Host {
		s.host, _ = os.Hostname()
		if s.host == "" {
			s.host = "unknown"
		}
	}
	if p.Enrich.Cgroup {
		s.cgroups = newCgroupCache(procRoot)
	}
	if p.HashKey != "" {
		s.hashKey = []byte(p.HashKey)
	}
	return s, nil
}

// verdict of the stages for one event.
type verdict uint8

const (
	keep verdict = iota
	filtered
	sampled
	rateLimited
)

// apply runs the stages on ev, changing it in place.
func (s *Stages) apply(ev *Event, now time.Time, h *hasher) verdict {
	for i := range s.filters {
		f := &s.filters[i]
		if !f.events.applies(ev.Name) {
			continue
		}
		if v := ev.Get(f.field); v != nil && f.matches(v) {
			return filtered
		}
	}
	for i := range s.samples {
		x := &s.samples[i]
		if !x.events.applies(ev.Name) {
			continue
		}
		n := x.seen[ev.Name]
		x.seen[ev.Name] = n + 1
		if n%x.oneIn != 0 {
			return sampled
		}
	}
	for i := range s.limits {
		r := &s.limits[i]
		if r.events.applies(ev.Name) && !r.allow(ev.Name, now) {
			return rateLimited
		}
	}
	for i := range s.rewrites {
		r := &s.rewrites[i]
		if !r.events.applies(ev.Name) {
			continue
		}
		f := ev.Get(r.Field)
		if f == nil {
			continue
		}
		switch r.Action {
		case policies.RewriteRename:
			// A field that already has the new name gives way.
			if i := slices.IndexFunc(ev.Fields, func(x Field) bool { return x.Key == r.To }); i >= 0 && &ev.Fields[i] != f {
				key := f.Key
				ev.Fields = slices.Delete(ev.Fields, i, i+1)
				f = ev.Get(key)
			}
			f.Key = r.To
		case policies.RewriteRedact:
			*f = Field{Key: f.Key, Kind: String, Str: Redacted}
		case policies.RewriteHash:
			*f = Field{Key: f.Key, Kind: String, Str: h.sumOf(s.hashKey, f)}
		case policies.RewriteTruncate:
			if f.Kind == String && len(f.Str) > r.Length {
				n := r.Length
				for n > 0 && !utf8.RuneStart(f.Str[n]) {
					n--
				}
				f.Str = f.Str[:n]
			}
		case policies.RewritePrefix:
			if f.Kind != Addr {
				continue
			}
			bits := r.IPv6Bits
			a := f.Addr
			if a.Is4() || a.Is4In6() {
				a, bits = a.Unmap(), r.IPv4Bits
			}
			if bits >= 0 {
				if p, err := a.Prefix(bits); err == nil {
					f.Addr = p.Addr()
				}
			}
		}
	}
	// Enrichment never replaces a field the event already has.
	if s.host != "" && ev.Get("host") == nil {
		ev.AppendString("host", s.host)
	}
	if s.cgroups != nil {
		// The process: tgid (kernel hooks' process id) or pid.
		pid := ev.Get("tgid")
		if pid == nil || pid.Kind != Uint {
			pid = ev.Get("pid")
		}
		if pid != nil && pid.Kind == Uint {
			if cg, ok := s.cgroups.lookup(pid.Num); ok {
				if ev.Get("cgroup_path") == nil {
					ev.AppendString("cgroup_path", cg.path)
				}
				if cg.container != "" && ev.Get("container") == nil {
					ev.AppendString("container", cg.container)
				}
			}
		}
	}
	return keep
}

// hasher hashes field values: HMAC-SHA-256 with the pipeline's key, or
// SHA-256 without one; the first 8 bytes in hex.
type hasher struct {
	key []byte
	mac hash.Hash
	buf []byte
	sum []byte
}

func (h *hasher) sumOf(key []byte, f *Field) string {
	if h.mac == nil || !slices.Equal(h.key, key) {
		h.key = slices.Clone(key)
		if len(key) > 0 {
			h.mac = hmac.New(sha256.New, key)
		} else {
			h.mac = sha256.New()
		}
	}
	h.mac.Reset()
	switch f.Kind {
	case Uint:
		h.buf = strconv.AppendUint(h.buf[:0], f.Num, 10)
	case Addr:
		h.buf = f.Addr.AppendTo(h.buf[:0])
	default:
		h.buf = append(h.buf[:0], f.Str...)
	}
	h.mac.Write(h.buf)
	h.sum = h.mac.Sum(h.sum[:0])
	return hex.EncodeToString(h.sum[:8])
}
