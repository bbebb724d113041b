package ens

import (
	"net/mail"
	"strings"
	"unicode"
)

// ValidDeviceID accepts what mail apps send: an opaque printable string of
// 1 to 256 bytes. The device API, the admin API and the CLI all use it.
func ValidDeviceID(id string) bool {
	return id != "" && len(id) <= 256 && strings.IndexFunc(id, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}

// DeviceIDRule says what ValidDeviceID accepts, for error messages.
const DeviceIDRule = "1 to 256 printable characters"

func checkDeviceID(id string) error {
	if !ValidDeviceID(id) {
		return badRequest("deviceId: must be %s", DeviceIDRule)
	}
	return nil
}

// checkEmail accepts a bare mailbox address (no display name).
func checkEmail(addr string) error {
	a, err := mail.ParseAddress(addr)
	if err != nil || a.Address != addr || len(addr) > 320 {
		return badRequest("email: must be a mailbox address like user@example.com")
	}
	return nil
}
