package policies

import (
	"testing"
)

// An IPv4-mapped IPv6 address never matches a packet (IPv4 packets carry
// IPv4 addresses) nor a pipeline filter (which compares IPv4 as IPv4):
// refused at its position with the IPv4 form to write instead.
func TestMappedAddressesAreRefused(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"p: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: saddr: \"::ffff:10.0.0.1\"\n}",
			`p.cue:4:16: policy p: match.saddr: "::ffff:10.0.0.1" is an IPv4-mapped IPv6 address, which never matches (IPv4 packets carry IPv4 addresses): write "10.0.0.1"`},
		{"p: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: daddr: [\"10.0.0.0/8\", \"::FFFF:192.0.2.7/120\"]\n}",
			`p.cue:4:31: policy p: match.daddr[1]: "::FFFF:192.0.2.7/120" is an IPv4-mapped IPv6 address, which never matches (IPv4 packets carry IPv4 addresses): write "192.0.2.0/24"`},
		{`pipeline: filter: [{field: "saddr", cidr: "::ffff:10.1.2.3"}]`,
			`p.cue:1:43: policy pipeline: filter[0].cidr: "::ffff:10.1.2.3" is an IPv4-mapped IPv6 address, which never matches (the filter compares an event's IPv4 addresses as IPv4): write "10.1.2.3"`},
	} {
		_, err := LoadBytes("p.cue", []byte(c.src))
		if err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, c.want)
		}
	}
	// A dual-stack socket's address has the mapped form: kernel hooks
	// take it.
	s, err := LoadBytes("p.cue", []byte(`p: {
	kprobe: "tcp_connect"
	args: [{index: 0, type: "sock"}]
	match: daddr: "::ffff:10.0.0.1"
	emit: event: "c"
}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Policies[0].Hook.Selectors[0].Filters[0].CIDRs; len(got) != 1 || got[0] != "::ffff:10.0.0.1/128" {
		t.Errorf("CIDRs = %q, want [::ffff:10.0.0.1/128]", got)
	}
}
