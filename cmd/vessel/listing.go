package main

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
	"text/template"

	"github.com/spf13/pflag"
)

// listFlags are podman's conventions for list commands: -q prints one
// identifier per line, --format json or a Go template per row, and
// --noheading drops the table's header. --json stays.
type listFlags struct {
	quiet, noHeading bool
	format           string
}

func (f *listFlags) add(fs *pflag.FlagSet, quietWhat string) {
	fs.BoolVarP(&f.quiet, "quiet", "q", false, "print only "+quietWhat+", one per line")
	fs.StringVar(&f.format, "format", "", "json, or a Go template applied to each row (e.g. '{{.Name}}:{{.Tag}}')")
	fs.BoolVar(&f.noHeading, "noheading", false, "omit the table header")
}

// listTable is one list: rows (a slice of structs, also the JSON), their
// identifiers for -q, and the table's header and lines.
type listTable struct {
	rows   any
	ids    []string
	header string
	line   func(i int) string
}

// print writes t as the flags ask; jsonOut is the global --json.
func (f *listFlags) print(w io.Writer, jsonOut bool, t listTable) error {
	switch {
	case jsonOut || f.format == "json":
		return printJSON(w, t.rows)
	case f.quiet:
		for _, id := range t.ids {
			if _, err := fmt.Fprintln(w, id); err != nil {
				return err
			}
		}
		return nil
	case f.format != "":
		tmpl, err := template.New("format").Option("missingkey=error").Parse(f.format)
		if err != nil {
			return usageError{fmt.Sprintf("--format %q: %v", f.format, err)}
		}
		v := reflect.ValueOf(t.rows)
		for i := 0; i < v.Len(); i++ {
			var b strings.Builder
			if err := tmpl.Execute(&b, v.Index(i).Interface()); err != nil {
				return usageError{fmt.Sprintf("--format %q: %v", f.format, err)}
			}
			if _, err := fmt.Fprintln(w, b.String()); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if !f.noHeading {
		fmt.Fprintln(tw, t.header)
	}
	for i := range t.ids {
		fmt.Fprintln(tw, t.line(i))
	}
	return tw.Flush()
}
