package promreg_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ensgate/ensgate/internal/promreg"
)

func TestRegisterTwiceIsFineAConflictIsNot(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "things_total", Help: "Things."})
	for range 2 {
		if err := promreg.Register(reg, c); err != nil {
			t.Fatalf("registering again: %v", err)
		}
	}
	clash := prometheus.NewGauge(prometheus.GaugeOpts{Name: "things_total", Help: "Other things."})
	if err := promreg.Register(reg, clash); err == nil {
		t.Error("a different collector under the same name was accepted")
	}
}
