package natsx

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
