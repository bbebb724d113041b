package ens

import (
	"bytes"
	"testing"
)

// One item, however its base64 id is spelled, is one push claim: a replay
// cannot respell an id to have it pushed again.
func TestItemHashIsTheSameForEverySpellingOfAnID(t *testing.T) {
	id := "AAMkAGI2TG93AAA="
	want := ItemHash(id)
	for _, spelling := range []string{"AAMkAGI2TG93AAA", "AAMk AGI2\r\nTG93AAA=", "AAMkAGI2TG93AAA= "} {
		if got := ItemHash(spelling); !bytes.Equal(got, want) {
			t.Errorf("%q hashes apart from %q", spelling, id)
		}
	}
	if bytes.Equal(ItemHash("AAMkAGI2TG93AAE="), want) {
		t.Error("another id hashes alike")
	}
	if bytes.Equal(ItemHash("not base64!"), ItemHash("not base64?")) {
		t.Error("ids that are not base64 hash alike")
	}
}
