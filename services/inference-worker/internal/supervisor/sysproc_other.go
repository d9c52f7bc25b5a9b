//go:build unix && !linux

package supervisor

import (
	"os"
	"syscall"
)

// sysProcAttr puts the engine in a process group of its own, so that Stop
// reaches every process it forks. Only Linux can also tie its life to the
// worker's.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// engineReadEnd is nil: only on Linux does the engine hold its output
// pipe's read end.
func engineReadEnd(*os.File) *os.File { return nil }
