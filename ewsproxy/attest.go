package ewsproxy

import "github.com/ensgate/ensgate/attest"

// The attestation wire format lives in package attest, shared with ENS.
// These names remain only for caddymodule, which configures the guard with
// them; once it names attest itself they go.
type Attestation = attest.Attestation

const DevicesHeader = attest.DevicesHeader
