package build

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselos/vessel/internal/userns"
)

// fakeHost is a /proc, /sys and /dev tree and a tool set for CheckHost.
type fakeHost struct {
	dir   string
	tools map[string]string
	fs    int64
}

func newFakeHost(t *testing.T) *fakeHost {
	h := &fakeHost{dir: t.TempDir(), fs: 0xef53, tools: map[string]string{}}
	bin := filepath.Join(h.dir, "bin")
	for _, n := range []string{"mksquashfs", "unsquashfs", "mkfs.erofs", "squashfuse", "runc", "newuidmap", "newgidmap"} {
		p := filepath.Join(bin, n)
		h.file(t, "bin/"+n, "#!/bin/sh\n")
		if err := os.Chmod(p, os.ModeSetuid|0o755); err != nil {
			t.Fatal(err)
		}
		h.tools[n] = p
	}
	h.file(t, "proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n\tsquashfs\n\terofs\nnodev\tfuse\n")
	h.file(t, "proc/sys/user/max_user_namespaces", "1000\n")
	h.file(t, "proc/modules", "")
	h.file(t, "dev/loop-control", "")
	h.file(t, "dev/mapper/control", "")
	h.file(t, "sys/module/dm_verity/refcnt", "0\n")
	h.file(t, "subuid", "builder:100000:65536\n")
	h.file(t, "subgid", "builder:100000:65536\n")
	return h
}

func (h *fakeHost) file(t *testing.T, name, content string) {
	t.Helper()
	p := filepath.Join(h.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

func (h *fakeHost) options() HostOptions {
	return HostOptions{
		Proc: filepath.Join(h.dir, "proc"), Sys: filepath.Join(h.dir, "sys"), Dev: filepath.Join(h.dir, "dev"),
		SubUID: filepath.Join(h.dir, "subuid"), SubGID: filepath.Join(h.dir, "subgid"),
		User:      &userns.User{Name: "builder", UID: 1000, GID: 1000},
		StoreRoot: filepath.Join(h.dir, "store"), Binfmt: filepath.Join(h.dir, "binfmt"),
		LookPath: func(n string) (string, error) {
			if p, ok := h.tools[n]; ok {
				return p, nil
			}
			return "", errors.New("not found")
		},
		FSType:  func(string) (int64, error) { return h.fs, nil },
		Modules: filepath.Join(h.dir, "modules"),
	}
}

func byName(cs []HostCheck) map[string]HostCheck {
	out := map[string]HostCheck{}
	for _, c := range cs {
		out[c.Name] = c
	}
	return out
}

// TestCheckHost: a machine with everything passes; each missing piece is
// named with its status and a hint: required ones fail the check
// (ErrHostCheck), optional ones only warn.
func TestCheckHost(t *testing.T) {
	h := newFakeHost(t)
	cs, err := CheckHost(h.options())
	if err != nil {
		t.Fatalf("a complete host: %v\n%+v", err, cs)
	}
	for _, c := range cs {
		if c.Status != CheckPass && c.Status != CheckInfo {
			t.Errorf("complete host: %+v", c)
		}
	}
	if c := byName(cs)["subordinate ids"]; !strings.Contains(c.Detail, "builder: 65536 subordinate uids, 65536 gids") {
		t.Errorf("subordinate ids: %+v", c)
	}

	for _, tc := range []struct {
		name   string
		break_ func(h *fakeHost)
		check  string
		status string
		hint   string
	}{
		{"no overlay", func(h *fakeHost) { h.file(t, "proc/filesystems", "\tsquashfs\n") }, "overlay filesystem", CheckFail, "modprobe overlay"},
		{"no erofs", func(h *fakeHost) { h.file(t, "proc/filesystems", "nodev\toverlay\n\tsquashfs\n") }, "erofs filesystem", CheckWarn, "modprobe erofs"},
		{"overlay loadable", func(h *fakeHost) {
			h.file(t, "proc/filesystems", "\tsquashfs\n")
			h.file(t, "modules/modules.dep", "kernel/fs/overlayfs/overlay.ko.xz:\nkernel/drivers/md/dm-verity.ko.xz: kernel/lib/reed_solomon.ko.xz\n")
		}, "overlay filesystem", CheckPass, ""},
		{"no mksquashfs", func(h *fakeHost) { delete(h.tools, "mksquashfs") }, "mksquashfs", CheckFail, "squashfs-tools"},
		{"crun instead of runc", func(h *fakeHost) { h.tools["crun"] = h.tools["runc"]; delete(h.tools, "runc") }, "runc", CheckPass, ""},
		{"no runtime", func(h *fakeHost) { delete(h.tools, "runc") }, "runc", CheckFail, "apt-get install runc"},
		{"no squashfuse", func(h *fakeHost) { delete(h.tools, "squashfuse") }, "squashfuse", CheckWarn, "apt-get install squashfuse"},
		{"no loop", func(h *fakeHost) { os.Remove(filepath.Join(h.dir, "dev/loop-control")) }, "loop devices", CheckFail, "modprobe loop"},
		{"no dm", func(h *fakeHost) { os.Remove(filepath.Join(h.dir, "dev/mapper/control")) }, "device-mapper verity", CheckFail, "dm-verity"},
		{"newuidmap not setuid", func(h *fakeHost) { os.Chmod(h.tools["newuidmap"], 0o755) }, "newuidmap", CheckWarn, "chmod u+s"},
		{"userns off", func(h *fakeHost) { h.file(t, "proc/sys/user/max_user_namespaces", "0\n") }, "user namespaces", CheckWarn, "user.max_user_namespaces"},
		{"no subuids", func(h *fakeHost) { h.file(t, "subuid", "other:100000:65536\n") }, "subordinate ids", CheckWarn, "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 builder"},
		{"small range", func(h *fakeHost) { h.file(t, "subgid", "builder:100000:1000\n") }, "subordinate ids", CheckWarn, "65536"},
		{"store on nfs", func(h *fakeHost) { h.fs = 0x6969 }, "store filesystem", CheckFail, "local filesystem"},
		{"store on overlay", func(h *fakeHost) { h.fs = 0x794c7630 }, "store filesystem", CheckFail, "ext4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(t)
			tc.break_(h)
			cs, err := CheckHost(h.options())
			c, ok := byName(cs)[tc.check]
			if !ok {
				t.Fatalf("no check %q in %+v", tc.check, cs)
			}
			if c.Status != tc.status || !strings.Contains(c.Hint, tc.hint) {
				t.Errorf("%s: %+v, want %s with hint %q", tc.check, c, tc.status, tc.hint)
			}
			if (tc.status == CheckFail) != errors.Is(err, ErrHostCheck) {
				t.Errorf("error %v for a %s", err, tc.status)
			}
		})
	}
}
