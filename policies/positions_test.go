package policies

import (
	"testing"
)

// Errors CUE gives without a position (structural cycles, embedding) and
// those grain finds in interface patterns get the line and column of the
// text they are about.
func TestErrorsWithoutCUEPositionsArePositioned(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"#L: {a: #L}\n", "p.cue:1:6: #L.a: structural cycle"},
		{"#A: {x: #B}\n#B: {\n\ty: #A\n}\n", "p.cue:3:2: #B.y: structural cycle"},
		{"@extern(embed)\n\npackage p\n\nz: _ @embed(file=\"/etc/passwd\", type=text)\n",
			"p.cue:5:6: cannot embed a file: " + embedHint},
		{"p: {\n\txdp: interfaces: [\"eth0\", \"eth[\"]\n\tthen: \"drop\"\n}\n",
			`p.cue:2:28: policy p: xdp.interfaces[1]: "eth[" is not a valid interface pattern: want a name, or a shell pattern with * (any characters), ? (one character), [a-z] (one of a class) or \ (escapes the next character); look for an unclosed [ or a trailing \`},
		{"p: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: interface: \"a\\\\\"\n}\n",
			`p.cue:4:20: policy p: match.interface: "a\\" is not a valid interface pattern: want a name, or a shell pattern with * (any characters), ? (one character), [a-z] (one of a class) or \ (escapes the next character); look for an unclosed [ or a trailing \`},
	} {
		_, err := LoadBytes("p.cue", []byte(c.src))
		if err == nil || err.Error() != c.want {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, c.want)
		}
	}
}
