//go:build tools

// Package tools pins the versions of the developer tools the Makefile builds
// into .tools/ (a separate module, so they never enter the product's build).
package tools

import (
	_ "github.com/caddyserver/xcaddy/cmd/xcaddy"
	_ "honnef.co/go/tools/cmd/staticcheck"
)
