// Package console serves the web console: static HTML, CSS and JavaScript
// modules embedded in the binary, which call the control API, the OpenAI
// API and the usage API from the browser with the user's API key. It
// needs nothing at run time but this handler: no build step, no CDN.
package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// Prefix is where the console is served.
const Prefix = "/console/"

// Config says where the browser finds the APIs the console calls. An
// empty URL is the console's own origin, as in the all-in-one binary,
// where one address serves everything.
type Config struct {
	// RouterURL is the OpenAI API's base as browsers reach it, without
	// /v1, e.g. "https://api.example.com". Code samples show it.
	RouterURL string `json:"router_url"`
	// BillingURL is the usage API's base, without /api/v1/usage.
	BillingURL string `json:"billing_url"`
}

// Validate checks that each URL is empty or an absolute http(s) URL with
// no query, and trims a trailing slash.
func (c *Config) Validate() error {
	for _, f := range []struct {
		name string
		v    *string
	}{{"router URL", &c.RouterURL}, {"billing URL", &c.BillingURL}} {
		*f.v = strings.TrimRight(*f.v, "/")
		if *f.v == "" {
			continue
		}
		u, err := url.Parse(*f.v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("console %s %q: want an absolute http(s) URL such as https://api.example.com", f.name, *f.v)
		}
	}
	return nil
}

// origin is the scheme and host of u, for the Content-Security-Policy.
func origin(u string) string {
	p, err := url.Parse(u)
	if err != nil || u == "" {
		return ""
	}
	return p.Scheme + "://" + p.Host
}

// file is one asset, ready to serve.
type file struct {
	body        []byte
	contentType string
	etag        string
}

// contentTypes are the types of the files the console ships, set
// explicitly rather than from the host's MIME tables, which differ
// between machines.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".json": "application/json",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
}

// Handler serves the console under Prefix: the page at Prefix itself,
// its assets below it, and Prefix + "config.json", which is cfg. Every
// answer carries a strict Content-Security-Policy (scripts, styles and
// fonts from this origin only; images also from data: and blob: URLs and
// the router; requests to this origin and the configured APIs) and
// Cache-Control: no-cache with an ETag, so browsers revalidate and a new
// binary's console is used at once. Only GET and HEAD are served.
func Handler(cfg Config) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	files := map[string]file{}
	err := fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := assets.ReadFile(p)
		if err != nil {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if !ok {
			return fmt.Errorf("console asset %s: no content type for %q", p, path.Ext(p))
		}
		files[strings.TrimPrefix(p, "assets/")] = newFile(b, ct)
		return nil
	})
	if err != nil {
		return nil, err
	}
	conf, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	files["config.json"] = newFile(conf, contentTypes[".json"])
	files[""] = files["index.html"]
	delete(files, "index.html")

	images := []string{"'self'", "data:", "blob:"}
	connect := []string{"'self'"}
	for _, u := range []string{cfg.RouterURL, cfg.BillingURL} {
		if o := origin(u); o != "" {
			connect = append(connect, o)
		}
	}
	if o := origin(cfg.RouterURL); o != "" {
		images = append(images, o) // generated images are served by the router
	}
	csp := strings.Join([]string{
		"default-src 'self'",
		"script-src 'self'",
		"style-src 'self'",
		"img-src " + strings.Join(images, " "),
		"connect-src " + strings.Join(connect, " "),
		"object-src 'none'",
		"base-uri 'none'",
		"form-action 'self'",
		"frame-ancestors 'none'",
	}, "; ")

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, Prefix)
		f, found := files[name]
		if !ok || !found {
			http.NotFound(w, r)
			return
		}
		h.Set("Content-Type", f.contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.body))
	}), nil
}

func newFile(b []byte, contentType string) file {
	sum := sha256.Sum256(b)
	return file{body: b, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
}
