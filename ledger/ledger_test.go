package ledger_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

// clock is an injected, manually advanced time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)} }
func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	l   *ledger.Ledger
	rdb *redis.Client
	clk *clock
	ctx context.Context
}

func newEnv(t *testing.T, fee ledger.FeePolicy) *env {
	t.Helper()
	rdb := redistest.Client(t)
	clk := newClock()
	l, err := ledger.New(rdb, ledger.Options{Prefix: redistest.Prefix(t), Clock: clk.Now, Fee: fee})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &env{l: l, rdb: rdb, clk: clk, ctx: context.Background()}
}

func usd(t testing.TB, s string) money.Micros {
	t.Helper()
	m, err := money.ParseUSD(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *env) account(t *testing.T, id, funds string) {
	t.Helper()
	if _, err := e.l.CreateAccount(e.ctx, id); err != nil {
		t.Fatal(err)
	}
	if funds != "" {
		if _, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: id, PaymentID: "seed-" + id, Amount: usd(t, funds)}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) balance(t *testing.T, id string) ledger.Balance {
	t.Helper()
	b, err := e.l.Balance(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) auditClean(t *testing.T) {
	t.Helper()
	rep, ok, err := e.l.Audit(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("audit found problems: %+v", rep)
	}
}

func TestCreateAccountIdempotent(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	created, err := e.l.CreateAccount(e.ctx, "acct_1")
	if err != nil || !created {
		t.Fatalf("first create: %v %v", created, err)
	}
	created, err = e.l.CreateAccount(e.ctx, "acct_1")
	if err != nil || created {
		t.Fatalf("second create must be a no-op: %v %v", created, err)
	}
	if b := e.balance(t, "acct_1"); b.Balance != 0 || b.Held != 0 {
		t.Fatalf("new account not empty: %+v", b)
	}
	for _, bad := range []string{"", "{x}", "has space", "-lead", string(make([]byte, 300))} {
		if _, err := e.l.CreateAccount(e.ctx, bad); !errors.Is(err, ledger.ErrInvalid) {
			t.Errorf("CreateAccount(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := e.l.Balance(e.ctx, "nobody"); !errors.Is(err, ledger.ErrNoAccount) {
		t.Fatalf("balance of missing account: %v", err)
	}
	e.auditClean(t)
}

func TestFeePolicy(t *testing.T) {
	p := ledger.FeePolicy{BasisPoints: 550, Min: 800_000}
	for _, tc := range []struct{ amount, fee string }{
		{"10", "0.800000"},        // 5.5% = 0.55 < min
		{"14.545454", "0.800000"}, // 0.79999997 -> ceil 0.800000
		{"100", "5.500000"},
		{"100.000001", "5.500001"}, // 5.50000005 rounds up
		{"1000000", "55000.000000"},
	} {
		if got := p.Fee(usd(t, tc.amount)); got != usd(t, tc.fee) {
			t.Errorf("Fee(%s) = %s, want %s", tc.amount, got, tc.fee)
		}
	}
	// No overflow near the top of the exact range.
	big := money.Micros(money.MaxExactLua)
	if got := (ledger.FeePolicy{BasisPoints: 10000}).Fee(big); got != big {
		t.Errorf("100%% fee of max = %s", got)
	}
	if err := (ledger.FeePolicy{BasisPoints: -1, Min: -1}).Validate(); err == nil {
		t.Error("invalid policy accepted")
	}
}

func TestTopUp(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{BasisPoints: 550, Min: 800_000})
	e.account(t, "a", "")
	tests := []struct {
		name      string
		payment   string
		amount    string
		want      ledger.Receipt
		wantErr   error
		wantBal   string
		wantEntry int // journal length after
	}{
		{name: "credits 100% and fee on top", payment: "pay-1", amount: "100",
			want:    ledger.Receipt{Amount: usd(t, "100"), Fee: usd(t, "5.5"), TotalCharged: usd(t, "105.5"), BalanceAfter: usd(t, "100")},
			wantBal: "100", wantEntry: 3},
		{name: "minimum fee", payment: "pay-2", amount: "5",
			want:    ledger.Receipt{Amount: usd(t, "5"), Fee: usd(t, "0.8"), TotalCharged: usd(t, "5.8"), BalanceAfter: usd(t, "105")},
			wantBal: "105", wantEntry: 5},
		{name: "replay returns first receipt", payment: "pay-1", amount: "100",
			want:    ledger.Receipt{Amount: usd(t, "100"), Fee: usd(t, "5.5"), TotalCharged: usd(t, "105.5"), BalanceAfter: usd(t, "100"), Replayed: true},
			wantBal: "105", wantEntry: 5},
		{name: "same id different amount", payment: "pay-1", amount: "7", wantErr: ledger.ErrIDConflict, wantBal: "105", wantEntry: 5},
		{name: "zero amount", payment: "pay-3", amount: "0", wantErr: ledger.ErrInvalid, wantBal: "105", wantEntry: 5},
		{name: "negative amount", payment: "pay-4", amount: "-1", wantErr: ledger.ErrInvalid, wantBal: "105", wantEntry: 5},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "a", PaymentID: tc.payment, Amount: usd(t, tc.amount)})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil {
				tc.want.Account, tc.want.PaymentID = "a", tc.payment
				if got != tc.want {
					t.Fatalf("receipt = %+v, want %+v", got, tc.want)
				}
			}
			if b := e.balance(t, "a"); b.Balance != usd(t, tc.wantBal) {
				t.Fatalf("balance = %s, want %s", b.Balance, tc.wantBal)
			}
			j, _, err := e.l.Journal(e.ctx, "a", "", 100)
			if err != nil || len(j) != tc.wantEntry {
				t.Fatalf("journal has %d entries (%v), want %d", len(j), err, tc.wantEntry)
			}
		})
	}
	if _, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "ghost", PaymentID: "p", Amount: 1}); !errors.Is(err, ledger.ErrNoAccount) {
		t.Fatalf("top-up of missing account: %v", err)
	}
	j, _, _ := e.l.Journal(e.ctx, "a", "", 100)
	if j[1].Type != "topup" || j[2].Type != "fee" || j[2].Amount != usd(t, "5.5") || j[2].Balance != usd(t, "100") {
		t.Fatalf("fee must be its own journal line that leaves the balance alone: %+v", j[1:3])
	}
	e.auditClean(t)
}

func TestReserve(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	res := func(id, est string) (ledger.Hold, error) {
		return e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: id, Estimate: usd(t, est), TTL: time.Minute, Provider: "openai", Model: "gpt-4o"})
	}
	h, err := res("r1", "0.6")
	if err != nil || h.Amount != usd(t, "0.6") || h.Held != usd(t, "0.6") || h.Balance != usd(t, "1") || h.Replayed {
		t.Fatalf("reserve: %+v %v", h, err)
	}
	if !h.Deadline.Equal(e.clk.Now().Add(time.Minute)) {
		t.Fatalf("deadline %v", h.Deadline)
	}
	// available is 0.4 now: 0.5 is refused with the numbers to explain why.
	_, err = res("r2", "0.5")
	var ins *ledger.InsufficientFundsError
	if !errors.As(err, &ins) || ins.Balance != usd(t, "1") || ins.Held != usd(t, "0.6") || ins.Available != usd(t, "0.4") || ins.Requested != usd(t, "0.5") {
		t.Fatalf("want insufficient funds with details, got %v", err)
	}
	// exactly the available amount fits.
	if _, err := res("r3", "0.4"); err != nil {
		t.Fatal(err)
	}
	// replay returns the first result even though nothing is available now.
	h2, err := res("r1", "0.6")
	if err != nil || !h2.Replayed || h2.Amount != h.Amount || h2.Held != h.Held {
		t.Fatalf("replay: %+v %v", h2, err)
	}
	if _, err := res("r1", "0.1"); !errors.Is(err, ledger.ErrIDConflict) {
		t.Fatalf("same id, other estimate: %v", err)
	}
	if b := e.balance(t, "a"); b.Held != usd(t, "1") || b.Available != 0 {
		t.Fatalf("balance after reserves: %+v", b)
	}
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "ghost", RequestID: "x", Estimate: 1, TTL: time.Minute}); !errors.Is(err, ledger.ErrNoAccount) {
		t.Fatalf("reserve on missing account: %v", err)
	}
	e.auditClean(t)
}

func TestCaptureCarryAndOverdraftBound(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	capture := func(id string, cost money.Pico) (ledger.CaptureResult, error) {
		return e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: id, Cost: cost, Provider: "openai", Model: "gpt-4o-mini", PriceRow: "openai/gpt-4o-mini@2024-07-18", Usage: `{"input_tokens":1}`})
	}
	reserve := func(id, est string) {
		t.Helper()
		if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: id, Estimate: usd(t, est), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	// Three calls of 0.4 µUSD each: 0, 0, then 1 µUSD (carry passes one).
	var debited money.Micros
	for i, want := range []money.Micros{0, 0, 1} {
		id := string(rune('a'+i)) + "-req"
		reserve(id, "0.01")
		r, err := capture(id, 400_000)
		if err != nil {
			t.Fatal(err)
		}
		if r.Debited != want {
			t.Fatalf("call %d debited %d µUSD, want %d (carry %d)", i, r.Debited, want, r.CarryPico)
		}
		debited += r.Debited
	}
	if b := e.balance(t, "a"); b.CarryPico != 200_000 || b.Held != 0 || b.Balance != usd(t, "1")-debited {
		t.Fatalf("after carry: %+v", b)
	}
	// Replay: same result, nothing moves.
	r1, _ := capture("c-req", 400_000)
	if !r1.Replayed || r1.Debited != 1 {
		t.Fatalf("replay: %+v", r1)
	}
	if _, err := capture("c-req", 500_000); !errors.Is(err, ledger.ErrIDConflict) {
		t.Fatalf("capture replay with other cost: %v", err)
	}
	// A cost above its hold drives the balance negative by at most the excess.
	reserve("big", "0.999999") // all that is left
	r, err := capture("big", money.Pico(usd(t, "1.5"))*money.PicoPerMicro)
	if err != nil {
		t.Fatal(err)
	}
	excess := usd(t, "1.5") - usd(t, "0.999999")
	if r.Balance != -excess || r.Held != 0 {
		t.Fatalf("overdraft %s, want exactly the excess %s", r.Balance, -excess)
	}
	if _, err := capture("never", 1); !errors.Is(err, ledger.ErrNoHold) {
		t.Fatalf("capture without hold: %v", err)
	}
	// Release after capture is refused; capture after release is refused.
	if _, err := e.l.Release(e.ctx, "a", "big", "test"); !errors.Is(err, ledger.ErrHoldClosed) {
		t.Fatalf("release after capture: %v", err)
	}
	e.auditClean(t)
}

func TestReleaseAndExpiry(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "10")
	for _, id := range []string{"rel", "exp", "late", "live"} {
		ttl := time.Minute
		if id == "live" {
			ttl = time.Hour
		}
		if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: id, Estimate: usd(t, "1"), TTL: ttl}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := e.l.Release(e.ctx, "a", "rel", "upstream 500")
	if err != nil || r.Released != usd(t, "1") || r.Held != usd(t, "3") || r.Replayed {
		t.Fatalf("release: %+v %v", r, err)
	}
	r, err = e.l.Release(e.ctx, "a", "rel", "upstream 500")
	if err != nil || !r.Replayed || r.Released != usd(t, "1") {
		t.Fatalf("release replay: %+v %v", r, err)
	}
	if _, err := e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: "rel", Cost: 1}); !errors.Is(err, ledger.ErrHoldClosed) {
		t.Fatalf("capture after release: %v", err)
	}
	// Nothing is due yet.
	if n, err := e.l.Sweep(e.ctx); err != nil || n != 0 {
		t.Fatalf("early sweep expired %d (%v)", n, err)
	}
	e.clk.Advance(time.Minute + time.Second)
	if n, err := e.l.Sweep(e.ctx); err != nil || n != 2 {
		t.Fatalf("sweep expired %d (%v), want 2", n, err)
	}
	// Exactly once: a second sweep (or a second sidecar) finds nothing.
	e.clk.Advance(time.Minute)
	if n, err := e.l.Sweep(e.ctx); err != nil || n != 0 {
		t.Fatalf("second sweep expired %d (%v)", n, err)
	}
	if b := e.balance(t, "a"); b.Held != usd(t, "1") || b.Balance != usd(t, "10") {
		t.Fatalf("after expiry: %+v", b)
	}
	// Release after expiry changes nothing.
	r, err = e.l.Release(e.ctx, "a", "exp", "late release")
	if err != nil || r.Released != 0 || !r.Replayed {
		t.Fatalf("release after expiry: %+v %v", r, err)
	}
	// Late capture still charges the exact cost.
	c, err := e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: "late", Cost: money.Pico(usd(t, "0.25")) * money.PicoPerMicro})
	if err != nil || !c.Late || c.Debited != usd(t, "0.25") || c.Held != usd(t, "1") {
		t.Fatalf("late capture: %+v %v", c, err)
	}
	j, _, _ := e.l.Journal(e.ctx, "a", "", 100)
	types := map[string]int{}
	for _, x := range j {
		types[x.Type]++
	}
	if types["expire"] != 2 || types["release"] != 1 || types["capture"] != 1 {
		t.Fatalf("journal types %v", types)
	}
	e.auditClean(t)
}

func TestSweeperReachesIdleAccounts(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	// Many accounts, each with one hold and no further traffic.
	for i := 0; i < 20; i++ {
		id := "idle-" + string(rune('a'+i))
		e.account(t, id, "1")
		if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: id, RequestID: "r", Estimate: 5, TTL: time.Duration(i+1) * time.Second}); err != nil {
			t.Fatal(err)
		}
	}
	total := 0
	for step := 0; step < 30; step++ {
		e.clk.Advance(time.Second)
		n, err := e.l.Sweep(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		total += n
		// Every hold whose deadline passed is gone by now (the sweep runs on
		// every simulated second here; production bounds lateness by the lease).
		for i := 0; i < 20; i++ {
			id := "idle-" + string(rune('a'+i))
			if b := e.balance(t, id); time.Duration(step+1)*time.Second > time.Duration(i+1)*time.Second+15*time.Second && b.Held != 0 {
				t.Fatalf("step %d: %s still holds %s", step, id, b.Held)
			}
		}
	}
	if total != 20 {
		t.Fatalf("expired %d holds, want 20", total)
	}
	e.auditClean(t)
}

func TestAdjust(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "5")
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: "h", Estimate: usd(t, "2"), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id, amount, reason string
		wantErr                  error
		wantIns                  bool
		wantBal                  string
		replayed                 bool
	}{
		{"credit", "adj-1", "1.5", "goodwill", nil, false, "6.5", false},
		{"replay", "adj-1", "1.5", "goodwill", nil, false, "6.5", true},
		{"conflict", "adj-1", "2", "goodwill", ledger.ErrIDConflict, false, "6.5", false},
		{"debit", "adj-2", "-1", "correction", nil, false, "5.5", false},
		{"debit below held refused", "adj-3", "-4", "too much", nil, true, "5.5", false},
		{"no reason", "adj-4", "1", "", ledger.ErrInvalid, false, "5.5", false},
		{"zero", "adj-5", "0", "x", ledger.ErrInvalid, false, "5.5", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := e.l.Adjust(e.ctx, ledger.AdjustRequest{Account: "a", AdjustmentID: tc.id, Amount: usd(t, tc.amount), Reason: tc.reason})
			var ins *ledger.InsufficientFundsError
			switch {
			case tc.wantIns:
				if !errors.As(err, &ins) {
					t.Fatalf("want insufficient funds, got %v", err)
				}
			case !errors.Is(err, tc.wantErr):
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			case err == nil && (r.Balance != usd(t, tc.wantBal) || r.Replayed != tc.replayed):
				t.Fatalf("result %+v", r)
			}
			if b := e.balance(t, "a"); b.Balance != usd(t, tc.wantBal) {
				t.Fatalf("balance %s, want %s", b.Balance, tc.wantBal)
			}
		})
	}
	j, _, _ := e.l.Journal(e.ctx, "a", "", 100)
	last := j[len(j)-1]
	if last.Type != "adjust" || last.Reason != "correction" || last.Amount != usd(t, "-1") {
		t.Fatalf("journal: %+v", last)
	}
	e.auditClean(t)
}

func TestJournalPagingAndFields(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	for i := 0; i < 5; i++ {
		id := "p" + string(rune('0'+i))
		if _, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "a", PaymentID: id, Amount: 1}); err != nil {
			t.Fatal(err)
		}
	}
	var all []ledger.Entry
	after := ""
	for pages := 0; ; pages++ {
		page, next, err := e.l.Journal(e.ctx, "a", after, 4)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == "" {
			break
		}
		after = next
		if pages > 10 {
			t.Fatal("paging does not end")
		}
	}
	// open + (topup, fee) × 6
	if len(all) != 13 {
		t.Fatalf("%d entries", len(all))
	}
	for i, en := range all {
		if en.Seq != int64(i+1) || en.TimeMs != e.clk.Now().UnixMilli() {
			t.Fatalf("entry %d: %+v", i, en)
		}
	}
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: "q", Estimate: 100, TTL: time.Minute, Provider: "anthropic", Model: "claude-haiku-4-5"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: "q", Cost: 12_345_678, Provider: "anthropic", Model: "claude-haiku-4-5-20251001", PriceRow: "anthropic/claude-haiku-4-5@2025-10-01", Usage: `{"input_tokens":10}`, Estimated: true}); err != nil {
		t.Fatal(err)
	}
	j, _, _ := e.l.Journal(e.ctx, "a", after, 100)
	c := j[len(j)-1]
	if c.Type != "capture" || c.CostPico != 12_345_678 || c.Amount != 12 || c.Carry != 345_678 || !c.Estimated ||
		c.PriceRow != "anthropic/claude-haiku-4-5@2025-10-01" || c.Usage != `{"input_tokens":10}` || c.Model != "claude-haiku-4-5-20251001" || c.HoldAmount != 100 {
		t.Fatalf("capture entry: %+v", c)
	}
}

func TestAuditDetectsTampering(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "3")
	e.auditClean(t)
	// Someone edits the balance behind the ledger's back.
	k := e.l.AccountKeys("a")[0]
	if err := e.rdb.HIncrBy(e.ctx, k, "bal", 1).Err(); err != nil {
		t.Fatal(err)
	}
	rep, ok, err := e.l.Audit(e.ctx)
	if err != nil || ok || len(rep) != 1 || len(rep[0].Problems) == 0 {
		t.Fatalf("audit missed a tampered balance: ok=%v %+v %v", ok, rep, err)
	}
}

func TestNoScriptRecovery(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	// A Redis restart or failover forgets loaded scripts.
	if err := e.rdb.ScriptFlush(e.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "a", PaymentID: "after-flush", Amount: 1}); err != nil {
		t.Fatalf("NOSCRIPT not handled: %v", err)
	}
}

func TestKeysShareOneClusterSlot(t *testing.T) {
	// CLUSTER KEYSLOT needs a cluster-enabled server; a single node is enough.
	addr := redistest.StartServer(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	l, err := ledger.New(c, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, acct := range []string{"acct_42", "team/ml@prod", "x"} {
		var first int64 = -1
		for _, k := range l.AccountKeys(acct) {
			slot, err := c.ClusterKeySlot(context.Background(), k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if first == -1 {
				first = slot
			} else if slot != first {
				t.Fatalf("key %s in slot %d, account's first key in %d", k, slot, first)
			}
		}
	}
}

func TestRedisDownIsUnavailable(t *testing.T) {
	port, _ := redistest.FreePort()
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), MaxRetries: -1, DialerRetries: 1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	l, _ := ledger.New(c, ledger.Options{})
	_, err := l.Reserve(context.Background(), ledger.ReserveRequest{Account: "a", RequestID: "r", Estimate: 1, TTL: time.Second})
	if !errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("want ErrUnavailable, got %v", err)
	}
}

func TestExtendKeepsALongStreamsHold(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "1")
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: "long", Estimate: 100, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	// The stream is still running at 50s: extend to 50s + TTL.
	e.clk.Advance(50 * time.Second)
	ok, err := e.l.Extend(e.ctx, "a", "long", e.clk.Now().Add(time.Minute))
	if err != nil || !ok {
		t.Fatalf("extend: %v %v", ok, err)
	}
	// An earlier deadline never shortens it.
	if ok, err := e.l.Extend(e.ctx, "a", "long", e.clk.Now()); err != nil || !ok {
		t.Fatalf("extend earlier: %v %v", ok, err)
	}
	// Past the original deadline the sweeper leaves it alone.
	e.clk.Advance(30 * time.Second)
	if n, err := e.l.Sweep(e.ctx); err != nil || n != 0 {
		t.Fatalf("sweep expired %d (%v) an extended hold", n, err)
	}
	if b := e.balance(t, "a"); b.Held != 100 {
		t.Fatalf("held %s", b.Held)
	}
	// Past the extended deadline it expires as usual; extending then fails.
	e.clk.Advance(time.Minute)
	if n, err := e.l.Sweep(e.ctx); err != nil || n != 1 {
		t.Fatalf("sweep expired %d (%v), want 1", n, err)
	}
	if ok, err := e.l.Extend(e.ctx, "a", "long", e.clk.Now().Add(time.Minute)); err != nil || ok {
		t.Fatalf("extend of an expired hold: %v %v", ok, err)
	}
	e.auditClean(t)
}
