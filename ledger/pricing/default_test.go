package pricing

import (
	"testing"
)

// The embedded catalog parses and covers the models the gateway promises
// to price (providers.md §12); tiers sit where the providers put them.
func TestDefaultCatalogCoverage(t *testing.T) {
	c := Default()
	if c.Version() == "" {
		t.Error("no version")
	}
	now := mustTime(t, "2026-08-22T00:00:00Z")
	for _, tc := range []struct {
		provider, model string
		tier            int64 // expected long-context threshold, 0 for none
	}{
		{"openai", "gpt-4o", 0}, {"openai", "gpt-4o-mini", 0}, {"openai", "gpt-4.1", 0}, {"openai", "gpt-4.1-mini", 0},
		{"openai", "gpt-4.1-nano", 0}, {"openai", "o3", 0}, {"openai", "o4-mini", 0}, {"openai", "gpt-5", 0},
		{"openai", "gpt-5-mini", 0}, {"openai", "gpt-5-nano", 0},
		{"openai", "text-embedding-3-small", 0}, {"openai", "text-embedding-3-large", 0},
		{"anthropic", "claude-opus-4-1", 0}, {"anthropic", "claude-opus-4", 0}, {"anthropic", "claude-opus-4-5", 0},
		{"anthropic", "claude-opus-4-6", 0}, {"anthropic", "claude-opus-4-7", 0},
		{"anthropic", "claude-sonnet-4-5", 200000}, {"anthropic", "claude-sonnet-4", 200000}, {"anthropic", "claude-3-7-sonnet", 0},
		{"anthropic", "claude-haiku-4-5", 0}, {"anthropic", "claude-3-5-haiku", 0},
		{"gemini", "gemini-2.5-pro", 200000}, {"gemini", "gemini-2.5-flash", 0}, {"gemini", "gemini-2.5-flash-lite", 0},
		{"gemini", "gemini-3-pro-preview", 200000},
		{"deepseek", "deepseek-chat", 0}, {"deepseek", "deepseek-reasoner", 0},
		{"xai", "grok-3", 0}, {"xai", "grok-3-mini", 0}, {"xai", "grok-4", 128000}, {"xai", "grok-4-fast-reasoning", 128000},
		{"xai", "grok-code-fast-1", 0},
		{"mistral", "mistral-medium-2505", 0}, {"mistral", "mistral-large-2411", 0}, {"mistral", "mistral-small-2506", 0},
		{"groq", "openai/gpt-oss-120b", 0}, {"groq", "openai/gpt-oss-20b", 0}, {"groq", "llama-3.3-70b-versatile", 0},
		{"groq", "llama-3.1-8b-instant", 0},
		{"azure", "gpt-4o", 0},
	} {
		row, err := c.Lookup(tc.provider, tc.model, now)
		if err != nil {
			t.Errorf("%s/%s: %v", tc.provider, tc.model, err)
			continue
		}
		got := int64(0)
		if row.LongContext != nil {
			got = row.LongContext.ThresholdTokens
		}
		if got != tc.tier {
			t.Errorf("%s: long-context threshold %d, want %d", row.ID, got, tc.tier)
		}
		if row.Output > 0 && (row.MaxOutputTokens <= 0 || row.ContextWindow <= 0) {
			t.Errorf("%s: needs max_output_tokens and context_window for worst-case holds", row.ID)
		}
	}
}

// DeepSeek changed prices at 2025-09-05 16:00 UTC; both lists are in the
// catalog and the change is exact to the second (§12.6).
func TestDefaultDeepSeekPeriods(t *testing.T) {
	c := Default()
	for _, tc := range []struct {
		at                    string
		input, cached, output Rate
	}{
		{"2025-09-05T15:59:59Z", 270000, 70000, 1100000},
		{"2025-09-05T16:00:00Z", 560000, 70000, 1680000},
	} {
		row, err := c.Lookup("deepseek", "deepseek-chat", mustTime(t, tc.at))
		if err != nil {
			t.Fatal(err)
		}
		if row.Input != tc.input || row.CachedInput != tc.cached || row.Output != tc.output {
			t.Errorf("at %s: %s has %s", tc.at, row.ID, dumpRates(row.Rates))
		}
	}
}
