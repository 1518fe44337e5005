package bpf

// Limits and layouts of the generic XDP program's maps. They mirror the
// #defines of grain.h; limits_test.go checks that both agree.
const (
	Generations        = 2
	MaxRules           = 2048
	BitmapWords        = MaxRules / 64
	MaxContents        = 1024
	MaxContentsPerRule = 4
	MaxContentLen      = 64
	ScanWindow         = 1500
	PrefilterSpan      = 8
	MaxPortClasses     = 2*MaxRules + 2
	MaxCIDREntries     = 2 * MaxRules
	MaxIfaceEntries    = 256
	MaxIPv6ExtHeaders  = 6
	BitmapRegionProto  = 0
	BitmapRegionFlags  = 256
	BitmapRegionAux    = 512
	BitmapRegionSport  = BitmapRegionAux + 16
	BitmapRegionDport  = BitmapRegionSport + MaxPortClasses
	BitmapRegionCIDR   = BitmapRegionDport + MaxPortClasses
	BitmapsPerGen      = BitmapRegionCIDR + MaxCIDREntries
	AuxSrc4Default     = 0
	AuxDst4Default     = 1
	AuxSrc6Default     = 2
	AuxDst6Default     = 3
	AuxIfaceDefault    = 4
	AuxNoPorts         = 5
	AuxNotTCP          = 6
	AuxAll             = 7
	FieldProto         = 1 << 0
	FieldSrc           = 1 << 1
	FieldDst           = 1 << 2
	FieldSport         = 1 << 3
	FieldDport         = 1 << 4
	FieldFlags         = 1 << 5
	FieldIface         = 1 << 6
	PortDirSrc         = 0
	PortDirDst         = 1
	CIDRSrc4           = 0
	CIDRDst4           = 1
	CIDRSrc6           = 2
	CIDRDst6           = 3
	ActionCount        = 0
	ActionDrop         = 1
	ActionPass         = 2
	RuleEmit           = 1 << 0
	RuleEmitPayload    = 1 << 1
	RuleQuick          = 1 << 2
	RuleQuickOnly      = 1 << 3
	EmitPayloadBytes   = 272
	ContentNoCase      = 1 << 0
	ContentNegate      = 1 << 1
	ContentAnchored    = 1 << 2
	StatNotIP          = 0
	StatMalformed      = 1
	StatNoConfig       = 2
	StatMax            = 4
	IfaceSlots         = 256
	Verdicts           = 3
	GateTCP            = 0
	GateUDP            = 1
	Gates              = 2
)
