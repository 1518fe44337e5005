package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/pipeline"
)

// ProbeEvent is one event of a probe policy, decoded.
type ProbeEvent struct {
	Time   time.Time
	Policy string
	Event  string
	RuleID uint32
	// Process context: PID is the thread id (the kernel's pid), TGID the
	// process id, PPID its parent's process id.
	PID, TGID, PPID, UID, GID uint32
	Comm                      string
	Cgroup                    uint64
	// Syscall is the system call number of a syscall hook.
	Syscall int
	// Truncated tells that a path was longer than grain reads
	// (bpf.ProbeStrLen bytes, bpf.ProbePathDepth components).
	Truncated bool
	// Fields are the values the policy's emit asked for, in its order.
	Fields []ProbeField
}

// ProbeFieldKind is the type of a ProbeField's value.
type ProbeFieldKind uint8

const (
	FieldUint ProbeFieldKind = iota
	FieldInt
	FieldString
	FieldAddr
)

// ProbeField is one named value of a probe event.
type ProbeField struct {
	Name string
	Kind ProbeFieldKind
	Uint uint64
	Int  int64
	Str  string
	Addr netip.Addr
}

// Value returns the field's value as uint64, int64, string or netip.Addr.
func (f *ProbeField) Value() any {
	switch f.Kind {
	case FieldInt:
		return f.Int
	case FieldString:
		return f.Str
	case FieldAddr:
		return f.Addr
	}
	return f.Uint
}

// Field returns the field named name, or nil.
func (ev *ProbeEvent) Field(name string) *ProbeField {
	for i := range ev.Fields {
		if ev.Fields[i].Name == name {
			return &ev.Fields[i]
		}
	}
	return nil
}

const probeEventHeader = 64

// probeDecoder decodes raw events; it caches the rule of the last event and
// interns comm strings, so that decoding allocates little.
type probeDecoder struct {
	e          *Probes
	bootOffset time.Duration
	lastID     uint32
	last       codegen.ProbeRule
	lastOK     bool
	haveLast   bool
	comms      map[[16]byte]string
	exes       map[exeKey]exeEntry
	cgroups    *pipeline.CgroupResolver
	host       string
	args       [bpf.ProbeMaxArgs]struct {
		typ  uint8
		data []byte
	}
}

func (e *Probes) newDecoder() *probeDecoder {
	host, _ := os.Hostname()
	return &probeDecoder{e: e, bootOffset: bootTimeOffset(), comms: map[[16]byte]string{}, exes: map[exeKey]exeEntry{}, host: host,
		cgroups: pipeline.NewCgroupResolver()}
}

// probeRule names the rule an event's id refers to, if its plan is still
// known.
func (e *Probes) probeRule(id uint32) (codegen.ProbeRule, bool) { return e.gen.Lookup(id) }

func (d *probeDecoder) comm(b []byte) string {
	var k [16]byte
	copy(k[:], b)
	if s, ok := d.comms[k]; ok {
		return s
	}
	n := 0
	for n < 16 && k[n] != 0 {
		n++
	}
	s := string(k[:n])
	if len(d.comms) > 4096 {
		clear(d.comms)
	}
	d.comms[k] = s
	return s
}

// exe returns the executable of process tgid, read from /proc while the
// process lives. It is cached by process and comm for exeCacheTTL: an exec
// keeps the process id but changes the executable (and usually the comm).
func (d *probeDecoder) exe(tgid uint32, comm string) string {
	now := time.Now()
	k := exeKey{tgid: tgid, comm: comm}
	if e, ok := d.exes[k]; ok && now.Sub(e.at) < exeCacheTTL {
		return e.path
	}
	s, _ := os.Readlink("/proc/" + strconv.FormatUint(uint64(tgid), 10) + "/exe")
	if len(d.exes) > 4096 {
		clear(d.exes)
	}
	d.exes[k] = exeEntry{path: s, at: now}
	return s
}

type exeKey struct {
	tgid uint32
	comm string
}

type exeEntry struct {
	path string
	at   time.Time
}

const exeCacheTTL = 2 * time.Second

// decode fills ev from one raw event; false when the event is malformed.
func (d *probeDecoder) decode(ev *ProbeEvent, raw []byte) bool {
	if len(raw) < probeEventHeader {
		return false
	}
	le := binary.LittleEndian
	id := le.Uint32(raw[16:])
	if !d.haveLast || id != d.lastID {
		d.last, d.lastOK = d.e.probeRule(id)
		d.lastID, d.haveLast = id, true
	}
	r := d.last
	ev.RuleID = id
	ev.Time = time.Unix(0, int64(le.Uint64(raw[0:]))+int64(d.bootOffset))
	ev.Cgroup = le.Uint64(raw[8:])
	ev.PID, ev.TGID, ev.PPID = le.Uint32(raw[20:]), le.Uint32(raw[24:]), le.Uint32(raw[28:])
	ev.UID, ev.GID = le.Uint32(raw[32:]), le.Uint32(raw[36:])
	size, nargs, flags := int(le.Uint16(raw[40:])), int(raw[42]), raw[43]
	ev.Syscall = int(le.Uint16(raw[46:]))
	ev.Comm = d.comm(raw[48:64])
	ev.Truncated = flags&bpf.ProbeEvTruncated != 0
	ev.Fields = ev.Fields[:0]
	if d.lastOK {
		ev.Policy = r.Policy
		if r.Emit != nil {
			ev.Event = r.Emit.Event
		}
	} else {
		ev.Policy, ev.Event = "unknown-rule-"+strconv.FormatUint(uint64(id), 10), ""
	}
	if size > len(raw) {
		return false
	}
	for i := range d.args {
		d.args[i].data = nil
	}
	off := probeEventHeader
	for i := 0; i < nargs; i++ {
		if off+8 > size {
			return false
		}
		slot, typ, n := int(raw[off]), raw[off+1], int(le.Uint16(raw[off+2:]))
		off += 8
		if off+n > size || slot >= bpf.ProbeMaxArgs {
			return false
		}
		d.args[slot].typ, d.args[slot].data = typ, raw[off:off+n]
		off += (n + 7) &^ 7
	}
	if !d.lastOK || r.Emit == nil {
		return true
	}
	for _, f := range r.Emit.Fields {
		pf := ProbeField{Name: f.Name}
		switch f.Kind {
		case "pid":
			pf.Uint = uint64(ev.PID)
		case "tgid":
			pf.Uint = uint64(ev.TGID)
		case "ppid":
			pf.Uint = uint64(ev.PPID)
		case "uid":
			pf.Uint = uint64(ev.UID)
		case "gid":
			pf.Uint = uint64(ev.GID)
		case "cgroup":
			pf.Uint = ev.Cgroup
		case "comm":
			pf.Kind, pf.Str = FieldString, ev.Comm
		case "syscall":
			pf.Kind, pf.Str = FieldString, bpf.SyscallName("", ev.Syscall)
			if pf.Str == "" {
				pf.Str = strconv.Itoa(ev.Syscall)
			}
		case "exe":
			pf.Kind, pf.Str = FieldString, d.exe(ev.TGID, ev.Comm)
		case "host":
			pf.Kind, pf.Str = FieldString, d.host
		case "container":
			continue // added by the pipeline's cgroup enrichment
		case "arg":
			if f.Slot >= bpf.ProbeMaxArgs || d.args[f.Slot].data == nil {
				continue
			}
			a := d.args[f.Slot]
			decodeArgField(&pf, f.Part, a.typ, a.data)
		}
		ev.Fields = append(ev.Fields, pf)
	}
	return true
}

func decodeArgField(pf *ProbeField, part string, typ uint8, b []byte) {
	le := binary.LittleEndian
	sock := func() (family, sport, dport uint16, saddr, daddr netip.Addr) {
		if len(b) < 40 {
			return
		}
		family, sport, dport = le.Uint16(b[0:]), le.Uint16(b[2:]), le.Uint16(b[4:])
		switch family {
		case 2:
			saddr, daddr = netip.AddrFrom4([4]byte(b[8:12])), netip.AddrFrom4([4]byte(b[24:28]))
		case 10:
			saddr, daddr = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		}
		return
	}
	switch part {
	case "num":
		if len(b) >= 8 {
			if typ == bpf.ProbeTInt {
				pf.Kind, pf.Int = FieldInt, int64(le.Uint64(b))
			} else {
				pf.Uint = le.Uint64(b)
			}
		}
	case "str":
		pf.Kind, pf.Str = FieldString, string(b)
	case "family":
		f, _, _, _, _ := sock()
		pf.Uint = uint64(f)
	case "sport":
		_, sp, _, _, _ := sock()
		pf.Uint = uint64(sp)
	case "dport":
		_, _, dp, _, _ := sock()
		pf.Uint = uint64(dp)
	case "saddr":
		_, _, _, sa, _ := sock()
		pf.Kind, pf.Addr = FieldAddr, sa
	case "daddr":
		_, _, _, _, da := sock()
		pf.Kind, pf.Addr = FieldAddr, da
	case "text":
		_, _, dp, _, da := sock()
		pf.Kind = FieldString
		if da.IsValid() {
			pf.Str = netip.AddrPortFrom(da, dp).String()
		}
	}
}

// ProbeEventReader reads probe events from the kernel's ring buffer.
type ProbeEventReader struct {
	rd  *ringbuf.Reader
	d   *probeDecoder
	rec ringbuf.Record
}

// NewEventReader opens the probe event ring buffer. One reader at a time.
func (e *Probes) NewEventReader() (*ProbeEventReader, error) {
	rd, err := ringbuf.NewReader(e.p.Maps().Events)
	if err != nil {
		return nil, fmt.Errorf("open probe event ring buffer: %w", err)
	}
	return &ProbeEventReader{rd: rd, d: e.newDecoder()}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t. The
// kernel wakes readers only when the ring fills up to an eighth, so a
// reader that wants every event soon polls with a short deadline.
func (r *ProbeEventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Read decodes the next event into ev (whose Fields storage is reused).
func (r *ProbeEventReader) Read(ev *ProbeEvent) error {
	for {
		if err := r.rd.ReadInto(&r.rec); err != nil {
			return err
		}
		if r.d.decode(ev, r.rec.RawSample) {
			return nil
		}
	}
}

// Buffered is the number of bytes waiting in the ring buffer.
func (r *ProbeEventReader) Buffered() int { return r.rd.AvailableBytes() }

// Close closes the reader; a blocked Read returns os.ErrClosed.
func (r *ProbeEventReader) Close() error { return r.rd.Close() }

// ReadEvents reads probe events into the pipeline until ctx ends, like
// Engine.ReadEvents: never waiting for the pipeline, handing batches over
// when the ring is drained, a batch is full, or every readPollInterval.
// Fields come in the policy's emit order; negative integers come as
// strings (the pipeline has no signed kind).
func (e *Probes) ReadEvents(ctx context.Context, pr *pipeline.Producer) error {
	r, err := e.NewEventReader()
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	defer pr.Flush()
	var ev ProbeEvent
	for {
		r.SetDeadline(time.Now().Add(readPollInterval))
		if err := r.Read(&ev); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				pr.Flush()
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read probe events: %w", err)
		}
		r.d.toPipeline(pr.Next(), &ev)
		if r.Buffered() == 0 {
			pr.Flush()
		}
	}
}

// contextFields are the process context every kernel-hook event carries,
// in this order, before the fields its policy's emit asks for.
var contextFields = []string{"pid", "tgid", "ppid", "uid", "gid", "comm", "cgroup", "cgroup_path", "container", "exe", "host"}

// toPipeline copies ev into out: the process context (with the userspace
// enrichment: cgroup path and container of the process, its executable, the
// host), then the policy's other fields.
func (d *probeDecoder) toPipeline(out *pipeline.Event, ev *ProbeEvent) {
	out.Time, out.Policy, out.Name = ev.Time, ev.Policy, ev.Event
	out.AppendUint("pid", uint64(ev.PID))
	out.AppendUint("tgid", uint64(ev.TGID))
	out.AppendUint("ppid", uint64(ev.PPID))
	out.AppendUint("uid", uint64(ev.UID))
	out.AppendUint("gid", uint64(ev.GID))
	out.AppendString("comm", ev.Comm)
	out.AppendUint("cgroup", ev.Cgroup)
	if path, container, ok := d.cgroups.Lookup(uint64(ev.TGID)); ok {
		out.AppendString("cgroup_path", path)
		if container != "" {
			out.AppendString("container", container)
		}
	}
	exe := ""
	if f := ev.Field("exe"); f != nil {
		exe = f.Str // decode looked it up already: the policy emits it
	} else {
		exe = d.exe(ev.TGID, ev.Comm)
	}
	if exe != "" {
		out.AppendString("exe", exe)
	}
	out.AppendString("host", d.host)
	for i := range ev.Fields {
		f := &ev.Fields[i]
		if slices.Contains(contextFields, f.Name) {
			continue
		}
		switch f.Kind {
		case FieldUint:
			out.AppendUint(f.Name, f.Uint)
		case FieldInt:
			if f.Int >= 0 {
				out.AppendUint(f.Name, uint64(f.Int))
			} else {
				out.AppendString(f.Name, strconv.FormatInt(f.Int, 10))
			}
		case FieldString:
			out.AppendString(f.Name, f.Str)
		case FieldAddr:
			out.AppendAddr(f.Name, f.Addr)
		}
	}
}

// StreamEvents writes probe events as JSON lines to out until ctx ends:
// ReadEvents into a pipeline with no stages and a JSON sink (the XDP
// events' format: time, policy, event, then the policy's fields).
func (e *Probes) StreamEvents(ctx context.Context, out io.Writer) error {
	return streamJSON(ctx, out, e.ReadEvents)
}
