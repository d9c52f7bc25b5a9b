//go:build !linux

package natsx

import (
	"errors"
	"os"
)

// fallocate is Linux's: elsewhere, reserve writes zeros.
func fallocate(*os.File, int64) error { return errors.ErrUnsupported }

// prefault is Linux's: elsewhere, the copies take the page faults.
func prefault([]byte) {}
