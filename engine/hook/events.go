package hook

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/ring"
	"github.com/grain-ebpf/grain/pipeline"
)

// Event is one event of a kernel-hook policy, decoded.
type Event struct {
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
	// (bpf.HookStrLen bytes, bpf.HookPathDepth components).
	Truncated bool
	// Fields are the values the policy's emit asked for, in its order.
	Fields []Field
}

// FieldKind is the type of a Field's value.
type FieldKind uint8

const (
	FieldUint FieldKind = iota
	FieldInt
	FieldString
	FieldAddr
)

// Field is one named value of a hook event.
type Field struct {
	Name string
	Kind FieldKind
	Uint uint64
	Int  int64
	Str  string
	Addr netip.Addr
}

// Value returns the field's value as uint64, int64, string or netip.Addr.
func (f *Field) Value() any {
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
func (ev *Event) Field(name string) *Field {
	for i := range ev.Fields {
		if ev.Fields[i].Name == name {
			return &ev.Fields[i]
		}
	}
	return nil
}

const eventHeaderSize = 64

// decoder decodes the kernel-hook event format (bpf/hook.h: a
// header with the process context, then the argument slots): parse reads
// a record once, then fill gives it as an Event or toPipeline as a
// pipeline event. It caches the rule of the last event and interns comm
// strings, so that decoding allocates little.
type decoder struct {
	e          *Hooks
	bootOffset time.Duration
	lastID     uint32
	last       codegen.HookRule
	lastOK     bool
	haveLast   bool
	comms      map[[16]byte]string
	exes       map[exeKey]exeEntry
	cgroups    *pipeline.CgroupResolver
	host       string
	args       [bpf.HookMaxArgs]struct {
		typ  uint8
		data []byte
	}
	cur    eventHeader // the event parse read last
	field1 Field       // toPipeline's one field at a time
}

// eventHeader is the fixed part of a hook event.
type eventHeader struct {
	id                        uint32
	time                      time.Time
	cgroup                    uint64
	pid, tgid, ppid, uid, gid uint32
	comm                      string
	syscall                   int
	truncated                 bool
}

func (e *Hooks) newDecoder() *decoder {
	host, _ := os.Hostname()
	return &decoder{e: e, bootOffset: bootTimeOffset(), comms: map[[16]byte]string{}, exes: map[exeKey]exeEntry{}, host: host,
		cgroups: pipeline.NewCgroupResolver()}
}

// probeRule names the rule an event's id refers to, if its plan is still
// known.
func (e *Hooks) probeRule(id uint32) (codegen.HookRule, bool) { return e.gen.Lookup(id) }

func (d *decoder) comm(b []byte) string {
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
func (d *decoder) exe(tgid uint32, comm string) string {
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

// parse reads one raw event into d.cur and d.args (views of raw), and
// looks up its rule; false when the event is malformed.
func (d *decoder) parse(raw []byte) bool {
	if len(raw) < eventHeaderSize {
		return false
	}
	le := binary.LittleEndian
	h := &d.cur
	h.id = le.Uint32(raw[16:])
	if !d.haveLast || h.id != d.lastID {
		d.last, d.lastOK = d.e.probeRule(h.id)
		d.lastID, d.haveLast = h.id, true
	}
	h.time = time.Unix(0, int64(le.Uint64(raw[0:]))+int64(d.bootOffset))
	h.cgroup = le.Uint64(raw[8:])
	h.pid, h.tgid, h.ppid = le.Uint32(raw[20:]), le.Uint32(raw[24:]), le.Uint32(raw[28:])
	h.uid, h.gid = le.Uint32(raw[32:]), le.Uint32(raw[36:])
	size, nargs, flags := int(le.Uint16(raw[40:])), int(raw[42]), raw[43]
	h.syscall = int(le.Uint16(raw[46:]))
	h.comm = d.comm(raw[48:64])
	h.truncated = flags&bpf.HookEvTruncated != 0
	if size > len(raw) {
		return false
	}
	for i := range d.args {
		d.args[i].data = nil
	}
	off := eventHeaderSize
	for i := 0; i < nargs; i++ {
		if off+8 > size {
			return false
		}
		slot, typ, n := int(raw[off]), raw[off+1], int(le.Uint16(raw[off+2:]))
		off += 8
		if off+n > size || slot >= bpf.HookMaxArgs {
			return false
		}
		d.args[slot].typ, d.args[slot].data = typ, raw[off:off+n]
		off += (n + 7) &^ 7
	}
	return true
}

// names are the policy and event name of the event parsed.
func (d *decoder) names() (policy, event string) {
	if !d.lastOK {
		return "unknown-rule-" + strconv.FormatUint(uint64(d.cur.id), 10), ""
	}
	if d.last.Emit != nil {
		event = d.last.Emit.Event
	}
	return d.last.Policy, event
}

// emits lists the fields the rule of the event parsed emits.
func (d *decoder) emits() []codegen.HookField {
	if !d.lastOK || d.last.Emit == nil {
		return nil
	}
	return d.last.Emit.Fields
}

// fill copies the event parsed into ev (whose Fields storage is reused).
func (d *decoder) fill(ev *Event) {
	h := &d.cur
	ev.RuleID, ev.Time, ev.Cgroup = h.id, h.time, h.cgroup
	ev.PID, ev.TGID, ev.PPID, ev.UID, ev.GID = h.pid, h.tgid, h.ppid, h.uid, h.gid
	ev.Syscall, ev.Comm, ev.Truncated = h.syscall, h.comm, h.truncated
	ev.Policy, ev.Event = d.names()
	ev.Fields = ev.Fields[:0]
	emits := d.emits()
	for i := range emits {
		ev.Fields = append(ev.Fields, Field{})
		if !d.field(&emits[i], &ev.Fields[len(ev.Fields)-1]) {
			ev.Fields = ev.Fields[:len(ev.Fields)-1]
		}
	}
}

// field writes the value of emit field f of the event parsed into pf;
// false when it has none here (an argument not read; the container, which
// the pipeline's cgroup enrichment adds).
func (d *decoder) field(f *codegen.HookField, pf *Field) bool {
	h := &d.cur
	*pf = Field{Name: f.Name}
	switch f.Kind {
	case "pid":
		pf.Uint = uint64(h.pid)
	case "tgid":
		pf.Uint = uint64(h.tgid)
	case "ppid":
		pf.Uint = uint64(h.ppid)
	case "uid":
		pf.Uint = uint64(h.uid)
	case "gid":
		pf.Uint = uint64(h.gid)
	case "cgroup":
		pf.Uint = h.cgroup
	case "comm":
		pf.Kind, pf.Str = FieldString, h.comm
	case "syscall":
		pf.Kind, pf.Str = FieldString, bpf.SyscallName("", h.syscall)
		if pf.Str == "" {
			pf.Str = strconv.Itoa(h.syscall)
		}
	case "exe":
		pf.Kind, pf.Str = FieldString, d.exe(h.tgid, h.comm)
	case "host":
		pf.Kind, pf.Str = FieldString, d.host
	case "container":
		return false
	case "arg":
		if f.Slot >= bpf.HookMaxArgs || d.args[f.Slot].data == nil {
			return false
		}
		a := &d.args[f.Slot]
		decodeArgField(pf, f.Part, a.typ, a.data)
	}
	return true
}

func decodeArgField(pf *Field, part string, typ uint8, b []byte) {
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
			if typ == bpf.HookTInt {
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

// EventReader reads hook events from the kernel's ring buffer.
type EventReader struct {
	ring *ring.Reader
	d    *decoder
}

// NewEventReader opens the hook event ring buffer. One reader at a time.
func (e *Hooks) NewEventReader() (*EventReader, error) {
	ring, err := e.openRing()
	if err != nil {
		return nil, err
	}
	return &EventReader{ring: ring, d: e.newDecoder()}, nil
}

func (e *Hooks) openRing() (*ring.Reader, error) {
	return ring.Open("hook event ring buffer", e.p.Maps().Events, e.gen.Fence())
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t. The
// kernel wakes readers only when the ring fills up to an eighth, so a
// reader that wants every event soon polls with a short deadline.
func (r *EventReader) SetDeadline(t time.Time) { r.ring.SetDeadline(t) }

// Read decodes the next event into ev (whose Fields storage is reused).
func (r *EventReader) Read(ev *Event) error {
	for {
		record, err := r.ring.Next()
		if err != nil {
			return err
		}
		if r.d.parse(record) {
			r.d.fill(ev)
			return nil
		}
	}
}

// Buffered is the number of bytes waiting in the ring buffer.
func (r *EventReader) Buffered() int { return r.ring.Buffered() }

// Close closes the reader; a blocked Read returns os.ErrClosed.
func (r *EventReader) Close() error { return r.ring.Close() }

// ReadEvents reads hook events into the pipeline until ctx ends, like
// Engine.ReadEvents (ring.Read: it never waits for the pipeline). Fields
// come in the policy's emit order; negative integers come as strings (the
// pipeline has no signed kind).
func (e *Hooks) ReadEvents(ctx context.Context, pr *pipeline.Producer) error {
	rd, err := e.openRing()
	if err != nil {
		return err
	}
	return ring.Read(ctx, rd, pr, e.newDecoder().decodeRecord)
}

// decodeRecord decodes one hook event into the pipeline; a malformed one
// is skipped.
func (d *decoder) decodeRecord(pr *pipeline.Producer, record []byte) {
	if d.parse(record) {
		d.toPipeline(pr.Next())
	}
}

// contextFields are the process context every kernel-hook event carries,
// in this order, before the fields its policy's emit asks for.
var contextFields = []string{"pid", "tgid", "ppid", "uid", "gid", "comm", "cgroup", "cgroup_path", "container", "exe", "host"}

// toPipeline writes the event parsed into out: the process context (with
// the userspace enrichment: cgroup path and container of the process, its
// executable, the host), then the policy's other fields.
func (d *decoder) toPipeline(out *pipeline.Event) {
	h := &d.cur
	out.Time = h.time
	out.Policy, out.Name = d.names()
	out.AppendUint("pid", uint64(h.pid))
	out.AppendUint("tgid", uint64(h.tgid))
	out.AppendUint("ppid", uint64(h.ppid))
	out.AppendUint("uid", uint64(h.uid))
	out.AppendUint("gid", uint64(h.gid))
	out.AppendString("comm", h.comm)
	out.AppendUint("cgroup", h.cgroup)
	if path, container, ok := d.cgroups.Lookup(uint64(h.tgid)); ok {
		out.AppendString("cgroup_path", path)
		if container != "" {
			out.AppendString("container", container)
		}
	}
	if exe := d.exe(h.tgid, h.comm); exe != "" {
		out.AppendString("exe", exe)
	}
	out.AppendString("host", d.host)
	if d.lastOK && d.last.Monitor && d.last.Signal != "" {
		// monitor mode: the kernel sent nothing; say what enforcing would
		out.AppendString("would_signal", d.last.Signal)
	}
	emits := d.emits()
	pf := &d.field1
	for i := range emits {
		if slices.Contains(contextFields, emits[i].Name) || !d.field(&emits[i], pf) {
			continue
		}
		switch pf.Kind {
		case FieldUint:
			out.AppendUint(pf.Name, pf.Uint)
		case FieldInt:
			if pf.Int >= 0 {
				out.AppendUint(pf.Name, uint64(pf.Int))
			} else {
				out.AppendString(pf.Name, strconv.FormatInt(pf.Int, 10))
			}
		case FieldString:
			out.AppendString(pf.Name, pf.Str)
		case FieldAddr:
			out.AppendAddr(pf.Name, pf.Addr)
		}
	}
}

// StreamEvents writes hook events as JSON lines to out until ctx ends:
// ReadEvents into a pipeline with no stages and a JSON sink (the XDP
// events' format: time, policy, event, then the policy's fields).
func (e *Hooks) StreamEvents(ctx context.Context, out io.Writer) error {
	return ring.StreamJSON(ctx, out, e.ReadEvents)
}

// bootTimeOffset converts CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) to wall time.
func bootTimeOffset() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}
