package schema

import _ "embed"

// PipelineSource is the text of pipeline.cue: the #Pipeline definition
// that the tree's top-level `pipeline` field must satisfy.
//
//go:embed pipeline.cue
var PipelineSource string

// PipelineFilename names PipelineSource in CUE positions.
const PipelineFilename = "pipeline.cue (embedded in grain)"

// PipelineField is the top-level field of a policy file that declares the
// event pipeline rather than a policy.
const PipelineField = "pipeline"

// PipelineDefinition is the definition the pipeline is unified with.
const PipelineDefinition = "#Pipeline"
