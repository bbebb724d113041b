package privacy

import "testing"

func TestTenantLevelIsACeiling(t *testing.T) {
	for _, tc := range []struct{ tenant, device, want Level }{
		{SenderSubjectPreview, Sender, Sender},
		{Sender, SenderSubjectPreview, Sender},
		{BadgeOnly, SenderSubjectPreview, BadgeOnly},
		{Generic, Generic, Generic},
	} {
		if got := For(tc.tenant, tc.device); got != tc.want {
			t.Errorf("tenant %d, device %d: %d, want %d", tc.tenant, tc.device, got, tc.want)
		}
	}
}

func TestWhatEachLevelShows(t *testing.T) {
	for l, want := range map[Level][4]bool{ // sender, subject, preview, alert
		SenderSubjectPreview: {true, true, true, true},
		SenderSubject:        {true, true, false, true},
		Sender:               {true, false, false, true},
		Generic:              {false, false, false, true},
		BadgeOnly:            {false, false, false, false},
	} {
		if got := [4]bool{l.ShowsSender(), l.ShowsSubject(), l.ShowsPreview(), l.ShowsAlert()}; got != want {
			t.Errorf("level %d shows %v, want %v", l, got, want)
		}
	}
	for _, l := range []Level{-1, 5} {
		if l.Valid() || l.Check() == nil {
			t.Errorf("level %d accepted", l)
		}
	}
}
