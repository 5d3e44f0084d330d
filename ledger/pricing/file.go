package pricing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// File is the catalog file format (docs/pricing.md) as it is read from and
// written to YAML. It holds text, not numbers; Parse turns it into a Catalog.
type File struct {
	// Version names this price list; it is recorded with every journal
	// entry's price row so a charge can be traced to the list that made it.
	Version string `json:"version"`
	// Providers maps a lower-case provider id (openai, anthropic, …) to its
	// model rows.
	Providers map[string][]ModelSpec `json:"providers"`
}

// PriceSpec is one full set of token prices in USD per 1M tokens.
type PriceSpec struct {
	Input        Decimal `json:"input,omitzero"`
	CachedInput  Decimal `json:"cached_input,omitzero"`
	CacheWrite5m Decimal `json:"cache_write_5m,omitzero"`
	CacheWrite1h Decimal `json:"cache_write_1h,omitzero"`
	Output       Decimal `json:"output,omitzero"`
	Reasoning    Decimal `json:"reasoning,omitzero"`
}

// TierSpec is a long-context tier: when a request's prompt-side tokens are
// strictly greater than ThresholdTokens, its own prices apply to every
// token of the request.
type TierSpec struct {
	ThresholdTokens int64 `json:"threshold_tokens"`
	PriceSpec
}

// ModelSpec is one price row: one model of one provider from one date on.
type ModelSpec struct {
	Model         string   `json:"model"`
	Aliases       []string `json:"aliases,omitempty"`
	EffectiveFrom string   `json:"effective_from"`
	PriceSpec
	PerRequest      Decimal   `json:"per_request,omitzero"`
	PerToolCall     Decimal   `json:"per_tool_call,omitzero"`
	LongContext     *TierSpec `json:"long_context,omitempty"`
	MaxOutputTokens int64     `json:"max_output_tokens,omitempty"`
	ContextWindow   int64     `json:"context_window,omitempty"`
	// Source says where the prices come from; free text.
	Source string `json:"source,omitempty"`
}

// Bytes renders the file in the catalog YAML format. Keys keep the order of
// the documentation (model first) rather than the alphabetical order a
// generic marshaller would give, and every string is double-quoted so no
// price can be read back as a YAML number.
func (f *File) Bytes() []byte {
	var b bytes.Buffer
	w := func(indent int, key string, v string) {
		fmt.Fprintf(&b, "%s%s: %s\n", strings.Repeat(" ", indent), key, v)
	}
	q := func(s string) string {
		j, _ := json.Marshal(s) // a JSON string is a valid YAML double-quoted scalar
		return string(j)
	}
	prices := func(indent int, p PriceSpec) {
		for _, kv := range []struct {
			k string
			d Decimal
		}{
			{"input", p.Input}, {"cached_input", p.CachedInput}, {"cache_write_5m", p.CacheWrite5m},
			{"cache_write_1h", p.CacheWrite1h}, {"output", p.Output}, {"reasoning", p.Reasoning},
		} {
			if !kv.d.IsZero() {
				w(indent, kv.k, q(kv.d.text))
			}
		}
	}
	w(0, "version", q(f.Version))
	if len(f.Providers) == 0 {
		w(0, "providers", "{}")
		return b.Bytes()
	}
	b.WriteString("providers:\n")
	names := make([]string, 0, len(f.Providers))
	for p := range f.Providers {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		rows := f.Providers[p]
		if len(rows) == 0 {
			w(2, q(p), "[]")
			continue
		}
		fmt.Fprintf(&b, "  %s:\n", q(p))
		for _, m := range rows {
			fmt.Fprintf(&b, "    - model: %s\n", q(m.Model))
			if m.Source != "" {
				w(6, "source", q(m.Source))
			}
			if len(m.Aliases) > 0 {
				as := make([]string, len(m.Aliases))
				for i, a := range m.Aliases {
					as[i] = q(a)
				}
				w(6, "aliases", "["+strings.Join(as, ", ")+"]")
			}
			w(6, "effective_from", q(m.EffectiveFrom))
			prices(6, m.PriceSpec)
			if !m.PerRequest.IsZero() {
				w(6, "per_request", q(m.PerRequest.text))
			}
			if !m.PerToolCall.IsZero() {
				w(6, "per_tool_call", q(m.PerToolCall.text))
			}
			if m.LongContext != nil {
				b.WriteString("      long_context:\n")
				w(8, "threshold_tokens", fmt.Sprint(m.LongContext.ThresholdTokens))
				prices(8, m.LongContext.PriceSpec)
			}
			if m.MaxOutputTokens != 0 {
				w(6, "max_output_tokens", fmt.Sprint(m.MaxOutputTokens))
			}
			if m.ContextWindow != 0 {
				w(6, "context_window", fmt.Sprint(m.ContextWindow))
			}
		}
	}
	return b.Bytes()
}
