package billing

import (
	"regexp"
	"strings"
	"testing"
)

// lowerUUID is the contract's pattern for IDs, which isLowerUUID spells out.
var lowerUUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// FuzzIsLowerUUID checks isLowerUUID against the pattern it spells out.
func FuzzIsLowerUUID(f *testing.F) {
	const id = "0196ce22-3bd0-7f09-b34b-7a1e85d2c6f4"
	for _, s := range []string{id, strings.ToUpper(id), id + "\n", id[:35], id + "0", "", strings.ReplaceAll(id, "-", "0"),
		strings.Replace(id, "-", "x", 1), strings.Replace(id, "f", "g", 1), "0196ce22-3bd0-7f09-b34b-7a1e85d2c6\u00e9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := isLowerUUID(s), lowerUUID.MatchString(s); got != want {
			t.Fatalf("isLowerUUID(%q) = %v, the pattern says %v", s, got, want)
		}
	})
}
