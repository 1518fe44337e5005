package pcap

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"
)

// Frames written are read back with their times; a big-endian,
// nanosecond file (as some capture tools write) reads the same.
func TestRoundTrip(t *testing.T) {
	frames := [][]byte{bytes.Repeat([]byte{0xab}, 60), {}, bytes.Repeat([]byte{1, 2, 3}, 500)}
	var buf bytes.Buffer
	w, err := NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 123456000, time.UTC)
	for i, f := range frames {
		if err := w.Write(t0.Add(time.Duration(i)*time.Second), f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	rd, err := NewReader(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range frames {
		p, err := rd.Next()
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if !bytes.Equal(p.Data, f) || p.OrigLen != len(f) || !p.Time.Equal(t0.Add(time.Duration(i)*time.Second)) {
			t.Errorf("record %d: %d bytes at %v, want %d at %v", i, len(p.Data), p.Time, len(f), t0.Add(time.Duration(i)*time.Second))
		}
	}
	if _, err := rd.Next(); err != io.EOF {
		t.Errorf("after the last record: %v, want EOF", err)
	}

	// The same first record, big-endian with nanoseconds.
	var be bytes.Buffer
	h := make([]byte, 24)
	binary.BigEndian.PutUint32(h, magicNano)
	binary.BigEndian.PutUint32(h[20:], LinkEthernet)
	be.Write(h)
	r := make([]byte, 16)
	binary.BigEndian.PutUint32(r[0:], uint32(t0.Unix()))
	binary.BigEndian.PutUint32(r[4:], uint32(t0.Nanosecond()))
	binary.BigEndian.PutUint32(r[8:], 60)
	binary.BigEndian.PutUint32(r[12:], 1514)
	be.Write(r)
	be.Write(frames[0])
	got, err := ReadAll(&be)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0], frames[0]) {
		t.Errorf("big-endian nanosecond file: %d frames, %v", len(got), err)
	}
}

// What is not a classic Ethernet pcap is refused, saying what it is.
func TestRefusals(t *testing.T) {
	le := func(magic, link uint32) []byte {
		h := make([]byte, 24)
		binary.LittleEndian.PutUint32(h, magic)
		binary.LittleEndian.PutUint32(h[20:], link)
		return h
	}
	truncated := append(le(magicMicro, LinkEthernet), make([]byte, 16)...)
	binary.LittleEndian.PutUint32(truncated[24+8:], 100)
	for _, c := range []struct {
		name string
		file []byte
		want string
	}{
		{"pcapng", []byte{0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, "pcapng"},
		{"not pcap", []byte(strings.Repeat("x", 24)), "not a pcap file"},
		{"raw IP", le(magicMicro, 101), "link type 101"},
		{"short header", []byte{1, 2}, "file header: unexpected EOF"},
		{"truncated record", truncated, "record 1: unexpected EOF"},
	} {
		_, err := ReadAll(bytes.NewReader(c.file))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}
