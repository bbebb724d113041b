package push

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestFitOrder: the preview gives way first, then the subject, then the
// title; each cut keeps whole runes and ends with an ellipsis.
func TestFitOrder(t *testing.T) {
	size := func(t text) int { return len(t.title) + len(t.body()) }
	// 10 + 10 + "\n" + 15 = 36 bytes.
	in := text{title: "ТТТТТ", subject: "ééééé", preview: "日日日日日"}
	tests := []struct {
		limit int
		want  text
	}{
		{36, in},
		{35, text{title: "ТТТТТ", subject: "ééééé", preview: "日日日…"}}, // 33
		{24, text{title: "ТТТТТ", subject: "ééééé"}},                  // one rune and "…" make 27
		{19, text{title: "ТТТТТ", subject: "ééé…"}},                   // 19
		{14, text{title: "ТТТТТ"}},                                    // "é…" makes 15
		{9, text{title: "ТТТ…"}},                                      // 9
		{4, text{}},                                                   // "Т…" is 5
	}
	for _, tt := range tests {
		got, ok := fit(in, tt.limit, size)
		if !ok || got != tt.want {
			t.Errorf("limit %d: got %+v %v, want %+v", tt.limit, got, ok, tt.want)
		}
	}
	// A fixed part larger than the limit cannot be helped.
	if _, ok := fit(in, 50, func(t text) int { return 100 + size(t) }); ok {
		t.Error("fit reported success over the limit")
	}
}

// TestFitRandom checks fit's promises on random multibyte text.
func TestFitRandom(t *testing.T) {
	alphabet := []rune("aé日😀\"<\n")
	randText := func(r *rand.Rand) string {
		var b strings.Builder
		for range r.IntN(300) {
			b.WriteRune(alphabet[r.IntN(len(alphabet))])
		}
		return b.String()
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		in := text{title: randText(r), subject: randText(r), preview: randText(r)}
		limit := 200 + r.IntN(1500)
		size := func(t text) int {
			return len(encodeAPNs(apnsPayload{APS: aps{Alert: &apsAlert{Title: t.title, Body: t.body()}}}))
		}
		got, ok := fit(in, limit, size)
		if !ok {
			t.Fatalf("limit %d: no fit", limit)
		}
		if size(got) > limit {
			t.Fatalf("limit %d: size %d", limit, size(got))
		}
		for _, f := range []struct{ got, in string }{{got.title, in.title}, {got.subject, in.subject}, {got.preview, in.preview}} {
			cut, cutOff := strings.CutSuffix(f.got, ellipsis)
			if !utf8.ValidString(f.got) || !strings.HasPrefix(f.in, cut) || (f.got != f.in && f.got != "" && !cutOff) {
				t.Fatalf("field %q is not the input, or a prefix of it with an ellipsis", f.got)
			}
		}
		if (got.subject != in.subject && got.preview != "") || (got.title != in.title && got.subject != "") {
			t.Fatalf("cut out of order: %+v", got)
		}
	}
}
