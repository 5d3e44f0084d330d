package provider

import (
	"reflect"
	"strings"
	"testing"

	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/tidwall/gjson"
)

func TestNormalizeOpenAI(t *testing.T) {
	tests := []struct {
		name  string
		usage string
		paths openAIPaths
		want  pricing.Usage
		warn  string // substring of the one expected warning, "" for none
	}{
		{"subset reasoning", `{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150,"completion_tokens_details":{"reasoning_tokens":30}}`,
			chatUsagePaths, pricing.Usage{InputTokens: 100, OutputTokens: 50, ReasoningTokens: 30}, ""},
		{"additive reasoning (xAI)", `{"prompt_tokens":100,"completion_tokens":50,"total_tokens":180,"completion_tokens_details":{"reasoning_tokens":30}}`,
			chatUsagePaths, pricing.Usage{InputTokens: 100, OutputTokens: 80, ReasoningTokens: 30}, ""},
		{"no total: subset", `{"prompt_tokens":100,"completion_tokens":50,"completion_tokens_details":{"reasoning_tokens":30}}`,
			chatUsagePaths, pricing.Usage{InputTokens: 100, OutputTokens: 50, ReasoningTokens: 30}, ""},
		{"inconsistent total", `{"prompt_tokens":100,"completion_tokens":50,"total_tokens":999,"completion_tokens_details":{"reasoning_tokens":30}}`,
			chatUsagePaths, pricing.Usage{InputTokens: 100, OutputTokens: 50, ReasoningTokens: 30}, "matches neither"},
		{"cached subset", `{"prompt_tokens":1250,"completion_tokens":2,"total_tokens":1252,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0}}`,
			chatUsagePaths, pricing.Usage{InputTokens: 226, CacheReadTokens: 1024, OutputTokens: 2}, ""},
		{"cached above prompt", `{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":64}}`,
			chatUsagePaths, pricing.Usage{CacheReadTokens: 10, OutputTokens: 2}, "cached 64 > prompt 10"},
		{"deepseek hit/miss win over details", `{"prompt_tokens":1000,"completion_tokens":200,"total_tokens":1200,"prompt_tokens_details":{"cached_tokens":700},"prompt_cache_hit_tokens":768,"prompt_cache_miss_tokens":232}`,
			chatUsagePaths, pricing.Usage{InputTokens: 232, CacheReadTokens: 768, OutputTokens: 200}, ""},
		{"deepseek without prompt_tokens", `{"completion_tokens":5,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":2}`,
			chatUsagePaths, pricing.Usage{InputTokens: 2, CacheReadTokens: 8, OutputTokens: 5}, ""},
		{"deepseek inconsistent", `{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":2}`,
			chatUsagePaths, pricing.Usage{InputTokens: 2, CacheReadTokens: 8, OutputTokens: 5}, "hit 8 + miss 2 != prompt 11"},
		{"responses", `{"input_tokens":2110,"input_tokens_details":{"cached_tokens":1024},"output_tokens":812,"output_tokens_details":{"reasoning_tokens":448},"total_tokens":2922}`,
			responsesUsagePaths, pricing.Usage{InputTokens: 1086, CacheReadTokens: 1024, OutputTokens: 812, ReasoningTokens: 448}, ""},
		{"responses without details", `{"input_tokens":37,"output_tokens":11,"total_tokens":48}`,
			responsesUsagePaths, pricing.Usage{InputTokens: 37, OutputTokens: 11}, ""},
		{"nulls, floats, negatives", `{"prompt_tokens":12.0,"completion_tokens":-3,"total_tokens":null,"prompt_tokens_details":null}`,
			chatUsagePaths, pricing.Usage{InputTokens: 12}, ""},
		{"float rounding", `{"prompt_tokens":12.6,"completion_tokens":"7","total_tokens":13}`,
			chatUsagePaths, pricing.Usage{InputTokens: 13}, ""},
		{"reasoning above output", `{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"completion_tokens_details":{"reasoning_tokens":5}}`,
			chatUsagePaths, pricing.Usage{InputTokens: 1, OutputTokens: 2, ReasoningTokens: 5}, "reasoning 5 > output 2"},
	}
	for _, tc := range tests {
		got, warn := normalizeOpenAI(gjson.Parse(tc.usage), tc.paths)
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
		checkWarn(t, tc.name, warn, tc.warn)
	}
}

func checkWarn(t *testing.T, name string, warn []string, want string) {
	t.Helper()
	switch {
	case want == "" && len(warn) != 0:
		t.Errorf("%s: unexpected warnings %q", name, warn)
	case want != "" && (len(warn) != 1 || !strings.Contains(warn[0], want)):
		t.Errorf("%s: warnings %q, want one containing %q", name, warn, want)
	}
}

func TestNormalizeAnthropicOverlay(t *testing.T) {
	tests := []struct {
		name   string
		usages []string // message_start usage, then message_delta usages
		want   pricing.Usage
		warn   string
	}{
		{"breakdown from start, totals repeated in delta", []string{
			`{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":10000,"cache_creation":{"ephemeral_5m_input_tokens":1500,"ephemeral_1h_input_tokens":500},"output_tokens":1}`,
			`{"input_tokens":50,"cache_creation_input_tokens":2000,"cache_read_input_tokens":10000,"output_tokens":400,"server_tool_use":{"web_search_requests":2,"web_fetch_requests":3}}`,
		}, pricing.Usage{InputTokens: 50, CacheReadTokens: 10000, CacheWrite5mTokens: 1500, CacheWrite1hTokens: 500, OutputTokens: 400, ToolCalls: 2}, ""},
		{"cumulative deltas are overwritten, never added", []string{
			`{"input_tokens":10,"output_tokens":1}`, `{"output_tokens":5}`, `{"output_tokens":15}`,
		}, pricing.Usage{InputTokens: 10, OutputTokens: 15}, ""},
		{"null fields do not erase", []string{
			`{"input_tokens":10,"cache_read_input_tokens":7,"output_tokens":1}`, `{"input_tokens":null,"cache_read_input_tokens":null,"output_tokens":4,"server_tool_use":null}`,
		}, pricing.Usage{InputTokens: 10, CacheReadTokens: 7, OutputTokens: 4}, ""},
		{"no breakdown: all 5m", []string{`{"input_tokens":4,"cache_creation_input_tokens":1800,"output_tokens":5}`},
			pricing.Usage{InputTokens: 4, CacheWrite5mTokens: 1800, OutputTokens: 5}, ""},
		{"only 1h in breakdown", []string{`{"input_tokens":4,"cache_creation_input_tokens":900,"cache_creation":{"ephemeral_1h_input_tokens":900},"output_tokens":5}`},
			pricing.Usage{InputTokens: 4, CacheWrite1hTokens: 900, OutputTokens: 5}, ""},
		{"breakdown disagrees: total wins", []string{`{"input_tokens":4,"cache_creation_input_tokens":1000,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":600},"output_tokens":5}`},
			pricing.Usage{InputTokens: 4, CacheWrite5mTokens: 400, CacheWrite1hTokens: 600, OutputTokens: 5}, "5m 100 + 1h 600 != cache_creation_input_tokens 1000"},
		{"breakdown without total", []string{`{"input_tokens":4,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":600},"output_tokens":5}`},
			pricing.Usage{InputTokens: 4, CacheWrite5mTokens: 100, CacheWrite1hTokens: 600, OutputTokens: 5}, ""},
		{"thinking is informational", []string{`{"input_tokens":4,"output_tokens":50,"output_tokens_details":{"thinking_tokens":30}}`},
			pricing.Usage{InputTokens: 4, OutputTokens: 50, ReasoningTokens: 30}, ""},
	}
	for _, tc := range tests {
		var a anthropicUsage
		for _, u := range tc.usages {
			a.overlay(gjson.Parse(u))
		}
		got, warn := a.normalize()
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
		checkWarn(t, tc.name, warn, tc.warn)
	}
}

func TestNormalizeGemini(t *testing.T) {
	tests := []struct {
		name  string
		usage string
		want  pricing.Usage
		warn  string
	}{
		{"cache, thoughts", `{"promptTokenCount":12000,"candidatesTokenCount":500,"totalTokenCount":13700,"cachedContentTokenCount":8000,"thoughtsTokenCount":1200}`,
			pricing.Usage{InputTokens: 4000, CacheReadTokens: 8000, OutputTokens: 1700, ReasoningTokens: 1200}, ""},
		{"tool use prompt is input", `{"promptTokenCount":100,"candidatesTokenCount":10,"toolUsePromptTokenCount":40,"totalTokenCount":150}`,
			pricing.Usage{InputTokens: 140, OutputTokens: 10}, ""},
		{"prompt only snapshot", `{"promptTokenCount":5,"totalTokenCount":5}`, pricing.Usage{InputTokens: 5}, ""},
		{"bad total", `{"promptTokenCount":5,"candidatesTokenCount":1,"totalTokenCount":9}`, pricing.Usage{InputTokens: 5, OutputTokens: 1}, "totalTokenCount 9"},
		{"cached above prompt", `{"promptTokenCount":5,"cachedContentTokenCount":9}`, pricing.Usage{CacheReadTokens: 5}, "cached 9 > prompt 5"},
	}
	for _, tc := range tests {
		got, warn := normalizeGemini(gjson.Parse(tc.usage))
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.name, got, tc.want)
		}
		checkWarn(t, tc.name, warn, tc.warn)
	}
}

func TestSettle(t *testing.T) {
	req := Request{EstInputTokens: 500}
	final := pricing.Usage{InputTokens: 10, OutputTokens: 20}
	tests := []struct {
		name      string
		res       Result
		want      pricing.Usage
		estimated bool
	}{
		{"final usage as is", Result{Usage: final, HaveUsage: true, UsageFinal: true, OutputBytes: 9999}, final, false},
		{"nothing seen", Result{OutputBytes: 31}, pricing.Usage{InputTokens: 500, OutputTokens: 11}, true},
		{"nothing at all", Result{}, pricing.Usage{InputTokens: 500}, true},
		{"input side seen (anthropic start)", Result{Usage: pricing.Usage{InputTokens: 50, CacheReadTokens: 100, OutputTokens: 1}, HaveUsage: true, OutputBytes: 30},
			pricing.Usage{InputTokens: 50, CacheReadTokens: 100, OutputTokens: 10}, true},
		{"snapshot above bytes (gemini)", Result{Usage: pricing.Usage{InputTokens: 5, OutputTokens: 225, ReasoningTokens: 186}, HaveUsage: true, OutputBytes: 106},
			pricing.Usage{InputTokens: 5, OutputTokens: 225, ReasoningTokens: 186}, true},
		{"tool calls kept", Result{Usage: pricing.Usage{ToolCalls: 1}, OutputBytes: 3}, pricing.Usage{InputTokens: 500, OutputTokens: 1, ToolCalls: 1}, true},
	}
	for _, tc := range tests {
		got, est := tc.res.Settle(req)
		if !reflect.DeepEqual(got, tc.want) || est != tc.estimated {
			t.Errorf("%s: Settle = %+v, %v; want %+v, %v", tc.name, got, est, tc.want, tc.estimated)
		}
	}
}
