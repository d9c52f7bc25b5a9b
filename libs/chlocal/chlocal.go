// Package chlocal runs a private ClickHouse server as a child process, with
// its own ports and data folder, from the clickhouse-server binary of the
// Debian package. The all-in-one binary and the tests use it; production
// points at a real ClickHouse deployment instead.
package chlocal

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
)

// DefaultConfig is the server configuration the Debian package installs;
// every path in it is overridden on the command line.
const DefaultConfig = "/etc/clickhouse-server/config.xml"

// ErrNotInstalled means no clickhouse-server binary was found.
var ErrNotInstalled = errors.New("clickhouse-server is not installed")

// Binary returns the path of clickhouse-server.
func Binary() (string, error) {
	if p, err := exec.LookPath("clickhouse-server"); err == nil {
		return p, nil
	}
	return "", ErrNotInstalled
}

// Install installs the Debian package clickhouse-server with apt-get. It
// needs root; the caller decides whether it is allowed.
func Install(ctx context.Context) error {
	for _, args := range [][]string{{"update"}, {"install", "-y", "clickhouse-server", "clickhouse-client"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %v: %w: %s", args, err, tail(out))
		}
	}
	return nil
}

// Server is a running private ClickHouse server.
type Server struct {
	Addr string // host:port of the Native protocol
	// SecureAddr is the host:port of the Native protocol over TLS, when
	// the server was started with a certificate.
	SecureAddr string
	Dir        string
	cmd        *exec.Cmd
	done       chan error
}

// Options are what a server starts with besides its ports and folder.
type Options struct {
	// Users are accounts besides the passwordless default user, which
	// only loopback clients may use and which owns the schema.
	Users []User
	// CertFile and KeyFile, PEM, make the server also serve the Native
	// protocol over TLS, on SecureAddr.
	CertFile, KeyFile string
}

// Start runs clickhouse-server on 127.0.0.1:tcpPort (0 picks a free port)
// with its data under dir, and waits until it answers a ping.
func Start(ctx context.Context, dir string, tcpPort int) (*Server, error) {
	return StartWith(ctx, dir, tcpPort, Options{})
}

// StartWith is Start with users and TLS.
func StartWith(ctx context.Context, dir string, tcpPort int, o Options) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(DefaultConfig); err != nil {
		return nil, fmt.Errorf("clickhouse config: %w", err)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	ports := []int{tcpPort, 0, 0, 0}
	for i, p := range ports {
		if p == 0 {
			if ports[i], err = FreePort(); err != nil {
				return nil, err
			}
		}
	}
	cmd := exec.Command(bin, "--config-file="+DefaultConfig, "--",
		"--tcp_port="+strconv.Itoa(ports[0]),
		"--http_port="+strconv.Itoa(ports[1]),
		"--interserver_http_port="+strconv.Itoa(ports[2]),
		"--listen_host=127.0.0.1",
		"--path="+dir+"/",
		"--tmp_path="+dir+"/tmp/",
		"--user_files_path="+dir+"/user_files/",
		"--format_schema_path="+dir+"/format_schemas/",
		"--logger.log="+dir+"/clickhouse.log",
		"--logger.errorlog="+dir+"/clickhouse.err.log",
	)
	usersFile := filepath.Join(dir, "users.xml")
	if err := os.WriteFile(usersFile, []byte(UsersXML(o.Users)), 0o600); err != nil {
		return nil, err
	}
	cmd.Args = append(cmd.Args, "--users_config="+usersFile)
	secure := ""
	if o.CertFile != "" {
		secure = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3]))
		cmd.Args = append(cmd.Args,
			"--tcp_port_secure="+strconv.Itoa(ports[3]),
			"--openSSL.server.certificateFile="+o.CertFile,
			"--openSSL.server.privateKeyFile="+o.KeyFile,
			"--openSSL.server.dhParamsFile=",
		)
	}
	cmd.Dir = dir
	// The server dies with its parent, so a crashed test leaves nothing behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start clickhouse-server: %w", err)
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), SecureAddr: secure, Dir: dir, cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()

	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		if err := Ping(ctx, s.Addr); err == nil {
			return s, nil
		}
		select {
		case err := <-s.done:
			log, _ := os.ReadFile(filepath.Join(dir, "clickhouse.err.log"))
			return nil, fmt.Errorf("clickhouse-server exited: %v: %s", err, tail(log))
		case <-ctx.Done():
			s.Stop()
			return nil, fmt.Errorf("clickhouse-server on %s not ready: %w", s.Addr, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Pid returns the server's process ID.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Stop terminates the server and waits for it to exit.
func (s *Server) Stop() {
	if s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Ping opens a Native-protocol connection to addr and pings it.
func Ping(ctx context.Context, addr string) error {
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, DialTimeout: time.Second})
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Ping(ctx)
}

// FreePort returns a TCP port that was free a moment ago on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(b []byte) string {
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
