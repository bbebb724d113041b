package ens

import "runtime/debug"

const modulePath = "github.com/ensgate/ensgate"

// Version is ENSGate's module version as recorded in the binary: a tag or
// pseudo-version when built as a dependency (xcaddy), "(devel)" from a
// checkout.
func Version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if info.Main.Path == modulePath {
		return info.Main.Version
	}
	for _, dep := range info.Deps {
		if dep.Path == modulePath {
			if dep.Replace != nil {
				return dep.Replace.Version
			}
			return dep.Version
		}
	}
	return "unknown"
}
