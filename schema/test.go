package schema

import _ "embed"

// TestSource is the text of test.cue: the schema of policy test files
// (*_test.cue), which `grain test` runs.
//
//go:embed test.cue
var TestSource string

// TestFilename names TestSource in CUE positions.
const TestFilename = "test.cue (embedded in grain)"

// TestFileDefinition is the definition each test file is unified with.
const TestFileDefinition = "#TestFile"
