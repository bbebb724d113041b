package kdctest

import (
	"os"
	"syscall"
)

// procAttr puts a KDC in its own process group (stop signals all its
// processes) and kills it when the test binary dies.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

func signalGroup(p *os.Process, kill bool) {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	syscall.Kill(-p.Pid, sig)
}

// lockOwner creates path holding an exclusive lock for as long as this
// process lives (or until the file is closed). The lock is taken before the
// file gets its name, so nobody sees it unlocked.
func lockOwner(path string) (*os.File, error) {
	f, err := os.Create(path + ".new")
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	if err := os.Rename(path+".new", path); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// ownerGone reports whether path exists and nobody holds its lock: the
// process that made it died without cleaning up.
func ownerGone(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil
}
