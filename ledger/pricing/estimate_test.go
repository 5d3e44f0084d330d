package pricing

import (
	"math"
	"testing"

	"pgregory.net/rapid"

	"github.com/creditgate/creditgate/ledger/money"
)

func TestEstimate(t *testing.T) {
	def := Default()
	test := mustParseFile(t, "testdata/catalogs/test.yaml")
	at := mustTime(t, "2026-08-22T00:00:00Z")
	for _, tc := range []struct {
		name       string
		cat        *Catalog
		provider   string
		model      string
		in, maxOut int64
		want       money.Micros
	}{
		// 1000 × 2.50 + 500 × 10 = 7500 µUSD (OpenAI: cache writes default to input, so input is the max)
		{"gpt-4o", def, "openai", "gpt-4o", 1000, 500, 7500},
		// no max_tokens: the row's cap, 16384 × 10 = 163840
		{"default cap", def, "openai", "gpt-4o", 0, 0, 163840},
		{"negative cap means none", def, "openai", "gpt-4o", 0, -5, 163840},
		{"negative input counts as none", def, "openai", "gpt-4o", -100, 1, 10},
		// 0.15 + 0.60 = 0.75 µUSD rounds UP to 1
		{"rounds up", def, "openai", "gpt-4o-mini", 1, 1, 1},
		// Anthropic: the highest prompt-side rate is the 1h write (6): 1000 × 6 + 1000 × 15 = 21000
		{"prompt at the highest prompt-side rate", def, "anthropic", "claude-sonnet-4-5", 1000, 1000, 21000},
		// at the threshold: base; above it: tier (1h write 12, output 22.50)
		{"tier boundary 200000", def, "anthropic", "claude-sonnet-4-5", 200000, 1000, 200000*6 + 15000},
		{"tier boundary 200001", def, "anthropic", "claude-sonnet-4-5", 200001, 1000, 200001*12 + 22500},
		// separate reasoning price 20 > output 10: output cap held at 20
		{"reasoning rate", test, "openai", "reasoner", 0, 100, 2000},
		// per_request is held; per_tool_call is not (count unknown): 100 × 1 + 100 × 2 = 300 µUSD, + 5000
		{"fixed fee", test, "openai", "fees", 100, 100, 5300},
		{"embedding has no output", def, "openai", "text-embedding-3-small", 8191, 0, 164}, // 8191 × 0.02 = 163.82
		{"saturates", test, "openai", "max-rate", math.MaxInt64, math.MaxInt64, math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			row, err := tc.cat.Lookup(tc.provider, tc.model, at)
			if err != nil {
				t.Fatal(err)
			}
			if got := row.Estimate(tc.in, tc.maxOut); got != tc.want {
				t.Errorf("Estimate(%d, %d) = %d, want %d", tc.in, tc.maxOut, got, tc.want)
			}
		})
	}
}

func TestMaxAffordableOutput(t *testing.T) {
	def := Default()
	test := mustParseFile(t, "testdata/catalogs/test.yaml")
	at := mustTime(t, "2026-08-22T00:00:00Z")
	for _, tc := range []struct {
		name      string
		cat       *Catalog
		provider  string
		model     string
		in        int64
		available money.Micros
		want      int64
	}{
		{"exact fit", def, "openai", "gpt-4o", 1000, 7500, 500},          // (7500 − 2500) / 10
		{"one µUSD short", def, "openai", "gpt-4o", 1000, 7499, 499},     // 499.9 → 499
		{"input alone too dear", def, "openai", "gpt-4o", 1000, 2499, 0}, // 2500 > 2499
		{"input fits, no token", def, "openai", "gpt-4o", 1000, 2500, 0}, // 0 tokens fit
		{"capped at row max", def, "openai", "gpt-4o", 1000, 1_000_000_000, 16384},
		{"negative balance", def, "openai", "gpt-4o", 0, -1, 0},
		{"tier rates above threshold", def, "anthropic", "claude-sonnet-4-5", 200001, 2_422_512, 1000},
		{"embedding: cap is 0", def, "openai", "text-embedding-3-small", 10, 1000, 0},
		{"fee and cap", test, "openai", "fees", 0, 5200, 100}, // 5000 fee + 100 × $2/1M = 5200
		{"fee counts", test, "openai", "fees", 0, 5199, 99},   // 199 µUSD buys 99.5 tokens
		{"fee alone", test, "openai", "fees", 0, 5000, 0},
		{"fee too dear", test, "openai", "fees", 0, 4999, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			row, err := tc.cat.Lookup(tc.provider, tc.model, at)
			if err != nil {
				t.Fatal(err)
			}
			if got := row.MaxAffordableOutput(tc.in, tc.available); got != tc.want {
				t.Errorf("MaxAffordableOutput(%d, %d) = %d, want %d", tc.in, tc.available, got, tc.want)
			}
		})
	}
}

// allRows gives rapid every row of the default and test catalogs, so the
// properties cover tiers, reasoning prices, fees, embeddings and max rates.
func allRows(t *testing.T) []*Row {
	return append(Default().Rows(), mustParseFile(t, "testdata/catalogs/test.yaml").Rows()...)
}

// MaxAffordableOutput is the largest n with Estimate(in, n) <= available:
// n fits, n+1 does not unless n is the row's cap, and 0 means not even one
// output token fits.
func TestMaxAffordableOutputProperty(t *testing.T) {
	rows := allRows(t)
	rapid.Check(t, func(rt *rapid.T) {
		row := rapid.SampledFrom(rows).Draw(rt, "row")
		in := rapid.Int64Range(0, 3_000_000).Draw(rt, "in")
		avail := money.Micros(rapid.OneOf(
			rapid.Int64Range(0, 1_000),
			rapid.Int64Range(0, 100_000_000),
			rapid.Int64Range(0, math.MaxInt64/money.PicoPerMicro),
		).Draw(rt, "available"))
		n := row.MaxAffordableOutput(in, avail)
		_, outRate := row.worstRates(in)
		switch {
		case n < 0:
			rt.Fatalf("negative result %d", n)
		case n == 0:
			if outRate > 0 && row.Estimate(in, 1) <= avail {
				rt.Fatalf("returned 0 but Estimate(%d, 1) = %d fits %d", in, row.Estimate(in, 1), avail)
			}
		default:
			if e := row.Estimate(in, n); e > avail {
				rt.Fatalf("Estimate(%d, %d) = %d > available %d", in, n, e, avail)
			}
			if n > row.MaxOutputTokens {
				rt.Fatalf("result %d above the row cap %d", n, row.MaxOutputTokens)
			}
			if n < row.MaxOutputTokens {
				if e := row.Estimate(in, n+1); e <= avail {
					rt.Fatalf("not maximal: Estimate(%d, %d) = %d still fits %d", in, n+1, e, avail)
				}
			}
		}
	})
}

// The hold covers the real cost of every usage the request can produce:
// any split of at most `in` prompt tokens over the four prompt classes and
// at most `out` output tokens (any part of them reasoning), without tool
// calls, whose count is unbounded and deliberately not held.
func TestEstimateCoversCostProperty(t *testing.T) {
	rows := allRows(t)
	rapid.Check(t, func(rt *rapid.T) {
		row := rapid.SampledFrom(rows).Draw(rt, "row")
		in := rapid.Int64Range(0, 2_000_000).Draw(rt, "in")
		out := rapid.Int64Range(1, 200_000).Draw(rt, "maxOut")
		var u Usage
		// Extreme splits matter most (all prompt tokens in the dearest class,
		// the full output allowance), so draw them as often as random ones.
		prompt := rapid.OneOf(rapid.Just(in), rapid.Int64Range(0, in)).Draw(rt, "prompt")
		classes := []*int64{&u.InputTokens, &u.CacheReadTokens, &u.CacheWrite5mTokens, &u.CacheWrite1hTokens}
		if all := rapid.IntRange(-1, 3).Draw(rt, "allIn"); all >= 0 {
			*classes[all] = prompt
		} else {
			left := prompt
			for _, c := range classes[1:] {
				*c = rapid.Int64Range(0, left).Draw(rt, "class")
				left -= *c
			}
			u.InputTokens = left
		}
		u.OutputTokens = rapid.OneOf(rapid.Just(out), rapid.Int64Range(0, out)).Draw(rt, "output")
		u.ReasoningTokens = rapid.OneOf(rapid.Just(u.OutputTokens), rapid.Int64Range(0, u.OutputTokens)).Draw(rt, "reasoning")
		cost, err := row.Cost(u)
		if err != nil {
			rt.Fatal(err)
		}
		if est := row.Estimate(in, out); cost.CeilMicros() > est {
			rt.Fatalf("%s: cost %s of %+v exceeds the hold %s for (%d, %d)", row.ID, cost, u, est, in, out)
		}
	})
}
