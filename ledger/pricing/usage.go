package pricing

// Usage is one call's token usage normalized into disjoint billing classes
// (design-notes §5): every token is counted in exactly one of the *Tokens
// fields, so cost = Σ class × rate with no double counting. Provider parsers
// (extproc/provider) are responsible for the per-provider subtraction rules.
type Usage struct {
	// InputTokens are prompt tokens billed at the plain input rate
	// (OpenAI: prompt_tokens − cached_tokens; Anthropic: input_tokens).
	InputTokens int64 `json:"input_tokens"`
	// CacheReadTokens are prompt tokens served from the provider's cache.
	CacheReadTokens int64 `json:"cache_read_tokens,omitempty"`
	// CacheWrite5mTokens / CacheWrite1hTokens are prompt tokens written to
	// the cache with a 5-minute or 1-hour lifetime (Anthropic, Bedrock).
	CacheWrite5mTokens int64 `json:"cache_write_5m_tokens,omitempty"`
	CacheWrite1hTokens int64 `json:"cache_write_1h_tokens,omitempty"`
	// OutputTokens are generated tokens including reasoning/thinking.
	OutputTokens int64 `json:"output_tokens"`
	// ReasoningTokens is informational: the part of OutputTokens that was
	// reasoning. It is billed at the output rate unless the price row has a
	// separate reasoning rate, in which case it is moved out of OutputTokens
	// at pricing time.
	ReasoningTokens int64 `json:"reasoning_tokens,omitempty"`
	// ToolCalls counts billable server-side tool invocations (web search…).
	ToolCalls int64 `json:"tool_calls,omitempty"`
}

// PromptTokens is every prompt-side token: the quantity long-context tiers
// are chosen on (never output).
func (u Usage) PromptTokens() int64 {
	return u.InputTokens + u.CacheReadTokens + u.CacheWrite5mTokens + u.CacheWrite1hTokens
}
