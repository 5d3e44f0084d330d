// Package extproc is creditgate's Envoy external processor: one gRPC
// ExternalProcessor stream per HTTP request, driven as a state machine that
// expects exactly what Envoy's ext_proc filter sends (shared spec:
// envoy-extproc.md). It finds the payer and the provider, reserves the
// worst-case cost before the request leaves the mesh, and captures the exact
// cost from the provider's reported usage when the response ends.
//
// Provider wire formats live in extproc/provider (pure code); money, Redis
// and prices live in ledger.
package extproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/creditgate/creditgate/ledger/spool"
)

// Ledger is the part of *ledger.Ledger the processor uses.
type Ledger interface {
	Reserve(ctx context.Context, req ledger.ReserveRequest) (ledger.Hold, error)
	Capture(ctx context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error)
	Charge(ctx context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error)
	Release(ctx context.Context, account, requestID, reason string) (ledger.ReleaseResult, error)
	Extend(ctx context.Context, account, requestID string, deadline time.Time) (bool, error)
	AccountForKey(ctx context.Context, keyHash string) (string, error)
}

// Prices resolves the price row in force for a model at a time. Main wires
// a hot-reloadable catalog behind it.
type Prices interface {
	Lookup(provider, model string, at time.Time) (*pricing.Row, error)
}

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	Ledger   Ledger
	Prices   Prices
	Identity Identity
	Detector *provider.Detector
	// Passthrough lists requests let through unmetered (the payer must still
	// be known): "/v1/models" (any host) or "api.openai.com/v1/files".
	Passthrough []string
	// FailOpen lists the routes admitted without a hold when the ledger is
	// unreachable at the reserve (design-notes §6); every other route fails
	// closed with a 503.
	FailOpen FailOpen
	// HoldTTL bounds a request's hold; the sweeper frees it afterwards
	// (default 10 minutes, longer than any sane LLM call).
	HoldTTL time.Duration
	// KeyCacheTTL keeps virtual-key lookups in memory (default 10s; a
	// negative value disables the cache). A revoked key works for at most
	// this long.
	KeyCacheTTL time.Duration
	// LedgerTimeout bounds each ledger call Envoy waits on (default 1.5s);
	// keep it below the filter's message_timeout (2s in envoy/envoy.yaml).
	LedgerTimeout time.Duration
	// SettleTimeout bounds a settlement after the stream is gone (default 5s).
	SettleTimeout time.Duration
	// KeepAcceptEncoding leaves the client's accept-encoding alone. By
	// default it is removed so providers answer uncompressed and streams can
	// be parsed and filtered chunk by chunk.
	KeepAcceptEncoding bool
	// MaxBufferedResponse caps the bytes kept to parse a compressed stream
	// (default 16 MiB).
	MaxBufferedResponse int
	// Spool, if set, keeps settlements that could not reach Redis and
	// replays them (ledger/spool); without it such a settlement is logged
	// and the hold's expiry is the only safety net.
	Spool interface {
		Add(spool.Settlement) error
	}
	Logger   *slog.Logger
	Clock    func() time.Time
	Observer Observer
}

// FailOpen is the per-route policy for a ledger outage at the reserve. A
// request on a listed route is let through without a hold as long as its
// account's estimates admitted this way by this sidecar, since Redis last
// answered a reserve for the account, stay within CreditLine; its cost is
// debited with Ledger.Charge (spooled while Redis is down). The zero value
// fails closed everywhere.
type FailOpen struct {
	// Routes use Passthrough's syntax: "/v1/chat/completions" (any host) or
	// "api.openai.com/v1/" (host and path prefix).
	Routes []string
	// CreditLine bounds, per account and per sidecar, what may be spent
	// without a hold; the balance can end this far below zero.
	CreditLine money.Micros
}

// Server implements the ExternalProcessor service.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	opt      Options
	keys     *keyCache
	settling sync.WaitGroup

	// exposure is, per account, the estimates admitted fail open since
	// Redis last answered a reserve for it.
	mu       sync.Mutex
	exposure map[string]money.Micros
}

// NewServer validates opts and builds a Server.
func NewServer(opt Options) (*Server, error) {
	var errs []error
	if opt.Ledger == nil {
		errs = append(errs, errors.New("extproc: a ledger is required"))
	}
	if opt.Prices == nil {
		errs = append(errs, errors.New("extproc: a price catalog is required"))
	}
	if err := opt.Identity.Validate(); err != nil {
		errs = append(errs, err)
	}
	if opt.Detector == nil {
		opt.Detector = &provider.Detector{}
	}
	if err := opt.Detector.Validate(); err != nil {
		errs = append(errs, err)
	}
	if opt.FailOpen.CreditLine < 0 {
		errs = append(errs, fmt.Errorf("extproc: fail-open credit line %s is negative", opt.FailOpen.CreditLine))
	}
	for _, r := range opt.FailOpen.Routes {
		if strings.TrimSpace(r) == "" {
			errs = append(errs, errors.New("extproc: a fail-open route is empty (it would match every request)"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if opt.HoldTTL <= 0 {
		opt.HoldTTL = 10 * time.Minute
	}
	if opt.LedgerTimeout <= 0 {
		opt.LedgerTimeout = 1500 * time.Millisecond
	}
	if opt.SettleTimeout <= 0 {
		opt.SettleTimeout = 5 * time.Second
	}
	if opt.MaxBufferedResponse <= 0 {
		opt.MaxBufferedResponse = 16 << 20
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Clock == nil {
		opt.Clock = time.Now
	}
	if opt.Observer == nil {
		opt.Observer = NopObserver{}
	}
	if opt.KeyCacheTTL == 0 {
		opt.KeyCacheTTL = 10 * time.Second
	}
	return &Server{opt: opt, keys: newKeyCache(opt.KeyCacheTTL, opt.Clock), exposure: map[string]money.Micros{}}, nil
}

// Process runs one ext_proc stream: one HTTP request through Envoy.
func (s *Server) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	// Counted from the start, not from the settlement: grpc.Server.Stop does
	// not wait for handlers, so a stream whose context was just cancelled may
	// not have reached finish yet when Drain runs. Counting only inside
	// finish let Drain return before such a settlement began (found by
	// extproc tests: early end, trailers skipped).
	s.settling.Add(1)
	defer s.settling.Done()
	st := newStream(s, srv.Context())
	// Whatever ends the stream (normal end, client abort, Envoy reset,
	// sidecar shutdown), a reserved request is settled: design-notes §4.5.
	defer st.finish()
	for {
		req, err := srv.Recv()
		if err != nil {
			// envoy-extproc.md §1.1: Envoy half-closes then resets; EOF and
			// a cancelled context are both normal ends.
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		resp, err := st.handle(req)
		if err != nil {
			return status.Error(codes.FailedPrecondition, err.Error())
		}
		if resp == nil {
			continue
		}
		if err := srv.Send(resp); err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) || errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		st.sent(resp)
	}
}

// Drain waits until every stream has returned, including the settlement
// each one runs when it ends, or ctx ends. Main calls it after the gRPC
// server stopped so no debit is lost on shutdown.
func (s *Server) Drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.settling.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("extproc: settlements still running: %w", ctx.Err())
	}
}

func (s *Server) passthrough(host, path string) bool {
	return matchRoute(s.opt.Passthrough, host, path)
}

// failOpen reports whether a request to host+path fails open.
func (s *Server) failOpen(host, path string) bool {
	return matchRoute(s.opt.FailOpen.Routes, host, path)
}

// admitFailOpen adds est to the account's exposure if that stays within the
// credit line, and reports whether it did.
func (s *Server) admitFailOpen(account string, est money.Micros) (bool, money.Micros) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.exposure[account] + est
	if next > s.opt.FailOpen.CreditLine {
		return false, s.exposure[account]
	}
	s.exposure[account] = next
	return true, next
}

// ledgerAnswered resets an account's exposure: Redis answered a reserve for
// it, so holds bound its spending again and the spool is replaying.
func (s *Server) ledgerAnswered(account string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.exposure, account)
}

// matchRoute matches "/path-prefix" (any host) or "host/path-prefix"
// entries; the query is ignored.
func matchRoute(routes []string, host, path string) bool {
	p, _, _ := strings.Cut(path, "?")
	for _, e := range routes {
		if strings.HasPrefix(e, "/") {
			if strings.HasPrefix(p, e) {
				return true
			}
		} else if strings.HasPrefix(host+p, e) {
			return true
		}
	}
	return false
}

// newRequestID makes the ledger's id for one stream. Envoy's x-request-id is
// kept for tracing, but a random suffix is added: a client that replays an
// x-request-id makes a new upstream call and must pay for it again, while
// go-redis retries within this stream reuse the same id and stay idempotent.
func newRequestID(xrid string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	if xrid == "" || len(xrid) > 120 || !validIDChars(xrid) {
		return "req-" + suffix
	}
	return xrid + "." + suffix
}

func validIDChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._:-", c) >= 0) {
			return false
		}
	}
	return s != "" && s[0] != '.' && s[0] != '-' && s[0] != '_' && s[0] != ':'
}
