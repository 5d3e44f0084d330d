package pricing

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

var importDate = time.Date(2026, 7, 24, 0, 0, 0, 0, time.UTC)

// Every conversion rule on a small hand-written input: the golden holds the
// YAML written and every skipped key with its reason.
func TestImportLiteLLMEdgeCases(t *testing.T) {
	data, err := os.ReadFile("testdata/litellm/edge_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	f, skipped, err := ImportLiteLLM(data, importDate)
	if err != nil {
		t.Fatal(err)
	}
	out := f.Bytes()
	if _, err := Parse(out); err != nil {
		t.Fatalf("imported file does not parse: %v\n%s", err, out)
	}
	var b strings.Builder
	b.Write(out)
	b.WriteString("# skipped:\n")
	for _, s := range skipped {
		fmt.Fprintf(&b, "# %s: %s\n", s.Key, s.Reason)
	}
	golden(t, "testdata/litellm/edge_cases.golden", b.String())

	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	if n := countRows(f) + len(skipped); n != len(top) {
		t.Errorf("%d rows + %d skipped != %d keys", countRows(f), len(skipped), len(top))
	}
}

func TestImportLiteLLMNotAnObject(t *testing.T) {
	for _, in := range []string{``, `[]`, `"x"`, `{"a":`} {
		if _, _, err := ImportLiteLLM([]byte(in), importDate); err == nil {
			t.Errorf("ImportLiteLLM(%q) succeeded", in)
		}
	}
}

func countRows(f *File) int {
	n := 0
	for _, rows := range f.Providers {
		n += len(rows)
	}
	return n
}

// liteLLMSnapshot reads the shared LiteLLM snapshot next to the repository
// (../shared/data from the repo root). A missing file fails the test in CI
// (CI or REDIS_ADDR set: CI always has the file, so its absence is a broken
// checkout, not a reason to pass) and skips it on a developer machine.
func liteLLMSnapshot(t *testing.T) []byte {
	t.Helper()
	path := filepath.Join(repoRoot(t), "..", "shared", "data", "litellm-model-prices.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		missingSnapshot(t, path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// missingSnapshot fails under CI and skips elsewhere.
func missingSnapshot(t testing.TB, path string) {
	t.Helper()
	for _, v := range []string{"CI", "REDIS_ADDR"} {
		if os.Getenv(v) != "" {
			t.Fatalf("LiteLLM snapshot not present at %s, and %s is set: CI must have ../shared/data", path, v)
			return // only reached with a recording TB
		}
	}
	t.Skipf("LiteLLM snapshot not present at %s (set CI to make this a failure)", path)
}

// tbRecorder records how missingSnapshot ended instead of ending the test.
type tbRecorder struct {
	testing.TB
	failed, skipped bool
}

func (r *tbRecorder) Helper()               {}
func (r *tbRecorder) Fatalf(string, ...any) { r.failed = true }
func (r *tbRecorder) Skipf(string, ...any)  { r.skipped = true }

func TestMissingSnapshotFailsInCI(t *testing.T) {
	for _, tc := range []struct {
		ci, redis  string
		wantFailed bool
	}{
		{"", "", false},
		{"true", "", true},
		{"", "localhost:6379", true},
		{"1", "localhost:6379", true},
	} {
		t.Setenv("CI", tc.ci)
		t.Setenv("REDIS_ADDR", tc.redis)
		r := &tbRecorder{TB: t}
		missingSnapshot(r, "/nonexistent/litellm-model-prices.json")
		if r.failed != tc.wantFailed || r.skipped == tc.wantFailed {
			t.Errorf("CI=%q REDIS_ADDR=%q: failed=%v skipped=%v, want failed=%v", tc.ci, tc.redis, r.failed, r.skipped, tc.wantFailed)
		}
	}
}

// sourceKey returns the LiteLLM key an imported row's source names, and
// whether the row got LiteLLMDefaultMaxOutputTokens.
func sourceKey(source string) (key string, defaultCap, ok bool) {
	key, ok = strings.CutPrefix(source, "litellm ")
	key, defaultCap = strings.CutSuffix(key, liteLLMDefaultCapNote)
	return key, defaultCap, ok
}

func TestImportLiteLLMSnapshot(t *testing.T) {
	data := liteLLMSnapshot(t)
	f, skipped, err := ImportLiteLLM(data, importDate)
	if err != nil {
		t.Fatal(err)
	}

	// Independent count of what must be accounted for.
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	eligible := map[string]bool{}
	for k, raw := range top {
		var e map[string]json.RawMessage
		if json.Unmarshal(raw, &e) != nil {
			continue
		}
		var mode string
		_ = json.Unmarshal(e["mode"], &mode)
		_, in := e["input_cost_per_token"]
		_, out := e["output_cost_per_token"]
		_, tiers := e["tiered_pricing"]
		if liteLLMEligibleMode(mode) && (in || out || tiers) && k != "sample_spec" {
			eligible[k] = true
		}
	}
	imported := map[string]bool{}
	defaulted := 0
	for _, rows := range f.Providers {
		for _, r := range rows {
			key, defaultCap, ok := sourceKey(r.Source)
			if !ok || imported[key] {
				t.Fatalf("row %s/%s has source %q", r.Model, r.EffectiveFrom, r.Source)
			}
			imported[key] = true
			var e map[string]json.RawMessage
			if err := json.Unmarshal(top[key], &e); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			_, hasLimit := e["max_output_tokens"]
			if _, ok := e["max_tokens"]; ok {
				hasLimit = true
			}
			if _, ok := e["max_input_tokens"]; ok {
				hasLimit = true
			}
			switch {
			case defaultCap && (hasLimit || r.MaxOutputTokens != LiteLLMDefaultMaxOutputTokens):
				t.Errorf("%s: source says default cap, but entry has a limit (%v) or row cap is %d", key, hasLimit, r.MaxOutputTokens)
			case !defaultCap && !hasLimit && r.MaxOutputTokens != 0:
				t.Errorf("%s: no limit in LiteLLM and no default-cap note, but max_output_tokens %d", key, r.MaxOutputTokens)
			}
			if defaultCap {
				defaulted++
			}
		}
	}
	reasons := map[string]int{}
	skippedEligible := 0
	for _, s := range skipped {
		if imported[s.Key] {
			t.Errorf("%s both imported and skipped", s.Key)
		}
		if s.Reason == "" {
			t.Errorf("%s skipped without a reason", s.Key)
		}
		if eligible[s.Key] {
			skippedEligible++
			r := s.Reason
			if i := strings.IndexAny(r, "=:(\""); i > 0 {
				r = r[:i] // group "input_cost_per_token = 0.015 …" style reasons
			}
			reasons[r]++
		}
	}
	for k := range imported {
		if !eligible[k] {
			t.Errorf("%s imported but not an eligible chat/embedding/completion/responses entry with token prices", k)
		}
	}
	if len(imported)+len(skipped) != len(top) {
		t.Errorf("imported %d + skipped %d != %d keys", len(imported), len(skipped), len(top))
	}
	if len(imported)+skippedEligible != len(eligible) {
		t.Errorf("eligible %d != imported %d + skipped eligible %d", len(eligible), len(imported), skippedEligible)
	}
	t.Logf("%d keys, %d eligible, %d imported (%d with the default cap), %d eligible skipped",
		len(top), len(eligible), len(imported), defaulted, skippedEligible)
	var rk []string
	for r := range reasons {
		rk = append(rk, r)
	}
	sort.Strings(rk)
	for _, r := range rk {
		t.Logf("  skipped %4d × %s", reasons[r], r)
	}
	// The sums above balance even if a regression drops rows into skipped,
	// so the counts of the 2026-07-24 snapshot are pinned exactly; a new
	// snapshot must update them after reviewing the logged reasons.
	for _, c := range []struct {
		what      string
		got, want int
	}{
		{"keys", len(top), 2985},
		{"eligible", len(eligible), 2403},
		{"imported", len(imported), 2261},
		{"imported with the default output cap", defaulted, 62},
		{"eligible skipped", skippedEligible, 142},
		{"skipped: all prices 0", reasons["every token price is 0; importing it would make the model free"], 94},
		{"skipped: duplicate", reasons["duplicate of "], 17},
		{"skipped: input price out of range", reasons["input_cost_per_token "], 14},
		{"skipped: output price out of range", reasons["output_cost_per_token "], 2},
		{"skipped: no input price", reasons["no input_cost_per_token"], 3},
		{"skipped: 3-step tiers", reasons["tiered_pricing has 3 steps"], 8},
		{"skipped: 4-step tiers", reasons["tiered_pricing has 4 steps"], 4},
		{"skipped: fails catalog validation", reasons["fails catalog validation"], 0},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.what, c.got, c.want)
		}
	}

	// The written file is a valid catalog, and spot checks go through it.
	c, err := Parse(f.Bytes())
	if err != nil {
		t.Fatalf("imported file does not parse: %v", err)
	}
	if len(c.Rows()) != len(imported) {
		t.Errorf("parsed %d rows, imported %d", len(c.Rows()), len(imported))
	}
	for _, tc := range []struct {
		provider, model string
		want            Rates
		tier            *Tier
		maxOut, ctx     int64
	}{
		{"anthropic", "claude-sonnet-4-5", Rates{Input: 3000000, CachedInput: 300000, CacheWrite5m: 3750000, CacheWrite1h: 6000000, Output: 15000000},
			&Tier{200000, Rates{Input: 6000000, CachedInput: 600000, CacheWrite5m: 7500000, CacheWrite1h: 12000000, Output: 22500000}}, 64000, 200000},
		{"openai", "gpt-4o", Rates{Input: 2500000, CachedInput: 1250000, CacheWrite5m: 2500000, CacheWrite1h: 2500000, Output: 10000000}, nil, 16384, 128000},
		{"openai", "gpt-4o-mini", Rates{Input: 150000, CachedInput: 75000, CacheWrite5m: 150000, CacheWrite1h: 150000, Output: 600000}, nil, 16384, 128000},
		{"openai", "text-embedding-3-small", Rates{Input: 20000, CachedInput: 20000, CacheWrite5m: 20000, CacheWrite1h: 20000}, nil, 0, 8191},
		{"gemini", "gemini-2.5-pro", Rates{Input: 1250000, CachedInput: 125000, CacheWrite5m: 1250000, CacheWrite1h: 1250000, Output: 10000000},
			&Tier{200000, Rates{Input: 2500000, CachedInput: 250000, CacheWrite5m: 2500000, CacheWrite1h: 2500000, Output: 15000000}}, 65535, 1048576},
		{"gemini", "gemini-2.5-flash", Rates{Input: 300000, CachedInput: 30000, CacheWrite5m: 300000, CacheWrite1h: 300000, Output: 2500000,
			Reasoning: 2500000, HasReasoning: true}, nil, 65535, 1048576},
		{"xai", "grok-4-fast-reasoning", Rates{Input: 200000, CachedInput: 50000, CacheWrite5m: 200000, CacheWrite1h: 200000, Output: 500000},
			// No cache-read variant above 128k: LiteLLM keeps the base cache price.
			// No cache-write price at all: the catalog rule bills writes as (tier) input.
			&Tier{128000, Rates{Input: 400000, CachedInput: 50000, CacheWrite5m: 400000, CacheWrite1h: 400000, Output: 1000000}}, 2000000, 2000000},
		// "deepseek-chat" sorts before "deepseek/deepseek-chat" (whose cache write is
		// 0.0) and wins; the other is skipped as its duplicate.
		{"deepseek", "deepseek-chat", Rates{Input: 280000, CachedInput: 28000, CacheWrite5m: 280000, CacheWrite1h: 280000, Output: 420000}, nil, 8192, 131072},
		// float noise in LiteLLM's numbers: 2.9999900000000002e-06 → $2.99999
		{"databricks", "databricks-claude-3-7-sonnet", Rates{Input: 2999990, CachedInput: 2999990, CacheWrite5m: 2999990, CacheWrite1h: 2999990, Output: 15000020}, nil, 0, 0},
		// no limit of any kind in LiteLLM: imported with the default cap
		{"together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", Rates{Input: 880000, CachedInput: 880000, CacheWrite5m: 880000, CacheWrite1h: 880000, Output: 880000},
			nil, LiteLLMDefaultMaxOutputTokens, 0},
		// two-step tiered_pricing: base below 256000 prompt tokens, tier above
		{"dashscope", "qwen-flash", Rates{Input: 50000, CachedInput: 50000, CacheWrite5m: 50000, CacheWrite1h: 50000, Output: 400000},
			&Tier{256000, Rates{Input: 250000, CachedInput: 250000, CacheWrite5m: 250000, CacheWrite1h: 250000, Output: 2000000}}, 0, 0},
	} {
		row, err := c.Lookup(tc.provider, tc.model, importDate)
		if err != nil {
			t.Errorf("%s/%s: %v", tc.provider, tc.model, err)
			continue
		}
		if row.Rates != tc.want {
			t.Errorf("%s rates:\n got %s\nwant %s", row.ID, dumpRates(row.Rates), dumpRates(tc.want))
		}
		switch {
		case tc.tier == nil && row.LongContext != nil:
			t.Errorf("%s: unexpected tier %+v", row.ID, row.LongContext)
		case tc.tier != nil && (row.LongContext == nil || *row.LongContext != *tc.tier):
			t.Errorf("%s tier = %+v, want %+v", row.ID, row.LongContext, tc.tier)
		}
		if tc.maxOut != 0 && row.MaxOutputTokens != tc.maxOut || tc.ctx != 0 && row.ContextWindow != tc.ctx {
			t.Errorf("%s: max_output %d ctx %d, want %d %d", row.ID, row.MaxOutputTokens, row.ContextWindow, tc.maxOut, tc.ctx)
		}
	}
	for _, want := range []struct{ key, reason string }{
		{"wandb/openai/gpt-oss-120b", "above the $1000 bound"},
		{"sample_spec", "field documentation"},
		{"last_updated", "not a model entry"},
		{"dashscope/qwen3-max", "tiered_pricing has 3 steps"},
		{"dall-e-3", `mode "image_generation"`},
		{"deepseek/deepseek-chat", `duplicate of "deepseek-chat"`},
	} {
		found := false
		for _, s := range skipped {
			if s.Key == want.key {
				found = true
				if !strings.Contains(s.Reason, want.reason) {
					t.Errorf("%s skipped for %q, want %q", s.Key, s.Reason, want.reason)
				}
			}
		}
		if !found {
			t.Errorf("%s was not skipped", want.key)
		}
	}
}

// Compare the hand-maintained default catalog with LiteLLM for models both
// list. Differences are logged for a human to review, not failed: LiteLLM
// is a cross-check, not the source of truth.
func TestDefaultAgainstLiteLLM(t *testing.T) {
	data := liteLLMSnapshot(t)
	f, _, err := ImportLiteLLM(data, importDate)
	if err != nil {
		t.Fatal(err)
	}
	lite, err := Parse(f.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	now := time.Date(2026, 8, 22, 0, 0, 0, 0, time.UTC)
	compared, differ := 0, 0
	for _, r := range def.Rows() {
		if cur, err := def.Lookup(r.Provider, r.Model, now); err != nil || cur != r {
			continue // only rows in force today
		}
		other, err := lite.Lookup(r.Provider, r.Model, importDate)
		if err != nil {
			other = datedLiteLLMRow(lite, r) // LiteLLM lists some models only by snapshot
		}
		if other == nil {
			t.Logf("%-55s not in LiteLLM", r.ID)
			continue
		}
		compared++
		var diffs []string
		cmp := func(name string, a, b int64) {
			if a != b {
				diffs = append(diffs, fmt.Sprintf("%s %s vs %s", name, Rate(a), Rate(b)))
			}
		}
		cmp("input", int64(r.Input), int64(other.Input))
		cmp("cached_input", int64(r.CachedInput), int64(other.CachedInput))
		cmp("cache_write_5m", int64(r.CacheWrite5m), int64(other.CacheWrite5m))
		cmp("cache_write_1h", int64(r.CacheWrite1h), int64(other.CacheWrite1h))
		cmp("output", int64(r.Output), int64(other.Output))
		switch {
		case (r.LongContext == nil) != (other.LongContext == nil):
			diffs = append(diffs, fmt.Sprintf("long_context ours=%v litellm=%v", r.LongContext != nil, other.LongContext != nil))
		case r.LongContext != nil:
			if a, b := r.LongContext.ThresholdTokens, other.LongContext.ThresholdTokens; a != b {
				diffs = append(diffs, fmt.Sprintf("tier threshold %d vs %d", a, b))
			}
			cmp("tier.input", int64(r.LongContext.Input), int64(other.LongContext.Input))
			cmp("tier.output", int64(r.LongContext.Output), int64(other.LongContext.Output))
		}
		if r.MaxOutputTokens != other.MaxOutputTokens || r.ContextWindow != other.ContextWindow {
			diffs = append(diffs, fmt.Sprintf("limits ours %d/%d litellm %d/%d", r.MaxOutputTokens, r.ContextWindow, other.MaxOutputTokens, other.ContextWindow))
		}
		if len(diffs) > 0 {
			differ++
			t.Logf("%-55s vs %-40s %s", r.ID, other.Source, strings.Join(diffs, "; "))
		}
	}
	t.Logf("compared %d current default rows with LiteLLM; %d differ (see above)", compared, differ)
	if compared < 30 {
		t.Errorf("only %d default rows found in LiteLLM: model names or provider mapping drifted", compared)
	}
}

// datedLiteLLMRow finds a LiteLLM row named as a dated snapshot of r.Model
// (e.g. claude-opus-4-20250514 for claude-opus-4), or nil.
func datedLiteLLMRow(lite *Catalog, r *Row) *Row {
	for _, o := range lite.Rows() {
		if rest, ok := strings.CutPrefix(modelKey(o.Model), modelKey(r.Model)); o.Provider == r.Provider && ok && isSnapshotSuffix(rest) {
			return o
		}
	}
	return nil
}
