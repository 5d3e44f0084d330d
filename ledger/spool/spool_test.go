package spool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/spool"
	"github.com/creditgate/creditgate/test/redistest"
)

// TestSpoolSurvivesOutage: a capture made while Redis is unreachable is
// spooled, survives a restart of the spool (a new process), and lands
// exactly once when Redis is back — even if replayed twice.
func TestSpoolSurvivesOutage(t *testing.T) {
	ctx := context.Background()
	good := redistest.Client(t)
	prefix := redistest.Prefix(t)
	l, err := ledger.New(good, ledger.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateAccount(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.TopUp(ctx, ledger.TopUpRequest{Account: "a", PaymentID: "p", Amount: 1_000_000}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reserve(ctx, ledger.ReserveRequest{Account: "a", RequestID: "r1", Estimate: 500_000, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reserve(ctx, ledger.ReserveRequest{Account: "a", RequestID: "r2", Estimate: 100_000, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}

	// The same ledger pointed at a dead Redis.
	port, _ := redistest.FreePort()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1, DialerRetries: 1, DialTimeout: 100 * time.Millisecond})
	defer dead.Close()
	down, _ := ledger.New(dead, ledger.Options{Prefix: prefix})
	capReq := ledger.CaptureRequest{Account: "a", RequestID: "r1", Cost: 123_456_789_000, Provider: "openai", Model: "gpt-4o"}
	if _, err := down.Capture(ctx, capReq); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("want ErrUnavailable, got %v", err)
	}
	path := filepath.Join(t.TempDir(), "spool.jsonl")
	sp, err := spool.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Add(spool.Settlement{Capture: &capReq}); err != nil {
		t.Fatal(err)
	}
	if err := sp.Add(spool.Settlement{Release: &spool.Release{Account: "a", RequestID: "r2", Reason: "upstream 500"}}); err != nil {
		t.Fatal(err)
	}
	// Still down: nothing applied, nothing lost.
	if n, err := sp.Replay(ctx, down, nil); n != 0 || !errors.Is(err, ledger.ErrUnavailable) || sp.Len() != 2 {
		t.Fatalf("replay while down: %d %v len %d", n, err, sp.Len())
	}
	// A torn line from a crash mid-write is ignored.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"capture":{"Acc`)
	f.Close()
	// "Restart": reopen from disk.
	sp, err = spool.Open(path)
	if err != nil || sp.Len() != 2 {
		t.Fatalf("reopen: %v len %d", err, sp.Len())
	}
	if n, err := sp.Replay(ctx, l, nil); n != 2 || err != nil || sp.Len() != 0 {
		t.Fatalf("replay: %d %v len %d", n, err, sp.Len())
	}
	b, _ := l.Balance(ctx, "a")
	if b.Balance != 1_000_000-123_456 || b.Held != 0 || b.CarryPico != 789_000 {
		t.Fatalf("balance after replay: %+v", b)
	}
	// Replaying the same settlement again (e.g. the reply was lost) is a no-op.
	if _, err := l.Capture(ctx, capReq); err != nil {
		t.Fatal(err)
	}
	if b2, _ := l.Balance(ctx, "a"); b2 != b {
		t.Fatalf("second capture moved money: %+v", b2)
	}
}

// TestSpooledReleaseOfAHoldThatNeverLanded: after a reserve whose outcome
// was unknown, a release is spooled; if the hold never landed, replaying it
// is a no-op that leaves the spool, not a permanent error.
func TestSpooledReleaseOfAHoldThatNeverLanded(t *testing.T) {
	ctx := context.Background()
	l, err := ledger.New(redistest.Client(t), ledger.Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateAccount(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Add(spool.Settlement{Release: &spool.Release{Account: "a", RequestID: "never-reserved", Reason: "x"}}); err != nil {
		t.Fatal(err)
	}
	permanent := 0
	n, err := sp.Replay(ctx, l, func(spool.Settlement, error) { permanent++ })
	if n != 1 || err != nil || permanent != 0 || sp.Len() != 0 {
		t.Fatalf("replay: applied %d, err %v, permanent %d, left %d", n, err, permanent, sp.Len())
	}
	// A capture of a request that was never reserved is a real problem.
	if err := sp.Add(spool.Settlement{Capture: &ledger.CaptureRequest{Account: "a", RequestID: "never-reserved", Cost: 1}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := sp.Replay(ctx, l, func(spool.Settlement, error) { permanent++ }); n != 0 || permanent != 1 || sp.Len() != 0 {
		t.Fatalf("capture replay: applied %d, permanent %d, left %d", n, permanent, sp.Len())
	}
}
