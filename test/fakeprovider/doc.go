// Package fakeprovider is an http.Handler standing in for LLM provider APIs in
// tests and demos. It replays scripted transcripts (status, headers, body or
// exactly split stream chunks, gzip/brotli, a cut connection, delays), routed
// by path, model or the X-Fake-Scenario header, and records every request it
// receives. With the demo behaviour it also answers OpenAI chat completions,
// responses and embeddings, Anthropic messages and Gemini
// generateContent/streamGenerateContent with generated bodies whose usage is
// derived from the request (see DemoInputTokens and DemoOutputTokens).
//
// Wire formats follow /work/shared/providers.md. The package depends on no
// creditgate package so it can be reused.
package fakeprovider
