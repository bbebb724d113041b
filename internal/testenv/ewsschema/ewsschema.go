// Package ewsschema validates EWS SOAP messages against the official schemas
// (kept in testdata/schema, with sample messages in testdata/samples) with
// xmllint, for tests on both sides of the protocol.
package ewsschema

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ensgate/ensgate/internal/testenv"
)

// Dir returns the directory holding ews-envelope-strict.xsd: $ENSGATE_EWS_SCHEMA
// if set, else this package's testdata/schema.
func Dir() (string, error) {
	if d := os.Getenv("ENSGATE_EWS_SCHEMA"); d != "" {
		return d, nil
	}
	return testdata("schema", "ews-envelope-strict.xsd")
}

// SamplesDir returns the directory of the sample EWS messages.
func SamplesDir() (string, error) {
	return testdata("samples", "01-subscribe-push.request.xml")
}

// testdata returns this package's testdata/dir, checking that it holds
// file: tests run with their own package as the working directory.
func testdata(dir, file string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	d := filepath.Join(root, "internal", "testenv", "ewsschema", "testdata", dir)
	if _, err := os.Stat(filepath.Join(d, file)); err != nil {
		return "", fmt.Errorf("EWS test data not found at %s: %w", d, err)
	}
	return d, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Validate checks every document against the strict SOAP 1.1 + EWS schema in
// one xmllint run and returns xmllint's complaints, naming each document.
func Validate(docs map[string][]byte) error {
	if len(docs) == 0 {
		return nil
	}
	schemaDir, err := Dir()
	if err != nil {
		return err
	}
	xmllint, err := exec.LookPath("xmllint")
	if err != nil {
		return errors.New("xmllint not found: install libxml2-utils (.ci/run does)")
	}
	tmp, err := os.MkdirTemp("", "ewsschema")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	args := []string{"--noout", "--nonet", "--schema", filepath.Join(schemaDir, "ews-envelope-strict.xsd")}
	for name, doc := range docs {
		file := filepath.Join(tmp, sanitize(name)+".xml")
		if err := os.WriteFile(file, doc, 0o600); err != nil {
			return err
		}
		args = append(args, file)
	}
	out, err := exec.Command(xmllint, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("schema validation failed: %v\n%s", err, strings.ReplaceAll(string(out), tmp+string(filepath.Separator), ""))
	}
	return nil
}

// Check is Validate for tests: it fails t with xmllint's output.
func Check(t testenv.TB, docs map[string][]byte) {
	t.Helper()
	if err := Validate(docs); err != nil {
		t.Fatal(err)
	}
}

func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == ' ' {
			return '_'
		}
		return r
	}, name)
}
