// Package provider knows the wire formats of the LLM APIs creditgate meters:
// which route a request is (Detect), what it asks for (ParseRequest), and how
// many tokens of each billing class the provider reported in a JSON body
// (ParseBody) or an SSE stream reassembled across arbitrary chunk splits
// (NewStreamParser). It also writes errors in each client's native dialect
// (ErrorBody, ErrorEvent).
//
// The package is pure: no network, no Redis, no gRPC. Every rule here follows
// shared/providers.md; section numbers (§) in comments refer to it.
//
// Usage is normalized into pricing.Usage's disjoint classes (design-notes §5):
//
//   - OpenAI family (subset semantics): input = prompt − cached, read = cached,
//     output = completion (reasoning already inside), except when the
//     response proves reasoning is additive (xAI: prompt+completion+reasoning
//     == total), then output = completion + reasoning.
//   - DeepSeek: input = prompt_cache_miss_tokens, read = prompt_cache_hit_tokens.
//   - OpenAI Responses: input = input_tokens − cached, read = cached,
//     output = output_tokens, tool calls = output items of type web_search_call.
//   - Anthropic (additive): input = input_tokens, read = cache_read_input_tokens,
//     writes split by cache_creation.ephemeral_{5m,1h}_input_tokens (all 5m
//     when the breakdown is missing), tool calls = server_tool_use.web_search_requests.
//   - Gemini: input = prompt − cached + toolUsePrompt, read = cached,
//     output = candidates + thoughts.
package provider
