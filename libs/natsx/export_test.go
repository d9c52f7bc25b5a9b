package natsx

import "time"

// KillSpool ends s as the end of its process would: nothing more is
// forwarded, nothing is cleaned up, and the directory is let go of.
func KillSpool(s *Spool) {
	s.mu.Lock()
	s.closed = true
	if s.file != nil {
		_ = s.file.Close()
		s.file = nil
	}
	s.mu.Unlock()
	s.release()
}

// SetSpoolLinger sets how long the forwarders of spools opened from now
// on wait for more events; it returns the setting to restore.
func SetSpoolLinger(d time.Duration) (restore func()) {
	old := spoolLinger
	spoolLinger = d
	return func() { spoolLinger = old }
}

// SpoolBatches returns how many batches s has sent to JetStream.
func SpoolBatches(s *Spool) int64 { return s.batches.Load() }
