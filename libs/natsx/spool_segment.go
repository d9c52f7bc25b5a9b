package natsx

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
)

// beginSegment creates the segment file at path with size bytes of disk
// reserved for it, and maps it for writing.
func beginSegment(path string, size int64) (f *os.File, mapped []byte, err error) {
	f, err = os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o640)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	if err := reserve(f, size); err != nil {
		return nil, nil, fmt.Errorf("reserving %d bytes for %s: %w", size, path, err)
	}
	mapped, err = syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	return f, mapped, nil
}

// reserve has the file system allocate f's first size bytes (zeros), so
// that a write through a mapping of them never finds the disk full: a
// mapping can only say so with SIGBUS. A file extended by ftruncate alone
// would be sparse, its blocks allocated on the first write to each.
func reserve(f *os.File, size int64) error {
	err := fallocate(f, size)
	if !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	// A file system without fallocate: zeros written allocate the blocks.
	zero := make([]byte, min(size, 1<<20))
	for off := int64(0); off < size; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero[:min(int64(len(zero)), size-off)], off); err != nil {
			return err
		}
	}
	return nil
}

// sealSegment unmaps a segment and cuts its file to size, the length of
// its records, and closes it.
func sealSegment(f *os.File, mapped []byte, size int64) error {
	err := syscall.Munmap(mapped)
	if terr := f.Truncate(size); err == nil {
		err = terr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// put copies frame to the start of dst, a segment's mapping. An I/O error
// behind the mapping reaches the process as SIGBUS on the copy: put
// returns it as an error instead of the process crashing.
func put(dst, frame []byte) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			fault, ok := r.(interface{ Addr() uintptr })
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("a fault at %#x in the segment's mapping: %v", fault.Addr(), r)
		}
	}()
	copy(dst, frame)
	return nil
}
