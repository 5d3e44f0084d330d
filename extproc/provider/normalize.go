package provider

import (
	"fmt"
	"math"
	"strings"

	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/tidwall/gjson"
)

// count reads a token count: absent, null or non-numeric is 0; negatives
// are 0; a float is rounded (Cohere-style floats, §1.5).
func count(r gjson.Result) int64 {
	if r.Type != gjson.Number || r.Num <= 0 {
		return 0
	}
	if r.Num >= math.MaxInt64 {
		return math.MaxInt64
	}
	if r.Num == math.Trunc(r.Num) {
		return r.Int()
	}
	return int64(math.Round(r.Num))
}

// present reports whether a usage field was sent with a value.
func present(r gjson.Result) bool { return r.Exists() && r.Type != gjson.Null }

// text returns a JSON string value, or "" for anything else.
func text(r gjson.Result) string {
	if r.Type == gjson.String {
		return r.Str
	}
	return ""
}

// scalar renders a JSON string or number as a string (error codes come as
// either), "" for null/absent.
func scalar(r gjson.Result) string {
	switch r.Type {
	case gjson.String:
		return r.Str
	case gjson.Number:
		return r.Raw
	}
	return ""
}

// openAIPaths names the fields of one OpenAI-family usage object.
type openAIPaths struct {
	prompt, completion, total, cached, reasoning string
}

var (
	chatUsagePaths = openAIPaths{
		prompt: "prompt_tokens", completion: "completion_tokens", total: "total_tokens",
		cached: "prompt_tokens_details.cached_tokens", reasoning: "completion_tokens_details.reasoning_tokens",
	}
	responsesUsagePaths = openAIPaths{
		prompt: "input_tokens", completion: "output_tokens", total: "total_tokens",
		cached: "input_tokens_details.cached_tokens", reasoning: "output_tokens_details.reasoning_tokens",
	}
)

// normalizeOpenAI applies subset semantics (cached ⊂ prompt, reasoning ⊂
// completion), DeepSeek's hit/miss split, and §0's generic rule: when
// prompt + completion + reasoning == total ≠ prompt + completion, reasoning
// is additive (xAI) and joins the output. Audio and OpenAI's
// cache_write_tokens stay inside the input class (billed at the input rate,
// as for every model without a separate write price).
func normalizeOpenAI(u gjson.Result, p openAIPaths) (pricing.Usage, []string) {
	var warn []string
	prompt := count(u.Get(p.prompt))
	completion := count(u.Get(p.completion))
	total := count(u.Get(p.total))
	cached := count(u.Get(p.cached))
	reasoning := count(u.Get(p.reasoning))

	var out pricing.Usage
	hit, miss := u.Get("prompt_cache_hit_tokens"), u.Get("prompt_cache_miss_tokens")
	if present(hit) || present(miss) {
		// DeepSeek (§9.1): prompt = hit + miss.
		out.CacheReadTokens, out.InputTokens = count(hit), count(miss)
		if !present(u.Get(p.prompt)) {
			prompt = out.CacheReadTokens + out.InputTokens
		} else if out.CacheReadTokens+out.InputTokens != prompt {
			warn = append(warn, fmt.Sprintf("deepseek: cache hit %d + miss %d != prompt %d", out.CacheReadTokens, out.InputTokens, prompt))
		}
	} else {
		if cached > prompt {
			warn = append(warn, fmt.Sprintf("cached %d > prompt %d; cached capped", cached, prompt))
			cached = prompt
		}
		out.InputTokens, out.CacheReadTokens = prompt-cached, cached
	}

	out.OutputTokens = completion
	out.ReasoningTokens = reasoning
	if total != 0 && prompt+completion != total {
		if reasoning > 0 && prompt+completion+reasoning == total {
			out.OutputTokens = completion + reasoning
		} else {
			warn = append(warn, fmt.Sprintf("usage total %d matches neither prompt+completion %d nor +reasoning %d",
				total, prompt+completion, prompt+completion+reasoning))
		}
	}
	if out.ReasoningTokens > out.OutputTokens {
		warn = append(warn, fmt.Sprintf("reasoning %d > output %d", out.ReasoningTokens, out.OutputTokens))
	}
	return out, warn
}

// countWebSearchCalls counts Responses output items of type web_search_call
// (§3: billed per call).
func countWebSearchCalls(output gjson.Result) int64 {
	var n int64
	output.ForEach(func(_, item gjson.Result) bool {
		if item.Get("type").String() == "web_search_call" {
			n++
		}
		return true
	})
	return n
}

// opt is an Anthropic usage field that may be absent.
type opt struct {
	v  int64
	ok bool
}

func (o *opt) overlay(r gjson.Result) {
	if present(r) {
		o.v, o.ok = count(r), true
	}
}

// anthropicUsage accumulates Anthropic usage: message_start's usage
// overlaid by each message_delta's, field by field (§1.2: cumulative, never
// added).
type anthropicUsage struct {
	input, cacheWrite, cacheRead, w5m, w1h, output, thinking, webSearch opt
}

func (a *anthropicUsage) overlay(u gjson.Result) {
	a.input.overlay(u.Get("input_tokens"))
	a.cacheWrite.overlay(u.Get("cache_creation_input_tokens"))
	a.cacheRead.overlay(u.Get("cache_read_input_tokens"))
	a.w5m.overlay(u.Get("cache_creation.ephemeral_5m_input_tokens"))
	a.w1h.overlay(u.Get("cache_creation.ephemeral_1h_input_tokens"))
	a.output.overlay(u.Get("output_tokens"))
	a.thinking.overlay(u.Get("output_tokens_details.thinking_tokens"))
	a.webSearch.overlay(u.Get("server_tool_use.web_search_requests"))
}

// normalize: cache_creation_input_tokens is the authoritative write total;
// the TTL breakdown splits it, and without a breakdown all writes are 5m
// (§1.4).
func (a *anthropicUsage) normalize() (pricing.Usage, []string) {
	var warn []string
	u := pricing.Usage{
		InputTokens:     a.input.v,
		CacheReadTokens: a.cacheRead.v,
		OutputTokens:    a.output.v,
		ReasoningTokens: a.thinking.v,
		ToolCalls:       a.webSearch.v,
	}
	switch {
	case a.cacheWrite.ok:
		w1h := min(a.w1h.v, a.cacheWrite.v)
		u.CacheWrite1hTokens, u.CacheWrite5mTokens = w1h, a.cacheWrite.v-w1h
		if (a.w5m.ok || a.w1h.ok) && a.w5m.v+a.w1h.v != a.cacheWrite.v {
			warn = append(warn, fmt.Sprintf("anthropic: cache_creation 5m %d + 1h %d != cache_creation_input_tokens %d",
				a.w5m.v, a.w1h.v, a.cacheWrite.v))
		}
	default:
		u.CacheWrite5mTokens, u.CacheWrite1hTokens = a.w5m.v, a.w1h.v
	}
	return u, warn
}

// normalizeGemini: cached ⊂ prompt, toolUsePrompt and thoughts are additive
// (§7); input = prompt − cached + toolUsePrompt, output = candidates + thoughts.
func normalizeGemini(m gjson.Result) (pricing.Usage, []string) {
	var warn []string
	prompt := count(m.Get("promptTokenCount"))
	cached := count(m.Get("cachedContentTokenCount"))
	cand := count(m.Get("candidatesTokenCount"))
	thoughts := count(m.Get("thoughtsTokenCount"))
	tool := count(m.Get("toolUsePromptTokenCount"))
	if cached > prompt {
		warn = append(warn, fmt.Sprintf("gemini: cached %d > prompt %d; cached capped", cached, prompt))
		cached = prompt
	}
	if total := count(m.Get("totalTokenCount")); total != 0 && total != prompt+cand+thoughts+tool {
		warn = append(warn, fmt.Sprintf("gemini: totalTokenCount %d != prompt+candidates+thoughts+toolUsePrompt %d",
			total, prompt+cand+thoughts+tool))
	}
	return pricing.Usage{
		InputTokens:     prompt - cached + tool,
		CacheReadTokens: cached,
		OutputTokens:    cand + thoughts,
		ReasoningTokens: thoughts,
	}, warn
}

// geminiModel strips the "models/" prefix some modelVersion values carry.
func geminiModel(v string) string { return strings.TrimPrefix(v, "models/") }
