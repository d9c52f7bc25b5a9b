package main

import (
	"slices"
	"testing"
)

func TestIntersectSubjects(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want string // "" for none
	}{
		{">", "deploy.>", "deploy.>"},
		{"deploy.>", ">", "deploy.>"},
		{"deploy.service.created.v1", "deploy.>", "deploy.service.created.v1"},
		{"*.service.*.v1", "deploy.>", "deploy.service.*.v1"},
		{"*.service.*.v1", "usage.>", "usage.service.*.v1"},
		{"scale.instance.placed.v1.*", "scale.>", "scale.instance.placed.v1.*"},
		{"scale.*", "scale.>", "scale.*"},
		{"deploy", "deploy.>", ""}, // > needs at least one more token
		{"usage.>", "deploy.>", ""},
		{"deploy.service.created.v1", "deploy.service.created.v1", "deploy.service.created.v1"},
		{"deploy.service.created.v1", "deploy.service.deleted.v1", ""},
		{"deploy.*", "deploy.service.created.v1", ""},
		{"*.*.created.>", "deploy.>", "deploy.*.created.>"},
	} {
		t.Run(tc.a+" & "+tc.b, func(t *testing.T) {
			got, ok := intersectSubjects(tc.a, tc.b)
			if ok != (tc.want != "") || got != tc.want {
				t.Errorf("intersectSubjects(%q, %q) = %q, %v; want %q", tc.a, tc.b, got, ok, tc.want)
			}
		})
	}
}

func TestCheckSubjectPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		ok      bool
	}{
		{"deploy.service.created.v1", true},
		{"deploy.>", true},
		{"*.service.*.v1", true},
		{">", true},
		{"", false},
		{"deploy..v1", false},
		{"deploy.>.v1", false},
		{"deploy.serv*", false},
		{"deploy. service", false},
	} {
		if err := checkSubjectPattern(tc.pattern); (err == nil) != tc.ok {
			t.Errorf("checkSubjectPattern(%q) = %v, want ok %v", tc.pattern, err, tc.ok)
		}
	}
}

func TestTailPlan(t *testing.T) {
	plan, err := tailPlan([]string{"deploy.service.created.v1", "*.instance.>"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, sp := range plan {
		got[sp.stream] = sp.filters
	}
	want := map[string][]string{
		"DEPLOY": {"deploy.service.created.v1", "deploy.instance.>"},
		"SCALE":  {"scale.instance.>"},
		"WORKER": {"worker.instance.>"},
		"USAGE":  {"usage.instance.>"},
	}
	for stream, filters := range want {
		if !slices.Equal(got[stream], filters) {
			t.Errorf("stream %s: filters %v, want %v", stream, got[stream], filters)
		}
	}
	if _, err := tailPlan([]string{"nothing.here"}); err == nil {
		t.Error("a pattern no stream holds: no error")
	}
}
