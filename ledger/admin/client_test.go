package admin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

// Every client method against the real ledger, checking typed results and
// that errors keep the server's code and still match the ledger's errors.
func TestClientEndpoints(t *testing.T) {
	e := newEnv(t)
	c := e.client
	ctx := e.ctx

	if r, err := c.CreateAccount(ctx, "acct_2"); err != nil || !r.Created || r.Account != "acct_2" {
		t.Fatalf("CreateAccount: %+v %v", r, err)
	}
	if r, err := c.CreateAccount(ctx, "acct_2"); err != nil || r.Created {
		t.Fatalf("CreateAccount again: %+v %v", r, err)
	}
	if ids, err := c.Accounts(ctx); err != nil || strings.Join(ids, ",") != "acct_1,acct_2" {
		t.Fatalf("Accounts: %v %v", ids, err)
	}
	rc, err := c.TopUp(ctx, "acct_2", "pay-1", usd(t, "20.123456"))
	want := admin.Receipt{Account: "acct_2", PaymentID: "pay-1", Amount: usd(t, "20.123456"), Fee: usd(t, "1.106791"),
		TotalCharged: usd(t, "21.230247"), BalanceAfter: usd(t, "20.123456")}
	if err != nil || rc != want {
		t.Fatalf("TopUp = %+v, %v; want %+v", rc, err, want)
	}
	want.Replayed = true
	if rc, err := c.TopUp(ctx, "acct_2", "pay-1", usd(t, "20.123456")); err != nil || rc != want {
		t.Fatalf("replayed TopUp = %+v, %v; want %+v", rc, err, want)
	}
	adj, err := c.Adjust(ctx, "acct_2", "adj-1", usd(t, "-0.123456"), "promo reversal")
	if err != nil || adj != (admin.Adjustment{Account: "acct_2", AdjustmentID: "adj-1", Amount: usd(t, "-0.123456"), BalanceAfter: usd(t, "20")}) {
		t.Fatalf("Adjust: %+v %v", adj, err)
	}
	if b, err := c.Balance(ctx, "acct_2"); err != nil || b != (admin.Balance{Account: "acct_2", Balance: usd(t, "20"), Available: usd(t, "20")}) {
		t.Fatalf("Balance: %+v %v", b, err)
	}
	p, err := c.Journal(ctx, "acct_2", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, en := range p.Entries {
		types = append(types, en.Type)
	}
	if strings.Join(types, ",") != "open,topup,fee,adjust" || p.Next != "" {
		t.Fatalf("journal types %v next %q", types, p.Next)
	}
	// Admin stamps top-ups and adjustments with its own Clock; account
	// creation went straight to the ledger's.
	if !p.Entries[0].Time.Equal(ledgerTime) || !p.Entries[1].Time.Equal(adminTime) || !p.Entries[3].Time.Equal(adminTime) {
		t.Fatalf("journal times: %v %v %v", p.Entries[0].Time, p.Entries[1].Time, p.Entries[3].Time)
	}
	if a := p.Entries[3]; a.Reason != "promo reversal" || a.Ref != "adj-1" || a.Amount != usd(t, "-0.123456") || a.Balance != usd(t, "20") {
		t.Fatalf("adjust entry: %+v", a)
	}
	if rep, err := c.Audit(ctx); err != nil || !rep.OK || len(rep.Accounts) != 2 {
		t.Fatalf("Audit: %+v %v", rep, err)
	}

	kc, err := c.CreateKey(ctx, "acct_2", "")
	if err != nil {
		t.Fatal(err)
	}
	e.secrets = append(e.secrets, kc.Key)
	if !strings.HasPrefix(kc.Key, admin.GeneratedKeyPrefix) || len(kc.Key) != len(admin.GeneratedKeyPrefix)+43 || kc.KeyHash != ledger.HashKey(kc.Key) {
		t.Fatalf("generated key %q hash %q", kc.Key, kc.KeyHash)
	}
	// The ext_proc side finds the account from the raw key by hashing it.
	if acct, err := e.l.AccountForKey(ctx, ledger.HashKey(kc.Key)); err != nil || acct != "acct_2" {
		t.Fatalf("AccountForKey: %q %v", acct, err)
	}
	kc2, err := c.CreateKey(ctx, "acct_2", "")
	if err != nil || kc2.Key == kc.Key {
		t.Fatalf("second generated key %v equals the first", err)
	}
	e.secrets = append(e.secrets, kc2.Key)
	if ki, err := c.LookupKey(ctx, kc.KeyHash); err != nil || ki != (admin.KeyInfo{KeyHash: kc.KeyHash, Account: "acct_2"}) {
		t.Fatalf("LookupKey: %+v %v", ki, err)
	}
	if err := c.RevokeKey(ctx, kc.KeyHash); err != nil {
		t.Fatal(err)
	}
	if _, err := e.l.AccountForKey(ctx, kc.KeyHash); !errors.Is(err, ledger.ErrNoKey) {
		t.Fatalf("revoked key still resolves: %v", err)
	}

	errCases := []struct {
		name   string
		call   func() error
		status int
		code   string
		is     error
	}{
		{"no account", func() error { _, err := c.Balance(ctx, "ghost"); return err }, 404, admin.CodeNoAccount, ledger.ErrNoAccount},
		{"payment id reused", func() error { _, err := c.TopUp(ctx, "acct_2", "pay-1", 1); return err }, 409, admin.CodeIDConflict, ledger.ErrIDConflict},
		{"non-positive top-up", func() error { _, err := c.TopUp(ctx, "acct_2", "pay-2", -1); return err }, 400, admin.CodeInvalidAmount, money.ErrInvalidAmount},
		{"missing payment id", func() error { _, err := c.TopUp(ctx, "acct_2", "", 1); return err }, 400, admin.CodeInvalidArgument, ledger.ErrInvalid},
		{"revoked key", func() error { return c.RevokeKey(ctx, kc.KeyHash) }, 404, admin.CodeNoKey, ledger.ErrNoKey},
		{"raw key as hash", func() error { return c.RevokeKey(ctx, kc2.Key) }, 400, admin.CodeInvalidArgument, ledger.ErrInvalid},
		{"bad journal cursor", func() error { _, err := c.Journal(ctx, "acct_2", "x", 0); return err }, 400, admin.CodeInvalidArgument, ledger.ErrInvalid},
		{"wrong token", func() error {
			_, err := (&admin.Client{BaseURL: e.srv.URL, Token: "wrong", HTTP: e.srv.Client()}).Accounts(ctx)
			return err
		}, 401, admin.CodeUnauthorized, admin.ErrUnauthorized},
		{"no token", func() error {
			_, err := (&admin.Client{BaseURL: e.srv.URL + "/", HTTP: e.srv.Client()}).Accounts(ctx)
			return err
		}, 401, admin.CodeUnauthorized, admin.ErrUnauthorized},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var ae *admin.Error
			if !errors.As(err, &ae) || ae.Status != tc.status || ae.Code != tc.code || ae.Message == "" {
				t.Fatalf("err = %#v, want status %d code %s", err, tc.status, tc.code)
			}
			if !errors.Is(err, tc.is) || !admin.IsCode(err, tc.code) {
				t.Fatalf("errors.Is(%v, %v) = false", err, tc.is)
			}
		})
	}
	e.noSecretsIn(t, e.logs.String())
}

func (e *env) noSecretsIn(t *testing.T, s string) {
	t.Helper()
	for _, sec := range e.secrets {
		if sec != "" && strings.Contains(s, sec) {
			t.Fatalf("secret %q found in %s", sec, s)
		}
	}
}

// The generated key is returned once, in the create response, and nowhere
// else: not in the lookup, not in the journal, not in Redis, not in logs.
func TestGeneratedKeyShownOnce(t *testing.T) {
	e := newEnv(t)
	kc, err := e.client.CreateKey(e.ctx, "acct_1", "")
	if err != nil {
		t.Fatal(err)
	}
	e.secrets = append(e.secrets, kc.Key)
	ki, err := e.client.LookupKey(e.ctx, kc.KeyHash)
	if err != nil || ki.Account != "acct_1" {
		t.Fatalf("lookup: %+v %v", ki, err)
	}
	raw := e.get(t, "/v1/keys/"+kc.KeyHash)
	e.noSecretsIn(t, raw)
	e.noSecretsIn(t, e.get(t, "/v1/accounts/acct_1/journal"))
	keys, err := e.rdb.Keys(e.ctx, "*"+kc.KeyHash+"*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("want exactly one Redis key naming the hash, got %v %v", keys, err)
	}
	if v, err := e.rdb.Get(e.ctx, keys[0]).Result(); err != nil || v != "acct_1" {
		t.Fatalf("stored value %q %v, want the account id only", v, err)
	}
	// A hand-supplied key comes back only as its hash.
	const supplied = "sk-live-supplied-0123456789abcdefghij"
	e.secrets = append(e.secrets, supplied)
	kc2, err := e.client.CreateKey(e.ctx, "acct_1", supplied)
	if err != nil || kc2.Key != "" || kc2.KeyHash != ledger.HashKey(supplied) {
		t.Fatalf("supplied key: %+v %v", kc2, err)
	}
}

func (e *env) get(t *testing.T, path string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return string(b)
}

// Paging with `next` visits every entry exactly once, in order, and agrees
// with the ledger read directly.
func TestJournalPaging(t *testing.T) {
	e := newEnv(t)
	for i := range 4 {
		if _, err := e.client.TopUp(e.ctx, "acct_1", fmt.Sprintf("pay-%d", i), money.Micros(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	direct, _, err := e.l.Journal(e.ctx, "acct_1", "", 1000)
	if err != nil || len(direct) != 11 { // open + seed topup/fee + 4 × (topup, fee)
		t.Fatalf("direct journal: %d entries, %v", len(direct), err)
	}
	var got []admin.JournalEntry
	after, pages := "", 0
	for {
		p, err := e.client.Journal(e.ctx, "acct_1", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		got = append(got, p.Entries...)
		if p.Next == "" {
			break
		}
		if len(p.Entries) != 3 || p.Next != p.Entries[2].ID || pages > 10 {
			t.Fatalf("page %d: %d entries, next %q", pages, len(p.Entries), p.Next)
		}
		after = p.Next
	}
	if pages != 4 || len(got) != len(direct) {
		t.Fatalf("%d pages, %d entries; want 4 pages, %d entries", pages, len(got), len(direct))
	}
	for i, d := range direct {
		g := got[i]
		if g.ID != d.ID || g.Seq != d.Seq || g.Type != d.Type || g.Amount != d.Amount || g.Balance != d.Balance || g.Ref != d.Ref {
			t.Fatalf("entry %d: %+v, ledger has %+v", i, g, d)
		}
	}
	// Amounts travel as six-decimal strings, never JSON numbers.
	raw := e.get(t, "/v1/accounts/acct_1/journal?limit=2")
	if !strings.Contains(raw, `"amount":"0.000000"`) || !strings.Contains(raw, `"amount":"10.000000"`) {
		t.Fatalf("amounts not decimal strings: %s", raw)
	}
}

// A held amount shows in the balance and blocks a debit adjustment, whose
// 402 carries the numbers, also through the client as the ledger's error.
func TestAdjustBelowHeld(t *testing.T) {
	e := newEnv(t)
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "acct_1", RequestID: "req-1", Estimate: usd(t, "4"), TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if b, err := e.client.Balance(e.ctx, "acct_1"); err != nil || b.Held != usd(t, "4") || b.Available != usd(t, "6") {
		t.Fatalf("balance with a hold: %+v %v", b, err)
	}
	_, err := e.client.Adjust(e.ctx, "acct_1", "adj-1", usd(t, "-6.000001"), "refund")
	var ins *ledger.InsufficientFundsError
	var ae *admin.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusPaymentRequired || ae.Details == nil {
		t.Fatalf("want a 402 with details, got %v", err)
	}
	if !errors.As(err, &ins) || ins.Balance != usd(t, "10") || ins.Held != usd(t, "4") || ins.Available != usd(t, "6") || ins.Requested != usd(t, "6.000001") {
		t.Fatalf("details: %+v", ins)
	}
	if _, err := e.client.Adjust(e.ctx, "acct_1", "adj-2", usd(t, "-6"), "refund"); err != nil {
		t.Fatalf("debit down to exactly the held amount: %v", err)
	}
}

// A ledger whose hash disagrees with its journal makes the audit answer 409
// with the report; the client returns it as a report, not an error.
func TestAuditFailure(t *testing.T) {
	e := newEnv(t)
	if err := e.rdb.HIncrBy(e.ctx, e.l.AccountKeys("acct_1")[0], "bal", 1).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := e.client.Audit(e.ctx)
	if err != nil || rep.OK || len(rep.Accounts) != 1 || len(rep.Accounts[0].Problems) == 0 {
		t.Fatalf("audit of a corrupted ledger: %+v %v", rep, err)
	}
	if a := rep.Accounts[0]; a.Balance != usd(t, "10.000001") || a.JournalBalance != usd(t, "10") {
		t.Fatalf("audit numbers: %+v", a)
	}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/audit", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("status %d, want 409", resp.StatusCode)
	}
}

// With Redis down every endpoint answers 503 with Retry-After, and the
// client error still matches ledger.ErrUnavailable.
func TestRedisUnavailable(t *testing.T) {
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port), MaxRetries: -1, DialerRetries: 1, DialTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	l, err := ledger.New(rdb, ledger.Options{Prefix: "down"})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	h, err := admin.New(l, admin.Options{Token: testToken, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	c := &admin.Client{BaseURL: srv.URL, Token: testToken, HTTP: srv.Client()}
	ctx := context.Background()
	hash := ledger.HashKey("k")
	calls := map[string]func() error{
		"create":  func() error { _, err := c.CreateAccount(ctx, "a"); return err },
		"list":    func() error { _, err := c.Accounts(ctx); return err },
		"balance": func() error { _, err := c.Balance(ctx, "a"); return err },
		"topup":   func() error { _, err := c.TopUp(ctx, "a", "p", 1); return err },
		"adjust":  func() error { _, err := c.Adjust(ctx, "a", "x", 1, "r"); return err },
		"journal": func() error { _, err := c.Journal(ctx, "a", "", 0); return err },
		"audit":   func() error { _, err := c.Audit(ctx); return err },
		"key":     func() error { _, err := c.CreateKey(ctx, "a", ""); return err },
		"lookup":  func() error { _, err := c.LookupKey(ctx, hash); return err },
		"revoke":  func() error { return c.RevokeKey(ctx, hash) },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			err := call()
			var ae *admin.Error
			if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || ae.Code != admin.CodeUnavailable || !errors.Is(err, ledger.ErrUnavailable) {
				t.Fatalf("err = %v, want 503 unavailable", err)
			}
		})
	}
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/accounts", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	// The cause is logged server-side (and only there).
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "redis unavailable") || strings.Contains(logs.String(), testToken) {
		t.Fatalf("logs: %s", logs.String())
	}
}

func TestNewRequiresToken(t *testing.T) {
	l, err := ledger.New(redistest.Client(t), ledger.Options{Prefix: redistest.Prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.New(l, admin.Options{}); !errors.Is(err, admin.ErrNoToken) {
		t.Fatalf("New without a token: %v, want ErrNoToken", err)
	}
	if _, err := admin.New(nil, admin.Options{Token: "t"}); err == nil {
		t.Fatal("New with a nil ledger succeeded")
	}
	// Insecure: no header needed.
	h, err := admin.New(l, admin.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	if _, err := (&admin.Client{BaseURL: srv.URL, HTTP: srv.Client()}).Accounts(context.Background()); err != nil {
		t.Fatalf("insecure mode without a token: %v", err)
	}
	// Insecure with a token still enforces it.
	h, err = admin.New(l, admin.Options{Insecure: true, Token: testToken})
	if err != nil {
		t.Fatal(err)
	}
	srv2 := httptest.NewServer(h)
	defer srv2.Close()
	if _, err := (&admin.Client{BaseURL: srv2.URL, HTTP: srv2.Client()}).Accounts(context.Background()); !errors.Is(err, admin.ErrUnauthorized) {
		t.Fatalf("insecure mode with a token, no header: %v", err)
	}
}

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t) // MaxBodyBytes 1024
	reason := strings.Repeat("x", 2000)
	_, err := e.client.Adjust(e.ctx, "acct_1", "adj-1", 1, reason)
	var ae *admin.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusRequestEntityTooLarge || ae.Code != admin.CodeBodyTooLarge {
		t.Fatalf("err = %v, want 413", err)
	}
	if b, _ := e.client.Balance(e.ctx, "acct_1"); b.Balance != usd(t, "10") {
		t.Fatalf("oversized request moved money: %+v", b)
	}
}

// A non-JSON error from something in front of the API (a proxy) still
// becomes an *Error with the status.
func TestClientNonJSONError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "<html>bad gateway</html>", http.StatusBadGateway)
	}))
	defer srv.Close()
	_, err := (&admin.Client{BaseURL: srv.URL, HTTP: srv.Client()}).Balance(context.Background(), "a")
	var ae *admin.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusBadGateway || ae.Code != "http_502" || !strings.Contains(ae.Message, "bad gateway") {
		t.Fatalf("err = %#v", err)
	}
}
