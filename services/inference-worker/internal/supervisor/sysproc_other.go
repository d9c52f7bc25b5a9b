//go:build unix && !linux

package supervisor

import "syscall"

// sysProcAttr puts the engine in a process group of its own, so that Stop
// reaches every process it forks. Only Linux can also tie its life to the
// worker's.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
