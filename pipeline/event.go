// Package pipeline carries grain's events from the kernel readers to the
// exporters: a bounded queue that a reader never waits on, then the
// stages a policy tree declares (filter, sample, rate limit, rewrite,
// enrich), then the sinks (stdout JSON lines, OTLP logs). Every event that
// does not reach a sink is counted, by reason.
package pipeline

import (
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"
)

// Kind is the type of a field's value.
type Kind uint8

const (
	String Kind = iota
	Uint
	Addr
)

// Field is one named value of an event.
type Field struct {
	Key  string
	Kind Kind
	Str  string
	Num  uint64
	Addr netip.Addr
}

// Event is one event on its way to the sinks. Events live in batches that
// are reused: a sink copies what it keeps.
type Event struct {
	Time   time.Time
	Policy string
	// Name is the event name of the policy's emit.
	Name string
	// Fields in output order; a reader appends them with the Append*
	// methods.
	Fields []Field
}

// Reset empties e, keeping its field storage.
func (e *Event) Reset() {
	e.Policy, e.Name = "", ""
	e.Fields = e.Fields[:0]
}

func (e *Event) AppendString(key, v string) {
	e.Fields = append(e.Fields, Field{Key: key, Kind: String, Str: v})
}

func (e *Event) AppendUint(key string, v uint64) {
	e.Fields = append(e.Fields, Field{Key: key, Kind: Uint, Num: v})
}

func (e *Event) AppendAddr(key string, v netip.Addr) {
	e.Fields = append(e.Fields, Field{Key: key, Kind: Addr, Addr: v})
}

// Get returns the field named key, or nil.
func (e *Event) Get(key string) *Field {
	for i := range e.Fields {
		if e.Fields[i].Key == key {
			return &e.Fields[i]
		}
	}
	return nil
}

// CopyFrom makes e a copy of src that shares no storage with it.
func (e *Event) CopyFrom(src *Event) {
	e.Time, e.Policy, e.Name = src.Time, src.Policy, src.Name
	e.Fields = append(e.Fields[:0], src.Fields...)
}

// String formats the value as it appears in JSON, without quotes.
func (f *Field) String() string {
	switch f.Kind {
	case Uint:
		return strconv.FormatUint(f.Num, 10)
	case Addr:
		return f.Addr.String()
	}
	return f.Str
}

// AppendJSON appends e as one JSON object and a newline: time, policy,
// event, then the fields in order.
func (e *Event) AppendJSON(b []byte) []byte {
	return e.appendJSON(b, nil)
}

// timeStamp keeps the text of the last time formatted: events of a burst
// share the kernel's coarse timestamp (one scheduler tick), so a sink
// formats each tick once.
type timeStamp struct {
	t    time.Time
	text []byte
}

func (s *timeStamp) format(t time.Time) []byte {
	if s.text == nil || !t.Equal(s.t) {
		s.t = t
		s.text = t.UTC().AppendFormat(s.text[:0], time.RFC3339Nano)
	}
	return s.text
}

// appendJSON is AppendJSON with the time's text from stamp, when not nil.
func (e *Event) appendJSON(b []byte, stamp *timeStamp) []byte {
	b = append(b, `{"time":"`...)
	if stamp != nil {
		b = append(b, stamp.format(e.Time)...)
	} else {
		b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	}
	b = append(b, `","policy":`...)
	b = appendJSONString(b, e.Policy)
	if e.Name != "" {
		b = append(b, `,"event":`...)
		b = appendJSONString(b, e.Name)
	}
	for i := range e.Fields {
		f := &e.Fields[i]
		b = append(b, ',')
		b = appendJSONString(b, f.Key)
		b = append(b, ':')
		switch f.Kind {
		case Uint:
			b = strconv.AppendUint(b, f.Num, 10)
		case Addr:
			b = append(b, '"')
			b = f.Addr.AppendTo(b)
			b = append(b, '"')
		default:
			b = appendJSONString(b, f.Str)
		}
	}
	return append(b, '}', '\n')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, the value first mapped to valid UTF-8 by
// ValidUTF8 (invalid bytes as \xNN).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	mapped := false
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		size := 1
		invalid := false
		if c >= utf8.RuneSelf {
			var r rune
			r, size = utf8.DecodeRuneInString(s[i:])
			invalid = r == utf8.RuneError && size == 1
		}
		if !mapped && (c == '\\' || invalid) {
			// What precedes the first backslash or invalid byte maps to
			// itself: map the rest (rarely needed, and then only once).
			b = append(b, s[start:i]...)
			s, i, start, mapped = ValidUTF8(s[i:]), 0, 0, true
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\t':
				b = append(b, '\\', 't')
			case '\r':
				b = append(b, '\\', 'r')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
