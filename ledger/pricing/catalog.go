package pricing

import (
	_ "embed"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/creditgate/creditgate/ledger/money"
)

// ErrInvalidCatalog is wrapped by every error Parse returns.
var ErrInvalidCatalog = errors.New("invalid price catalog")

// Rates is one full set of token prices.
type Rates struct {
	Input        Rate
	CachedInput  Rate
	CacheWrite5m Rate
	CacheWrite1h Rate
	Output       Rate
	// Reasoning prices Usage.ReasoningTokens separately from output, and
	// only when HasReasoning is set; otherwise reasoning is output.
	Reasoning    Rate
	HasReasoning bool
}

// Tier is a long-context tier. It applies when Usage.PromptTokens() is
// strictly greater than ThresholdTokens, and then prices the whole request.
type Tier struct {
	ThresholdTokens int64
	Rates
}

// Row is one compiled price row. Rows returned by a Catalog are shared and
// must be treated as read-only.
type Row struct {
	// ID is stable across catalog versions for the same prices, e.g.
	// "openai/gpt-4o@2024-08-06"; it is what the journal records.
	ID            string
	Provider      string
	Model         string
	Aliases       []string
	EffectiveFrom time.Time
	Rates
	PerRequest  money.Micros
	PerToolCall money.Micros
	LongContext *Tier
	// MaxOutputTokens is the output cap used for worst-case holds when a
	// request sets none. ContextWindow is informational.
	MaxOutputTokens int64
	ContextWindow   int64
	Source          string
}

// Catalog is an immutable, validated price list.
type Catalog struct {
	version   string
	providers map[string]*providerIndex
}

type providerIndex struct {
	// rows maps a model key (see modelKey) to its rows, oldest first.
	rows map[string][]*Row
	// names maps a model key or alias key to the model key it prices.
	names map[string]string
}

//go:embed catalog/default.yaml
var defaultYAML []byte

// Default returns the catalog embedded in the binary
// (ledger/pricing/catalog/default.yaml). It parses on every call, so call
// it once at start-up. It panics only if the embedded file is invalid,
// which the package tests rule out.
func Default() *Catalog {
	c, err := Parse(defaultYAML)
	if err != nil {
		panic(fmt.Sprintf("pricing: embedded default catalog: %v", err))
	}
	return c
}

// Version returns the catalog's version string.
func (c *Catalog) Version() string { return c.version }

// Rows returns every row, ordered by provider, model and effective date.
func (c *Catalog) Rows() []*Row {
	var out []*Row
	for _, p := range c.providers {
		for _, rs := range p.rows {
			out = append(out, rs...)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Provider != b.Provider {
			return a.Provider < b.Provider
		}
		if ka, kb := modelKey(a.Model), modelKey(b.Model); ka != kb {
			return ka < kb
		}
		return a.EffectiveFrom.Before(b.EffectiveFrom)
	})
	return out
}

// Parse reads a catalog file (YAML, or JSON, which is YAML) and validates
// it. Unknown keys are errors, to catch typos such as `cached_imput`.
// Validation reports every problem at once, joined with errors.Join, each
// prefixed with the row it concerns.
func Parse(data []byte) (*Catalog, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCatalog, err)
	}
	c, errs := compile(&f)
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCatalog, errors.Join(errs...))
	}
	return c, nil
}

func compile(f *File) (*Catalog, []error) {
	var errs []error
	if strings.TrimSpace(f.Version) == "" {
		errs = append(errs, errors.New("version: missing"))
	}
	if len(f.Providers) == 0 {
		errs = append(errs, errors.New("providers: no providers"))
	}
	c := &Catalog{version: f.Version, providers: map[string]*providerIndex{}}
	provs := make([]string, 0, len(f.Providers))
	for p := range f.Providers {
		provs = append(provs, p)
	}
	sort.Strings(provs)
	for _, prov := range provs {
		specs := f.Providers[prov]
		if !validProviderID(prov) {
			errs = append(errs, fmt.Errorf("providers.%s: provider id must be lower-case letters, digits, '_', '-' or '.'", prov))
			continue
		}
		if len(specs) == 0 {
			errs = append(errs, fmt.Errorf("providers.%s: no models", prov))
			continue
		}
		idx := &providerIndex{rows: map[string][]*Row{}, names: map[string]string{}}
		c.providers[prov] = idx
		var compiled []*Row
		for i := range specs {
			row, rowErrs := specs[i].compile(prov)
			for _, e := range rowErrs {
				errs = append(errs, fmt.Errorf("providers.%s[%d] (model %q): %w", prov, i, specs[i].Model, e))
			}
			if row != nil {
				compiled = append(compiled, row)
			}
		}
		errs = append(errs, idx.add(prov, compiled)...)
	}
	return c, errs
}

// add indexes a provider's rows and reports duplicates and alias clashes.
func (idx *providerIndex) add(prov string, rows []*Row) []error {
	var errs []error
	for _, r := range rows {
		k := modelKey(r.Model)
		for _, prev := range idx.rows[k] {
			if prev.EffectiveFrom.Equal(r.EffectiveFrom) {
				errs = append(errs, fmt.Errorf("providers.%s: duplicate row %s (model %q and %q, same effective_from)", prov, r.ID, prev.Model, r.Model))
			}
		}
		idx.rows[k] = append(idx.rows[k], r)
		idx.names[k] = k
	}
	for _, r := range rows {
		k := modelKey(r.Model)
		for _, a := range r.Aliases {
			ak := modelKey(a)
			if ak == k {
				continue
			}
			if prev, ok := idx.names[ak]; ok && prev != k {
				errs = append(errs, fmt.Errorf("providers.%s: alias %q of model %q is already the name or an alias of model %q", prov, a, r.Model, prev))
				continue
			}
			idx.names[ak] = k
		}
	}
	for _, rs := range idx.rows {
		sort.SliceStable(rs, func(i, j int) bool { return rs[i].EffectiveFrom.Before(rs[j].EffectiveFrom) })
	}
	return errs
}

func (s *ModelSpec) compile(prov string) (*Row, []error) {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if s.Model == "" {
		add("model: missing")
	} else if strings.ContainsAny(s.Model, " \t\r\n") {
		add("model: %q contains whitespace", s.Model)
	}
	for _, a := range s.Aliases {
		if a == "" || strings.ContainsAny(a, " \t\r\n") {
			add("aliases: %q is empty or contains whitespace", a)
		}
	}
	eff, err := parseEffective(s.EffectiveFrom)
	if err != nil {
		add("effective_from: %w", err)
	}
	r := &Row{
		Provider: prov, Model: s.Model, Aliases: s.Aliases, EffectiveFrom: eff,
		MaxOutputTokens: s.MaxOutputTokens, ContextWindow: s.ContextWindow, Source: s.Source,
	}
	var rateErrs []error
	r.Rates, rateErrs = s.PriceSpec.compile("")
	errs = append(errs, rateErrs...)
	if !s.PerRequest.IsZero() {
		if r.PerRequest, err = s.PerRequest.fee(); err != nil {
			add("per_request: %w", err)
		}
	}
	if !s.PerToolCall.IsZero() {
		if r.PerToolCall, err = s.PerToolCall.fee(); err != nil {
			add("per_tool_call: %w", err)
		}
	}
	if t := s.LongContext; t != nil {
		if t.ThresholdTokens <= 0 {
			add("long_context.threshold_tokens: must be > 0, got %d", t.ThresholdTokens)
		}
		tr, tErrs := t.PriceSpec.compile("long_context.")
		errs = append(errs, tErrs...)
		r.LongContext = &Tier{ThresholdTokens: t.ThresholdTokens, Rates: tr}
	}
	if s.MaxOutputTokens < 0 {
		add("max_output_tokens: must be >= 0, got %d", s.MaxOutputTokens)
	}
	if s.ContextWindow < 0 {
		add("context_window: must be >= 0, got %d", s.ContextWindow)
	}
	if s.MaxOutputTokens == 0 && r.chargesOutput() {
		add("max_output_tokens: required when output is priced (it bounds the worst-case hold of a request without max_tokens)")
	}
	if len(errs) > 0 {
		return nil, errs
	}
	r.ID = prov + "/" + s.Model + "@" + formatEffective(eff)
	return r, nil
}

func (r *Row) chargesOutput() bool {
	if r.Output > 0 || r.Reasoning > 0 {
		return true
	}
	return r.LongContext != nil && (r.LongContext.Output > 0 || r.LongContext.Reasoning > 0)
}

// compile turns text prices into Rates, applying the documented defaults:
// cached_input and both cache writes default to input (a provider with no
// cache discount bills those tokens as plain input; defaulting upward never
// under-charges), and reasoning without its own price is billed as output.
func (p PriceSpec) compile(prefix string) (Rates, []error) {
	var errs []error
	var r Rates
	parse := func(name string, d Decimal, required bool, dst *Rate) bool {
		if d.IsZero() {
			if required {
				errs = append(errs, fmt.Errorf("%s%s: missing", prefix, name))
			}
			return false
		}
		v, err := d.rate()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s%s: %w", prefix, name, err))
			return false
		}
		*dst = v
		return true
	}
	parse("input", p.Input, true, &r.Input)
	parse("output", p.Output, true, &r.Output)
	if !parse("cached_input", p.CachedInput, false, &r.CachedInput) {
		r.CachedInput = r.Input
	}
	if !parse("cache_write_5m", p.CacheWrite5m, false, &r.CacheWrite5m) {
		r.CacheWrite5m = r.Input
	}
	if !parse("cache_write_1h", p.CacheWrite1h, false, &r.CacheWrite1h) {
		r.CacheWrite1h = r.Input
	}
	r.HasReasoning = parse("reasoning", p.Reasoning, false, &r.Reasoning)
	return r, errs
}

func parseEffective(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("missing (RFC3339 time or YYYY-MM-DD date, UTC)")
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC3339 time nor a YYYY-MM-DD date", s)
}

func formatEffective(t time.Time) string {
	if t.Equal(t.Truncate(24 * time.Hour)) {
		return t.Format(time.DateOnly)
	}
	return t.Format(time.RFC3339)
}

func validProviderID(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (i > 0 && (c == '_' || c == '-' || c == '.'))
		if !ok {
			return false
		}
	}
	return true
}

// modelKey is the case-insensitive form model names and aliases are indexed
// and looked up by.
func modelKey(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
