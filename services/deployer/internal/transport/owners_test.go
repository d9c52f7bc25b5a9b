package transport_test

import (
	"net/http"
	"strings"
	"testing"
)

type ownerAnswer struct {
	ID     string `json:"id"`
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	APIKey struct {
		ID     string `json:"id"`
		Prefix string `json:"prefix"`
		Key    string `json:"key"`
	} `json:"api_key"`
}

type meAnswer struct {
	OwnerID string `json:"owner_id"`
	Admin   bool   `json:"admin"`
	Owner   *struct {
		ID   string `json:"id"`
		Kind string `json:"kind"`
		Name string `json:"name"`
	} `json:"owner"`
	APIKey struct {
		Prefix string `json:"prefix"`
		Key    string `json:"key"`
	} `json:"api_key"`
}

// TestOrganisations: an admin creates an organisation with a first key;
// that key deploys services the organisation owns, makes more keys for its
// members, and never reaches another owner's services.
func TestOrganisations(t *testing.T) {
	e := newEnv(t)
	var org ownerAnswer
	if r := e.do(e.admin, "POST", "/api/v1/owners", `{"kind":"organization","name":"acme"}`, &org); r.StatusCode != http.StatusCreated {
		t.Fatalf("create organisation: status %d", r.StatusCode)
	}
	if org.Kind != "organization" || org.Name != "acme" || len(org.ID) != 12 || !strings.HasPrefix(org.APIKey.Key, "mp-") {
		t.Fatalf("created %+v", org)
	}
	// Handles are unique; only admins create owners; bad input is named.
	for _, tc := range []struct {
		secret, body string
		status       int
	}{
		{e.admin, `{"kind":"user","name":"acme"}`, http.StatusConflict},
		{e.alice, `{"kind":"user","name":"mallory"}`, http.StatusForbidden},
		{e.admin, `{"kind":"team","name":"x"}`, http.StatusBadRequest},
		{e.admin, `{"kind":"user","name":"Not A Handle"}`, http.StatusBadRequest},
	} {
		if r := e.do(tc.secret, "POST", "/api/v1/owners", tc.body, nil); r.StatusCode != tc.status {
			t.Errorf("POST %s: status %d, want %d", tc.body, r.StatusCode, tc.status)
		}
	}
	var list []ownerAnswer
	if r := e.do(e.admin, "GET", "/api/v1/owners", "", &list); r.StatusCode != 200 || len(list) != 1 || list[0].ID != org.ID {
		t.Fatalf("list owners: status %d, %+v", r.StatusCode, list)
	}
	if r := e.do(e.alice, "GET", "/api/v1/owners", "", nil); r.StatusCode != http.StatusForbidden {
		t.Errorf("list owners as a user: status %d, want 403", r.StatusCode)
	}

	orgKey := org.APIKey.Key
	var me meAnswer
	if r := e.do(orgKey, "GET", "/api/v1/me", "", &me); r.StatusCode != 200 {
		t.Fatalf("me: status %d", r.StatusCode)
	}
	if me.OwnerID != org.ID || me.Admin || me.Owner == nil || me.Owner.Name != "acme" || me.APIKey.Prefix == "" || me.APIKey.Key != "" {
		t.Fatalf("me = %+v, want the organisation, the key's prefix and never the secret", me)
	}

	var svc struct {
		ID         string `json:"id"`
		OwnerID    string `json:"owner_id"`
		AccessName string `json:"access_name"`
	}
	if r := e.do(orgKey, "POST", "/api/v1/services", `{"name":"support-bot","base_model":"qwen2.5-7b-instruct"}`, &svc); r.StatusCode != http.StatusCreated {
		t.Fatalf("deploy as the organisation: status %d", r.StatusCode)
	}
	if svc.OwnerID != org.ID || svc.AccessName != "u-"+org.ID+"/support-bot" {
		t.Fatalf("service %+v, want it owned by the organisation", svc)
	}
	var member struct {
		Key string `json:"key"`
	}
	if r := e.do(orgKey, "POST", "/api/v1/keys", `{"name":"member: dana"}`, &member); r.StatusCode != http.StatusCreated {
		t.Fatalf("member key: status %d", r.StatusCode)
	}
	if r := e.do(member.Key, "GET", "/api/v1/services/"+svc.ID, "", nil); r.StatusCode != 200 {
		t.Errorf("member reads the organisation's service: status %d", r.StatusCode)
	}
	// An organisation that lost its keys gets a new one from an admin.
	var issued struct {
		Key string `json:"key"`
	}
	if r := e.do(e.admin, "POST", "/api/v1/owners/"+org.ID+"/keys", `{"name":"recovery"}`, &issued); r.StatusCode != http.StatusCreated {
		t.Fatalf("admin issues a key: status %d", r.StatusCode)
	}
	if r := e.do(issued.Key, "GET", "/api/v1/services/"+svc.ID, "", nil); r.StatusCode != 200 {
		t.Errorf("the issued key reads the organisation's service: status %d", r.StatusCode)
	}
	if r := e.do(orgKey, "POST", "/api/v1/owners/"+org.ID+"/keys", `{}`, nil); r.StatusCode != http.StatusForbidden {
		t.Errorf("a non-admin issues an owner key: status %d, want 403", r.StatusCode)
	}

	// Cross-tenant: 404, not 403, both ways.
	if r := e.do(e.alice, "GET", "/api/v1/services/"+svc.ID, "", nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("another owner reads the organisation's service: status %d, want 404", r.StatusCode)
	}
	if r := e.do(e.alice, "POST", "/api/v1/services/"+svc.ID+"/scale", `{"instances":2}`, nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("another owner scales the organisation's service: status %d, want 404", r.StatusCode)
	}
	if r := e.do(e.alice, "DELETE", "/api/v1/services/"+svc.ID, `{"confirm_name":"support-bot"}`, nil); r.StatusCode != http.StatusNotFound {
		t.Errorf("another owner deletes the organisation's service: status %d, want 404", r.StatusCode)
	}
}
