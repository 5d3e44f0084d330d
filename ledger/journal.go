package ledger

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger/money"
)

// Journal returns up to limit entries of an account's journal after the
// stream id `after` ("" = from the start), and the id to pass for the next
// page ("" when there is none).
func (l *Ledger) Journal(ctx context.Context, account, after string, limit int) ([]Entry, string, error) {
	if err := checkID("account", account); err != nil {
		return nil, "", err
	}
	if limit <= 0 || limit > 10000 {
		limit = 100
	}
	start := "-"
	if after != "" {
		start = "(" + after
	}
	msgs, err := l.rdb.XRangeN(ctx, l.keys(account).journal, start, "+", int64(limit)+1).Result()
	if err != nil {
		return nil, "", classify(err)
	}
	next := ""
	if len(msgs) > limit {
		msgs = msgs[:limit]
		next = msgs[limit-1].ID
	}
	out := make([]Entry, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, parseEntry(m))
	}
	return out, next, nil
}

func parseEntry(m redis.XMessage) Entry {
	f := func(k string) string { s, _ := m.Values[k].(string); return s }
	n := func(k string) int64 { v, _ := strconv.ParseInt(f(k), 10, 64); return v }
	e := Entry{ID: m.ID, Seq: n("seq"), Type: f("type"), Amount: money.Micros(n("amount")),
		Balance: money.Micros(n("bal")), Held: money.Micros(n("held")), Ref: f("ref"), Provider: f("provider"),
		Model: f("model"), Usage: f("usage"), PriceRow: f("row"), Carry: n("carry"), Estimated: f("estimated") == "1",
		Late: f("late") == "1", Reason: f("reason"), TimeMs: n("ts"), HoldAmount: money.Micros(n("hold")),
		Unreserved: f("unreserved") == "1"}
	if c := f("cost"); c != "" {
		whole, frac, _ := strings.Cut(c, ".")
		w, _ := strconv.ParseInt(whole, 10, 64)
		p, _ := strconv.ParseInt(frac, 10, 64)
		e.CostPico = w*money.PicoPerMicro + p
	}
	return e
}

// AccountAudit is the audit verdict for one account.
type AccountAudit struct {
	Account     string       `json:"account"`
	Entries     int          `json:"entries"`
	Balance     money.Micros `json:"balance"`
	Held        money.Micros `json:"held"`
	JournalBal  money.Micros `json:"journal_balance"`
	JournalHeld money.Micros `json:"journal_held"`
	Problems    []string     `json:"problems,omitempty"`
}

// AuditAccount recomputes balance and held from the journal alone and
// compares them with the account hash and with each entry's own totals.
func (l *Ledger) AuditAccount(ctx context.Context, account string) (AccountAudit, error) {
	k := l.keys(account)
	// The hash and the journal's tail are read in one MULTI (same slot), so the
	// comparison is against one consistent moment even under live traffic.
	var hm *redis.SliceCmd
	var tail *redis.XMessageSliceCmd
	_, err := l.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		hm = p.HMGet(ctx, k.acct, "bal", "held", "seq")
		tail = p.XRevRangeN(ctx, k.journal, "+", "-", 1)
		return nil
	})
	if err != nil {
		return AccountAudit{}, classify(err)
	}
	v := hm.Val()
	a := AccountAudit{Account: account}
	if v[0] == nil {
		return a, fmt.Errorf("%w: %s", ErrNoAccount, account)
	}
	a.Balance, a.Held = mic(v[0]), mic(v[1])
	seq := i64(v[2])
	if len(tail.Val()) == 0 {
		a.Problems = append(a.Problems, "account has no journal")
		return a, nil
	}
	last := tail.Val()[0].ID
	var bal, held money.Micros
	holds := map[string]money.Micros{}
	ended := map[string]string{}
	var want int64 = 1
	after := ""
	for {
		start := "-"
		if after != "" {
			start = "(" + after
		}
		msgs, err := l.rdb.XRangeN(ctx, k.journal, start, last, 1000).Result()
		if err != nil {
			return a, classify(err)
		}
		for _, m := range msgs {
			e := parseEntry(m)
			a.Entries++
			if e.Seq != want {
				a.Problems = append(a.Problems, fmt.Sprintf("entry %s: seq %d, want %d", e.ID, e.Seq, want))
			}
			want = e.Seq + 1
			switch e.Type {
			case "open", "fee":
			case "topup", "adjust":
				bal += e.Amount
			case "reserve":
				if _, dup := holds[e.Ref]; dup {
					a.Problems = append(a.Problems, fmt.Sprintf("entry %s: request %s reserved twice", e.ID, e.Ref))
				}
				holds[e.Ref] = e.Amount
				held += e.Amount
			case "capture":
				bal -= e.Amount
				if !e.Late {
					held -= e.HoldAmount
				}
				if _, reserved := holds[e.Ref]; e.Unreserved && (reserved || e.HoldAmount != 0 || e.Late) {
					// Charge captures against a hold when one exists; an
					// unreserved capture beside a hold would leave it unpaid.
					a.Problems = append(a.Problems, fmt.Sprintf("entry %s: unreserved capture of request %s, which has a hold", e.ID, e.Ref))
				}
				if prev, ok := ended[e.Ref]; ok && !(prev == "expire" && e.Late) {
					a.Problems = append(a.Problems, fmt.Sprintf("entry %s: request %s captured after %s", e.ID, e.Ref, prev))
				}
				ended[e.Ref] = "capture"
			case "release", "expire":
				held -= e.Amount
				if prev, ok := ended[e.Ref]; ok {
					a.Problems = append(a.Problems, fmt.Sprintf("entry %s: request %s %sd after %s", e.ID, e.Ref, e.Type, prev))
				}
				ended[e.Ref] = e.Type
			default:
				a.Problems = append(a.Problems, fmt.Sprintf("entry %s: unknown type %q", e.ID, e.Type))
			}
			if e.Balance != bal || e.Held != held {
				a.Problems = append(a.Problems, fmt.Sprintf("entry %s (%s): records balance %s held %s, journal sums to %s / %s",
					e.ID, e.Type, e.Balance, e.Held, bal, held))
				bal, held = e.Balance, e.Held // report each divergence once
			}
		}
		if len(msgs) < 1000 {
			break
		}
		after = msgs[len(msgs)-1].ID
	}
	a.JournalBal, a.JournalHeld = bal, held
	if want-1 != seq {
		a.Problems = append(a.Problems, fmt.Sprintf("account seq %d but journal ends at %d", seq, want-1))
	}
	if bal != a.Balance || held != a.Held {
		a.Problems = append(a.Problems, fmt.Sprintf("account says balance %s held %s; journal says %s / %s", a.Balance, a.Held, bal, held))
	}
	return a, nil
}

// Audit checks every account; ok is false if any account has a problem.
func (l *Ledger) Audit(ctx context.Context) (report []AccountAudit, ok bool, err error) {
	accts, err := l.Accounts(ctx)
	if err != nil {
		return nil, false, err
	}
	ok = true
	for _, id := range accts {
		a, err := l.AuditAccount(ctx, id)
		if err != nil {
			if errorsIsNoAccount(err) {
				continue // indexed but never created (see CreateAccount)
			}
			return report, false, err
		}
		if len(a.Problems) > 0 {
			ok = false
		}
		report = append(report, a)
	}
	return report, ok, nil
}
