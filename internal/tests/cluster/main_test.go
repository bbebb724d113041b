// Package cluster runs ENSGate as admins scale it out (issue 13): two
// bin/ensgate nodes on one real PostgreSQL behind a real load balancer
// (nginx), with the Exchange simulator and the APNs and FCM fakes, and
// breaks one part at a time during a burst of mail: a node is killed,
// APNs and FCM go away (and a node dies holding the push jobs queued
// meanwhile), PostgreSQL restarts, the primary fails over to its standby.
// Each scenario prints its figures and fails when an item does not reach
// a device or a device shows one twice, when a push job is not completed,
// or when push_claims records an item delivered to a device twice or not
// at all.
package cluster

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/gateway"
)

// ensgate is the binary under test: $ENSGATE_BIN or one built here.
var ensgate string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	// The scenarios mostly wait (for Exchange's retries, for claims to
	// expire, for jobs to be retried or rescued) with their own clusters:
	// all five at once, not GOMAXPROCS, unless -parallel says otherwise.
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", "5")
	}
	bin, cleanup, err := gateway.Binary()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	ensgate = bin
	return m.Run()
}
