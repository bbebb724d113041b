package ens

import (
	"net/mail"
	"strings"
	"unicode"
)

// checkDeviceID accepts what mail apps send: an opaque printable string.
func checkDeviceID(id string) error {
	if id == "" || len(id) > 256 || strings.IndexFunc(id, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return badRequest("deviceId: must be 1 to 256 printable characters")
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
