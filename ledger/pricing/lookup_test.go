package pricing

import (
	"errors"
	"testing"
)

func TestLookup(t *testing.T) {
	def := Default()
	test := mustParseFile(t, "testdata/catalogs/test.yaml")
	const now = "2026-08-22T00:00:00Z"
	for _, tc := range []struct {
		name     string
		cat      *Catalog
		provider string
		model    string
		at       string
		wantID   string // "" means an UnknownModelError is expected
	}{
		// exact names, case and the Gemini resource prefix
		{"exact", def, "openai", "gpt-4o", now, "openai/gpt-4o@2024-08-06"},
		{"case-insensitive model", def, "openai", "GPT-4o", now, "openai/gpt-4o@2024-08-06"},
		{"case-insensitive provider", def, "OpenAI", "gpt-4o", now, "openai/gpt-4o@2024-08-06"},
		{"gemini models/ prefix", def, "gemini", "models/gemini-2.5-pro", now, "gemini/gemini-2.5-pro@2025-06-17"},
		{"with slash in name", def, "groq", "openai/gpt-oss-120b", now, "groq/openai/gpt-oss-120b@2025-08-05"},
		// aliases
		{"alias", def, "anthropic", "claude-sonnet-4-0", now, "anthropic/claude-sonnet-4@2025-05-22"},
		{"alias of grok-4", def, "xai", "grok-4", now, "xai/grok-4-0709@2025-07-09"},
		{"preview alias", def, "gemini", "models/gemini-2.5-flash-preview-05-20", now, "gemini/gemini-2.5-flash@2025-06-17"},
		// dated snapshots resolve by the longest known prefix
		{"openai snapshot", def, "openai", "gpt-4o-2024-08-06", now, "openai/gpt-4o@2024-08-06"},
		{"longest prefix mini", def, "openai", "gpt-4o-mini-2024-07-18", now, "openai/gpt-4o-mini@2024-07-18"},
		{"exact snapshot row beats prefix", def, "openai", "gpt-4o-2024-05-13", now, "openai/gpt-4o-2024-05-13@2024-05-13"},
		{"anthropic snapshot", def, "anthropic", "claude-sonnet-4-5-20250929", now, "anthropic/claude-sonnet-4-5@2025-09-29"},
		{"sonnet 4 snapshot not 4.5", def, "anthropic", "claude-sonnet-4-20250514", now, "anthropic/claude-sonnet-4@2025-05-22"},
		{"opus 4.1 not opus 4", def, "anthropic", "claude-opus-4-1-20250805", now, "anthropic/claude-opus-4-1@2025-08-05"},
		{"vertex @ snapshot", def, "anthropic", "claude-sonnet-4-5@20250929", now, "anthropic/claude-sonnet-4-5@2025-09-29"},
		{"version tag", def, "anthropic", "claude-haiku-4-5-20251001-v1:0", now, "anthropic/claude-haiku-4-5@2025-10-15"},
		{"snapshot of alias", def, "anthropic", "claude-3-7-sonnet-20250219", now, "anthropic/claude-3-7-sonnet@2025-02-24"},
		{"o3 snapshot", def, "openai", "o3-2025-04-16", now, "openai/o3@2025-06-10"},
		// words after a known name are different models, never priced as the base
		{"audio variant", def, "openai", "gpt-4o-audio-preview", now, ""},
		{"moving latest alias", def, "mistral", "mistral-large-latest", now, ""},
		{"gpt-5 chat variant", def, "openai", "gpt-5-chat-latest", now, ""},
		{"single-digit suffix is a version", def, "anthropic", "claude-opus-4-8", now, ""},
		{"shorter than known", def, "openai", "gpt-4", now, ""},
		{"version tag alone", def, "openai", "gpt-4o-v2", now, ""},
		{"bedrock prefix", def, "anthropic", "anthropic.claude-sonnet-4-5-20250929-v1:0", now, ""},
		{"unknown provider", def, "cohere", "command-a-03-2025", now, ""},
		{"empty model", def, "openai", "", now, ""},
		// effective_from: the row in force when the call starts
		{"deepseek before the change", def, "deepseek", "deepseek-chat", "2025-09-05T15:59:59Z", "deepseek/deepseek-chat@2025-02-08T16:00:00Z"},
		{"deepseek at the change", def, "deepseek", "deepseek-chat", "2025-09-05T16:00:00Z", "deepseek/deepseek-chat@2025-09-05T16:00:00Z"},
		{"deepseek V3.2", def, "deepseek", "deepseek-reasoner", "2025-09-29T00:00:00Z", "deepseek/deepseek-reasoner@2025-09-29"},
		{"before any row", def, "deepseek", "deepseek-chat", "2025-02-08T15:59:59Z", ""},
		{"o3 before the cut", def, "openai", "o3", "2025-06-09T23:59:59Z", "openai/o3@2025-04-16"},
		{"stepped first", test, "stepped", "m", "2025-06-01T11:59:59Z", "stepped/m@2025-01-01"},
		{"stepped boundary inclusive", test, "stepped", "m", "2025-06-01T12:00:00Z", "stepped/m@2025-06-01T12:00:00Z"},
		{"stepped time zone", test, "stepped", "m", "2025-06-01T13:59:59+02:00", "stepped/m@2025-01-01"},
		{"stepped last", test, "stepped", "m", "2030-01-01T00:00:00Z", "stepped/m@2026-01-01"},
		// azure: its own rows first, then OpenAI's list prices
		{"azure falls back to openai", def, "azure", "gpt-4o-2024-11-20", now, "openai/gpt-4o@2024-08-06"},
		{"azure own row", test, "azure", "gpt-4o-mini", now, "azure/gpt-4o-mini@2024-07-18"},
		{"azure fallback in test catalog", test, "azure", "gpt-4o", now, "openai/gpt-4o@2024-08-06"},
		{"azure unknown", def, "azure", "my-deployment", now, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := mustTime(t, tc.at)
			row, err := tc.cat.Lookup(tc.provider, tc.model, at)
			if tc.wantID == "" {
				if err == nil {
					t.Fatalf("Lookup = %s, want an unknown-model error", row.ID)
				}
				if !errors.Is(err, ErrUnknownModel) {
					t.Fatalf("error %v does not match ErrUnknownModel", err)
				}
				var ue *UnknownModelError
				if !errors.As(err, &ue) || ue.Provider != tc.provider || ue.Model != tc.model || !ue.At.Equal(at) || ue.Reason == "" {
					t.Fatalf("error is not a complete *UnknownModelError: %#v", err)
				}
				if row != nil {
					t.Fatal("a row came back with the error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Lookup: %v", err)
			}
			if row.ID != tc.wantID {
				t.Errorf("Lookup = %s, want %s", row.ID, tc.wantID)
			}
		})
	}
}

func TestLookupReasons(t *testing.T) {
	def := Default()
	_, err := def.Lookup("deepseek", "deepseek-chat", mustTime(t, "2024-01-01T00:00:00Z"))
	var ue *UnknownModelError
	if !errors.As(err, &ue) || ue.Reason != "model deepseek/deepseek-chat has no price in force yet (earliest row deepseek/deepseek-chat@2025-02-08T16:00:00Z)" {
		t.Errorf("reason for a date before the first row: %v", err)
	}
	_, err = def.Lookup("cohere", "command-a", mustTime(t, "2026-01-01T00:00:00Z"))
	if !errors.As(err, &ue) || ue.Reason != "provider not in catalog "+def.Version() {
		t.Errorf("reason for an unknown provider: %v", err)
	}
}

func TestIsSnapshotSuffix(t *testing.T) {
	for s, want := range map[string]bool{
		"-20250929": true, "-2024-08-06": true, "@20250929": true, "-0709": true, "-001": true,
		"-20250929-v1:0": true, "-2505": true, "-v1": false, "-latest": false, "-preview-05-20": false,
		"-5": false, "-5-20250929": false, "": false, "-": false, "20250929": false, "-2025-": false,
		"-20250929-v1:": false, "-20250929-v": false, "-mini-2024-07-18": false,
	} {
		if got := isSnapshotSuffix(s); got != want {
			t.Errorf("isSnapshotSuffix(%q) = %v, want %v", s, got, want)
		}
	}
}
