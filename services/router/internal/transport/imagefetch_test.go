package transport

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/errs"
)

func TestAddrClass(t *testing.T) {
	for _, tc := range []struct {
		addr, want string
	}{
		// Public.
		{"93.184.216.34", ""},
		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"2606:4700:4700::1111", ""},
		{"2a00:1450:4001:82a::200e", ""},
		{"::ffff:8.8.8.8", ""},         // IPv4-mapped public
		{"64:ff9b::808:808", ""},       // NAT64 of 8.8.8.8
		{"2002:808:808::1", ""},        // 6to4 of 8.8.8.8
		{"100.63.255.255", ""},         // just below CGNAT
		{"100.128.0.0", ""},            // just above CGNAT
		{"172.15.255.255", ""},         // just below 172.16/12
		{"172.32.0.0", ""},             // just above
		{"223.255.255.255", ""},        // last before multicast
		{"fe80::1%eth0", "link-local"}, // with a zone
		// IPv4.
		{"127.0.0.1", "loopback"},
		{"127.255.255.254", "loopback"},
		{"10.0.0.1", "private"},
		{"10.255.255.255", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"169.254.169.254", "link-local"}, // cloud metadata
		{"0.0.0.0", "unspecified"},
		{"0.1.2.3", "reserved (this network)"},
		{"100.64.0.1", "shared (carrier-grade NAT)"},
		{"100.127.255.255", "shared (carrier-grade NAT)"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"240.0.0.1", "reserved"},
		{"255.255.255.255", "reserved"},
		{"192.0.0.8", "reserved (IETF protocol assignments)"},
		{"192.0.2.1", "documentation"},
		{"198.51.100.7", "documentation"},
		{"203.0.113.9", "documentation"},
		{"198.18.0.1", "benchmarking"},
		// IPv6.
		{"::1", "loopback"},
		{"::", "unspecified"},
		{"fc00::1", "private"},
		{"fd12:3456:789a::1", "private"},
		{"fe80::1", "link-local"},
		{"febf::1", "link-local"},
		{"fec0::1", "private (site-local)"},
		{"ff02::1", "multicast"},
		{"ff05::2", "multicast"},
		{"2001:db8::1", "documentation"},
		{"100::1", "reserved (discard)"},
		{"2001::1", "reserved (Teredo)"},
		{"::127.0.0.1", "reserved (IPv4-compatible)"},
		{"64:ff9b:1::1", "reserved (local NAT64)"},
		// IPv4 inside IPv6 is judged by the IPv4 address.
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:10.1.2.3", "private"},
		{"::ffff:169.254.169.254", "link-local"},
		{"::ffff:0.0.0.0", "unspecified"},
		{"::ffff:100.64.0.1", "shared (carrier-grade NAT)"},
		{"64:ff9b::7f00:1", "loopback"},        // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", "link-local"},   // NAT64 of 169.254.169.254
		{"2002:a00:1::1", "private"},           // 6to4 of 10.0.0.1
		{"2002:7f00:1::", "loopback"},          // 6to4 of 127.0.0.1
		{"2002:c0a8:101::1", "private"},        // 6to4 of 192.168.1.1
		{"2002:e000:1::1", "multicast"},        // 6to4 of 224.0.0.1
		{"::ffff:255.255.255.255", "reserved"}, // mapped broadcast
	} {
		a, err := netip.ParseAddr(tc.addr)
		if err != nil {
			t.Fatalf("%s: %v", tc.addr, err)
		}
		if got := addrClass(a); got != tc.want {
			t.Errorf("addrClass(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	if got := addrClass(netip.Addr{}); got == "" {
		t.Errorf("the zero Addr is public")
	}
}

// pngBytes is a small PNG image.
func pngBytes(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewRGBA(image.Rect(0, 0, 3, 2))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// imageServer serves handlers by path and counts the requests it gets.
type imageServer struct {
	*httptest.Server
	hits atomic.Int32
}

func newImageServer(t *testing.T, mux *http.ServeMux) *imageServer {
	t.Helper()
	s := &imageServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *imageServer) port() string {
	_, port, _ := net.SplitHostPort(s.Listener.Addr().String())
	return port
}

// checkRefused fails unless err is errs.Invalid whose message has want.
func checkRefused(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("fetched; want an error containing %q", want)
	}
	e, ok := errs.As(err)
	if !ok || e.Kind != errs.Invalid {
		t.Fatalf("err = %v (kind %v), want errs.Invalid", err, errs.KindOf(err))
	}
	// The reason is in the error, for the log; what the client reads names
	// no address, so requests cannot map internal names.
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err.Error(), want)
	}
	for _, addr := range []string{"127.0.0.1", "::1", "10.0.0.7", "fd00::7", "169.254.169.254"} {
		if strings.Contains(e.Msg, addr) && !strings.Contains(want, "is this machine") {
			t.Errorf("the client's message %q names the address %s", e.Msg, addr)
		}
	}
}

func TestImageFetcher(t *testing.T) {
	img := pngBytes(t)
	// A port nobody listens on: one just freed (port 1 may be taken).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().String()
	ln.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/cat.png", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(img)
	})
	mux.HandleFunc("/untyped", func(w http.ResponseWriter, _ *http.Request) {
		w.Header()["Content-Type"] = nil // no type at all: sniffed
		_, _ = w.Write(img)
	})
	mux.HandleFunc("/octets", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(img)
	})
	mux.HandleFunc("/page.html", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<html><body>not an image</body></html>"))
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, _ *http.Request) { w.Header().Set("Content-Type", "image/png") })
	mux.HandleFunc("/big", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(make([]byte, 4096))
	})
	mux.HandleFunc("/big-chunked", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		for range 8 {
			_, _ = w.Write(make([]byte, 512))
			w.(http.Flusher).Flush() // no Content-Length: the limit is found while reading
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	mux.HandleFunc("/slow-body", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(img[:10])
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/cat.png", http.StatusFound) })
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	mux.HandleFunc("/to-file", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "file:///etc/passwd", http.StatusFound)
	})
	mux.HandleFunc("/to-creds", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://user:pw@"+r.Host+"/cat.png", http.StatusFound)
	})
	srv := newImageServer(t, mux)
	// The test servers are on loopback, so these tests allow private targets.
	f := NewImageFetcher(300*time.Millisecond, true)
	ctx := context.Background()

	t.Run("an image", func(t *testing.T) {
		for _, path := range []string{"/cat.png", "/untyped", "/octets", "/redirect"} {
			mt, data, err := f.Fetch(ctx, srv.URL+path, 1<<20, nil)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if mt != "image/png" || !bytes.Equal(data, img) {
				t.Errorf("%s: got %s, %d bytes; want image/png, %d bytes", path, mt, len(data), len(img))
			}
		}
	})
	t.Run("exactly the limit", func(t *testing.T) {
		if _, data, err := f.Fetch(ctx, srv.URL+"/cat.png", int64(len(img)), nil); err != nil || len(data) != len(img) {
			t.Errorf("got %d bytes, %v", len(data), err)
		}
	})
	for _, tc := range []struct {
		name, url string
		limit     int64
		want      string
	}{
		{"not an image", srv.URL + "/page.html", 1 << 20, "did not answer with an image (Content-Type text/html)"},
		{"no content", srv.URL + "/empty", 1 << 20, "no content"},
		{"not found", srv.URL + "/missing.png", 1 << 20, "answered 404 Not Found"},
		{"over the limit, by Content-Length", srv.URL + "/big", 1000, "larger than 1000 bytes"},
		{"over the limit, while reading", srv.URL + "/big-chunked", 1000, "larger than 1000 bytes"},
		{"one byte over", srv.URL + "/cat.png", int64(len(img)) - 1, "larger than"},
		{"no answer in time", srv.URL + "/slow", 1 << 20, "took longer than 300ms"},
		{"a body that stalls", srv.URL + "/slow-body", 1 << 20, "took longer than 300ms"},
		{"a redirect loop", srv.URL + "/loop", 1 << 20, "redirected more than 5 times"},
		{"a redirect to another scheme", srv.URL + "/to-file", 1 << 20, "http(s) URLs, not file:"},
		{"a redirect with credentials", srv.URL + "/to-creds", 1 << 20, "may not carry credentials"},
		{"another scheme", "ftp://example.com/cat.png", 1 << 20, "http(s) URLs, not ftp:"},
		{"credentials", "http://user:secret@example.com/cat.png", 1 << 20, "may not carry credentials"},
		{"no host", "http:///cat.png", 1 << 20, "has no host"},
		{"not a URL", "http://exa mple.com/", 1 << 20, "not valid"},
		{"a host that does not resolve", "http://no-such-host.invalid/cat.png", 1 << 20, "could not be resolved"},
		{"a port nobody listens on", "http://" + closedPort + "/cat.png", 1 << 20, "could not be fetched"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := f.Fetch(ctx, tc.url, tc.limit, nil)
			checkRefused(t, err, tc.want)
		})
	}
	t.Run("the caller going away is not the client's error", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		go func() {
			time.Sleep(20 * time.Millisecond)
			cancel()
		}()
		_, _, err := NewImageFetcher(time.Minute, true).Fetch(cctx, srv.URL+"/slow", 1<<20, nil)
		if err != context.Canceled {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})
}

// withResolver makes f dial the names in hosts at the addresses given,
// standing in for DNS: the dial still goes through f's checked dialer.
func withResolver(f *ImageFetcher, hosts map[string]string) {
	tr := f.client.Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if ip, ok := hosts[host]; ok {
			addr = net.JoinHostPort(ip, port)
		}
		return dial(ctx, network, addr)
	}
}

func TestImageFetcherRefusesPrivateTargets(t *testing.T) {
	img := pngBytes(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/cat.png", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(img)
	})
	srv := newImageServer(t, mux)
	port := srv.port()
	ctx := context.Background()

	t.Run("by literal address or name, before any connection", func(t *testing.T) {
		f := NewImageFetcher(time.Second, false)
		for _, tc := range []struct{ url, want string }{
			{"http://127.0.0.1:" + port + "/cat.png", "127.0.0.1, a loopback address"},
			{"http://localhost:" + port + "/cat.png", "is this machine"},
			{"http://LocalHost.:" + port + "/cat.png", "is this machine"},
			{"http://images.localhost:" + port + "/cat.png", "is this machine"},
			{"http://[::1]:" + port + "/cat.png", "::1, a loopback address"},
			{"http://[::ffff:127.0.0.1]:" + port + "/cat.png", "loopback"},
			{"https://169.254.169.254/latest/meta-data/", "link-local"},
			{"http://10.0.0.7/cat.png", "private"},
			{"http://[fd00::7]/cat.png", "private"},
			{"http://100.64.1.1/cat.png", "carrier-grade NAT"},
			{"http://0.0.0.0:" + port + "/cat.png", "unspecified"},
			{"http://[fe80::1%25eth0]/cat.png", "link-local"},
		} {
			_, _, err := f.Fetch(ctx, tc.url, 1<<20, nil)
			checkRefused(t, err, tc.want)
		}
		if n := srv.hits.Load(); n != 0 {
			t.Errorf("the server got %d requests, want none", n)
		}
	})
	t.Run("by the address a name resolves to, when connecting", func(t *testing.T) {
		// A public-looking name that DNS points at loopback, as in DNS
		// rebinding: the check on the dialled address refuses it.
		f := NewImageFetcher(time.Second, false)
		withResolver(f, map[string]string{"images.example": "127.0.0.1", "v6.example": "::1"})
		for _, host := range []string{"images.example", "v6.example"} {
			_, _, err := f.Fetch(ctx, "http://"+host+":"+port+"/cat.png", 1<<20, nil)
			checkRefused(t, err, "loopback address")
		}
		if n := srv.hits.Load(); n != 0 {
			t.Errorf("the server got %d requests, want none", n)
		}
	})
	t.Run("a redirect to a private address", func(t *testing.T) {
		// "public.example" stands for a public server: the one address the
		// check lets through. It redirects to a name that resolves to
		// loopback, which must not be reached.
		inner := newImageServer(t, mux)
		outerMux := http.NewServeMux()
		outerMux.HandleFunc("/cat.png", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://internal.example:"+inner.port()+"/cat.png", http.StatusFound)
		})
		outer := newImageServer(t, outerMux)
		f := NewImageFetcher(time.Second, false)
		withResolver(f, map[string]string{"public.example": "127.0.0.1", "internal.example": "127.0.0.1"})
		public := outer.port()
		f.checkAddr = func(ap netip.AddrPort) error {
			if strconv.Itoa(int(ap.Port())) == public {
				return nil
			}
			return f.publicOnly(ap)
		}
		_, _, err := f.Fetch(ctx, "http://public.example:"+public+"/cat.png", 1<<20, nil)
		checkRefused(t, err, "127.0.0.1, a loopback address")
		if outer.hits.Load() != 1 || inner.hits.Load() != 0 {
			t.Errorf("hits: outer %d, inner %d; want 1 and 0", outer.hits.Load(), inner.hits.Load())
		}
	})
	t.Run("allowed by the operator", func(t *testing.T) {
		f := NewImageFetcher(time.Second, true)
		for _, u := range []string{"http://127.0.0.1:" + port + "/cat.png", "http://localhost:" + port + "/cat.png"} {
			if _, data, err := f.Fetch(ctx, u, 1<<20, nil); err != nil || !bytes.Equal(data, img) {
				t.Errorf("%s: %d bytes, %v", u, len(data), err)
			}
		}
	})
}
