// Package e2e drives creditgate's ext_proc server end to end: real Redis,
// the real ledger and price catalog, the Envoy ext_proc filter emulator
// (test/envoyemu, configured with the ext_proc filter we ship in
// envoy/envoy.yaml) and the fake provider (test/fakeprovider). Clients are
// the official SDKs, unchanged except for their base URL and API key.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/creditgate/creditgate/envoy"
	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/creditgate/creditgate/test/envoyemu"
	"github.com/creditgate/creditgate/test/fakeprovider"
	"github.com/creditgate/creditgate/test/redistest"
)

// Each provider gets its own loopback address, so the sidecar tells them
// apart by :authority exactly as it does for api.openai.com and friends.
var providerIPs = map[string]string{
	"openai":    "127.0.0.1",
	"anthropic": "127.0.0.2",
	"gemini":    "127.0.0.3",
}

const (
	adminToken = "e2e-admin-token-0123456789"
	demoKey    = "cgk_e2e_0123456789abcdef0123456789abcdef"
	account    = "team-a"
)

type harness struct {
	t        *testing.T
	ctx      context.Context
	led      *ledger.Ledger
	cat      *pricing.Catalog
	admin    *admin.Client
	fake     *fakeprovider.Provider
	proxies  map[string]*envoyemu.Proxy
	base     map[string]string // provider → proxy base URL
	mu       sync.Mutex
	metadata []*structpb.Struct
	logs     *bytes.Buffer
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ctx := context.Background()
	rdb := redistest.Client(t)
	led, err := ledger.New(rdb, ledger.Options{Prefix: redistest.Prefix(t), Fee: ledger.FeePolicy{BasisPoints: 550, Min: 800_000}})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, ctx: ctx, led: led, cat: pricing.Default(), proxies: map[string]*envoyemu.Proxy{},
		base: map[string]string{}, logs: &bytes.Buffer{}}
	log := slog.New(slog.NewJSONHandler(&lockedWriter{w: h.logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))

	hosts := map[string]string{}
	for p, ip := range providerIPs {
		hosts[ip] = p
	}
	ep, err := extproc.NewServer(extproc.Options{
		Ledger: led, Prices: h.cat, Logger: log,
		Identity: extproc.Identity{Sources: []string{"apikey"}},
		Detector: &provider.Detector{Hosts: hosts},
	})
	if err != nil {
		t.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, ep)
	go gs.Serve(gl)
	t.Cleanup(func() {
		gs.Stop()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = ep.Drain(dctx)
	})
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	h.fake = fakeprovider.New(fakeprovider.WithDemo())
	up := httptest.NewServer(h.fake)
	t.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)

	filter := shippedFilter(t)
	for p, ip := range providerIPs {
		px, err := envoyemu.New(envoyemu.Config{
			Upstream: upURL, Processor: conn, Filter: filter, UpstreamHTTP1: true,
			OnDynamicMetadata: func(s *structpb.Struct) {
				h.mu.Lock()
				h.metadata = append(h.metadata, s)
				h.mu.Unlock()
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatalf("listen on %s (loopback alias): %v", ip, err)
		}
		srv := httptest.NewUnstartedServer(px)
		srv.Listener.Close()
		srv.Listener = l
		srv.Start()
		t.Cleanup(srv.Close)
		h.proxies[p] = px
		h.base[p] = srv.URL
	}

	ah, err := admin.New(led, admin.Options{Token: adminToken})
	if err != nil {
		t.Fatal(err)
	}
	as := httptest.NewServer(ah)
	t.Cleanup(as.Close)
	h.admin = &admin.Client{BaseURL: as.URL, Token: adminToken}
	if _, err := h.admin.CreateAccount(ctx, account); err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin.CreateKey(ctx, account, demoKey); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("sidecar log:\n%s", h.logs.String())
		}
	})
	return h
}

// shippedFilter is the ext_proc filter config of envoy/envoy.yaml: the
// emulator runs exactly what we ship.
func shippedFilter(t *testing.T) *extprocfilterv3.ExternalProcessor {
	t.Helper()
	f, err := envoy.ShippedExtProcFilter()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (h *harness) topUp(id, amount string) {
	h.t.Helper()
	m, err := money.ParseUSD(amount)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.admin.TopUp(h.ctx, account, id, m); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) balance() admin.Balance {
	h.t.Helper()
	b, err := h.admin.Balance(h.ctx, account)
	if err != nil {
		h.t.Fatal(err)
	}
	return b
}

// journal returns every entry of the account's journal.
func (h *harness) journal() []admin.JournalEntry {
	h.t.Helper()
	var all []admin.JournalEntry
	after := ""
	for {
		p, err := h.admin.Journal(h.ctx, account, after, 500)
		if err != nil {
			h.t.Fatal(err)
		}
		all = append(all, p.Entries...)
		if p.Next == "" {
			return all
		}
		after = p.Next
	}
}

func (h *harness) entries(typ string) []admin.JournalEntry {
	var out []admin.JournalEntry
	for _, e := range h.journal() {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls cond: settlements after a client abort happen after the
// client has already returned. Not a timing assertion: the bound only stops
// a broken run from hanging.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// settled waits for n captures: a streaming SDK returns once it has read
// the provider's last event, which can be before the sidecar has seen the
// end of the stream and captured.
func (h *harness) settled(n int) {
	h.t.Helper()
	h.waitFor(fmt.Sprintf("%d capture(s)", n), func() bool { return len(h.entries("capture")) >= n })
}

func (h *harness) audit() {
	h.t.Helper()
	rep, err := h.admin.Audit(h.ctx)
	if err != nil || !rep.OK {
		h.t.Fatalf("audit: %v %+v", err, rep)
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// pico is the exact cost of tokens at a $/1M rate given in µUSD per 1M.
func pico(tokens, microsPerM int64) money.Pico { return money.Pico(tokens * microsPerM) }
