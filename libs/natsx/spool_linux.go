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

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14).
const madvPopulateWrite = 23

// prefault has the kernel make a new segment's pages present and writable
// at once, so that the copies of Publish do not each stop on a page fault
// at a page they are the first to write. A kernel older than 5.14 refuses:
// the copies take the faults then.
func prefault(mapped []byte) { _ = syscall.Madvise(mapped, madvPopulateWrite) }
