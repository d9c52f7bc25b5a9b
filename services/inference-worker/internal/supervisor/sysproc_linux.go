package supervisor

import "syscall"

// sysProcAttr puts the engine in a process group of its own, so that Stop
// reaches every process it forks, and has the kernel kill it if the worker
// dies first, so that no engine outlives its worker.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
