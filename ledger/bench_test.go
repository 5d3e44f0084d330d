package ledger_test

import (
	"context"
	"github.com/creditgate/creditgate/test/benchratio"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

// BenchmarkReserveCapture prices the ledger's share of one metered request:
// a Reserve followed by a Capture, the two ledger calls design-notes §6 puts
// on every request's path. The baseline is two PINGs on the same client, the
// least two Redis round trips can cost on this machine, so the ratio is what
// the scripts (and any extra round trip) add on top of the network. The
// redis-rt/op metric counts the commands each operation really sent.
func BenchmarkReserveCapture(b *testing.B) {
	b.Run("serial", func(b *testing.B) {
		e := newBenchLedger(b)
		benchratio.Pair(b,
			benchratio.Case{Name: "baseline=2xPING", Run: func(b *testing.B) { e.measure(b, e.pings) }},
			benchratio.Case{Name: "reserve+capture", Run: func(b *testing.B) { e.measure(b, e.reserveCapture) }})
		e.checkSettled(b)
	})
	// Eight goroutines on two cores keep several commands in flight, so this
	// measures what one Redis sustains rather than one caller's latency.
	b.Run("parallel", func(b *testing.B) {
		e := newBenchLedger(b)
		benchratio.Pair(b,
			benchratio.Case{Name: "baseline=2xPING", Run: func(b *testing.B) { e.measureParallel(b, e.pings) }},
			benchratio.Case{Name: "reserve+capture", Run: func(b *testing.B) { e.measureParallel(b, e.reserveCapture) }})
		e.checkSettled(b)
	})
}

type benchLedger struct {
	ctx     context.Context
	rdb     *redis.Client
	l       *ledger.Ledger
	account string
	start   money.Micros
	cmds    atomic.Int64 // commands sent to Redis, counted by a go-redis hook
	seq     atomic.Int64 // request ids
	debited atomic.Int64 // µUSD the captures reported
}

func newBenchLedger(b *testing.B) *benchLedger {
	b.Helper()
	e := &benchLedger{ctx: context.Background(), account: "bench-acct", start: 1_000_000 * money.MicrosPerDollar}
	e.rdb = redis.NewClient(&redis.Options{Addr: redistest.Addr(b)})
	b.Cleanup(func() { _ = e.rdb.Close() })
	e.rdb.AddHook(benchratio.RoundTrips{N: &e.cmds})
	l, err := ledger.New(e.rdb, ledger.Options{Prefix: redistest.Prefix(b)})
	if err != nil {
		b.Fatal(err)
	}
	e.l = l
	if err := l.Load(e.ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := l.CreateAccount(e.ctx, e.account); err != nil {
		b.Fatal(err)
	}
	if _, err := l.TopUp(e.ctx, ledger.TopUpRequest{Account: e.account, PaymentID: "bench-seed", Amount: e.start}); err != nil {
		b.Fatal(err)
	}
	return e
}

func (e *benchLedger) pings() error {
	if err := e.rdb.Ping(e.ctx).Err(); err != nil {
		return err
	}
	return e.rdb.Ping(e.ctx).Err()
}

// reserveCapture is one request's ledger traffic with realistic arguments:
// a gpt-4o-mini sized hold and a cost with a sub-µUSD remainder, so the
// carry path runs too.
func (e *benchLedger) reserveCapture() error {
	id := "req-" + strconv.FormatInt(e.seq.Add(1), 10)
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: e.account, RequestID: id, Estimate: 2_000,
		TTL: 10 * time.Minute, Provider: "openai", Model: "gpt-4o-mini"}); err != nil {
		return err
	}
	res, err := e.l.Capture(e.ctx, ledger.CaptureRequest{Account: e.account, RequestID: id, Cost: 188_700_000,
		Provider: "openai", Model: "gpt-4o-mini", PriceRow: "openai/gpt-4o-mini",
		Usage: `{"input_tokens":1250,"output_tokens":2}`})
	if err != nil {
		return err
	}
	e.debited.Add(int64(res.Debited))
	return nil
}

func (e *benchLedger) measure(b *testing.B, op func() error) {
	before := e.cmds.Load()
	for b.Loop() {
		if err := op(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(e.cmds.Load()-before)/float64(b.N), "redis-rt/op")
}

func (e *benchLedger) measureParallel(b *testing.B, op func() error) {
	before := e.cmds.Load()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(e.cmds.Load()-before)/float64(b.N), "redis-rt/op")
}

// checkSettled makes sure the subject did the work it was timed for: every
// hold captured and the balance down by exactly what the captures reported.
func (e *benchLedger) checkSettled(b *testing.B) {
	b.Helper()
	bal, err := e.l.Balance(e.ctx, e.account)
	if err != nil {
		b.Fatal(err)
	}
	if want := e.start - money.Micros(e.debited.Load()); bal.Held != 0 || bal.Balance != want || e.debited.Load() == 0 {
		b.Fatalf("after the benchmark: balance %s held %s, want balance %s held 0", bal.Balance, bal.Held, want)
	}
}
