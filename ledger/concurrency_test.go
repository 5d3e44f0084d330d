package ledger_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
)

// Each request id has fixed arguments, so goroutines that share an id send
// identical calls (replays) unless they deliberately send a conflicting one.
func concEstimate(k int) money.Micros { return money.Micros(1_000 + k*7_919%20_000) }

func concCost(k int) money.Pico {
	hold := int64(concEstimate(k)) * money.PicoPerMicro
	if k%5 == 0 {
		return money.Pico(hold*4 + int64(k)%money.PicoPerMicro) // far above the hold
	}
	return money.Pico(hold*int64(k%100)/100 + int64(k)%999_983)
}

func concTTL(k int) time.Duration { return time.Duration(5+k%60) * time.Second }

type concRecord struct {
	op, id string
	val    any
	err    error
}

// TestConcurrencyOneAccount: 64 goroutines × 1,000 mixed calls on one
// account, sharing request, payment and adjustment ids and often sending a
// call twice, while two sweepers expire holds under a moving clock. Afterwards
// the journal alone must prove conservation, hold accounting, the overdraft
// bound and that no reserve ever overspent, and it must agree with every
// answer a caller received. -short runs 16 × 250.
func TestConcurrencyOneAccount(t *testing.T) {
	workers, ops := 64, 1000
	if testing.Short() {
		workers, ops = 16, 250
	}
	e := newRealEnv(t, ledger.Options{})
	const acct = "hot"
	e.account(t, acct, "10") // scarce: reserves get refused, captures above holds overdraw
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d goroutines × %d calls", seed, workers, ops)
	nReq := workers * ops / 4

	// Two sweepers, as with two sidecars: each hold must expire exactly once.
	const sweepers = 2
	var sweeps, swept [sweepers]int
	stop := make(chan struct{})
	sweeperDone := make(chan error, sweepers)
	for s := 0; s < sweepers; s++ {
		go func(s int) {
			for {
				select {
				case <-stop:
					sweeperDone <- nil
					return
				default:
				}
				e.clk.Advance(100 * time.Millisecond)
				n, err := e.l.Sweep(e.ctx)
				if err != nil {
					sweeperDone <- err
					return
				}
				sweeps[s]++
				swept[s] += n
			}
		}(s)
	}

	records := make([][]concRecord, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			out := make([]concRecord, 0, ops*11/10)
			for i := 0; i < ops; i++ {
				k := rng.IntN(nReq)
				rid := fmt.Sprintf("q-%d", k)
				var call func() concRecord
				r := rng.IntN(100)
				if i >= ops*4/5 && (r < 40 || r >= 92) {
					r = 40 + r%52 // the last fifth only ends holds: overdrafts surface
				}
				switch {
				case r < 40:
					est := concEstimate(k)
					if rng.IntN(30) == 0 {
						est++ // same id, other estimate
					}
					call = func() concRecord {
						h, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: acct, RequestID: rid, Estimate: est, TTL: concTTL(k)})
						return concRecord{"reserve", rid, h, err}
					}
				case r < 72:
					cost := concCost(k)
					if rng.IntN(30) == 0 {
						cost++ // same id, other cost
					}
					call = func() concRecord {
						c, err := e.l.Capture(e.ctx, ledger.CaptureRequest{Account: acct, RequestID: rid, Cost: cost, Provider: "openai", Model: "gpt-4o"})
						return concRecord{"capture", rid, c, err}
					}
				case r < 92:
					call = func() concRecord {
						rr, err := e.l.Release(e.ctx, acct, rid, "upstream error")
						return concRecord{"release", rid, rr, err}
					}
				case r < 97:
					pid := fmt.Sprintf("pay-%d", rng.IntN(40))
					call = func() concRecord {
						rc, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: acct, PaymentID: pid, Amount: 500_000})
						return concRecord{"topup", pid, rc, err}
					}
				default:
					n := rng.IntN(20)
					aid, amount := fmt.Sprintf("adj-%d", n), money.Micros(500_000)
					if n%2 == 1 {
						amount = -amount
					}
					call = func() concRecord {
						a, err := e.l.Adjust(e.ctx, ledger.AdjustRequest{Account: acct, AdjustmentID: aid, Amount: amount, Reason: "load test"})
						return concRecord{"adjust", aid, a, err}
					}
				}
				out = append(out, call())
				if rng.IntN(10) == 0 {
					out = append(out, call())
				}
			}
			records[w] = out
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	for s := 0; s < sweepers; s++ {
		if err := <-sweeperDone; err != nil {
			t.Fatalf("sweeper: %v", err)
		}
	}

	// Every answer is one the contract allows.
	var all []concRecord
	errs := map[string]int{}
	for _, rs := range records {
		for _, r := range rs {
			var ins *ledger.InsufficientFundsError
			switch {
			case r.err == nil:
			case errors.As(r.err, &ins):
				if ins.Available != ins.Balance-ins.Held || ins.Available >= ins.Requested {
					t.Errorf("%s %s: inconsistent refusal %+v", r.op, r.id, *ins)
				}
			case errors.Is(r.err, ledger.ErrNoHold), errors.Is(r.err, ledger.ErrHoldClosed), errors.Is(r.err, ledger.ErrIDConflict):
			default:
				t.Errorf("%s %s: unexpected error %v", r.op, r.id, r.err)
			}
			errs[r.op+" "+concKind(r)]++
			all = append(all, r)
		}
	}
	t.Logf("%d calls in %s (%.0f calls/s); sweeps %v expired %v holds", len(all), elapsed.Round(time.Millisecond),
		float64(len(all))/elapsed.Seconds(), sweeps, swept)
	kinds := make([]string, 0, len(errs))
	for k := range errs {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		t.Logf("%7d × %s", errs[k], k)
	}

	b := e.balance(t, acct)
	j := journalOf(t, e.l, acct)
	sum, probs := checkJournal(j, b, false)
	for _, p := range probs {
		t.Error(p)
	}
	minBal, overdrawn, late := money.Micros(0), 0, 0
	for _, en := range j {
		minBal = min(minBal, en.Balance)
		if en.Type == "capture" && en.Balance < 0 {
			overdrawn++
		}
		if en.Late {
			late++
		}
	}
	t.Logf("journal: %d entries; balance %s, held %s in %d open holds; %d late captures; %d captures left the balance negative, lowest %s, Σexcess %s",
		len(j), b.Balance, b.Held, countOpen(sum), late, overdrawn, minBal, sum.excess)

	crossCheck(t, all, j)
	expires := 0
	for _, en := range j {
		if en.Type == "expire" {
			expires++
		}
	}
	if expires != swept[0]+swept[1] {
		t.Errorf("sweepers reported %v expiries, the journal has %d", swept, expires)
	}

	// End every hold still open; nothing may stay held.
	e.clk.Advance(2 * time.Hour)
	if _, err := e.l.Sweep(e.ctx); err != nil {
		t.Fatal(err)
	}
	b = e.balance(t, acct)
	if b.Held != 0 {
		t.Errorf("held %s after every hold expired", b.Held)
	}
	if _, probs := checkJournal(journalOf(t, e.l, acct), b, true); len(probs) > 0 {
		t.Errorf("after final sweep: %v", probs)
	}
	e.auditClean(t)
}

func concKind(r concRecord) string {
	var ins *ledger.InsufficientFundsError
	switch {
	case r.err == nil:
		return "ok"
	case errors.As(r.err, &ins):
		return "insufficient funds"
	}
	for _, s := range []error{ledger.ErrNoHold, ledger.ErrHoldClosed, ledger.ErrIDConflict} {
		if errors.Is(r.err, s) {
			return s.Error()
		}
	}
	return "other error"
}

func countOpen(s journalSummary) int {
	n := 0
	for _, st := range s.state {
		if st == "open" {
			n++
		}
	}
	return n
}

// crossCheck matches what callers were told against the journal: each
// first-time success is exactly one journal entry with the same numbers, each
// replay repeats the first answer, and nothing in the journal went unreported.
func crossCheck(t *testing.T, all []concRecord, j []ledger.Entry) {
	t.Helper()
	byRef := map[string]map[string][]ledger.Entry{}
	for _, e := range j {
		if byRef[e.Type] == nil {
			byRef[e.Type] = map[string][]ledger.Entry{}
		}
		byRef[e.Type][e.Ref] = append(byRef[e.Type][e.Ref], e)
	}
	first := map[string]any{} // op+id → the first-time answer
	replays := map[string][]any{}
	for _, r := range all {
		if r.err != nil {
			continue
		}
		key := r.op + " " + r.id
		var replayed bool
		var norm any
		switch v := r.val.(type) {
		case ledger.Hold:
			replayed, v.Replayed = v.Replayed, false
			v.Deadline = v.Deadline.UTC()
			norm = v
			if !replayed && v.Held > v.Balance {
				t.Errorf("reserve %s succeeded with held %s above balance %s", r.id, v.Held, v.Balance)
			}
		case ledger.CaptureResult:
			replayed, v.Replayed = v.Replayed, false
			norm = v
		case ledger.ReleaseResult:
			replayed, v.Replayed = v.Replayed, false
			norm = v
			if replayed && v.Released == 0 {
				continue // release after expiry: reports the current state
			}
		case ledger.Receipt:
			replayed, v.Replayed = v.Replayed, false
			norm = v
		case ledger.AdjustResult:
			replayed, v.Replayed = v.Replayed, false
			norm = v
		}
		if !replayed {
			if _, dup := first[key]; dup {
				t.Errorf("%s: two first-time successes", key)
			}
			first[key] = norm
		} else {
			replays[key] = append(replays[key], norm)
		}
	}
	for key, rs := range replays {
		f, ok := first[key]
		if !ok {
			t.Errorf("%s: replayed but no caller saw the first success", key)
			continue
		}
		for _, r := range rs {
			if r != f {
				t.Errorf("%s: replay %+v differs from first answer %+v", key, r, f)
			}
		}
	}
	counts := map[string]int{}
	for key, v := range first {
		var typ, ref string
		fmt.Sscan(key, &typ, &ref)
		counts[typ]++
		es := byRef[typ][ref]
		if len(es) != 1 {
			t.Errorf("%s: %d journal entries, want 1", key, len(es))
			continue
		}
		e := es[0]
		switch v := v.(type) {
		case ledger.Hold:
			if e.Amount != v.Amount || e.Balance != v.Balance || e.Held != v.Held {
				t.Errorf("%s: answered %+v, journal %+v", key, v, e)
			}
		case ledger.CaptureResult:
			if e.Amount != v.Debited || e.Carry != v.CarryPico || e.Balance != v.Balance || e.Held != v.Held || e.Late != v.Late {
				t.Errorf("%s: answered %+v, journal %+v", key, v, e)
			}
		case ledger.ReleaseResult:
			if e.Amount != v.Released || e.Held != v.Held {
				t.Errorf("%s: answered %+v, journal %+v", key, v, e)
			}
		case ledger.Receipt:
			if e.Amount != v.Amount || e.Balance != v.BalanceAfter {
				t.Errorf("%s: answered %+v, journal %+v", key, v, e)
			}
		case ledger.AdjustResult:
			if e.Amount != v.Amount || e.Balance != v.Balance {
				t.Errorf("%s: answered %+v, journal %+v", key, v, e)
			}
		}
	}
	// The seed top-up was not made by a worker.
	for typ, refs := range byRef {
		n := len(refs)
		if typ == "topup" {
			n--
		}
		if typ == "open" || typ == "fee" || typ == "expire" {
			continue
		}
		if n != counts[typ] {
			t.Errorf("journal has %d %s entries with distinct ids, callers saw %d first-time successes", n, typ, counts[typ])
		}
	}
}
