package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/creditgate/creditgate/envoy"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/envoyemu"
	"github.com/creditgate/creditgate/test/fakeprovider"
	"github.com/creditgate/creditgate/test/redistest"
)

const testAdminToken = "cmd-test-admin-token-0123456789"

// lockedBuffer is a log sink shared by the server goroutines and the test.
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

// testServer is one serve() running in a goroutine against the shared
// test Redis under a private key prefix.
type testServer struct {
	t         *testing.T
	cfg       Config
	grpcAddr  string
	adminAddr string
	logs      *lockedBuffer
	cancel    context.CancelFunc
	done      chan error
	stopped   bool
}

// testConfig is a valid configuration on loopback ports chosen by the
// kernel, with a key prefix no other test uses.
func testConfig(t *testing.T) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.AdminAddr = "127.0.0.1:0"
	cfg.AdminToken = testAdminToken
	cfg.Redis.URL = "redis://" + redistest.Addr(t) + "/0"
	cfg.Redis.Prefix = redistest.Prefix(t)
	// The metered test request goes to a local fake provider on 127.0.0.1.
	cfg.Providers.Hosts = map[string]string{"127.0.0.1": "openai"}
	cfg.ShutdownTimeout = Duration{10 * time.Second}
	return cfg
}

// startServe runs serve(cfg) until the test ends (or stop is called) and
// returns once hooks.ready reported the bound addresses.
func startServe(t *testing.T, cfg Config, hooks *serveHooks) *testServer {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	if hooks == nil {
		hooks = &serveHooks{}
	}
	ts := &testServer{t: t, cfg: cfg, logs: &lockedBuffer{}, done: make(chan error, 1)}
	ready := make(chan struct{})
	userReady := hooks.ready
	hooks.ready = func(g, a string) {
		ts.grpcAddr, ts.adminAddr = g, a
		if userReady != nil {
			userReady(g, a)
		}
		close(ready)
	}
	log := slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rdb, err := newRedis(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() {
		defer rdb.Close()
		ts.done <- serve(ctx, cfg, log, rdb, hooks)
	}()
	t.Cleanup(func() {
		ts.stop()
		if t.Failed() {
			t.Logf("serve log:\n%s", ts.logs.String())
		}
	})
	select {
	case <-ready:
	case err := <-ts.done:
		t.Fatalf("serve returned before it was ready: %v\n%s", err, ts.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not become ready\n%s", ts.logs.String())
	}
	return ts
}

// stop cancels serve's context (what SIGTERM does through
// signal.NotifyContext) and returns serve's result.
func (ts *testServer) stop() error {
	if ts.stopped {
		return nil
	}
	ts.stopped = true
	ts.cancel()
	select {
	case err := <-ts.done:
		return err
	case <-time.After(60 * time.Second):
		ts.t.Errorf("serve did not return after its context was cancelled")
		return errors.New("serve hung")
	}
}

func (ts *testServer) adminURL() string { return "http://" + ts.adminAddr }

func (ts *testServer) client() *admin.Client {
	return &admin.Client{BaseURL: ts.adminURL(), Token: testAdminToken}
}

// get fetches an admin-port path and returns status and body.
func (ts *testServer) get(path string) (int, string) {
	ts.t.Helper()
	return httpGet(ts.t, ts.adminURL()+path)
}

func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// tryGet is httpGet for goroutines other than the test's.
func tryGet(u string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// healthStatus asks the gRPC health service about one service name.
func healthStatus(ctx context.Context, addr, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return 0, err
	}
	return r.GetStatus(), nil
}

// waitFor polls cond; the bound only stops a broken run from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// parseMetrics parses a /metrics body in the Prometheus text format.
func parseMetrics(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not valid exposition format: %v\n%s", err, body)
	}
	return fams
}

// metricValue returns the value of the sample of name whose labels include
// want, and whether there is one.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

const (
	meteredAccount = "metrics-acct"
	meteredKey     = "cgk_cmdtest_0123456789abcdef0123456789abcdef"
)

// driveMeteredRequest sends one OpenAI chat completion through the Envoy
// ext_proc emulator (running the filter config we ship in envoy/envoy.yaml)
// to the fake provider, with ts's gRPC server as the processor, and returns
// the response status and the account's balance afterwards.
func driveMeteredRequest(t *testing.T, ts *testServer) (int, admin.Balance) {
	t.Helper()
	ctx := context.Background()
	c := ts.client()
	if _, err := c.CreateAccount(ctx, meteredAccount); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, meteredAccount, meteredKey); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TopUp(ctx, meteredAccount, "metrics-pay-1", money.Micros(1_000_000)); err != nil {
		t.Fatal(err)
	}

	front := frontProxy(t, ts, fakeprovider.NewDemo())
	body := `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say something short about credits."}],"max_tokens":20}`
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp := postChat(t, rctx, front, body, "Authorization", "Bearer "+meteredKey)
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metered request: %d %s", resp.StatusCode, rb)
	}
	bal, err := c.Balance(ctx, meteredAccount)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, bal
}

// frontProxy puts the Envoy ext_proc emulator, running the filter config we
// ship in envoy/envoy.yaml with ts's gRPC server as the processor, in front
// of upstream and returns the URL clients call. Requests to it carry Host
// 127.0.0.1, which testConfig's providers.hosts maps to "openai".
func frontProxy(t *testing.T, ts *testServer, upstream http.Handler) string {
	t.Helper()
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)
	filter, err := envoy.ShippedExtProcFilter()
	if err != nil {
		t.Fatal(err)
	}
	px, err := envoyemu.New(envoyemu.Config{Upstream: upURL, ProcessorTarget: ts.grpcAddr, Filter: filter, UpstreamHTTP1: true})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(px)
	// Cleanups run last-in first-out: the front closes before the proxy.
	t.Cleanup(func() { px.Close() })
	t.Cleanup(front.Close)
	return front.URL
}

// postChat sends an OpenAI chat completion to front with one extra header
// (the payer's key or account) and returns the response once its headers
// arrived; the caller reads and closes the body.
func postChat(t *testing.T, ctx context.Context, front, body, hdr, val string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, front+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(hdr, val)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// slowStream is an OpenAI chat completion stream of n content events, one
// per chunk, each after delay, with no usage event: a client or sidecar
// that stops reading it early leaves the sidecar only an estimate.
func slowStream(n int, delay time.Duration) fakeprovider.Transcript {
	chunks := [][]byte{[]byte(`data: {"id":"chatcmpl-slow","object":"chat.completion.chunk","created":1755000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}` + "\n\n")}
	for range n {
		chunks = append(chunks, []byte(`data: {"id":"chatcmpl-slow","object":"chat.completion.chunk","created":1755000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"credit "},"finish_reason":null}]}`+"\n\n"))
	}
	return fakeprovider.Transcript{Headers: map[string]string{"Content-Type": "text/event-stream"}, Chunks: chunks, Delay: delay}
}

// slowStreamProvider answers every chat completion with slowStream.
func slowStreamProvider(n int, delay time.Duration) *fakeprovider.Provider {
	p := fakeprovider.New()
	p.Handle("/v1/chat/completions", slowStream(n, delay))
	return p
}

// readFirstEvent reads the response up to its first SSE event, so the stream
// is known to flow through the sidecar.
func readFirstEvent(t *testing.T, resp *http.Response) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("streamed request: %d %s", resp.StatusCode, b)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first line of the stream %q, %v; want an SSE event", line, err)
	}
}

const streamBody = `{"model":"gpt-4o-mini","stream":true,"max_tokens":500,"messages":[{"role":"user","content":"Tell a long story about credits."}]}`

// seedAccount creates account with key and tops it up by amount through
// ts's admin API.
func seedAccount(t *testing.T, ts *testServer, account, key string, amount money.Micros) {
	t.Helper()
	ctx := context.Background()
	c := ts.client()
	if _, err := c.CreateAccount(ctx, account); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateKey(ctx, account, key); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TopUp(ctx, account, account+"-pay-1", amount); err != nil {
		t.Fatal(err)
	}
}

// TestServeForcedShutdown: a stream still running when shutdown_timeout
// ends is cut, serve returns, and the request is settled on an estimate
// before Redis closes, so no hold is left behind.
func TestServeForcedShutdown(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownTimeout = Duration{200 * time.Millisecond}
	ts := startServe(t, cfg, nil)
	const acct, key = "shutdown-acct", "cgk_shutdown_0123456789abcdef0123456789abcdef"
	seedAccount(t, ts, acct, key, 1_000_000)
	// 2000 events 50ms apart outlast every bound below: only the forced
	// stop can end this stream in time.
	front := frontProxy(t, ts, slowStreamProvider(2000, 50*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := postChat(t, ctx, front, streamBody, "Authorization", "Bearer "+key)
	defer resp.Body.Close()
	readFirstEvent(t, resp)

	if err := ts.stop(); err != nil { // bounded by stop's hang guard
		t.Fatalf("serve returned %v, want nil", err)
	}
	if !strings.Contains(ts.logs.String(), "shutdown timeout: cancelling remaining streams") {
		t.Fatalf("serve did not cut the stream at shutdown_timeout; log:\n%s", ts.logs.String())
	}

	led, err := ledger.New(redistest.Client(t), ledger.Options{Prefix: cfg.Redis.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer bcancel()
	entries, _, err := led.Journal(bctx, acct, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var reserved []string
	captured := map[string]ledger.Entry{}
	for _, e := range entries {
		switch e.Type {
		case "reserve":
			reserved = append(reserved, e.Ref)
		case "capture":
			captured[e.Ref] = e
		}
	}
	if len(reserved) != 1 {
		t.Fatalf("journal has %d reserves, want 1:\n%+v", len(reserved), entries)
	}
	c, ok := captured[reserved[0]]
	if !ok || !c.Estimated || c.Amount <= 0 {
		t.Fatalf("request %s: capture %+v (present %v), want an estimated charge:\n%+v", reserved[0], c, ok, entries)
	}
	bal, err := led.Balance(bctx, acct)
	if err != nil {
		t.Fatal(err)
	}
	if bal.Held != 0 || bal.Balance != 1_000_000-c.Amount {
		t.Errorf("after shutdown: %+v, want nothing held and $1 minus the $%s captured", bal, c.Amount)
	}
}

// TestServeSweepLease: ledger.sweep_lease reaches the ledger serve runs. A
// sweeper that expired an account's last hold leaves the account's sweep
// index score at its sweep time plus the lease (docs/ledger.md), so with a
// 10s lease the score is at most 10s ahead, where the ledger's 15s default
// would put it further.
func TestServeSweepLease(t *testing.T) {
	cfg := testConfig(t)
	cfg.Ledger.SweepInterval = Duration{20 * time.Millisecond}
	cfg.Ledger.SweepLease = Duration{10 * time.Second}
	startServe(t, cfg, nil)

	rdb := redistest.Client(t)
	led, err := ledger.New(rdb, ledger.Options{Prefix: cfg.Redis.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const acct = "lease-acct"
	if _, err := led.CreateAccount(ctx, acct); err != nil {
		t.Fatal(err)
	}
	if _, err := led.TopUp(ctx, ledger.TopUpRequest{Account: acct, PaymentID: "lease-pay-1", Amount: 1_000_000}); err != nil {
		t.Fatal(err)
	}
	if _, err := led.Reserve(ctx, ledger.ReserveRequest{Account: acct, RequestID: "lease-req-1", Estimate: 1000, TTL: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	var expiredAt int64
	waitFor(t, "serve's sweeper to expire the hold", func() bool {
		entries, _, err := led.Journal(ctx, acct, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Type == "expire" {
				expiredAt = e.TimeMs
				return true
			}
		}
		return false
	})
	score, err := rdb.ZScore(ctx, cfg.Redis.Prefix+":sweep", acct).Result()
	if err != nil {
		t.Fatal(err)
	}
	lease := cfg.Ledger.SweepLease.Milliseconds()
	if now := time.Now().UnixMilli(); int64(score) < expiredAt+lease || int64(score) > now+lease {
		t.Errorf("sweep index score %d is %dms after the expiry at %d; want the 10s lease from a sweep between then and now (%d)",
			int64(score), int64(score)-expiredAt, expiredAt, now)
	}
}

// metricSnapshot scrapes ts's /metrics and reads one sample; absent series
// (a vector with no child yet) read as 0.
func metricSnapshot(t *testing.T, ts *testServer) func(name string, labels map[string]string) float64 {
	t.Helper()
	_, body := ts.get("/metrics")
	fams := parseMetrics(t, body)
	return func(name string, labels map[string]string) float64 {
		v, _ := metricValue(fams, name, labels)
		return v
	}
}

// TestServeMetricValues drives a refusal for funds, an unpriced model and
// a client abort mid-stream through a healthy sidecar, and a reserve against
// a dead Redis through another, and checks each moves its counter.
func TestServeMetricValues(t *testing.T) {
	t.Run("healthy ledger", func(t *testing.T) {
		ts := startServe(t, testConfig(t), nil)
		const acct, key = "metric-values-acct", "cgk_metricvalues_0123456789abcdef0123456789ab"
		seedAccount(t, ts, acct, key, 10_000) // $0.01
		front := frontProxy(t, ts, slowStreamProvider(2000, 20*time.Millisecond))
		before := metricSnapshot(t, ts)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		send := func(body string) (int, string) {
			resp := postChat(t, ctx, front, body, "Authorization", "Bearer "+key)
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		// gpt-4o-mini's worst case for 1M output tokens is $0.60, above $0.01.
		if code, b := send(`{"model":"gpt-4o-mini","max_tokens":1000000,"messages":[{"role":"user","content":"hi"}]}`); code != http.StatusPaymentRequired {
			t.Fatalf("over-budget request: %d %s, want 402", code, b)
		}
		if code, b := send(`{"model":"gpt-unpriced-cmdtest","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`); code != http.StatusBadRequest || !strings.Contains(b, "no price") {
			t.Fatalf("unpriced model: %d %s, want 400 naming the missing price", code, b)
		}
		// The client gives up mid-stream: the sidecar settles on an estimate.
		sctx, scancel := context.WithCancel(ctx)
		resp := postChat(t, sctx, front, streamBody, "Authorization", "Bearer "+key)
		readFirstEvent(t, resp)
		scancel()
		resp.Body.Close()

		estimated := func(get func(string, map[string]string) float64) float64 {
			return get("creditgate_estimated_settlements_total", nil)
		}
		var after func(string, map[string]string) float64
		estReq := map[string]string{"provider": "openai", "outcome": "estimated"}
		waitFor(t, "an estimated settlement after the client abort", func() bool {
			// A scrape is not atomic across metrics: wait until both counters
			// the settlement bumps are visible.
			after = metricSnapshot(t, ts)
			return estimated(after) > estimated(before) && after("creditgate_requests_total", estReq) > before("creditgate_requests_total", estReq)
		})
		for _, c := range []struct {
			name   string
			labels map[string]string
		}{
			{"creditgate_refusals_total", map[string]string{"reason": "insufficient_funds"}},
			{"creditgate_refusals_total", map[string]string{"reason": "unpriced_model"}},
			{"creditgate_unpriced_model_total", map[string]string{"provider": "openai"}},
			{"creditgate_requests_total", map[string]string{"provider": "openai", "outcome": "estimated"}},
		} {
			if b, a := before(c.name, c.labels), after(c.name, c.labels); a != b+1 {
				t.Errorf("%s%v went from %v to %v, want one more", c.name, c.labels, b, a)
			}
		}
		if a := after("creditgate_ledger_errors_total", nil); a != 0 {
			t.Errorf("creditgate_ledger_errors_total = %v with a healthy Redis, want 0", a)
		}
	})

	t.Run("dead redis", func(t *testing.T) {
		port, err := redistest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		cfg := testConfig(t)
		cfg.Redis.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", port) // nothing listens here
		// The account comes from a header, so identity needs no Redis and
		// the request reaches the reserve.
		cfg.Identity.Sources = []string{"header"}
		cfg.Ledger.SweepInterval = Duration{20 * time.Millisecond}
		cfg.Ledger.SpoolPath = filepath.Join(t.TempDir(), "spool.jsonl")
		ts := startServe(t, cfg, nil)
		up := fakeprovider.NewDemo()
		front := frontProxy(t, ts, up)
		before := metricSnapshot(t, ts)

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp := postChat(t, ctx, front, `{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`,
			"x-creditgate-account", "dead-redis-acct")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// go-redis's dial retries can outlast the filter's 2s message_timeout,
		// so Envoy may answer 504 before the sidecar's 503; either way the
		// request must not go upstream.
		if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("reserve with Redis down: %d %s, want 503 (or Envoy's 504)", resp.StatusCode, b)
		}
		if n := len(up.Requests()); n != 0 {
			t.Fatalf("%d requests reached the provider with the ledger down, want 0", n)
		}
		op := func(name string) map[string]string { return map[string]string{"op": name} }
		// The reserve may still be failing when the client has its answer.
		waitFor(t, "creditgate_ledger_errors_total{op=reserve} up by one", func() bool {
			after := metricSnapshot(t, ts)
			return after("creditgate_ledger_errors_total", op("reserve")) == before("creditgate_ledger_errors_total", op("reserve"))+1 &&
				after("creditgate_refusals_total", map[string]string{"reason": "ledger_unavailable"}) == 1
		})
		// The sweeper fails every interval; the spool holds the release of
		// the unknown reserve and fails to replay it once a second.
		for _, name := range []string{"sweep", "spool_replay"} {
			waitFor(t, "creditgate_ledger_errors_total{op="+name+"}", func() bool {
				return metricSnapshot(t, ts)("creditgate_ledger_errors_total", op(name)) > 0
			})
		}
	})
}

func TestServeLifecycle(t *testing.T) {
	cfg := testConfig(t)
	var drained atomic.Int32
	var ts *testServer
	var drainReadyz int
	var drainHealth []string
	hooks := &serveHooks{draining: func() {
		// Runs inside serve's shutdown, after the flip and before the
		// servers stop: both must still answer, and say NOT_SERVING.
		drained.Add(1)
		var err error
		if drainReadyz, err = tryGet(ts.adminURL() + "/readyz"); err != nil {
			t.Errorf("/readyz while draining: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, svc := range []string{"", extprocv3.ExternalProcessor_ServiceDesc.ServiceName} {
			st, err := healthStatus(ctx, ts.grpcAddr, svc)
			if err != nil {
				drainHealth = append(drainHealth, fmt.Sprintf("%q: %v", svc, err))
				continue
			}
			drainHealth = append(drainHealth, fmt.Sprintf("%q: %s", svc, st))
		}
	}}
	ts = startServe(t, cfg, hooks)

	if code, body := ts.get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, body := ts.get("/readyz")
	if code != http.StatusOK || !strings.Contains(body, "catalog=default-") {
		t.Errorf("/readyz = %d %q, want 200 naming the default catalog version", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, svc := range []string{"", extprocv3.ExternalProcessor_ServiceDesc.ServiceName} {
		if st, err := healthStatus(ctx, ts.grpcAddr, svc); err != nil || st != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("gRPC health %q = %s, %v; want SERVING", svc, st, err)
		}
	}

	_, bal := driveMeteredRequest(t, ts)
	if bal.Balance >= 1_000_000 || bal.Held != 0 {
		t.Fatalf("after one metered request: %+v, want a capture below $1 and nothing held", bal)
	}

	// The request counter is written when the stream finishes, which may
	// be just after the client has its answer.
	var fams map[string]*dto.MetricFamily
	var metricsBody string
	charged := map[string]string{"provider": "openai", "model": "gpt-4o-mini", "outcome": "charged"}
	waitFor(t, "creditgate_requests_total{outcome=charged}", func() bool {
		_, metricsBody = ts.get("/metrics")
		fams = parseMetrics(t, metricsBody)
		v, ok := metricValue(fams, "creditgate_requests_total", charged)
		return ok && v == 1
	})
	wantDollars := float64(1_000_000-bal.Balance) / 1e6
	if v, ok := metricValue(fams, "creditgate_charged_dollars_total", map[string]string{"provider": "openai", "model": "gpt-4o-mini"}); !ok || v != wantDollars {
		t.Errorf("creditgate_charged_dollars_total = %v (present %v), want %v", v, ok, wantDollars)
	}
	for _, name := range []string{"creditgate_reserve_duration_seconds", "creditgate_capture_duration_seconds"} {
		if n, ok := metricValue(fams, name, nil); !ok || n != 1 {
			t.Errorf("%s has %v observations (present %v), want 1", name, n, ok)
		}
	}
	if v, ok := metricValue(fams, "creditgate_held_dollars", nil); !ok || v != 0 {
		t.Errorf("creditgate_held_dollars = %v (present %v), want 0 after settlement", v, ok)
	}
	if v, ok := metricValue(fams, "creditgate_catalog_info", map[string]string{"version": cfgCatalogVersion(t, cfg)}); !ok || v != 1 {
		t.Errorf("creditgate_catalog_info for the catalog in use missing")
	}
	// Account ids are unbounded and private: no label may carry them.
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if strings.Contains(strings.ToLower(lp.GetName()), "account") || lp.GetValue() == meteredAccount {
					t.Errorf("%s carries an account label %s=%q", name, lp.GetName(), lp.GetValue())
				}
			}
		}
	}
	if strings.Contains(metricsBody, meteredAccount) || strings.Contains(metricsBody, meteredKey) {
		t.Errorf("/metrics mentions the account or its key")
	}

	if err := ts.stop(); err != nil {
		t.Fatalf("serve returned %v after its context was cancelled, want nil", err)
	}
	if n := drained.Load(); n != 1 {
		t.Fatalf("draining hook ran %d times, want 1", n)
	}
	if drainReadyz != http.StatusServiceUnavailable {
		t.Errorf("/readyz while draining = %d, want 503", drainReadyz)
	}
	wantHealth := []string{`"": NOT_SERVING`, fmt.Sprintf("%q: NOT_SERVING", extprocv3.ExternalProcessor_ServiceDesc.ServiceName)}
	if strings.Join(drainHealth, "; ") != strings.Join(wantHealth, "; ") {
		t.Errorf("gRPC health while draining = %v, want %v", drainHealth, wantHealth)
	}
	// Stopped means stopped: nothing listens on either port any more.
	for _, a := range []string{ts.grpcAddr, ts.adminAddr} {
		if c, err := net.DialTimeout("tcp", a, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after serve returned", a)
		}
	}
}

// cfgCatalogVersion is the version of the catalog cfg selects.
func cfgCatalogVersion(t *testing.T, cfg Config) string {
	t.Helper()
	lc, err := newLiveCatalog(cfg.Prices.Catalog, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return lc.Version()
}

func TestReadyzFailsWithoutRedis(t *testing.T) {
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Redis.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", port) // nothing listens here
	ts := startServe(t, cfg, nil)
	if code, body := ts.get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "ledger unavailable") {
		t.Errorf("/readyz with Redis down = %d %q, want 503 ledger unavailable", code, body)
	}
	// Both HTTP health endpoints follow the ledger path (the issue asks for
	// it); Kubernetes liveness uses a TCP probe on the gRPC port instead, so
	// a Redis outage does not restart pods that could not fix it.
	if code, body := ts.get("/healthz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "ledger unavailable") {
		t.Errorf("/healthz with Redis down = %d %q, want 503 ledger unavailable", code, body)
	}
	if err := ts.stop(); err != nil {
		t.Errorf("serve returned %v, want nil", err)
	}
}

// writeCatalog copies a testdata catalog to path and gives it a
// modification time distinct from any earlier write, so the poller's
// mtime check sees every change even on coarse-clock file systems.
func writeCatalog(t *testing.T, path, testdataName string, gen int) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", testdataName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Date(2026, 1, 1, 0, 0, gen, 0, time.UTC)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

func TestLiveCatalogReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prices.yaml")
	writeCatalog(t, path, "catalog-v1.yaml", 1)
	logs := &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	lc, err := newLiveCatalog(path, log, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if v := lc.Version(); v != "cmdtest-v1" {
		t.Fatalf("initial version %q", v)
	}

	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal)
	watched := make(chan struct{})
	go func() { defer close(watched); lc.watch(ctx, time.Hour, hup) }() // only hup triggers a reload
	defer func() { cancel(); <-watched }()

	steps := []struct {
		name, file  string
		wantVersion string
		wantLog     string
	}{
		{"new catalog", "catalog-v2.yaml", "cmdtest-v2", `"msg":"price catalog reloaded"`},
		{"broken catalog keeps the old one", "catalog-broken.yaml", "cmdtest-v2", `"msg":"price catalog reload failed; keeping the previous one"`},
		{"fixed again", "catalog-v1.yaml", "cmdtest-v1", `"previous":"cmdtest-v2"`},
	}
	for i, s := range steps {
		writeCatalog(t, path, s.file, i+2)
		before := strings.Count(logs.String(), s.wantLog)
		// An unbuffered send returns once watch took it; the log line says
		// the reload that followed is done.
		hup <- os.Interrupt
		waitFor(t, s.name+": log "+s.wantLog, func() bool { return strings.Count(logs.String(), s.wantLog) > before })
		if v := lc.Version(); v != s.wantVersion {
			t.Fatalf("%s: version %q, want %q\nlog:\n%s", s.name, v, s.wantVersion, logs.String())
		}
		if row, err := lc.Lookup("openai", "gpt-4o-mini", time.Now()); err != nil || row == nil {
			t.Fatalf("%s: lookup after reload: %v", s.name, err)
		}
	}
}

func TestLiveCatalogReloadDirect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prices.yaml")
	writeCatalog(t, path, "catalog-v1.yaml", 1)
	lc, err := newLiveCatalog(path, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if lc.changed() {
		t.Fatal("changed() right after loading")
	}
	writeCatalog(t, path, "catalog-broken.yaml", 2)
	if !lc.changed() {
		t.Fatal("changed() missed a new modification time")
	}
	if err := lc.reload(); err == nil {
		t.Fatal("reload of a broken catalog succeeded")
	}
	if v := lc.Version(); v != "cmdtest-v1" {
		t.Fatalf("broken reload replaced the catalog: %q", v)
	}
	if _, err := newLiveCatalog(path, nil, time.Now); err == nil {
		t.Fatal("starting with a broken catalog succeeded")
	}
	if _, err := newLiveCatalog(filepath.Join(t.TempDir(), "missing.yaml"), nil, time.Now); err == nil {
		t.Fatal("starting with a missing catalog succeeded")
	}
}

// TestServeCatalogHotReload: a catalog file rewritten under a running serve
// is picked up by the poller and shows on /readyz and creditgate_catalog_info.
func TestServeCatalogHotReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prices.yaml")
	writeCatalog(t, path, "catalog-v1.yaml", 1)
	cfg := testConfig(t)
	cfg.Prices.Catalog = path
	cfg.Prices.ReloadInterval = Duration{20 * time.Millisecond}
	ts := startServe(t, cfg, nil)

	check := func(version string) bool {
		code, body := ts.get("/readyz")
		if code != http.StatusOK || strings.TrimSpace(body) != "ok catalog="+version {
			return false
		}
		_, mb := ts.get("/metrics")
		fams := parseMetrics(t, mb)
		v, ok := metricValue(fams, "creditgate_catalog_info", map[string]string{"version": version})
		return ok && v == 1 && len(fams["creditgate_catalog_info"].GetMetric()) == 1
	}
	if !check("cmdtest-v1") {
		t.Fatal("v1 not on /readyz and creditgate_catalog_info")
	}
	writeCatalog(t, path, "catalog-v2.yaml", 2)
	waitFor(t, "catalog v2 on /readyz and creditgate_catalog_info", func() bool { return check("cmdtest-v2") })
}

// dashboardExprs returns every Prometheus expression in a Grafana
// dashboard: targets[].expr of every panel, nested rows included.
func dashboardExprs(t *testing.T, raw []byte) (titles []string, exprs []string) {
	t.Helper()
	var d struct {
		Title  string            `json:"title"`
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if d.Title == "" || len(d.Panels) == 0 {
		t.Fatal("dashboard has no title or no panels")
	}
	type panel struct {
		Title   string            `json:"title"`
		Type    string            `json:"type"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	}
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, r := range ps {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("panel: %v", err)
			}
			if p.Type != "row" {
				titles = append(titles, p.Title)
				if len(p.Targets) == 0 {
					t.Errorf("panel %q queries nothing", p.Title)
				}
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q has an empty expr", p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return titles, exprs
}

// registeredMetrics is every metric family name newMetrics registers, with
// the _bucket/_sum/_count series of histograms.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	lc, err := newLiveCatalog("", nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics(reg, lc)
	// Vectors appear in a scrape only once they have a child: exercise
	// every Observer method, as a running sidecar does.
	m.Request("openai", "gpt-4o-mini", "estimated")
	m.Charged("openai", "gpt-4o-mini", 1)
	m.Holding(1)
	m.Refused("insufficient_funds")
	m.Unpriced("openai", "x")
	m.ReserveLatency(time.Millisecond)
	m.CaptureLatency(time.Millisecond)
	m.LedgerError("reserve")
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range fams {
		names[f.GetName()] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	return names
}

var metricNameRE = regexp.MustCompile(`\bcreditgate_[a-zA-Z0-9_]+`)

func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	titles, exprs := dashboardExprs(t, raw)
	reg := registeredMetrics(t)
	used := map[string]bool{}
	for _, e := range exprs {
		names := metricNameRE.FindAllString(e, -1)
		if len(names) == 0 {
			t.Errorf("expr %q queries no creditgate metric", e)
		}
		for _, n := range names {
			used[n] = true
			if !reg[n] {
				t.Errorf("expr %q queries %s, which newMetrics does not register", e, n)
			}
		}
		if strings.Contains(e, "account") {
			t.Errorf("expr %q mentions an account label; there is none", e)
		}
	}
	// The panels the operator guide promises, each with the metric it shows.
	want := map[string]string{
		"Requests by outcome":                     "creditgate_requests_total",
		"Dollars charged by provider / model":     "creditgate_charged_dollars_total",
		"Dollars held by in-flight requests":      "creditgate_held_dollars",
		"Reserve / capture latency (p50, p99)":    "creditgate_reserve_duration_seconds_bucket",
		"Redis / ledger errors":                   "creditgate_ledger_errors_total",
		"Refusals by reason":                      "creditgate_refusals_total",
		"Estimated settlements":                   "creditgate_estimated_settlements_total",
		"Price catalog age":                       "creditgate_catalog_age_seconds",
		"Requests for unpriced models (provider)": "creditgate_unpriced_model_total",
	}
	have := map[string]bool{}
	for _, ti := range titles {
		have[ti] = true
	}
	var missing []string
	for ti, metric := range want {
		if !have[ti] {
			missing = append(missing, ti)
		}
		if !used[metric] {
			t.Errorf("no panel queries %s", metric)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("dashboard lacks panels %q (has %q)", missing, titles)
	}
	if !used["creditgate_capture_duration_seconds_bucket"] {
		t.Error("no panel shows capture latency")
	}
}
