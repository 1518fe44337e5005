// Package schema embeds the CUE schema that every grain policy must satisfy.
package schema

import _ "embed"

// Source is the text of schema.cue. Its #Policy definition is the contract
// for one policy.
//
//go:embed schema.cue
var Source string

// Filename names Source in CUE positions. It does not end in ".cue", so it
// can never be mistaken for a user's policy file, not even one called
// schema.cue.
const Filename = "schema.cue (embedded in grain)"

// PolicyDefinition is the path of the definition each policy is unified with.
const PolicyDefinition = "#Policy"
