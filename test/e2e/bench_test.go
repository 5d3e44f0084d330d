package e2e_test

import (
	"bytes"
	"context"
	"github.com/creditgate/creditgate/test/benchratio"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/creditgate/creditgate/envoy"
	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/creditgate/creditgate/test/envoyemu"
	"github.com/creditgate/creditgate/test/fakeprovider"
	"github.com/creditgate/creditgate/test/redistest"
)

// BenchmarkGateway prices a whole metered request: an OpenAI chat
// completion through the Envoy ext_proc emulator running the shipped filter
// config, the creditgate ext_proc server, real Redis and the fake provider.
// The baseline is the same emulator, same upstream and same client with
// ext_proc disabled for the route (ExtProcPerRoute.disabled), so the ratio
// is the latency creditgate adds to one request, sent one at a time.
// The fake provider answers at once, so the ratio is an upper bound: a real
// model's seconds of generation would dwarf both sides.
func BenchmarkGateway(b *testing.B) {
	g := newBenchGateway(b)
	for _, c := range []struct {
		name string
		body string
	}{
		{"chat", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say something short about credits."}],"max_tokens":50}`},
		{"chat_stream", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say something short about credits."}],"max_tokens":50,"stream":true}`},
	} {
		b.Run(c.name, func(b *testing.B) {
			benchratio.Pair(b,
				benchratio.Case{Name: "baseline=ext_proc_disabled", Run: func(b *testing.B) { g.measure(b, g.bypass, c.body, false) }},
				benchratio.Case{Name: "creditgate", Run: func(b *testing.B) { g.measure(b, g.metered, c.body, true) }})
		})
	}
}

const (
	benchKey     = "cgk_bench_0123456789abcdef0123456789abcdef"
	benchAccount = "bench-team"
)

type benchGateway struct {
	ctx             context.Context
	client          *http.Client
	metered, bypass string // base URLs of the two emulators
	fake            *fakeprovider.Provider
	obs             *countingObserver
	redisCmds       atomic.Int64 // round trips to Redis, counted by a go-redis hook
}

func newBenchGateway(b *testing.B) *benchGateway {
	b.Helper()
	ctx := context.Background()
	rdb := redistest.Client(b)
	g := &benchGateway{ctx: ctx, obs: &countingObserver{outcomes: map[string]int64{}}}
	rdb.AddHook(benchratio.RoundTrips{N: &g.redisCmds})
	led, err := ledger.New(rdb, ledger.Options{Prefix: redistest.Prefix(b)})
	if err != nil {
		b.Fatal(err)
	}
	if err := led.Load(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := led.CreateAccount(ctx, benchAccount); err != nil {
		b.Fatal(err)
	}
	if _, err := led.TopUp(ctx, ledger.TopUpRequest{Account: benchAccount, PaymentID: "bench-seed", Amount: 1_000 * money.MicrosPerDollar}); err != nil {
		b.Fatal(err)
	}
	if err := led.CreateAPIKey(ctx, benchAccount, ledger.HashKey(benchKey)); err != nil {
		b.Fatal(err)
	}

	ep, err := extproc.NewServer(extproc.Options{
		Ledger: led, Prices: pricing.Default(), Observer: g.obs,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Identity: extproc.Identity{Sources: []string{"apikey"}},
		Detector: &provider.Detector{Hosts: map[string]string{"127.0.0.1": "openai"}},
	})
	if err != nil {
		b.Fatal(err)
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, ep)
	go gs.Serve(gl)
	b.Cleanup(func() {
		gs.Stop()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = ep.Drain(dctx)
	})
	conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })

	g.fake = fakeprovider.New(fakeprovider.WithDemo())
	up := httptest.NewServer(g.fake)
	b.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)

	filter := benchShippedFilter(b)
	serve := func(perRoute func(*http.Request) *extprocfilterv3.ExtProcPerRoute) string {
		px, err := envoyemu.New(envoyemu.Config{
			Upstream: upURL, Processor: conn, Filter: filter, UpstreamHTTP1: true, PerRoute: perRoute,
		})
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(px)
		b.Cleanup(srv.Close)
		return srv.URL
	}
	g.metered = serve(nil)
	disabled := &extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Disabled{Disabled: true}}
	g.bypass = serve(func(*http.Request) *extprocfilterv3.ExtProcPerRoute { return disabled })

	// Both sides use one client with keep-alive, as an SDK would.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	g.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	b.Cleanup(tr.CloseIdleConnections)
	return g
}

// measure sends body to base's chat completions endpoint once per
// iteration and reads the whole answer. When metered, every request must
// end in a capture; when not, none may reach the sidecar: either way the
// check runs after the timed loop.
func (g *benchGateway) measure(b *testing.B, base, body string, metered bool) {
	before := g.obs.count("charged")
	others := g.obs.total() - before
	cmds := g.redisCmds.Load()
	for i := 0; b.Loop(); i++ {
		req, err := http.NewRequestWithContext(g.ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader([]byte(body)))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+benchKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := g.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || len(got) == 0 {
			b.Fatalf("status %d, %d bytes, %v: %s", resp.StatusCode, len(got), err, got)
		}
		if i%1024 == 1023 {
			g.fake.Reset() // it records every request; keep memory flat
		}
	}
	want := before
	if metered {
		want += int64(b.N)
	}
	// Settlement of a stream may finish just after the client saw its end;
	// the bound only keeps a broken run from hanging.
	for deadline := time.Now().Add(30 * time.Second); g.obs.count("charged") != want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("%d requests charged, want %d (outcomes %v)", g.obs.count("charged"), want, g.obs.snapshot())
		}
	}
	if g.obs.total()-g.obs.count("charged") != others {
		b.Fatalf("requests ended other than charged: %v", g.obs.snapshot())
	}
	b.ReportMetric(float64(g.redisCmds.Load()-cmds)/float64(b.N), "redis-rt/op")
}

// countingObserver counts finished requests by outcome.
type countingObserver struct {
	extproc.NopObserver
	mu       sync.Mutex
	outcomes map[string]int64
}

func (o *countingObserver) Request(_, _, outcome string) {
	o.mu.Lock()
	o.outcomes[outcome]++
	o.mu.Unlock()
}

func (o *countingObserver) count(outcome string) int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.outcomes[outcome]
}

func (o *countingObserver) total() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var n int64
	for _, v := range o.outcomes {
		n += v
	}
	return n
}

func (o *countingObserver) snapshot() map[string]int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]int64, len(o.outcomes))
	for k, v := range o.outcomes {
		out[k] = v
	}
	return out
}

// benchShippedFilter is the ext_proc filter of envoy/envoy.yaml.
func benchShippedFilter(b *testing.B) *extprocfilterv3.ExternalProcessor {
	b.Helper()
	f, err := envoy.ShippedExtProcFilter()
	if err != nil {
		b.Fatal(err)
	}
	return f
}
