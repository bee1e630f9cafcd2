package initrd

// Mount is one mount(2) call as data.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// Mount flags (the Linux values; kept here so the plan is data on every OS).
const (
	msRdOnly  = 0x1
	msNoSuid  = 0x2
	msNoDev   = 0x4
	msNoExec  = 0x8
	msRemount = 0x20
	msMove    = 0x2000
)

// EarlyMounts are mounted first, in order. The Debian kernel does not mount
// devtmpfs itself (DEVTMPFS_MOUNT is off), so /init does.
var EarlyMounts = []Mount{
	{Source: "proc", Target: "/proc", FSType: "proc", Flags: msNoSuid | msNoDev | msNoExec},
	{Source: "sysfs", Target: "/sys", FSType: "sysfs", Flags: msNoSuid | msNoDev | msNoExec},
	{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Flags: msNoSuid, Data: "mode=0755"},
	{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Flags: msNoSuid | msNoDev, Data: "mode=0755"},
}

// SecurityFS holds the TPM event log.
var SecurityFS = Mount{Source: "securityfs", Target: "/sys/kernel/security", FSType: "securityfs", Flags: msNoSuid | msNoDev | msNoExec}
