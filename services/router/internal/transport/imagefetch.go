package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/modelport/modelport/libs/errs"
	"github.com/modelport/modelport/services/router/internal/gateway"
)

// ImageFetcher downloads the images that chat requests link to, so that
// engines are sent the bytes and never fetch a URL a client chose. Unless
// the operator allows private targets, it refuses any address that is not
// public: the check runs on the IP address each connection is about to
// use, after DNS resolution, so a name that resolves to a public address
// when checked and to a private one when dialled (DNS rebinding) is still
// refused, and so is a redirect to a private address. It is safe for
// concurrent use.
type ImageFetcher struct {
	client       *http.Client
	timeout      time.Duration
	allowPrivate bool
	// checkAddr decides whether a connection to addr may be made; tests
	// replace it to tell two loopback servers apart.
	checkAddr func(addr netip.AddrPort) error
}

var _ gateway.ImageFetcher = (*ImageFetcher)(nil)

// maxRedirects bounds the redirects an image fetch follows.
const maxRedirects = 5

// NewImageFetcher returns a fetcher that gives each image at most timeout,
// connection and redirects included. allowPrivate lets it reach private,
// loopback and link-local addresses (MODELPORT_ALLOW_PRIVATE_IMAGE_URLS),
// for installations whose images live on an internal network.
func NewImageFetcher(timeout time.Duration, allowPrivate bool) *ImageFetcher {
	f := &ImageFetcher{timeout: timeout, allowPrivate: allowPrivate}
	f.checkAddr = f.publicOnly
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: f.control}
	tr := &http.Transport{
		Proxy:                  nil, // a proxy would be dialled instead of the checked address
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           32,
		IdleConnTimeout:        30 * time.Second,
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		MaxResponseHeaderBytes: 64 << 10,
	}
	f.client = &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: f.checkRedirect}
	return f
}

// Fetch implements gateway.ImageFetcher. Every error is errs.Invalid with
// a message for the client (the URL is theirs), but reserve's.
func (f *ImageFetcher) Fetch(ctx context.Context, rawURL string, limit int64, reserve func(int64) error) (string, []byte, error) {
	u, err := f.checkURL(rawURL)
	if err != nil {
		return "", nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil) // u as checked
	if err != nil {
		return "", nil, errs.E(errs.Invalid, "the image URL is not valid: %v", err)
	}
	req.Header.Set("Accept", "image/*")
	req.Header.Set("User-Agent", "Modelport-ImageFetcher/1")
	resp, err := f.client.Do(req)
	if err != nil {
		return "", nil, f.fetchError(ctx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", nil, errs.E(errs.Invalid, "the image URL answered %s", resp.Status)
	}
	if resp.ContentLength > limit {
		return "", nil, errs.E(errs.Invalid, "the image is larger than %d bytes", limit)
	}
	data, err := readImage(resp.Body, resp.ContentLength, limit, reserve)
	if err != nil {
		return "", nil, f.fetchError(ctx, err)
	}
	if int64(len(data)) > limit {
		return "", nil, errs.E(errs.Invalid, "the image is larger than %d bytes", limit)
	}
	if len(data) == 0 {
		return "", nil, errs.E(errs.Invalid, "the image URL answered with no content")
	}
	mediaType, err := imageType(resp.Header.Get("Content-Type"), data)
	if err != nil {
		return "", nil, err
	}
	return mediaType, data, nil
}

// readImage reads an image of at most limit bytes (limit+1 tell it is
// larger): into a buffer of the size the server announced, when it did, so
// the bytes are allocated once; else into one that doubles as it fills.
// reserve (when not nil) is told of each allocation before it is made.
func readImage(r io.Reader, announced, limit int64, reserve func(int64) error) ([]byte, error) {
	take := func(n int64) error {
		if reserve == nil {
			return nil
		}
		return reserve(n)
	}
	if announced >= 0 && announced <= limit {
		if err := take(announced); err != nil {
			return nil, err
		}
		b := make([]byte, announced)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		// A server that sends more than it announced is cut off by the
		// HTTP client; one that sends less fails ReadFull.
		return b, nil
	}
	size := min(32<<10, limit+1)
	if err := take(size); err != nil {
		return nil, err
	}
	b := make([]byte, 0, size)
	for {
		if len(b) == cap(b) {
			if int64(len(b)) > limit {
				return b, nil // over the limit: the caller says so
			}
			grown := min(2*int64(cap(b)), limit+1)
			if err := take(grown - int64(cap(b))); err != nil {
				return nil, err
			}
			b = append(make([]byte, 0, grown), b...)
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// imageType returns the image's media type: the one the server declared
// when it is an image type, else the one its first bytes show.
func imageType(declared string, data []byte) (string, error) {
	mt, _, err := mime.ParseMediaType(declared)
	if err == nil && strings.HasPrefix(mt, "image/") && mt != "image/" {
		return mt, nil
	}
	if sniffed, _, _ := strings.Cut(http.DetectContentType(data), ";"); strings.HasPrefix(sniffed, "image/") {
		return sniffed, nil
	}
	if declared == "" {
		declared = "none"
	}
	return "", errs.E(errs.Invalid, "the image URL did not answer with an image (Content-Type %s)", declared)
}

// checkURL parses an image URL and refuses what must never be fetched:
// other schemes, credentials, and, unless private targets are allowed,
// hosts that are private by their name or literal address.
func (f *ImageFetcher) checkURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errs.E(errs.Invalid, "the image URL is not valid: %v", stripURL(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, errs.E(errs.Invalid, "image URLs must be http(s) URLs, not %s:", u.Scheme)
	}
	if u.User != nil {
		return nil, errs.E(errs.Invalid, "image URLs may not carry credentials")
	}
	host := u.Hostname()
	if host == "" {
		return nil, errs.E(errs.Invalid, "the image URL has no host")
	}
	if f.allowPrivate {
		return u, nil
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return nil, errs.E(errs.Invalid, "the image URL's host %s is this machine; only public addresses are fetched", host)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if class := addrClass(a); class != "" {
			return nil, refusal(host, class)
		}
	}
	return u, nil
}

// stripURL returns the cause of a url.Error, without the URL the client
// already knows.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// checkRedirect follows at most maxRedirects redirects, to http(s) URLs
// that pass checkURL; the addresses they resolve to are checked when
// dialled, as for the first request.
func (f *ImageFetcher) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > maxRedirects {
		return errs.E(errs.Invalid, "the image URL redirected more than %d times", maxRedirects)
	}
	_, err := f.checkURL(req.URL.String())
	return err
}

// control runs before each connection is made, with the address it will
// use, after DNS resolution.
func (f *ImageFetcher) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return errs.E(errs.Invalid, "the image URL's host resolved to an unusable address")
	}
	return f.checkAddr(ap)
}

// publicOnly is checkAddr unless private targets are allowed.
func (f *ImageFetcher) publicOnly(ap netip.AddrPort) error {
	if f.allowPrivate {
		return nil
	}
	if class := addrClass(ap.Addr()); class != "" {
		return refusal(ap.Addr().String(), class)
	}
	return nil
}

// errNotPublic is the answer for a host that is not public or does not
// resolve: one message for both, and no address in it, so requests cannot
// map internal names.
var errNotPublic = errs.E(errs.Invalid, "the image URL's host is not a public address that resolves; only public addresses are fetched")

// refusal is the error for an address that is not public; which address
// and why is for the log, not the client.
func refusal(addr, class string) error {
	return &errs.Error{Kind: errs.Invalid, Msg: errNotPublic.Error(), Err: fmt.Errorf("%s, a %s address", addr, class)}
}

// fetchError turns a failed request into an error for the client.
func (f *ImageFetcher) fetchError(ctx context.Context, err error) error {
	if e, ok := errs.As(err); ok {
		return e // refused by checkURL, checkRedirect or control
	}
	var netErr net.Error
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return errs.E(errs.Invalid, "fetching the image took longer than %s", f.timeout)
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, &dnsErr):
		return &errs.Error{Kind: errs.Invalid, Msg: errNotPublic.Error(), Err: fmt.Errorf("%s could not be resolved: %w", dnsErr.Name, dnsErr)}
	default:
		// The cause (refused, reset) may name the address: for the log.
		return &errs.Error{Kind: errs.Invalid, Msg: "the image could not be fetched", Err: stripURL(err)}
	}
}

// Address ranges that are not public, beyond what netip classifies.
var (
	sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10") // carrier-grade NAT (RFC 6598)
	nonPublic          = []struct {
		prefix netip.Prefix
		class  string
	}{
		{netip.MustParsePrefix("0.0.0.0/8"), "reserved (this network)"},
		{netip.MustParsePrefix("192.0.0.0/24"), "reserved (IETF protocol assignments)"},
		{netip.MustParsePrefix("192.0.2.0/24"), "documentation"},
		{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking"},
		{netip.MustParsePrefix("198.51.100.0/24"), "documentation"},
		{netip.MustParsePrefix("203.0.113.0/24"), "documentation"},
		{netip.MustParsePrefix("240.0.0.0/4"), "reserved"}, // and 255.255.255.255, broadcast
		{netip.MustParsePrefix("::/96"), "reserved (IPv4-compatible)"},
		{netip.MustParsePrefix("64:ff9b:1::/48"), "reserved (local NAT64)"},
		{netip.MustParsePrefix("100::/64"), "reserved (discard)"},
		{netip.MustParsePrefix("2001::/32"), "reserved (Teredo)"},
		{netip.MustParsePrefix("2001:db8::/32"), "documentation"},
		{netip.MustParsePrefix("fec0::/10"), "private (site-local)"},
	}
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// addrClass returns "" for a public unicast address, or what a does
// instead: "loopback", "private", "link-local", "unspecified",
// "multicast", "shared (carrier-grade NAT)", "documentation" and the
// like. An IPv4 address inside IPv6 (IPv4-mapped, NAT64, 6to4) is judged
// by the IPv4 address it reaches.
func addrClass(a netip.Addr) string {
	a = a.WithZone("")
	switch {
	case !a.IsValid():
		return "invalid"
	case a.Is4In6():
		return addrClass(a.Unmap())
	case nat64.Contains(a):
		b := a.As16()
		return addrClass(netip.AddrFrom4([4]byte(b[12:16])))
	case sixToFour.Contains(a):
		b := a.As16()
		return addrClass(netip.AddrFrom4([4]byte(b[2:6])))
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsMulticast():
		return "multicast"
	case sharedAddressSpace.Contains(a):
		return "shared (carrier-grade NAT)"
	}
	for _, r := range nonPublic {
		if r.prefix.Contains(a) {
			return r.class
		}
	}
	if !a.IsGlobalUnicast() {
		return "reserved"
	}
	return ""
}
