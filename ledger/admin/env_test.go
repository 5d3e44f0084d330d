package admin_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

// testToken is substituted for $TOKEN in case files; no response or log
// line may ever contain it.
const testToken = "test-admin-token-5f1c2a9e0b7d"

var (
	ledgerTime = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	adminTime  = time.Date(2026, 12, 5, 8, 30, 0, 0, time.UTC)
)

// syncBuffer collects log output from concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	ctx    context.Context
	l      *ledger.Ledger
	rdb    *redis.Client
	srv    *httptest.Server
	client *admin.Client
	logs   *syncBuffer
	// secrets must appear in no response body and no log line; the check
	// runs when the test ends.
	secrets []string
}

// newEnv serves the admin API over a real ledger on real Redis, with a
// 5.5% (min $0.80) fee and one seeded account, acct_1, holding $10.
func newEnv(t *testing.T) *env {
	t.Helper()
	rdb := redistest.Client(t)
	l, err := ledger.New(rdb, ledger.Options{Prefix: redistest.Prefix(t), Clock: func() time.Time { return ledgerTime },
		Fee: ledger.FeePolicy{BasisPoints: 550, Min: 800_000}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := l.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.CreateAccount(ctx, "acct_1"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.TopUp(ctx, ledger.TopUpRequest{Account: "acct_1", PaymentID: "seed", Amount: 10 * money.MicrosPerDollar}); err != nil {
		t.Fatal(err)
	}
	e := &env{ctx: ctx, l: l, rdb: rdb, logs: &syncBuffer{}, secrets: []string{testToken}}
	h, err := admin.New(l, admin.Options{Token: testToken, Clock: func() time.Time { return adminTime }, MaxBodyBytes: 1024,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(h)
	e.client = &admin.Client{BaseURL: e.srv.URL, Token: testToken, HTTP: e.srv.Client()}
	t.Cleanup(func() {
		e.srv.Close()
		logs := e.logs.String()
		if !strings.Contains(logs, `"msg":"admin request"`) {
			t.Errorf("no request was logged; the secret check below would prove nothing:\n%s", logs)
		}
		for _, s := range e.secrets {
			if strings.Contains(logs, s) {
				t.Errorf("log output contains secret %q:\n%s", s, logs)
			}
		}
		for _, s := range []string{"Authorization", "Bearer"} {
			if strings.Contains(logs, s) {
				t.Errorf("log output mentions %q:\n%s", s, logs)
			}
		}
	})
	return e
}

func usd(t testing.TB, s string) money.Micros {
	t.Helper()
	m, err := money.ParseUSD(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
