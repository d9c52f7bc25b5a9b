package console_test

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/modelport/modelport/services/deployer/internal/console"
)

func serve(t *testing.T, cfg console.Config) *httptest.Server {
	t.Helper()
	h, err := console.Handler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestServesAssets(t *testing.T) {
	srv := serve(t, console.Config{})
	tests := []struct {
		path, contentType, contains string
	}{
		{"/console/", "text/html; charset=utf-8", `<script type="module" src="/console/js/main.js">`},
		{"/console/js/main.js", "text/javascript; charset=utf-8", "import"},
		{"/console/js/views/playground.js", "text/javascript; charset=utf-8", "export function renderPlayground"},
		{"/console/app.css", "text/css; charset=utf-8", ":root"},
		{"/console/favicon.svg", "image/svg+xml", "<svg"},
		{"/console/config.json", "application/json", `"router_url":""`},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			resp, body := get(t, srv.URL+tc.path, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := resp.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if !strings.Contains(body, tc.contains) {
				t.Errorf("body does not contain %q", tc.contains)
			}
			if got := resp.Header.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", got)
			}
			if resp.Header.Get("ETag") == "" {
				t.Error("no ETag")
			}
			if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q", got)
			}
			csp := resp.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:", "connect-src 'self';", "object-src 'none'", "frame-ancestors 'none'"} {
				if !strings.Contains(csp+";", want) {
					t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe") {
				t.Errorf("Content-Security-Policy %q allows something unsafe", csp)
			}
		})
	}
}

func TestRevalidates(t *testing.T) {
	srv := serve(t, console.Config{})
	resp, _ := get(t, srv.URL+"/console/app.css", nil)
	etag := resp.Header.Get("ETag")
	again, body := get(t, srv.URL+"/console/app.css", map[string]string{"If-None-Match": etag})
	if again.StatusCode != http.StatusNotModified || body != "" {
		t.Fatalf("revalidation: status %d with %d bytes, want 304 and none", again.StatusCode, len(body))
	}
	other, _ := get(t, srv.URL+"/console/js/main.js", nil)
	if other.Header.Get("ETag") == etag {
		t.Fatal("two files share an ETag")
	}
}

func TestRefuses(t *testing.T) {
	srv := serve(t, console.Config{})
	for _, p := range []string{"/console/nope.js", "/console/js/", "/console/index.html", "/elsewhere"} {
		if resp, _ := get(t, srv.URL+p, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", p, resp.StatusCode)
		}
	}
	resp, err := http.Post(srv.URL+"/console/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: status %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

// TestConfig: in the separate-process topology the router and billing
// have their own addresses; the page learns them from config.json and
// the policy lets it reach them, and nothing else.
func TestConfig(t *testing.T) {
	srv := serve(t, console.Config{RouterURL: "https://api.example.com/", BillingURL: "http://billing.example.com:8082"})
	resp, body := get(t, srv.URL+"/console/config.json", nil)
	var got console.Config
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if want := (console.Config{RouterURL: "https://api.example.com", BillingURL: "http://billing.example.com:8082"}); got != want {
		t.Fatalf("config %+v, want %+v", got, want)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{
		"connect-src 'self' https://api.example.com http://billing.example.com:8082;",
		"img-src 'self' data: blob: https://api.example.com;",
	} {
		if !strings.Contains(csp+";", want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}

	for _, bad := range []console.Config{{RouterURL: "api.example.com"}, {BillingURL: "ftp://x"}, {RouterURL: "https://x/?a=1"}} {
		if _, err := console.Handler(bad); err == nil {
			t.Errorf("Handler(%+v) accepted a bad URL", bad)
		}
	}
}

// TestAssetsSelfContained checks the assets as shipped: every module
// import and every /console/ reference resolves to an embedded file, and
// nothing points at another host, so the console makes no external
// requests.
func TestAssetsSelfContained(t *testing.T) {
	srv := serve(t, console.Config{})
	root := os.DirFS("assets")
	imports := regexp.MustCompile(`(?m)^import\s[^'"\n]*['"]([^'"\n]+)['"]|^\s*}?\s*from\s+['"]([^'"\n]+)['"]`)
	refs := regexp.MustCompile(`(?:src|href)="(/console/[^"]*)"`)
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	n := 0
	err := fs.WalkDir(root, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		n++
		b, err := fs.ReadFile(root, p)
		if err != nil {
			return err
		}
		text := string(b)
		var targets []string
		for _, m := range imports.FindAllStringSubmatch(text, -1) {
			if path.Ext(p) != ".js" {
				break
			}
			spec := m[1] + m[2]
			if !strings.HasPrefix(spec, ".") {
				t.Errorf("%s imports %q: only relative imports of embedded modules", p, spec)
				continue
			}
			targets = append(targets, "/console/"+path.Join(path.Dir(p), spec))
		}
		for _, m := range refs.FindAllStringSubmatch(text, -1) {
			targets = append(targets, m[1])
		}
		for _, target := range targets {
			if resp, _ := get(t, srv.URL+target, nil); resp.StatusCode != 200 {
				t.Errorf("%s refers to %s: status %d", p, target, resp.StatusCode)
			}
		}
		for _, m := range external.FindAllString(text, -1) {
			if !strings.HasSuffix(m, "www.w3.org") { // the SVG namespace names, never fetches
				t.Errorf("%s refers to another host: %s", p, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("walked %d assets in %s; the test looks in the wrong place", n, filepath.Join("assets"))
	}
}
