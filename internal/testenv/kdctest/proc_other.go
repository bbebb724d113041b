//go:build !linux

package kdctest

import (
	"os"
	"syscall"
)

// The KDCs only run on Linux; elsewhere the tests skip before starting one.
func procAttr() *syscall.SysProcAttr { return nil }

func signalGroup(p *os.Process, kill bool) { p.Kill() }

func lockOwner(path string) (*os.File, error) { return os.Create(path) }

func ownerGone(path string) bool { return false }
