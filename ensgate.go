// Package ensgate registers ENSGate's Caddy modules. Import it (or build with
// `xcaddy build --with github.com/ensgate/ensgate`) to add them to a Caddy binary.
package ensgate

import (
	_ "github.com/ensgate/ensgate/caddymodule"
)
