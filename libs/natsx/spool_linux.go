package natsx

import (
	"os"
	"syscall"
)

// fallocate allocates f's first size bytes on disk.
func fallocate(f *os.File, size int64) error {
	for {
		err := syscall.Fallocate(int(f.Fd()), 0, 0, size)
		if err != syscall.EINTR {
			return err
		}
	}
}
