package transport_test

import (
	"encoding/json"
	"testing"
)

// TestMeSaysWhereEventsAre: GET /api/v1/me tells an admin key where the
// event stream is, and tells other keys nothing about it (its streams hold
// every owner's events).
func TestMeSaysWhereEventsAre(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name   string
		secret string
		want   string
	}{
		{"admin", e.admin, testEventsURL},
		{"owner", e.alice, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var me map[string]json.RawMessage
			if resp := e.do(tc.secret, "GET", "/api/v1/me", "", &me); resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			raw, ok := me["events"]
			if tc.want == "" {
				if ok {
					t.Errorf("events = %s, want none for a key that is not an admin's", raw)
				}
				return
			}
			var es struct {
				NATSURL string `json:"nats_url"`
			}
			if err := json.Unmarshal(raw, &es); err != nil || es.NATSURL != tc.want {
				t.Errorf("events = %s (%v), want nats_url %s", raw, err, tc.want)
			}
			if _, ok := me["admin"]; !ok {
				t.Errorf("answer %v lost the fields of Me", me)
			}
		})
	}
}
