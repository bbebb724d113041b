package kdctest

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jcmturner/gokrb5/v8/client"
	"github.com/jcmturner/gokrb5/v8/config"
)

// gone reports whether no process of the group pgid is left.
func gone(pgid int) bool {
	return errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH)
}

func TestHeimdalStopsWithTheTest(t *testing.T) {
	var pgid int
	var dir string
	t.Run("kdc", func(t *testing.T) {
		r := Heimdal(t)
		pgid = r.kdc.cmd.Process.Pid
		dir = r.kdc.cmd.Dir
		if gone(pgid) {
			t.Fatal("the KDC is not running")
		}
	})
	if pgid == 0 {
		return // skipped
	}
	if !gone(pgid) {
		t.Errorf("Heimdal's kdc (process group %d) still runs after its test", pgid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("its directory %s is left: %v", dir, err)
	}
}

// TestSambaDCsCoexist starts a second DC while the shared one runs, as two
// test binaries (kcd's and e2e's) do: each answers with its own keys on its
// own address, and the second one leaves nothing behind when stopped.
func TestSambaDCsCoexist(t *testing.T) {
	shared := Samba(t)
	start := time.Now()
	other, err := startSamba()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second DC at %s ready in %v", other.addr, time.Since(start).Round(time.Millisecond))
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(other.stop) }
	t.Cleanup(stop)
	if other.addr == sambaDC.addr {
		t.Fatalf("both DCs listen on %s", other.addr)
	}

	login := func(addr string, r *Realm) error {
		cfg, err := config.NewFromString(krb5Conf(addr))
		if err != nil {
			t.Fatal(err)
		}
		cl := client.NewWithKeytab(r.ProxyPrincipal, r.Name, r.ProxyKeytab, cfg, client.DisablePAFXFAST(true))
		defer cl.Destroy()
		return cl.Login()
	}
	if err := login(other.addr, &other.realm); err != nil {
		t.Errorf("the second DC: %v", err)
	}
	if err := login(shared.KDCs[0], shared); err != nil {
		t.Errorf("the shared DC, meanwhile: %v", err)
	}
	// Two domains, two sets of keys: each DC refuses the other's.
	if err := login(other.addr, shared); err == nil {
		t.Error("the second DC accepted the shared DC's proxy keys: is it the same KDC?")
	}

	pgid := other.proc.cmd.Process.Pid
	stop()
	if !gone(pgid) {
		t.Errorf("samba (process group %d) still runs after stop", pgid)
	}
	if _, err := os.Stat(other.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("its directory %s is left: %v", other.dir, err)
	}
	if err := login(shared.KDCs[0], shared); err != nil {
		t.Errorf("the shared DC after the other stopped: %v", err)
	}
}
