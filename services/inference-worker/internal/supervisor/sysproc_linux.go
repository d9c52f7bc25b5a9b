package supervisor

import (
	"fmt"
	"os"
	"syscall"
)

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

// engineReadEnd opens the output pipe's read end r again, as a file of
// its own, for the engine to hold: then the pipe never breaks under the
// engine, and a worker that dies does not kill its engine with SIGPIPE
// before the engine has stopped the processes it started (Ollama logs as
// it shuts its model runner down). r itself is not passed: os/exec would
// switch it to blocking mode, and a blocked read of the worker's would no
// longer end when cleanup closes r. Nil where it cannot be opened.
func engineReadEnd(r *os.File) *os.File {
	sc, err := r.SyscallConn()
	if err != nil {
		return nil
	}
	var f *os.File
	_ = sc.Control(func(fd uintptr) {
		f, _ = os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", fd), os.O_RDONLY, 0)
	})
	return f
}
