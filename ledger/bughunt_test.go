package ledger_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/spool"
	"github.com/creditgate/creditgate/test/redistest"
)

// TestSpoolAddAfterTornLine: a write that died half way (a crash, or a full
// disk making Add fail after a short write) leaves a torn line without its
// newline. The next Add, which returns nil and so promises the debit
// survives, must not be glued onto that torn line and dropped at replay.
func TestSpoolAddAfterTornLine(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: "r1", Estimate: 500_000, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "spool.jsonl")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"capture":{"Acc`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	sp, err := spool.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	capReq := ledger.CaptureRequest{Account: "a", RequestID: "r1", Cost: 123_000_000, Provider: "openai", Model: "gpt-4o"}
	if err := sp.Add(spool.Settlement{Capture: &capReq}); err != nil {
		t.Fatal(err)
	}
	if n, err := sp.Replay(e.ctx, e.l, func(s spool.Settlement, err error) { t.Errorf("permanent: %+v %v", s, err) }); n != 1 || err != nil {
		t.Fatalf("replay applied %d (%v), want the one settlement Add accepted", n, err)
	}
	if b := e.balance(t, "a"); b.Balance != 1_000_000-123 || b.Held != 0 {
		t.Fatalf("balance after replay %+v: the spooled capture was lost", b)
	}
	e.auditClean(t)
}

// TestCaptureRefusedForOOMIsUnavailable: a Redis at maxmemory (noeviction)
// refuses a script's first write with -OOM and changes nothing; once memory
// is freed the same capture lands. That is an outage, not an answer: the
// sidecar spools a settlement only on ErrUnavailable, so a capture classified
// otherwise is dropped, its hold expires and the call is never paid for.
func TestCaptureRefusedForOOMIsUnavailable(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.StartServer(t, "--maxmemory-policy", "noeviction")})
	defer rdb.Close()
	ctx := context.Background()
	l, err := ledger.New(rdb, ledger.Options{Prefix: "cg"})
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
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	capReq := ledger.CaptureRequest{Account: "a", RequestID: "r1", Cost: 123_000_000, Provider: "openai", Model: "gpt-4o"}
	_, err = l.Capture(ctx, capReq)
	if err == nil {
		t.Fatal("capture succeeded above maxmemory; the test does not reach OOM")
	}
	if !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("capture refused with %v: not ErrUnavailable, so it would not be spooled", err)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Capture(ctx, capReq); err != nil {
		t.Fatal(err)
	}
	if b, _ := l.Balance(ctx, "a"); b.Balance != 1_000_000-123 || b.Held != 0 {
		t.Fatalf("balance %+v", b)
	}
}
