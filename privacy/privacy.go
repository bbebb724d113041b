// Package privacy is the admin's PolicyLimitNotificationText: what a push
// notification may show, from 0 (everything) to 4 (only the badge), and the
// rule that a tenant's level is a ceiling its devices may only raise. The
// database keeps levels as smallint with CHECK (… BETWEEN 0 AND 4), the
// same range as Valid.
package privacy

import "fmt"

// Level is how much a notification may show; higher is more private.
type Level int

// The levels (DESIGN.md, "Notification content").
const (
	SenderSubjectPreview Level = iota // sender, subject and preview
	SenderSubject                     // sender and subject
	Sender                            // sender only
	Generic                           // a generic "New message"
	BadgeOnly                         // nothing but the badge (iOS)
)

// Range describes the valid levels, for flags and error messages.
const Range = "0 (sender, subject and preview) to 4 (badge only)"

// Valid reports whether l is one of the levels.
func (l Level) Valid() bool { return l >= SenderSubjectPreview && l <= BadgeOnly }

// Check returns an error naming the valid range unless l is valid.
func (l Level) Check() error {
	if !l.Valid() {
		return fmt.Errorf("notification level %d: must be %s", int(l), Range)
	}
	return nil
}

// For is the level a device gets: the tenant's level is a ceiling, so a
// device may ask for less content, never more.
func For(tenant, device Level) Level { return max(tenant, device) }

// ShowsSender, ShowsSubject and ShowsPreview say what a push at l carries.
// Below Generic the item is fetched; at Generic and above it never is.
func (l Level) ShowsSender() bool  { return l <= Sender }
func (l Level) ShowsSubject() bool { return l <= SenderSubject }
func (l Level) ShowsPreview() bool { return l == SenderSubjectPreview }

// ShowsAlert reports whether a push at l shows anything but the badge.
func (l Level) ShowsAlert() bool { return l <= Generic }
