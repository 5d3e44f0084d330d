package ledger_test

import (
	"errors"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
)

// TestCharge walks one account through Charge (a request admitted without a
// hold while Redis was down) and every state its request id can meet. Steps
// run in order on shared state; each states what it returns, the account
// afterwards and the journal entry it adds, if any.
func TestCharge(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	pico := func(s string) money.Pico { return money.Pico(usd(t, s)) * money.PicoPerMicro }
	charge := func(id string, cost money.Pico) func() (any, error) {
		return func() (any, error) {
			return e.l.Charge(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: id, Cost: cost, Provider: "openai",
				Model: "gpt-4o-mini", PriceRow: "openai/gpt-4o-mini@2024-07-18", Usage: `{"input_tokens":1}`})
		}
	}
	reserve := func(id, est string) func() (any, error) {
		return func() (any, error) {
			return e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: id, Estimate: usd(t, est), TTL: time.Minute})
		}
	}
	tests := []struct {
		name    string
		call    func() (any, error)
		wantErr error
		want    any    // compared when set
		bal     string // balance afterwards
		held    string
		carry   int64
		entry   *ledger.Entry // the new journal entry's type, amount and flags; nil = none
	}{
		{name: "an unrelated hold stays held", call: reserve("other", "0.2"), bal: "1", held: "0.2",
			entry: &ledger.Entry{Type: "reserve", Amount: usd(t, "0.2")}},
		{name: "charge debits the exact cost and carries the remainder", call: charge("fo-1", pico("0.3")+600_000),
			want: ledger.CaptureResult{Account: "a", RequestID: "fo-1", Debited: usd(t, "0.3"), CarryPico: 600_000,
				Balance: usd(t, "0.7"), Held: usd(t, "0.2")},
			bal: "0.7", held: "0.2", carry: 600_000,
			entry: &ledger.Entry{Type: "capture", Amount: usd(t, "0.3"), CostPico: int64(pico("0.3") + 600_000), Unreserved: true}},
		{name: "the carry passes one µUSD", call: charge("fo-2", 400_000),
			want: ledger.CaptureResult{Account: "a", RequestID: "fo-2", Debited: 1, Balance: usd(t, "0.699999"), Held: usd(t, "0.2")},
			bal:  "0.699999", held: "0.2", entry: &ledger.Entry{Type: "capture", Amount: 1, CostPico: 400_000, Unreserved: true}},
		{name: "a replay returns the first result and moves nothing", call: charge("fo-1", pico("0.3")+600_000),
			want: ledger.CaptureResult{Account: "a", RequestID: "fo-1", Debited: usd(t, "0.3"), CarryPico: 600_000,
				Balance: usd(t, "0.7"), Held: usd(t, "0.2"), Replayed: true},
			bal: "0.699999", held: "0.2"},
		{name: "a replay with another cost conflicts", call: charge("fo-1", pico("0.3")), wantErr: ledger.ErrIDConflict,
			bal: "0.699999", held: "0.2"},
		{name: "capture of a charged id replays it", call: func() (any, error) {
			return e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: "fo-2", Cost: 400_000})
		}, want: ledger.CaptureResult{Account: "a", RequestID: "fo-2", Debited: 1, Balance: usd(t, "0.699999"), Held: usd(t, "0.2"), Replayed: true},
			bal: "0.699999", held: "0.2"},
		{name: "release of a charged id is refused", call: func() (any, error) { return e.l.Release(e.ctx, "a", "fo-2", "x") },
			wantErr: ledger.ErrHoldClosed, bal: "0.699999", held: "0.2"},
		{name: "a reserve that lands after the charge opens no hold", call: reserve("fo-1", "0.5"), wantErr: ledger.ErrIDConflict,
			bal: "0.699999", held: "0.2"},
		{name: "nothing held, so the balance may go negative", call: charge("fo-3", pico("0.9")),
			want: ledger.CaptureResult{Account: "a", RequestID: "fo-3", Debited: usd(t, "0.9"), Balance: usd(t, "-0.200001"), Held: usd(t, "0.2")},
			bal:  "-0.200001", held: "0.2", entry: &ledger.Entry{Type: "capture", Amount: usd(t, "0.9"), CostPico: int64(pico("0.9")), Unreserved: true}},
		{name: "a top-up to cover what follows", call: func() (any, error) {
			return e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "a", PaymentID: "pay-2", Amount: usd(t, "2")})
		}, bal: "1.799999", held: "0.2", entry: &ledger.Entry{Type: "fee"}},
		{name: "a reserve whose reply was lost landed", call: reserve("landed", "0.5"), bal: "1.799999", held: "0.7",
			entry: &ledger.Entry{Type: "reserve", Amount: usd(t, "0.5")}},
		{name: "charge of an id with an open hold captures that hold", call: charge("landed", pico("0.1")),
			want: ledger.CaptureResult{Account: "a", RequestID: "landed", Debited: usd(t, "0.1"), Balance: usd(t, "1.699999"), Held: usd(t, "0.2")},
			bal:  "1.699999", held: "0.2", entry: &ledger.Entry{Type: "capture", Amount: usd(t, "0.1"), CostPico: int64(pico("0.1")), HoldAmount: usd(t, "0.5")}},
		{name: "and replays as that capture", call: charge("landed", pico("0.1")),
			want: ledger.CaptureResult{Account: "a", RequestID: "landed", Debited: usd(t, "0.1"), Balance: usd(t, "1.699999"), Held: usd(t, "0.2"), Replayed: true},
			bal:  "1.699999", held: "0.2"},
		{name: "a released id is closed", call: func() (any, error) {
			if _, err := reserve("rel", "0.1")(); err != nil {
				return nil, err
			}
			if _, err := e.l.Release(e.ctx, "a", "rel", "upstream 500"); err != nil {
				return nil, err
			}
			return charge("rel", 1)()
		}, wantErr: ledger.ErrHoldClosed, bal: "1.699999", held: "0.2", entry: &ledger.Entry{Type: "release", Amount: usd(t, "0.1")}},
		{name: "negative cost", call: charge("fo-neg", -1), wantErr: ledger.ErrInvalid, bal: "1.699999", held: "0.2"},
		{name: "bad request id", call: charge("{x}", 1), wantErr: ledger.ErrInvalid, bal: "1.699999", held: "0.2"},
		{name: "no such account", call: func() (any, error) {
			return e.l.Charge(e.ctx, ledger.CaptureRequest{Account: "nobody", RequestID: "fo-x", Cost: 1})
		}, wantErr: ledger.ErrNoAccount, bal: "1.699999", held: "0.2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := journalOf(t, e.l, "a")
			got, err := tc.call()
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			case tc.wantErr == nil && err != nil:
				t.Fatal(err)
			case tc.want != nil && got != tc.want:
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
			b := e.balance(t, "a")
			if b.Balance != usd(t, tc.bal) || b.Held != usd(t, tc.held) || b.CarryPico != tc.carry {
				t.Fatalf("account %+v, want balance %s held %s carry %d", b, tc.bal, tc.held, tc.carry)
			}
			after := journalOf(t, e.l, "a")
			if tc.entry == nil {
				if len(after) != len(before) {
					t.Fatalf("journal grew by %d entries, want none", len(after)-len(before))
				}
				return
			}
			last := after[len(after)-1]
			w := tc.entry
			if last.Type != w.Type || (w.Type != "fee" && (last.Amount != w.Amount || last.CostPico != w.CostPico ||
				last.Unreserved != w.Unreserved || last.HoldAmount != w.HoldAmount || last.Late)) {
				t.Fatalf("journal entry %+v, want %+v", last, *w)
			}
		})
	}
	if _, probs := checkJournal(journalOf(t, e.l, "a"), e.balance(t, "a"), false); len(probs) > 0 {
		t.Errorf("journal invariants: %v", probs)
	}
	e.auditClean(t)
}

// TestChargeAfterExpiryIsLate: a reserve that landed unseen and expired
// before the charge is captured late, not charged beside it.
func TestChargeAfterExpiryIsLate(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: "r", Estimate: usd(t, "0.5"), TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * time.Second)
	if _, err := e.l.Sweep(e.ctx); err != nil {
		t.Fatal(err)
	}
	if b := e.balance(t, "a"); b.Held != 0 {
		t.Fatalf("hold not expired: %+v", b)
	}
	r, err := e.l.Charge(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: "r", Cost: money.Pico(usd(t, "0.25")) * money.PicoPerMicro})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Late || r.Debited != usd(t, "0.25") || r.Balance != usd(t, "0.75") {
		t.Fatalf("charge after expiry: %+v, want a late capture of 0.25", r)
	}
	j := journalOf(t, e.l, "a")
	if last := j[len(j)-1]; last.Type != "capture" || !last.Late || last.Unreserved {
		t.Fatalf("last entry %+v, want a late, reserved capture", last)
	}
	if _, probs := checkJournal(j, e.balance(t, "a"), true); len(probs) > 0 {
		t.Errorf("journal invariants: %v", probs)
	}
	e.auditClean(t)
}

// TestChargeLostReply: the reply of charge.lua is lost and go-redis sends
// it again; the retry must return the first result and debit once. A second
// Charge from the caller (a spool replay) is a replay too.
func TestChargeLostReply(t *testing.T) {
	e, proxy := newLossyEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	req := ledger.CaptureRequest{Account: "a", RequestID: "fo-1", Cost: money.Pico(usd(t, "0.4"))*money.PicoPerMicro + 250_000}
	want := ledger.CaptureResult{Account: "a", RequestID: "fo-1", Debited: usd(t, "0.4"), CarryPico: 250_000,
		Balance: usd(t, "0.6"), Replayed: true}
	d0, s0 := proxy.Counts()
	proxy.Arm(1)
	got, err := e.l.Charge(e.ctx, req)
	if err != nil {
		t.Fatalf("retried charge failed: %v", err)
	}
	if d1, s1 := proxy.Counts(); d1-d0 != 1 || s1-s0 != 2 {
		t.Fatalf("proxy dropped %d replies and saw %d script calls; want 1 drop and 1 retry", d1-d0, s1-s0)
	}
	if got != want {
		t.Fatalf("retry returned %+v\nwant the first result %+v", got, want)
	}
	again, err := e.l.Charge(e.ctx, req)
	if err != nil || again != want {
		t.Fatalf("second charge: %+v %v, want %+v", again, err, want)
	}
	b := e.balance(t, "a")
	if b.Balance != usd(t, "0.6") || b.CarryPico != 250_000 || b.Held != 0 {
		t.Fatalf("account %+v: money moved more than once", b)
	}
	j := journalOf(t, e.l, "a")
	n := 0
	for _, en := range j {
		if en.Type == "capture" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d capture entries, want 1", n)
	}
	if _, probs := checkJournal(j, b, true); len(probs) > 0 {
		t.Errorf("journal invariants: %v", probs)
	}
	e.auditClean(t)
}
