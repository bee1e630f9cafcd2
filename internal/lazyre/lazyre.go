// Package lazyre holds regular expressions that are compiled on first use
// instead of at package initialisation. Every vessel command links almost
// every package, so package-level regexp.MustCompile calls run before each
// of them, `vessel run` included: about 1 ms of CPU per start for the
// expressions this replaces (perf record of `vessel version`; GODEBUG=
// inittrace=1 shows them under the packages' init). A bad expression panics
// at its first use, as regexp.MustCompile would at start-up; the package's
// test compiles every expression of the packages that use it (Sources).
package lazyre

import (
	"regexp"
	"sync"
)

// Regexp is a regexp.Regexp compiled when first used. It is safe for
// concurrent use.
type Regexp struct {
	src  string
	once sync.Once
	re   *regexp.Regexp
}

var (
	mu  sync.Mutex
	all []string
)

// New returns the expression src, to be compiled on first use.
func New(src string) *Regexp {
	mu.Lock()
	all = append(all, src)
	mu.Unlock()
	return &Regexp{src: src}
}

// Sources lists the source text of every expression made with New so far
// in this process.
func Sources() []string {
	mu.Lock()
	defer mu.Unlock()
	return append([]string(nil), all...)
}

// Regexp returns the compiled expression.
func (r *Regexp) Regexp() *regexp.Regexp {
	r.once.Do(func() { r.re = regexp.MustCompile(r.src) })
	return r.re
}

// String returns the source text of the expression.
func (r *Regexp) String() string { return r.src }

// MatchString is regexp.Regexp.MatchString.
func (r *Regexp) MatchString(s string) bool { return r.Regexp().MatchString(s) }

// FindStringSubmatch is regexp.Regexp.FindStringSubmatch.
func (r *Regexp) FindStringSubmatch(s string) []string { return r.Regexp().FindStringSubmatch(s) }

// FindAllStringSubmatch is regexp.Regexp.FindAllStringSubmatch.
func (r *Regexp) FindAllStringSubmatch(s string, n int) [][]string {
	return r.Regexp().FindAllStringSubmatch(s, n)
}

// ReplaceAllStringFunc is regexp.Regexp.ReplaceAllStringFunc.
func (r *Regexp) ReplaceAllStringFunc(s string, f func(string) string) string {
	return r.Regexp().ReplaceAllStringFunc(s, f)
}
