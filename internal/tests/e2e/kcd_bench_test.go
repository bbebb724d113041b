package e2e

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv/kdctest"
)

// BenchmarkKCDOverhead measures what Kerberos Constrained Delegation adds
// to a request whose ticket is cached: GetFolder through bin/ensgate over
// HTTPS to the simulator, one request at a time, alternating a Basic
// request and a client-certificate request (fresh authenticator, SPNEGO
// header, Exchange's ticket check) so that both see the same machine load.
// It reports each one's median and the share of certificate requests the
// ticket cache served (the rest cost an S4U2Self + S4U2Proxy pair).
func BenchmarkKCDOverhead(b *testing.B) {
	r := kdctest.Heimdal(b)
	alice := strings.ToLower(r.User)
	sim := ewssim.Start(b, ewssim.Config{
		Keytab: r.ExchangeKeytab,
		SPN:    r.ExchangeSPN,
		Users:  []ewssim.User{{Address: alice, Password: "alice-pw"}},
	})
	g := startKCDGateway(b, r, sim)
	ews := g.base + "/EWS/Exchange.asmx"
	basic := g.client(b, nil)
	basicAuth := "Basic " + basicAuth(alice, "alice-pw")
	cba := g.client(b, g.clientCert(b, "Alice", r.User, ""))
	_, tgsBefore := r.Requests()

	call := func(c *http.Client, auth string) time.Duration {
		start := time.Now()
		if resp, body := postGetFolder(b, c, ews, "", auth); resp.StatusCode != 200 {
			b.Fatalf("%d %.200s", resp.StatusCode, body)
		}
		return time.Since(start)
	}
	var basicTimes, cbaTimes []time.Duration
	for b.Loop() {
		basicTimes = append(basicTimes, call(basic, basicAuth))
		cbaTimes = append(cbaTimes, call(cba, ""))
	}
	median := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)/2]
	}
	mb, mc := median(basicTimes), median(cbaTimes)
	b.ReportMetric(float64(mb.Microseconds()), "basic-µs/req")
	b.ReportMetric(float64(mc.Microseconds()), "cba-µs/req")
	b.ReportMetric(float64((mc - mb).Microseconds()), "kcd-added-µs")
	_, tgsAfter := r.Requests()
	pairs := (tgsAfter - tgsBefore) / 2
	n := int64(len(cbaTimes))
	b.ReportMetric(100*float64(n-pairs)/float64(n), "%-from-cache")
}
