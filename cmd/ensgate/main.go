// Command ensgate is Caddy with its standard modules plus ENSGate's own.
package main

import (
	_ "time/tzdata"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/ensgate/ensgate"
)

func main() {
	caddycmd.Main()
}
