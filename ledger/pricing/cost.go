package pricing

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"

	"github.com/creditgate/creditgate/ledger/money"
)

var (
	// ErrInvalidUsage is wrapped when a Usage cannot be priced as given.
	ErrInvalidUsage = errors.New("invalid usage")
	// ErrOverflow is wrapped when a cost does not fit money.Pico (int64).
	ErrOverflow = errors.New("cost overflows int64 pico-USD")
)

// Validate checks that every count is non-negative and that the prompt-side
// sum (the long-context tier input) does not overflow.
func (u Usage) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"input_tokens", u.InputTokens}, {"cache_read_tokens", u.CacheReadTokens},
		{"cache_write_5m_tokens", u.CacheWrite5mTokens}, {"cache_write_1h_tokens", u.CacheWrite1hTokens},
		{"output_tokens", u.OutputTokens}, {"reasoning_tokens", u.ReasoningTokens}, {"tool_calls", u.ToolCalls},
	} {
		if f.v < 0 {
			return fmt.Errorf("%w: %s is negative (%d)", ErrInvalidUsage, f.name, f.v)
		}
	}
	var sum uint64
	for _, v := range []int64{u.InputTokens, u.CacheReadTokens, u.CacheWrite5mTokens, u.CacheWrite1hTokens} {
		sum += uint64(v) // each < 2^63, so four of them cannot wrap a uint64
	}
	if sum > math.MaxInt64 {
		return fmt.Errorf("%w: prompt-side token sum overflows int64", ErrInvalidUsage)
	}
	return nil
}

// ratesFor returns the rates that price a request with this many
// prompt-side tokens: the long-context tier's when promptTokens is strictly
// greater than its threshold, the base rates otherwise.
func (r *Row) ratesFor(promptTokens int64) Rates {
	if r.LongContext != nil && promptTokens > r.LongContext.ThresholdTokens {
		return r.LongContext.Rates
	}
	return r.Rates
}

// Cost is the exact cost of a call in pico-USD:
// Σ tokens × rate over the disjoint usage classes (µUSD per 1M tokens times
// tokens is pico-USD), plus per_request, plus per_tool_call × ToolCalls.
// The long-context tier is chosen on Usage.PromptTokens() alone. Reasoning
// tokens are taken out of OutputTokens only when the applicable rates have
// their own reasoning price; otherwise they are output.
func (r *Row) Cost(u Usage) (money.Pico, error) {
	if err := u.Validate(); err != nil {
		return 0, err
	}
	rt := r.ratesFor(u.PromptTokens())
	output, reasoning := u.OutputTokens, int64(0)
	if rt.HasReasoning {
		if u.ReasoningTokens > u.OutputTokens {
			return 0, fmt.Errorf("%w: reasoning_tokens %d exceed output_tokens %d (reasoning is part of output)",
				ErrInvalidUsage, u.ReasoningTokens, u.OutputTokens)
		}
		output, reasoning = u.OutputTokens-u.ReasoningTokens, u.ReasoningTokens
	}
	var acc uint128
	acc.addMul(u.InputTokens, int64(rt.Input))
	acc.addMul(u.CacheReadTokens, int64(rt.CachedInput))
	acc.addMul(u.CacheWrite5mTokens, int64(rt.CacheWrite5m))
	acc.addMul(u.CacheWrite1hTokens, int64(rt.CacheWrite1h))
	acc.addMul(output, int64(rt.Output))
	acc.addMul(reasoning, int64(rt.Reasoning))
	acc.addMul(int64(r.PerRequest), money.PicoPerMicro)
	acc.addMul(u.ToolCalls, int64(r.PerToolCall)*money.PicoPerMicro) // fee ≤ MaxFee, so no overflow here
	if acc.overflow || acc.hi != 0 || acc.lo > math.MaxInt64 {
		return 0, fmt.Errorf("%w: row %s, usage %+v", ErrOverflow, r.ID, u)
	}
	return money.Pico(acc.lo), nil
}

// worstRates returns the highest prompt-side rate and the highest output
// rate that could apply to a request of at most inputTokens prompt tokens.
// The caller does not know yet how the prompt will split between plain
// input, cache reads and cache writes, nor how much output is reasoning.
func (r *Row) worstRates(inputTokens int64) (prompt, output Rate) {
	consider := func(rt Rates) {
		prompt = max(prompt, rt.Input, rt.CachedInput, rt.CacheWrite5m, rt.CacheWrite1h)
		output = max(output, rt.Output)
		if rt.HasReasoning {
			output = max(output, rt.Reasoning)
		}
	}
	consider(r.Rates)
	if r.LongContext != nil && inputTokens > r.LongContext.ThresholdTokens {
		consider(r.LongContext.Rates)
	}
	return prompt, output
}

// Estimate is the worst-case hold for a request, rounded up to whole µUSD:
// inputTokens at the highest prompt-side rate (long-context tier included
// when inputTokens exceeds its threshold), plus maxOutputTokens at the
// highest output rate, plus per_request. inputTokens must be an upper bound
// of the prompt-side tokens. maxOutputTokens <= 0 means the request set no
// cap, and the row's MaxOutputTokens is used. Per-tool-call fees are not
// held: the number of calls is unknown until the response. A result too
// large for int64 saturates at math.MaxInt64, which no balance covers.
func (r *Row) Estimate(inputTokens, maxOutputTokens int64) money.Micros {
	if maxOutputTokens <= 0 {
		maxOutputTokens = r.MaxOutputTokens
	}
	inputTokens = max(inputTokens, 0)
	prompt, output := r.worstRates(inputTokens)
	var acc uint128
	acc.addMul(inputTokens, int64(prompt))
	acc.addMul(maxOutputTokens, int64(output))
	acc.addMul(int64(r.PerRequest), money.PicoPerMicro)
	if acc.overflow || acc.hi >= money.PicoPerMicro {
		return money.Micros(math.MaxInt64)
	}
	q, rem := bits.Div64(acc.hi, acc.lo, money.PicoPerMicro)
	if rem > 0 {
		q++
	}
	if q > math.MaxInt64 {
		return money.Micros(math.MaxInt64)
	}
	return money.Micros(q)
}

// MaxAffordableOutput is the largest max_tokens for which
// Estimate(inputTokens, n) <= available, capped at the row's
// MaxOutputTokens; it is what a 402 response offers. It returns 0 when not
// even one output token fits (and for rows that price no output, the cap).
func (r *Row) MaxAffordableOutput(inputTokens int64, available money.Micros) int64 {
	if available < 0 {
		return 0
	}
	inputTokens = max(inputTokens, 0)
	prompt, output := r.worstRates(inputTokens)
	// Estimate(in, n) = ceil(fixed + n·output, 1e6) ≤ available
	//   ⟺ fixed + n·output ≤ available·1e6, since available is whole µUSD.
	fixed := new(big.Int).Mul(big.NewInt(inputTokens), big.NewInt(int64(prompt)))
	fixed.Add(fixed, new(big.Int).Mul(big.NewInt(int64(r.PerRequest)), big.NewInt(money.PicoPerMicro)))
	budget := new(big.Int).Mul(big.NewInt(int64(available)), big.NewInt(money.PicoPerMicro))
	if fixed.Cmp(budget) > 0 {
		return 0
	}
	limit := r.MaxOutputTokens
	if output == 0 {
		return max(limit, 0)
	}
	n := budget.Sub(budget, fixed)
	n.Quo(n, big.NewInt(int64(output)))
	if limit > 0 && n.Cmp(big.NewInt(limit)) > 0 {
		return limit
	}
	if !n.IsInt64() {
		return math.MaxInt64
	}
	return n.Int64()
}

// uint128 accumulates non-negative products without losing bits.
type uint128 struct {
	hi, lo   uint64
	overflow bool
}

// addMul adds a×b; both must be non-negative.
func (u *uint128) addMul(a, b int64) {
	if a < 0 || b < 0 {
		u.overflow = true // callers validate signs; refuse rather than wrap
		return
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	var c uint64
	u.lo, c = bits.Add64(u.lo, lo, 0)
	u.hi, c = bits.Add64(u.hi, hi, c)
	if c != 0 {
		u.overflow = true
	}
}
