package supervisor

import "syscall"

// sysProcAttr puts the engine in a process group of its own, so that Stop
// reaches every process it forks, and has the kernel send it SIGTERM if
// the worker dies first, so that no engine outlives its worker. SIGTERM,
// not SIGKILL: an engine ends the processes it started itself when asked
// to stop (Ollama its model runners, vLLM its engine core), while a killed
// one leaves them behind with the model in memory, and no worker is left
// to end its process group.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
