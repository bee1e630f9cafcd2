package initrd

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
)

// The power button: the ACPI button driver reports a press as an input
// event (EV_KEY KEY_POWER, value 1) on its evdev device; qemu's
// system_powerdown presses it. There is no acpid: the host's init watches
// the device itself.
const (
	evKey    = 1
	keyPower = 116
	// inputEventSize is sizeof(struct input_event) on 64-bit Linux: a
	// struct timeval (16 bytes), type and code (u16 each), value (s32).
	inputEventSize = 24
)

// IsPowerPress reports whether ev (one struct input_event, 64-bit layout)
// is a press of the power key.
func IsPowerPress(ev []byte) bool {
	if len(ev) < inputEventSize {
		return false
	}
	return binary.LittleEndian.Uint16(ev[16:]) == evKey &&
		binary.LittleEndian.Uint16(ev[18:]) == keyPower &&
		int32(binary.LittleEndian.Uint32(ev[20:])) == 1
}

// PowerButtons lists the evdev nodes (under dev, e.g. /dev) of the input
// devices sysfs (sys, e.g. /sys) names "Power Button".
func PowerButtons(sys, dev string) []string {
	var out []string
	names, _ := filepath.Glob(filepath.Join(sys, "class/input/input*/name"))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != "Power Button" {
			continue
		}
		evs, _ := filepath.Glob(filepath.Join(filepath.Dir(n), "event*"))
		for _, e := range evs {
			out = append(out, filepath.Join(dev, "input", filepath.Base(e)))
		}
	}
	return out
}

// watchPowerButton calls press once the power button is pressed (on any
// device PowerButtons finds); it returns at once when there is none.
func watchPowerButton(printf func(string, ...any), press func()) {
	for _, node := range PowerButtons("/sys", "/dev") {
		f, err := os.Open(node)
		if err != nil {
			printf("power button %s: %v", node, err)
			continue
		}
		printf("power button %s watched", node)
		go func() {
			defer f.Close()
			ev := make([]byte, inputEventSize)
			for {
				if _, err := f.Read(ev); err != nil {
					return
				}
				if IsPowerPress(ev) {
					press()
					return
				}
			}
		}()
	}
}
