package spool_test

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/spool"
	"github.com/creditgate/creditgate/test/redistest"
)

// TestSpooledChargeLandsOnce: the settlement of a request admitted without a
// hold (fail open) is spooled as a Charge while Redis is down, survives a
// reopen, and debits its exact cost exactly once when replayed, twice.
func TestSpooledChargeLandsOnce(t *testing.T) {
	ctx := context.Background()
	prefix := redistest.Prefix(t)
	l, err := ledger.New(redistest.Client(t), ledger.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateAccount(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.TopUp(ctx, ledger.TopUpRequest{Account: "a", PaymentID: "p", Amount: 100_000}); err != nil {
		t.Fatal(err)
	}
	port, _ := redistest.FreePort()
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1, DialerRetries: 1, DialTimeout: 100 * time.Millisecond})
	defer dead.Close()
	down, _ := ledger.New(dead, ledger.Options{Prefix: prefix})
	// More than the balance: nothing was held, so the balance goes negative.
	chg := ledger.CaptureRequest{Account: "a", RequestID: "fo-1", Cost: 123_456_789_000, Provider: "openai", Model: "gpt-4o"}
	if _, err := down.Charge(ctx, chg); !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("want ErrUnavailable, got %v", err)
	}
	path := filepath.Join(t.TempDir(), "spool.jsonl")
	sp, err := spool.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := sp.Add(spool.Settlement{Charge: &chg}); err != nil {
		t.Fatal(err)
	}
	if n, err := sp.Replay(ctx, down, nil); n != 0 || !errors.Is(err, ledger.ErrUnavailable) || sp.Len() != 1 {
		t.Fatalf("replay while down: %d %v len %d", n, err, sp.Len())
	}
	if sp, err = spool.Open(path); err != nil || sp.Len() != 1 {
		t.Fatalf("reopen: %v len %d", err, sp.Len())
	}
	permanent := 0
	if n, err := sp.Replay(ctx, l, func(spool.Settlement, error) { permanent++ }); n != 1 || err != nil || permanent != 0 || sp.Len() != 0 {
		t.Fatalf("replay: applied %d, err %v, permanent %d, left %d", n, err, permanent, sp.Len())
	}
	b, _ := l.Balance(ctx, "a")
	if b.Balance != 100_000-123_456 || b.Held != 0 || b.CarryPico != 789_000 {
		t.Fatalf("balance after replay: %+v", b)
	}
	// The same charge spooled again (its reply was lost) replays as a no-op.
	if err := sp.Add(spool.Settlement{Charge: &chg}); err != nil {
		t.Fatal(err)
	}
	if n, err := sp.Replay(ctx, l, nil); n != 1 || err != nil {
		t.Fatalf("second replay: %d %v", n, err)
	}
	if b2, _ := l.Balance(ctx, "a"); b2 != b {
		t.Fatalf("second replay moved money: %+v", b2)
	}
	if rep, err := l.AuditAccount(ctx, "a"); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("audit: %v %v", err, rep.Problems)
	}
}
