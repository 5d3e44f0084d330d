package extproc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/creditgate/creditgate/ledger/spool"
	"github.com/creditgate/creditgate/test/redistest"
)

// guard bounds waits so a broken run fails instead of hanging; it is never
// part of an assertion.
const guard = 20 * time.Second

const (
	testAccount = "team-a"
	// virtualKey is a creditgate key; realKey is what the provider must see
	// when Identity.ProviderKeys swaps it.
	virtualKey = "cgk_test_0123456789abcdef0123456789abcdef"
	realKey    = "sk-real-provider-key-000111222333"
)

// envConfig is what a test varies about the sidecar.
type envConfig struct {
	Identity    extproc.Identity
	Passthrough []string
	// Spool gives the server a real spool in a temp dir.
	Spool bool
	// FailOpen is the server's fail-open policy (default: fail closed).
	FailOpen extproc.FailOpen
	// Funds is testAccount's top-up (default $1).
	Funds money.Micros
	// HoldTTL and SweepLease shorten hold lifetimes for expiry tests.
	HoldTTL, SweepLease time.Duration
}

// env is one sidecar on a loopback gRPC server, in front of a real ledger on
// real Redis, reached through faultLedger so a test can inject failures.
type env struct {
	t      *testing.T
	ctx    context.Context
	led    *ledger.Ledger
	faults *faultLedger
	srv    *extproc.Server
	gs     *grpc.Server
	conn   *grpc.ClientConn
	client extprocv3.ExternalProcessorClient
	obs    *recObserver
	spool  *spool.Spool
	logs   *lockedBuffer
	cat    *pricing.Catalog
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	ctx := context.Background()
	led, err := ledger.New(redistest.Client(t), ledger.Options{Prefix: redistest.Prefix(t), SweepLease: cfg.SweepLease})
	if err != nil {
		t.Fatal(err)
	}
	cat := testCatalog(t)
	e := &env{t: t, ctx: ctx, led: led, faults: &faultLedger{Ledger: led}, obs: &recObserver{}, logs: &lockedBuffer{}, cat: cat}
	if len(cfg.Identity.Sources) == 0 {
		cfg.Identity.Sources = []string{"apikey"}
	}
	opt := extproc.Options{
		Ledger: e.faults, Prices: cat, Identity: cfg.Identity, Passthrough: cfg.Passthrough,
		Logger:   slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Observer: e.obs, HoldTTL: cfg.HoldTTL, FailOpen: cfg.FailOpen,
	}
	if cfg.Spool {
		sp, err := spool.Open(filepath.Join(t.TempDir(), "settlements.spool"))
		if err != nil {
			t.Fatal(err)
		}
		e.spool = sp
		opt.Spool = sp
	}
	if e.srv, err = extproc.NewServer(opt); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.gs = grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(e.gs, e.srv)
	go e.gs.Serve(l)
	t.Cleanup(func() {
		e.gs.Stop()
		e.drain()
	})
	if e.conn, err = grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close() })
	e.client = extprocv3.NewExternalProcessorClient(e.conn)

	if _, err := led.CreateAccount(ctx, testAccount); err != nil {
		t.Fatal(err)
	}
	funds := cfg.Funds
	if funds == 0 {
		funds = 1_000_000
	}
	if _, err := led.TopUp(ctx, ledger.TopUpRequest{Account: testAccount, PaymentID: "pay-1", Amount: funds, Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := led.CreateAPIKey(ctx, testAccount, ledger.HashKey(virtualKey)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Every scripted and emulator case doubles as a check that the
		// sidecar never logs a key or an authorization header.
		logs := e.logs.String()
		for _, secret := range []string{virtualKey, realKey, "Bearer ", "key=" + virtualKey} {
			if strings.Contains(logs, secret) {
				t.Errorf("sidecar log contains a secret (%.6s...)", secret)
			}
		}
		if t.Failed() {
			t.Logf("sidecar log:\n%s", logs)
		}
	})
	return e
}

func testCatalog(t *testing.T) *pricing.Catalog {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "prices.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := pricing.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// drain waits for every settlement of ended streams (Server.Drain).
func (e *env) drain() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, guard)
	defer cancel()
	if err := e.srv.Drain(ctx); err != nil {
		e.t.Fatalf("drain: %v", err)
	}
}

// requestEntries returns the journal entries of testAccount written by
// requests (reserve, capture, release, expire), oldest first.
func (e *env) requestEntries() []ledger.Entry {
	e.t.Helper()
	var out []ledger.Entry
	after := ""
	for {
		page, next, err := e.led.Journal(e.ctx, testAccount, after, 1000)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, en := range page {
			switch en.Type {
			case "open", "topup", "fee", "adjust":
			default:
				out = append(out, en)
			}
		}
		if next == "" {
			return out
		}
		after = next
	}
}

func entryTypes(es []ledger.Entry) []string {
	out := []string{}
	for _, en := range es {
		out = append(out, en.Type)
	}
	return out
}

func (e *env) balance() ledger.Balance {
	e.t.Helper()
	b, err := e.led.Balance(e.ctx, testAccount)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

// audit checks the ledger invariants from the journal alone.
func (e *env) audit() {
	e.t.Helper()
	rep, ok, err := e.led.Audit(e.ctx)
	if err != nil || !ok {
		e.t.Fatalf("ledger audit: ok=%v err=%v %+v", ok, err, rep)
	}
}

// spooled replays the spool into a recorder and returns what was waiting,
// leaving the spool as it was (the recorder answers ErrUnavailable).
func (e *env) spooled() []spool.Settlement {
	e.t.Helper()
	if e.spool == nil {
		return nil
	}
	rec := &spoolRecorder{}
	if _, err := e.spool.Replay(e.ctx, rec, nil); err != nil && !errors.Is(err, ledger.ErrUnavailable) {
		e.t.Fatal(err)
	}
	return rec.items
}

// spoolRecorder is a spool.Ledger that records and refuses everything as
// unavailable, so Replay keeps every item.
type spoolRecorder struct{ items []spool.Settlement }

func (r *spoolRecorder) Capture(_ context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error) {
	r.items = append(r.items, spool.Settlement{Capture: &req})
	return ledger.CaptureResult{}, ledger.ErrUnavailable
}

func (r *spoolRecorder) Charge(_ context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error) {
	r.items = append(r.items, spool.Settlement{Charge: &req})
	return ledger.CaptureResult{}, ledger.ErrUnavailable
}

func (r *spoolRecorder) Release(_ context.Context, account, id, reason string) (ledger.ReleaseResult, error) {
	r.items = append(r.items, spool.Settlement{Release: &spool.Release{Account: account, RequestID: id, Reason: reason}})
	return ledger.ReleaseResult{}, ledger.ErrUnavailable
}

// errInjected is what faultLedger returns for an injected Redis outage.
var errInjected = fmt.Errorf("%w: injected by the test", ledger.ErrUnavailable)

// faultLedger passes every call to the real ledger unless the test injected
// a failure for it. Block* channels, when set, hold a call until closed; the
// call then proceeds normally. Calls are counted by operation.
type faultLedger struct {
	extproc.Ledger

	mu           sync.Mutex
	reserveErr   error
	captureErr   error
	releaseErr   error
	blockReserve chan struct{}
	calls        map[string]int
}

func (f *faultLedger) inject(reserve, capture, release error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reserveErr, f.captureErr, f.releaseErr = reserve, capture, release
}

func (f *faultLedger) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

func (f *faultLedger) enter(op string) (error, chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[op]++
	switch op {
	case "reserve":
		return f.reserveErr, f.blockReserve
	case "capture", "charge":
		// A charge is the capture of a request admitted fail open: the
		// same settlement fault applies.
		return f.captureErr, nil
	case "release":
		return f.releaseErr, nil
	}
	return nil, nil
}

func (f *faultLedger) Reserve(ctx context.Context, req ledger.ReserveRequest) (ledger.Hold, error) {
	err, block := f.enter("reserve")
	if block != nil {
		<-block
	}
	if err != nil {
		return ledger.Hold{}, err
	}
	// Not ctx: a reserve that reached Redis before the stream was cancelled
	// lands; that is the case a blocked reserve models.
	return f.Ledger.Reserve(context.WithoutCancel(ctx), req)
}

func (f *faultLedger) Capture(ctx context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error) {
	if err, _ := f.enter("capture"); err != nil {
		return ledger.CaptureResult{}, err
	}
	return f.Ledger.Capture(ctx, req)
}

func (f *faultLedger) Charge(ctx context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error) {
	if err, _ := f.enter("charge"); err != nil {
		return ledger.CaptureResult{}, err
	}
	return f.Ledger.Charge(ctx, req)
}

func (f *faultLedger) Release(ctx context.Context, account, id, reason string) (ledger.ReleaseResult, error) {
	if err, _ := f.enter("release"); err != nil {
		return ledger.ReleaseResult{}, err
	}
	return f.Ledger.Release(ctx, account, id, reason)
}

// recObserver records what the server reports for metrics: the sidecar's
// own count of money held must come back to zero once every stream settled.
type recObserver struct {
	mu       sync.Mutex
	holding  int64
	holds    int
	requests map[string]int
	refused  map[string]int
}

func (o *recObserver) Request(_, _, outcome string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.requests == nil {
		o.requests = map[string]int{}
	}
	o.requests[outcome]++
}

func (o *recObserver) Refused(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.refused == nil {
		o.refused = map[string]int{}
	}
	o.refused[reason]++
}

func (o *recObserver) Holding(m int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.holding += m
	if m > 0 {
		o.holds++
	}
}

func (o *recObserver) Charged(string, string, int64) {}
func (o *recObserver) Unpriced(string, string)       {}
func (o *recObserver) ReserveLatency(time.Duration)  {}
func (o *recObserver) CaptureLatency(time.Duration)  {}
func (o *recObserver) LedgerError(string)            {}
func (o *recObserver) held() int64                   { o.mu.Lock(); defer o.mu.Unlock(); return o.holding }
func (o *recObserver) outcomes() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return copyMap(o.requests)
}
func (o *recObserver) refusals() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return copyMap(o.refused)
}
func copyMap(m map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range m {
		out[k] = v
	}
	return out
}

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
