package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/spool"
	"github.com/creditgate/creditgate/test/fakeprovider"
	"github.com/creditgate/creditgate/test/redistest"
)

// TestServeFailOpen: with Redis unreachable, a route listed in fail_open
// reaches the provider instead of getting a 503, and its charge waits in the
// spool; replayed into a live ledger it debits the call's exact cost
// without a hold.
func TestServeFailOpen(t *testing.T) {
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Redis.URL = fmt.Sprintf("redis://127.0.0.1:%d/0", port) // nothing listens here
	cfg.Identity.Sources = []string{"header"}                   // identity needs no Redis
	cfg.Ledger.SpoolPath = filepath.Join(t.TempDir(), "spool.jsonl")
	cfg.FailOpen.Routes = []string{"/v1/chat/completions"}
	cfg.FailOpen.CreditLine = 1_000_000
	ts := startServe(t, cfg, nil)
	// Degraded, not unready: Redis is shared, so pulling every sidecar out
	// of rotation would stop the fail-open routes too.
	for _, p := range []string{"/readyz", "/healthz"} {
		if code, body := ts.get(p); code != http.StatusOK {
			t.Errorf("%s with fail-open routes and Redis down = %d %q, want 200", p, code, body)
		}
	}
	up := fakeprovider.NewDemo()
	front := frontProxy(t, ts, up)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const acct = "fail-open-acct"
	resp := postChat(t, ctx, front, `{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`,
		"x-creditgate-account", acct)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fail-open request with Redis down: %d %s, want 200", resp.StatusCode, b)
	}
	if n := len(up.Requests()); n != 1 {
		t.Fatalf("%d requests reached the provider, want 1", n)
	}
	// serve drains every settlement before it returns.
	if err := ts.stop(); err != nil {
		t.Fatal(err)
	}

	sp, err := spool.Open(cfg.Ledger.SpoolPath)
	if err != nil {
		t.Fatal(err)
	}
	// Redis is back (a live one, under a fresh prefix).
	l, err := ledger.New(redistest.Client(t), ledger.Options{Prefix: redistest.Prefix(t) + "live"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateAccount(ctx, acct); err != nil {
		t.Fatal(err)
	}
	if _, err := l.TopUp(ctx, ledger.TopUpRequest{Account: acct, PaymentID: "p1", Amount: 1_000_000}); err != nil {
		t.Fatal(err)
	}
	n, err := sp.Replay(ctx, l, func(s spool.Settlement, err error) { t.Errorf("settlement %+v refused: %v", s, err) })
	if err != nil || n != 1 || sp.Len() != 0 {
		t.Fatalf("replay applied %d (left %d), err %v; want the one charge", n, sp.Len(), err)
	}
	j, _, err := l.Journal(ctx, acct, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	captures := 0
	for _, e := range j {
		if e.Type == "capture" {
			captures++
			if !e.Unreserved || e.HoldAmount != 0 || e.CostPico <= 0 || e.Estimated {
				t.Errorf("capture entry %+v, want an unreserved capture of the exact cost", e)
			}
			bal, _ := l.Balance(ctx, acct)
			if bal.Balance != 1_000_000-e.Amount || bal.Held != 0 {
				t.Errorf("balance %+v after a debit of %s", bal, e.Amount)
			}
		}
	}
	if captures != 1 {
		t.Fatalf("journal %+v, want one capture", j)
	}
	if rep, err := l.AuditAccount(ctx, acct); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("audit: %v %v", err, rep.Problems)
	}
}
