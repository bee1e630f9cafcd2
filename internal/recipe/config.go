package recipe

import (
	"slices"
	"sort"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultShebang starts a run script that has no #! line of its own, as in
// stacker: errors stop the script and each command is echoed to the log.
const DefaultShebang = "#!/bin/sh -xe"

// DefaultPath is the PATH of the build environment when neither the base
// image nor the recipe sets one (stacker's value).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Script is the file the build container executes: the run lines joined
// with newlines, behind DefaultShebang unless the first line is a #! line
// (an image from scratch has no /bin/sh, so its script names an imported
// interpreter, for example "#!/stacker/imports/busybox sh"). The executor
// writes nothing else around it; Stage puts it at /stacker/.vessel-run.sh.
// An image without run has the empty script and needs no container.
func (i *Image) Script() string { return script(i.Run) }

// LabelsScript is the generate_labels script, written like Script: it runs
// on the finished image with /oci-labels writable, and each file it writes
// there becomes a label (file name = key, content = value), as in stacker.
func (i *Image) LabelsScript() string { return script(i.GenerateLabels) }

func script(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	s := strings.Join(lines, "\n")
	if strings.TrimSpace(s) == "" {
		return ""
	}
	if !strings.HasPrefix(s, "#!") {
		s = DefaultShebang + "\n" + s
	}
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s
}

// RunEnv is the environment of the build container: the base image's
// environment, then DefaultPath if there is no PATH, then environment, then
// build_env (later entries replace earlier ones with the same name), plus
// STACKER_LAYER_NAME and VESSEL_IMAGE naming the image. The script runs
// in / whatever working_dir says: working_dir is config only.
func (i *Image) RunEnv(base []string) []string {
	env := mergeEnv(base, nil)
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		env = append(env, "PATH="+DefaultPath)
	}
	env = mergeEnv(env, i.Environment)
	env = mergeEnv(env, i.BuildEnv)
	return mergeEnv(env, map[string]string{"STACKER_LAYER_NAME": i.Name, "VESSEL_IMAGE": i.Name})
}

// mergeEnv returns base with the variables of add set: existing names keep
// their position, new ones are appended in sorted order.
func mergeEnv(base []string, add map[string]string) []string {
	out := slices.Clone(base)
	keys := make([]string, 0, len(add))
	for k := range add {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		kv := k + "=" + add[k]
		if j := slices.IndexFunc(out, func(e string) bool { return strings.HasPrefix(e, k+"=") }); j >= 0 {
			out[j] = kv
		} else {
			out = append(out, kv)
		}
	}
	return out
}

// ApplyConfig returns the image config of this image given its base's,
// with stacker's rules: environment and labels are merged over the base's;
// entrypoint and cmd each replace the inherited value when written (writing
// entrypoint does not clear an inherited cmd); full_command sets the
// entrypoint and clears cmd; volumes are added; working_dir and
// runtime_user replace. Annotations belong to the manifest, not here.
func (i *Image) ApplyConfig(base ocispec.ImageConfig) ocispec.ImageConfig {
	c := base
	c.Env = mergeEnv(base.Env, i.Environment)
	if len(i.Labels) > 0 {
		c.Labels = make(map[string]string, len(base.Labels)+len(i.Labels))
		for k, v := range base.Labels {
			c.Labels[k] = v
		}
		for k, v := range i.Labels {
			c.Labels[k] = v
		}
	}
	if i.Entrypoint != nil {
		c.Entrypoint = slices.Clone(i.Entrypoint)
	}
	if i.Cmd != nil {
		c.Cmd = slices.Clone(i.Cmd)
	}
	if i.FullCommand != nil {
		c.Entrypoint, c.Cmd = slices.Clone(i.FullCommand), nil
	}
	if len(i.Volumes) > 0 {
		c.Volumes = make(map[string]struct{}, len(base.Volumes)+len(i.Volumes))
		for k := range base.Volumes {
			c.Volumes[k] = struct{}{}
		}
		for _, v := range i.Volumes {
			c.Volumes[v] = struct{}{}
		}
	}
	if i.WorkingDir != "" {
		c.WorkingDir = i.WorkingDir
	}
	if i.RuntimeUser != "" {
		c.User = i.RuntimeUser
	}
	return c
}
