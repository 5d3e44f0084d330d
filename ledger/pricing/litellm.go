package pricing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"time"
)

// LiteLLMDefaultMaxOutputTokens is the max_output_tokens given to a
// entry that charges output tokens and lists none of max_output_tokens,
// max_tokens and max_input_tokens (62 chat entries of the 2026-07-24 snapshot, from
// replicate, baseten, nscale and together_ai). The cap bounds the hold of a
// request without max_tokens, so it errs high: it covers the output limits
// LiteLLM lists elsewhere for those models (gpt-5 128000, Kimi K2.x and
// Qwen3-235B 262144, grok-4 256000), short only of entries that give a
// context window as the output limit (Llama 4, Gemini 2.5 Flash on some
// hosts). Such rows say so in their source (liteLLMDefaultCapNote), so that
// a reviewer can set the real limit.
const LiteLLMDefaultMaxOutputTokens = 262144

// liteLLMDefaultCapNote is appended to the source of a row whose
// max_output_tokens is LiteLLMDefaultMaxOutputTokens.
const liteLLMDefaultCapNote = " (max_output_tokens: default cap, LiteLLM lists no limit)"

// Skipped is a LiteLLM entry that ImportLiteLLM did not turn into a row.
type Skipped struct {
	Key    string
	Reason string
}

// ImportLiteLLM converts LiteLLM's model_prices_and_context_window.json into
// a catalog File whose rows all take effect at effectiveFrom. Entries of
// mode chat, embedding, completion and responses that carry per-token
// prices become rows; everything else, and every entry whose values cannot
// be represented exactly or fail catalog validation, is returned in
// skipped with the reason. The error is only for input that is not a JSON
// object at all. Every top-level key ends up in exactly one of the two.
// An entry that charges output and lists no limit at all is imported with
// LiteLLMDefaultMaxOutputTokens, and its row's source says so.
//
// Prices are read from the JSON number text with math/big (never through
// a binary float), multiplied by 10^12 (USD per token → µUSD per 1M tokens) and
// must land on a whole Rate to within float-noise (1 part in 10^9); see
// docs/pricing.md for the field mapping.
func ImportLiteLLM(data []byte, effectiveFrom time.Time) (*File, []Skipped, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var top map[string]json.RawMessage
	if err := dec.Decode(&top); err != nil {
		return nil, nil, fmt.Errorf("litellm import: not a JSON object: %w", err)
	}
	version := "litellm"
	if raw, ok := top["last_updated"]; ok {
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			version = "litellm " + s
		}
	}
	f := &File{Version: version, Providers: map[string][]ModelSpec{}}
	eff := formatEffective(effectiveFrom.UTC())

	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var skipped []Skipped
	seen := map[[2]string]string{} // (provider, model key) → LiteLLM key
	for _, key := range keys {
		spec, prov, reason := convertLiteLLM(key, top[key], eff)
		if reason == "" {
			mk := [2]string{prov, modelKey(spec.Model)}
			if prev, dup := seen[mk]; dup {
				reason = fmt.Sprintf("duplicate of %q (same provider %q and model %q)", prev, prov, spec.Model)
			} else {
				seen[mk] = key
			}
		}
		if reason != "" {
			skipped = append(skipped, Skipped{Key: key, Reason: reason})
			continue
		}
		f.Providers[prov] = append(f.Providers[prov], *spec)
	}
	return f, skipped, nil
}

// liteLLMEligibleModes are the modes priced per text token.
func liteLLMEligibleMode(mode string) bool {
	switch mode {
	case "chat", "embedding", "completion", "responses":
		return true
	}
	return false
}

// liteLLMProvider maps litellm_provider to our provider ids; providers we
// have no id for keep LiteLLM's name.
func liteLLMProvider(p string) string {
	switch p {
	case "text-completion-openai":
		return "openai"
	case "azure_text":
		return "azure"
	case "together_ai":
		return "together"
	}
	return p
}

// liteLLMModelName strips the routing prefix LiteLLM puts on most keys
// ("gemini/gemini-2.5-pro", "vertex_ai/claude-…", "together_ai/meta-llama/…").
func liteLLMModelName(key, litellmProv, prov string) string {
	first, rest, ok := strings.Cut(key, "/")
	if !ok || rest == "" {
		return key
	}
	if first == litellmProv || first == prov || strings.HasPrefix(litellmProv, first+"-") {
		return rest
	}
	return key
}

// liteLLMEntry gives typed access to one entry's fields.
type liteLLMEntry map[string]json.RawMessage

// rat returns a numeric field exactly; ok is false when it is absent or null.
func (e liteLLMEntry) rat(field string) (*big.Rat, bool, error) {
	raw, present := e[field]
	raw = bytes.TrimSpace(raw)
	if !present || string(raw) == "null" {
		return nil, false, nil
	}
	if len(raw) > 0 && raw[0] == '"' {
		// json.Number would accept "3e-06"; a price written as text is a
		// different, unreviewed convention, so it is refused.
		return nil, false, fmt.Errorf("%s is a string (%s), not a number", field, raw)
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return nil, false, fmt.Errorf("%s is not a number (%s)", field, raw)
	}
	r, ok := new(big.Rat).SetString(n.String())
	if !ok {
		return nil, false, fmt.Errorf("%s: cannot read number %s", field, n)
	}
	return r, true, nil
}

// perTokenRate converts a USD-per-token price into a Rate.
func perTokenRate(field string, v *big.Rat) (Rate, error) {
	x := new(big.Rat).Mul(v, big.NewRat(1_000_000_000_000, 1))
	if x.Sign() < 0 {
		return 0, fmt.Errorf("%s = %s is negative", field, v.FloatString(15))
	}
	// Round half up to the nearest whole Rate, then accept it only if the
	// difference is float noise (LiteLLM's numbers went through a binary float
	// somewhere upstream, e.g. 2.9999900000000002e-06).
	num, den := x.Num(), x.Denom()
	q, m := new(big.Int).QuoRem(num, den, new(big.Int))
	if new(big.Int).Mul(m, big.NewInt(2)).Cmp(den) >= 0 {
		q.Add(q, big.NewInt(1))
	}
	diff := new(big.Rat).Sub(x, new(big.Rat).SetInt(q))
	diff.Abs(diff)
	tol := new(big.Rat).SetFrac(q, big.NewInt(1_000_000_000))
	if diff.Sign() != 0 && (q.Sign() == 0 || diff.Cmp(tol) > 0) {
		return 0, fmt.Errorf("%s = %s USD/token is %s µUSD per 1M tokens, not a whole number of them",
			field, v.FloatString(18), x.FloatString(6))
	}
	if !q.IsInt64() || Rate(q.Int64()) > MaxRate {
		return 0, fmt.Errorf("%s = %s USD/token is $%s per 1M tokens, above the $%s bound (a per-1M price in a per-token field?)",
			field, v.FloatString(12), x.Quo(x, big.NewRat(1_000_000, 1)).FloatString(2), MaxRate)
	}
	return Rate(q.Int64()), nil
}

// perCallFee converts a USD-per-request price into a fee decimal.
func perCallFee(field string, v *big.Rat) (string, error) {
	micros := new(big.Rat).Mul(v, big.NewRat(1_000_000, 1))
	if !micros.IsInt() || !micros.Num().IsInt64() {
		return "", fmt.Errorf("%s = %s USD is not a whole number of µUSD", field, v.FloatString(12))
	}
	// µUSD share Rate's scale (10^6 per dollar), so Rate.String prints dollars.
	return Rate(micros.Num().Int64()).String(), nil
}

// intField reads a token count that LiteLLM sometimes writes as 2000000.0.
func (e liteLLMEntry) intField(field string) (int64, bool, error) {
	r, ok, err := e.rat(field)
	if err != nil || !ok {
		return 0, ok, err
	}
	if !r.IsInt() || !r.Num().IsInt64() || r.Sign() < 0 {
		return 0, false, fmt.Errorf("%s = %s is not a non-negative whole number", field, r.FloatString(3))
	}
	return r.Num().Int64(), true, nil
}

// liteLLMClasses are the LiteLLM fields for each of our price classes, in
// order of preference.
var liteLLMClasses = []struct {
	name   string
	fields []string
	pick   func(*PriceSpec) *Decimal
}{
	{"input", []string{"input_cost_per_token"}, func(p *PriceSpec) *Decimal { return &p.Input }},
	{"cached_input", []string{"cache_read_input_token_cost", "input_cost_per_token_cache_hit"}, func(p *PriceSpec) *Decimal { return &p.CachedInput }},
	{"cache_write_5m", []string{"cache_creation_input_token_cost"}, func(p *PriceSpec) *Decimal { return &p.CacheWrite5m }},
	{"cache_write_1h", []string{"cache_creation_input_token_cost_above_1hr"}, func(p *PriceSpec) *Decimal { return &p.CacheWrite1h }},
	{"output", []string{"output_cost_per_token"}, func(p *PriceSpec) *Decimal { return &p.Output }},
	{"reasoning", []string{"output_cost_per_reasoning_token"}, func(p *PriceSpec) *Decimal { return &p.Reasoning }},
}

// prices fills a PriceSpec from fields named base+suffix; classes whose
// suffixed field is absent fall back to fallback (LiteLLM prices a missing
// "_above_200k" variant at the base price).
func (e liteLLMEntry) prices(suffix string, fallback *PriceSpec) (PriceSpec, error) {
	var p PriceSpec
	for _, c := range liteLLMClasses {
		for _, field := range c.fields {
			v, ok, err := e.rat(field + suffix)
			if err != nil {
				return p, err
			}
			if !ok {
				continue
			}
			rt, err := perTokenRate(field+suffix, v)
			if err != nil {
				return p, err
			}
			*c.pick(&p) = NewDecimal(rt.String())
			break
		}
		if fallback != nil && c.pick(&p).IsZero() {
			*c.pick(&p) = *c.pick(fallback)
		}
	}
	return p, nil
}

// tierThresholds lists the N of "_above_Nk_tokens" suffixes on token-price
// fields (not on per-image, per-second or priority variants).
func (e liteLLMEntry) tierThresholds() []int64 {
	set := map[int64]bool{}
	for field := range e {
		for _, c := range liteLLMClasses {
			for _, base := range c.fields {
				rest, ok := strings.CutPrefix(field, base+"_above_")
				if !ok {
					continue
				}
				num, ok := strings.CutSuffix(rest, "k_tokens")
				if n, err := strconv.ParseInt(num, 10, 64); ok && err == nil && n > 0 {
					set[n*1000] = true
				}
			}
		}
	}
	out := make([]int64, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// convertLiteLLM turns one entry into a row, or explains why not.
func convertLiteLLM(key string, raw json.RawMessage, eff string) (*ModelSpec, string, string) {
	if key == "sample_spec" {
		return nil, "", "LiteLLM's field documentation, not a model"
	}
	var e liteLLMEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return nil, "", "not a model entry (value is not a JSON object)"
	}
	var mode, lprov string
	_ = json.Unmarshal(e["mode"], &mode)
	_ = json.Unmarshal(e["litellm_provider"], &lprov)
	if mode == "" {
		return nil, "", "no mode"
	}
	if !liteLLMEligibleMode(mode) {
		return nil, "", fmt.Sprintf("mode %q is not priced per text token (only chat, embedding, completion, responses are imported)", mode)
	}
	_, hasIn := e["input_cost_per_token"]
	_, hasOut := e["output_cost_per_token"]
	_, hasTiers := e["tiered_pricing"]
	if !hasIn && !hasOut && !hasTiers {
		return nil, "", "no per-token prices (priced per second, character, image or request)"
	}
	if lprov == "" {
		return nil, "", "no litellm_provider"
	}
	prov := liteLLMProvider(lprov)
	spec := &ModelSpec{
		Model:         liteLLMModelName(key, lprov, prov),
		EffectiveFrom: eff,
		Source:        "litellm " + key,
	}
	fail := func(err error) (*ModelSpec, string, string) { return nil, "", err.Error() }

	switch {
	case hasTiers && (hasIn || hasOut):
		return nil, "", "has both flat prices and tiered_pricing"
	case hasTiers:
		base, tier, err := e.tieredPricing()
		if err != nil {
			return fail(err)
		}
		spec.PriceSpec, spec.LongContext = base, tier
	default:
		base, err := e.prices("", nil)
		if err != nil {
			return fail(err)
		}
		spec.PriceSpec = base
		switch ts := e.tierThresholds(); len(ts) {
		case 0:
		case 1:
			suffix := fmt.Sprintf("_above_%dk_tokens", ts[0]/1000)
			tp, err := e.prices(suffix, &base)
			if err != nil {
				return fail(err)
			}
			// A tier's 1h write is "cache_creation_input_token_cost_above_1hr" +
			// suffix, so prices() finds it under the cache_write_1h class.
			spec.LongContext = &TierSpec{ThresholdTokens: ts[0], PriceSpec: tp}
		default:
			return nil, "", fmt.Sprintf("long-context thresholds %v: the catalog holds one tier per row", ts)
		}
	}
	if spec.Input.IsZero() {
		return nil, "", "no input_cost_per_token"
	}
	if spec.Output.IsZero() {
		if mode != "embedding" {
			return nil, "", "no output_cost_per_token"
		}
		spec.Output = NewDecimal("0") // embeddings produce no output tokens
	}
	if allZero(spec) {
		return nil, "", "every token price is 0; importing it would make the model free"
	}
	if v, ok, err := e.rat("input_cost_per_request"); err != nil {
		return fail(err)
	} else if ok && v.Sign() != 0 {
		fee, err := perCallFee("input_cost_per_request", v)
		if err != nil {
			return fail(err)
		}
		spec.PerRequest = NewDecimal(fee)
	}
	// LiteLLM's max_tokens is documented as max_output_tokens when known,
	// else max_input_tokens; the context window bounds output either way.
	for _, field := range []string{"max_output_tokens", "max_tokens", "max_input_tokens"} {
		n, ok, err := e.intField(field)
		if err != nil {
			return fail(err)
		}
		if ok && n > 0 {
			spec.MaxOutputTokens = n
			break
		}
	}
	if spec.MaxOutputTokens == 0 {
		// A row that charges output needs a cap to bound the hold of a
		// request that sets no max_tokens; the source says which rows got
		// the default, for review.
		spec.MaxOutputTokens = LiteLLMDefaultMaxOutputTokens
		if row, errs := spec.compile(prov); len(errs) == 0 && row.chargesOutput() {
			spec.Source += liteLLMDefaultCapNote
		} else {
			spec.MaxOutputTokens = 0
		}
	}
	if n, ok, err := e.intField("max_input_tokens"); err != nil {
		return fail(err)
	} else if ok {
		spec.ContextWindow = n
	}
	if spec.Output.String() == "0" && mode == "embedding" {
		spec.MaxOutputTokens = 0 // an embedding's "max_tokens" is its input limit
	}
	if _, errs := spec.compile(prov); len(errs) > 0 {
		return nil, "", "fails catalog validation: " + errors.Join(errs...).Error()
	}
	return spec, prov, ""
}

// tieredPricing maps LiteLLM's range-based tiers onto base rates plus one
// long-context tier. Only the two-step form [0, X], [X, Y] fits; the tier
// applies above X, following the catalog's strictly-greater rule.
func (e liteLLMEntry) tieredPricing() (PriceSpec, *TierSpec, error) {
	var tiers []liteLLMEntry
	if err := json.Unmarshal(e["tiered_pricing"], &tiers); err != nil {
		return PriceSpec{}, nil, fmt.Errorf("tiered_pricing is not a list of objects: %w", err)
	}
	if len(tiers) != 2 {
		return PriceSpec{}, nil, fmt.Errorf("tiered_pricing has %d steps: the catalog holds one long-context tier per row", len(tiers))
	}
	var rng [2]json.Number
	if err := json.Unmarshal(tiers[0]["range"], &rng); err != nil {
		return PriceSpec{}, nil, fmt.Errorf("tiered_pricing[0].range: %w", err)
	}
	lo, ok1 := new(big.Rat).SetString(rng[0].String())
	hi, ok2 := new(big.Rat).SetString(rng[1].String())
	if !ok1 || !ok2 || lo.Sign() != 0 || !hi.IsInt() || !hi.Num().IsInt64() || hi.Sign() <= 0 {
		return PriceSpec{}, nil, fmt.Errorf("tiered_pricing[0].range %v is not [0, N]", rng)
	}
	base, err := tiers[0].prices("", nil)
	if err != nil {
		return PriceSpec{}, nil, fmt.Errorf("tiered_pricing[0]: %w", err)
	}
	tp, err := tiers[1].prices("", &base)
	if err != nil {
		return PriceSpec{}, nil, fmt.Errorf("tiered_pricing[1]: %w", err)
	}
	return base, &TierSpec{ThresholdTokens: hi.Num().Int64(), PriceSpec: tp}, nil
}

func allZero(s *ModelSpec) bool {
	p := s.PriceSpec
	for _, d := range []Decimal{p.Input, p.CachedInput, p.CacheWrite5m, p.CacheWrite1h, p.Output, p.Reasoning} {
		if !d.IsZero() && d.String() != "0" {
			return false
		}
	}
	return true
}
