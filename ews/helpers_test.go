package ews

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/beevik/etree"
	"github.com/ensgate/ensgate/internal/testenv/ewsschema"
)

// samples returns every file in the shared samples directory by base name.
func samples(tb testing.TB) map[string][]byte {
	tb.Helper()
	dir, err := ewsschema.SamplesDir()
	if err != nil {
		tb.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.xml"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no samples in %s: %v", dir, err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// sample returns one sample file.
func sample(tb testing.TB, name string) []byte {
	tb.Helper()
	b, ok := samples(tb)[name]
	if !ok {
		tb.Fatalf("sample %s missing", name)
	}
	return b
}

// canonical renders a document as namespace-URI-qualified names, sorted
// unqualified attributes and trimmed text, one element per line, so that two
// documents differing only in prefixes and whitespace compare equal.
func canonical(tb testing.TB, data []byte) string {
	tb.Helper()
	root, err := ParseDocument(data)
	if err != nil {
		tb.Fatalf("canonical: %v", err)
	}
	var b strings.Builder
	var walk func(e *etree.Element, depth int)
	walk = func(e *etree.Element, depth int) {
		var attrs []string
		for _, a := range e.Attr {
			if a.Space == "xmlns" || (a.Space == "" && a.Key == "xmlns") {
				continue
			}
			attrs = append(attrs, a.FullKey()+"="+a.Value)
		}
		slices.Sort(attrs)
		fmt.Fprintf(&b, "%s{%s}%s %v %q\n", strings.Repeat(" ", depth), e.NamespaceURI(), e.Tag, attrs, strings.TrimSpace(e.Text()))
		for c := range e.ChildElementsSeq() {
			walk(c, depth+1)
		}
	}
	walk(root, 0)
	return b.String()
}
