// Package pcap reads and writes classic pcap files (the libpcap format
// tcpdump and Wireshark write) of Ethernet frames: what `grain test` and
// `grain diff --pcap` replay through a Plan. pcapng is not read.
package pcap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// LinkEthernet is the link type of Ethernet frames (LINKTYPE_ETHERNET),
// the only one grain's packet program sees.
const LinkEthernet = 1

// The magic numbers of the file header, as written by the writer's byte
// order: microsecond or nanosecond timestamps.
const (
	magicMicro = 0xa1b2c3d4
	magicNano  = 0xa1b23c4d
)

// maxSnapLen bounds one record: larger lengths mean a corrupt file, not a
// frame (libpcap's limit for Ethernet is 262144).
const maxSnapLen = 262144

// Packet is one record of a pcap file.
type Packet struct {
	Time time.Time
	// Data is the frame as captured (at most the snap length); OrigLen
	// is its length on the wire.
	Data    []byte
	OrigLen int
}

// Reader reads the records of a pcap file in order.
type Reader struct {
	r      *bufio.Reader
	order  binary.ByteOrder
	nano   bool
	link   uint32
	hdr    [16]byte
	buf    []byte
	record int
}

// NewReader reads the file header. It refuses pcapng and link types other
// than Ethernet, naming what it found.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	var h [24]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, fmt.Errorf("pcap: file header: %w", unexpected(err))
	}
	rd := &Reader{r: br}
	switch {
	case binary.LittleEndian.Uint32(h[:]) == magicMicro:
		rd.order = binary.LittleEndian
	case binary.BigEndian.Uint32(h[:]) == magicMicro:
		rd.order = binary.BigEndian
	case binary.LittleEndian.Uint32(h[:]) == magicNano:
		rd.order, rd.nano = binary.LittleEndian, true
	case binary.BigEndian.Uint32(h[:]) == magicNano:
		rd.order, rd.nano = binary.BigEndian, true
	case binary.LittleEndian.Uint32(h[:]) == 0x0a0d0d0a:
		return nil, errors.New("pcap: this is a pcapng file; write classic pcap (tcpdump -w, or editcap -F pcap)")
	default:
		return nil, fmt.Errorf("pcap: not a pcap file (magic %08x)", binary.BigEndian.Uint32(h[:]))
	}
	rd.link = rd.order.Uint32(h[20:]) & 0x0fffffff
	if rd.link != LinkEthernet {
		return nil, fmt.Errorf("pcap: link type %d; grain replays Ethernet frames (link type 1) only", rd.link)
	}
	return rd, nil
}

// Next returns the next record, or io.EOF after the last. The Data of a
// record is valid until the following call.
func (r *Reader) Next() (Packet, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if err == io.EOF {
			return Packet{}, io.EOF
		}
		return Packet{}, fmt.Errorf("pcap: record %d header: %w", r.record+1, unexpected(err))
	}
	r.record++
	sec, frac := r.order.Uint32(r.hdr[0:]), r.order.Uint32(r.hdr[4:])
	incl, orig := r.order.Uint32(r.hdr[8:]), r.order.Uint32(r.hdr[12:])
	if incl > maxSnapLen {
		return Packet{}, fmt.Errorf("pcap: record %d claims %d bytes, more than %d: the file is corrupt", r.record, incl, maxSnapLen)
	}
	if cap(r.buf) < int(incl) {
		r.buf = make([]byte, incl, max(int(incl), 2048))
	}
	r.buf = r.buf[:incl]
	if _, err := io.ReadFull(r.r, r.buf); err != nil {
		return Packet{}, fmt.Errorf("pcap: record %d: %w", r.record, unexpected(err))
	}
	ns := int64(frac)
	if !r.nano {
		ns *= 1000
	}
	return Packet{Time: time.Unix(int64(sec), ns).UTC(), Data: r.buf, OrigLen: int(orig)}, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ReadAll reads every frame of a pcap file, each in its own slice.
func ReadAll(r io.Reader) ([][]byte, error) {
	rd, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		p, err := rd.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, append([]byte(nil), p.Data...))
	}
}

// Writer writes a classic pcap file of Ethernet frames, little-endian
// with microsecond timestamps.
type Writer struct {
	w   *bufio.Writer
	hdr [16]byte
}

// NewWriter writes the file header.
func NewWriter(w io.Writer) (*Writer, error) {
	bw := bufio.NewWriterSize(w, 1<<16)
	var h [24]byte
	binary.LittleEndian.PutUint32(h[0:], magicMicro)
	binary.LittleEndian.PutUint16(h[4:], 2) // version 2.4
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], maxSnapLen)
	binary.LittleEndian.PutUint32(h[20:], LinkEthernet)
	if _, err := bw.Write(h[:]); err != nil {
		return nil, err
	}
	return &Writer{w: bw}, nil
}

// Write appends one frame captured at t, whole.
func (w *Writer) Write(t time.Time, frame []byte) error {
	if len(frame) > maxSnapLen {
		return fmt.Errorf("pcap: a frame of %d bytes is longer than %d", len(frame), maxSnapLen)
	}
	binary.LittleEndian.PutUint32(w.hdr[0:], uint32(t.Unix()))
	binary.LittleEndian.PutUint32(w.hdr[4:], uint32(t.Nanosecond()/1000))
	binary.LittleEndian.PutUint32(w.hdr[8:], uint32(len(frame)))
	binary.LittleEndian.PutUint32(w.hdr[12:], uint32(len(frame)))
	if _, err := w.w.Write(w.hdr[:]); err != nil {
		return err
	}
	_, err := w.w.Write(frame)
	return err
}

// Flush writes what is buffered.
func (w *Writer) Flush() error { return w.w.Flush() }
