package provider

import (
	"errors"
	"fmt"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// ErrBadRequest marks a request body the gateway cannot meter (not JSON, no
// model). The provider would reject it too; the caller answers 400.
var ErrBadRequest = errors.New("provider: bad request")

// Request is what the gateway needs to know about a request before it goes
// upstream.
type Request struct {
	// Model is the requested model: the URL's model (Gemini, Azure
	// deployment) or else the body's "model".
	Model  string
	Stream bool
	// MaxOutputTokens is the client's output cap, 0 when absent.
	MaxOutputTokens int64
	// EstInputTokens is EstimateInputTokens of the body.
	EstInputTokens int64
	// ClientAskedUsage: the client itself set stream_options.include_usage.
	ClientAskedUsage bool
	// InjectedUsage: the gateway added stream_options.include_usage; the
	// usage-only chunk must then be hidden from a client that did not ask.
	InjectedUsage bool
	// Body is the mutated body to send upstream, nil when unchanged.
	Body []byte
}

// ParseRequest reads a request body for route r. Streaming chat requests
// get stream_options.include_usage injected where the provider reports
// usage only on request (§0, §1.3).
func ParseRequest(r Route, body []byte) (Request, error) {
	if !gjson.ValidBytes(body) {
		return Request{}, fmt.Errorf("%w: body is not valid JSON", ErrBadRequest)
	}
	root := gjson.ParseBytes(body)
	if !root.IsObject() {
		return Request{}, fmt.Errorf("%w: body is not a JSON object", ErrBadRequest)
	}
	var req Request
	req.Model = r.ModelFromPath
	if req.Model == "" {
		m := root.Get("model")
		if m.Type != gjson.String || m.Str == "" {
			return Request{}, fmt.Errorf("%w: missing \"model\" (a non-empty string)", ErrBadRequest)
		}
		req.Model = m.Str
	}
	switch {
	case r.IsGemini():
		req.Stream = r.Kind == KindGeminiStream
	case r.IsEmbeddings():
		req.Stream = false
	default:
		req.Stream = root.Get("stream").Type == gjson.True
	}
	req.MaxOutputTokens = maxOutputTokens(r, root)
	req.EstInputTokens = EstimateInputTokens(body)

	if r.IsChat() && req.Stream {
		so := root.Get("stream_options")
		req.ClientAskedUsage = so.Get("include_usage").Type == gjson.True
		if !req.ClientAskedUsage && needsUsageOptIn(r.Provider) {
			nb, err := injectIncludeUsage(body, so)
			if err != nil {
				return Request{}, fmt.Errorf("provider: inject include_usage: %w", err)
			}
			req.Body = nb
			req.InjectedUsage = true
		}
	}
	return req, nil
}

// needsUsageOptIn: Mistral, Together and Groq (x_groq.usage) report usage in
// streams without stream_options, so their requests are left untouched;
// everyone else, including hosts mapped by configuration, gets the opt-in.
func needsUsageOptIn(provider string) bool {
	switch provider {
	case ProviderMistral, ProviderTogether, ProviderGroq:
		return false
	}
	return true
}

func injectIncludeUsage(body []byte, so gjson.Result) ([]byte, error) {
	if so.IsObject() {
		return sjson.SetBytes(body, "stream_options.include_usage", true)
	}
	// Absent, null or a wrong type: replace it whole.
	return sjson.SetRawBytes(body, "stream_options", []byte(`{"include_usage":true}`))
}

func maxOutputTokens(r Route, root gjson.Result) int64 {
	var paths []string
	switch {
	case r.IsResponses():
		paths = []string{"max_output_tokens"}
	case r.Kind == KindAnthropicMessages:
		paths = []string{"max_tokens"}
	case r.IsGemini():
		paths = []string{"generationConfig.maxOutputTokens", "generation_config.max_output_tokens"}
	case r.IsChat():
		// max_completion_tokens supersedes the deprecated max_tokens.
		paths = []string{"max_completion_tokens", "max_tokens"}
	}
	for _, p := range paths {
		v := root.Get(p)
		if v.Type == gjson.Number && v.Num > 0 {
			return v.Int()
		}
	}
	return 0
}
