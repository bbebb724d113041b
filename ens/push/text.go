package push

import (
	"sort"
	"strings"
)

// GenericBody is the whole alert at privacy level 3.
const GenericBody = "New message"

const ellipsis = "…"

// text is the user-visible part of a notification, laid out the same way for
// APNs and FCM.
type text struct {
	title, subject, preview string
	generic                 bool
}

func textOf(m Message) text {
	if m.Generic {
		return text{generic: true}
	}
	// Invalid UTF-8 would be replaced by JSON encoding anyway; doing it here
	// keeps the size arithmetic exact.
	return text{
		title:   strings.ToValidUTF8(m.Title, "\uFFFD"),
		subject: strings.ToValidUTF8(m.Subject, "\uFFFD"),
		preview: strings.ToValidUTF8(m.Preview, "\uFFFD"),
	}
}

// alert reports whether there is anything to show (levels 0-3).
func (t text) alert() bool {
	return t.generic || t.title != "" || t.body() != ""
}

// body is the subject, then a newline and the preview.
func (t text) body() string {
	switch {
	case t.generic:
		return GenericBody
	case t.subject == "":
		return t.preview
	case t.preview == "":
		return t.subject
	}
	return t.subject + "\n" + t.preview
}

// fit shortens t until size(t) <= limit: the preview first, then the
// subject, then the title, each cut at a rune boundary and ended with an
// ellipsis (or dropped when not even one rune fits). ok is false when the
// notification is too large even without any text.
func fit(t text, limit int, size func(text) int) (_ text, ok bool) {
	if size(t) <= limit {
		return t, true
	}
	for _, field := range []*string{&t.preview, &t.subject, &t.title} {
		runes := []rune(*field)
		// The largest prefix that fits; size grows with the prefix, so a
		// binary search over the rune count finds it in a dozen encodings.
		k := sort.Search(len(runes), func(k int) bool {
			*field = string(runes[:k+1]) + ellipsis
			return size(t) > limit
		})
		if k > 0 {
			*field = string(runes[:k]) + ellipsis
			return t, true
		}
		*field = ""
		if size(t) <= limit {
			return t, true
		}
	}
	return t, false
}
