// Package caddymodule adapts ENSGate's domain packages to Caddy.
package caddymodule
