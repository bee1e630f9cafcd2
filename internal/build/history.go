package build

import (
	"os"
	"os/user"
	"strings"

	"github.com/vesselos/vessel/internal/recipe"
)

// AuthorAnnotation is the manifest annotation that, set on an image in
// the recipe, is also its config's author.
const AuthorAnnotation = "org.opencontainers.image.authors"

// DefaultAuthor is the author stacker writes into configs: USER@HOST of
// whoever runs the build ($SUDO_USER under sudo, else $USER, else the
// process's user), or "vessel" for a reproducible build (reproducible
// true: SOURCE_DATE_EPOCH is set), which must name no host or user.
func DefaultAuthor(reproducible bool) string {
	if reproducible {
		return "vessel"
	}
	name := os.Getenv("SUDO_USER")
	if name == "" {
		name = os.Getenv("USER")
	}
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	if name == "" {
		return host
	}
	return name + "@" + host
}

// author is the config author of img: its AuthorAnnotation, else
// Options.Author, else DefaultAuthor.
func (b *builder) author(img *recipe.Image) string {
	if a := img.Annotations[AuthorAnnotation]; a != "" {
		return a
	}
	if b.opt.Author != "" {
		return b.opt.Author
	}
	return DefaultAuthor(b.opt.SourceDateEpoch != nil)
}

// layerCreatedBy is the history text of img's layer, naming the build
// steps that made it as stacker's "stacker build of NAME" does the
// image: "vessel build of NAME (imports, run)".
func layerCreatedBy(img *recipe.Image) string {
	var steps []string
	for _, imp := range img.Imports {
		if imp.Dest != "" {
			steps = append(steps, "imports")
			break
		}
	}
	if img.Script() != "" {
		steps = append(steps, "run")
	}
	if len(steps) == 0 {
		return "vessel build of " + img.Name
	}
	return "vessel build of " + img.Name + " (" + strings.Join(steps, ", ") + ")"
}
