// Package layering holds the test that guards the shape of the code, after
// tailscale's tstest/deptest: domain packages stay free of Caddy and zap,
// each package imports only the layers below it, and only tests import
// the testing package. docs/architecture.md draws the same arrows.
package layering

import (
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/ensgate/ensgate"

// below lists, for every package of the module that is not a test harness,
// the module's packages it may import. A package missing here fails the
// test: its place in the layers is to be decided, and written down.
var below = map[string][]string{
	// Leaves: the standard library and third-party code only.
	"attest":           nil,
	"ens/seal":         nil,
	"ews":              nil,
	"privacy":          nil,
	"internal/promreg": nil,
	"oauth":            nil,

	"store": {"privacy"},
	"graph": {"oauth"},

	"kcd":        {"internal/promreg"},
	"compliance": {"store"},
	"ewsproxy":   {"attest", "compliance", "store", "internal/promreg"},
	"ens/push":   {"internal/promreg"},
	"ens":        {"attest", "ens/push", "ens/seal", "ews", "graph", "oauth", "privacy", "store", "internal/promreg"},

	// The adapter sees every domain package; nothing but the root sees it.
	"caddymodule": {"attest", "compliance", "ens", "ens/push", "ens/seal", "ews", "ewsproxy", "graph", "kcd", "oauth", "privacy", "store", "internal/promreg"},
	"":            {"caddymodule"},
	"cmd/ensgate": {""},
}

// domain are the packages that must not know Caddy or its logger: they are
// tested and reused on their own (caddymodule is the only adapter).
var domain = []string{"attest", "compliance", "ens", "ens/push", "ens/seal", "ews", "ewsproxy", "graph", "kcd", "oauth", "privacy", "store"}

// harnesses are test peers and environments: they may import anything of
// the module, and nothing above may import them.
func harness(rel string) bool {
	return strings.HasPrefix(rel, "internal/") && rel != "internal/promreg" ||
		rel == "cmd/ewssim" || rel == "cmd/graphsim" || rel == "cmd/pushsink" || rel == "cmd/ensdemo"
}

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

// list returns the module's packages (without their tests) by path
// relative to the module ("" for the root).
func list(t *testing.T) map[string]pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports,Deps", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]pkg{}
	for d := json.NewDecoder(strings.NewReader(string(out))); d.More(); {
		var p pkg
		if err := d.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[rel(p.ImportPath)] = p
	}
	return pkgs
}

func rel(path string) string {
	return strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
}

func TestDomainPackagesDoNotImportCaddyOrZap(t *testing.T) {
	pkgs := list(t)
	for _, name := range domain {
		p, ok := pkgs[name]
		if !ok {
			t.Errorf("domain package %q does not exist: update the layering table", name)
			continue
		}
		var bad []string
		for _, dep := range p.Deps {
			if strings.HasPrefix(dep, "github.com/caddyserver/caddy") || strings.HasPrefix(dep, "go.uber.org/zap") {
				bad = append(bad, dep)
			}
		}
		if len(bad) > 0 {
			t.Errorf("%s depends on %s (and %d more): domain packages stay free of Caddy and zap (caddymodule adapts)", name, bad[0], len(bad)-1)
		}
	}
}

func TestPackagesImportOnlyTheLayersBelow(t *testing.T) {
	for name, p := range list(t) {
		if harness(name) {
			continue
		}
		allowed, known := below[name]
		if !known {
			t.Errorf("package %q has no place in the layering table (internal/tests/layering): add it, with what it may import", name)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			if dep := rel(imp); !slices.Contains(allowed, dep) {
				t.Errorf("%q imports %q, which the layering does not allow (allowed: %q)", name, dep, allowed)
			}
		}
	}
}

// No package but tests imports the testing package (its flags and globals
// are not for production, and the simulator and push sink ship as
// binaries): test environments take testenv.TB, which *testing.T has.
func TestOnlyTestsImportTesting(t *testing.T) {
	pkgs := list(t)
	for name, p := range pkgs {
		if slices.Contains(p.Imports, "testing") {
			t.Errorf("%q imports the testing package outside its tests", name)
		}
	}
	for _, name := range []string{"cmd/ensgate", "cmd/ewssim", "cmd/pushsink", "cmd/ensdemo"} {
		if p, ok := pkgs[name]; !ok || slices.Contains(p.Deps, "testing") {
			t.Errorf("binary %q is missing or links the testing package", name)
		}
	}
}
