package main

import (
	"bytes"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelport/modelport/libs/chlocal"
	"github.com/modelport/modelport/libs/chtest"
	"github.com/modelport/modelport/libs/natstest"
)

// TestSeparateProcesses runs the same flow with each service as its own
// binary and process, sharing one NATS server, as in production: each
// connects with its own identity (an NKey seed file), over TLS with
// certificates checked both ways.
func TestSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds five binaries; run without -short")
	}
	chAddr, chDB := chtest.New(t)
	ns := natstest.New(t, natstest.WithTLS(true))
	client := ns.ClientCert()

	bin := buildServices(t)
	services := serviceBinaries
	ports := map[string]int{}
	for _, s := range services {
		p, err := chlocal.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[s] = p
	}
	common := []string{
		"MODELPORT_NATS_URL=" + strings.Replace(ns.ClientURL(), "nats://", "tls://", 1),
		"MODELPORT_NATS_TLS_CA=" + ns.CAFile(),
		"MODELPORT_NATS_TLS_CERT=" + client.CertFile,
		"MODELPORT_NATS_TLS_KEY=" + client.KeyFile,
		"MODELPORT_LOG_LEVEL=debug",
		"MODELPORT_ADMIN_KEY=" + testAdminKey,
		"MODELPORT_CLICKHOUSE_ADDR=" + chAddr,
		"MODELPORT_CLICKHOUSE_DB=" + chDB,
		"MODELPORT_WORKER_ID=worker-1",
		"MODELPORT_SCALER_SWEEP=500ms",
	}
	for _, s := range services {
		startProc(t, s, filepath.Join(bin, s), append(common, "MODELPORT_HTTP_ADDR=127.0.0.1:"+strconv.Itoa(ports[s]), "MODELPORT_NATS_NKEY="+ns.Seed(s)))
	}
	url := func(s string) string { return "http://127.0.0.1:" + strconv.Itoa(ports[s]) }
	for _, s := range services {
		eventually(t, 30*time.Second, s+" healthy", func() error {
			resp, err := http.Get(url(s) + "/healthz")
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		})
	}
	runFlow(t, endpoints{control: url("deployer"), router: url("router"), usage: url("billing")}, chAddr, chDB)
}

// lockedBuffer collects a process's output for the failure report.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
