package provider

import (
	"errors"
	"testing"

	"github.com/tidwall/gjson"
)

var (
	routeOpenAIChat = Route{Provider: ProviderOpenAI, Kind: KindOpenAIChat, Dialect: DialectOpenAI}
	routeResponses  = Route{Provider: ProviderOpenAI, Kind: KindOpenAIResponses, Dialect: DialectOpenAI}
	routeEmbeddings = Route{Provider: ProviderOpenAI, Kind: KindOpenAIEmbeddings, Dialect: DialectOpenAI}
	routeAnthropic  = Route{Provider: ProviderAnthropic, Kind: KindAnthropicMessages, Dialect: DialectAnthropic}
	routeGemini     = Route{Provider: ProviderGemini, Kind: KindGeminiGenerate, ModelFromPath: "gemini-2.5-pro", Dialect: DialectGemini}
	routeGeminiSSE  = Route{Provider: ProviderGemini, Kind: KindGeminiStream, ModelFromPath: "gemini-2.5-flash", Dialect: DialectGemini}
	routeAzureDep   = Route{Provider: ProviderAzure, Kind: KindAzureChat, ModelFromPath: "prod-4o", Dialect: DialectOpenAI}
)

func TestParseRequestErrors(t *testing.T) {
	tests := []struct {
		name  string
		route Route
		body  string
	}{
		{"not json", routeOpenAIChat, `{"model":"gpt-4o",`},
		{"empty", routeOpenAIChat, ``},
		{"array", routeOpenAIChat, `[{"model":"gpt-4o"}]`},
		{"no model", routeOpenAIChat, `{"messages":[]}`},
		{"empty model", routeAnthropic, `{"model":"","max_tokens":10}`},
		{"model not a string", routeResponses, `{"model":42}`},
		{"gemini not json", routeGemini, `contents=hi`},
	}
	for _, tc := range tests {
		_, err := ParseRequest(tc.route, []byte(tc.body))
		if !errors.Is(err, ErrBadRequest) {
			t.Errorf("%s: err = %v, want ErrBadRequest", tc.name, err)
		}
	}
}

func TestParseRequestFields(t *testing.T) {
	tests := []struct {
		name       string
		route      Route
		body       string
		model      string
		stream     bool
		max        int64
		asked      bool
		injected   bool
		wantIncUse bool // the upstream body has include_usage:true
	}{
		{"chat max_tokens", routeOpenAIChat, `{"model":"gpt-4o","max_tokens":300}`, "gpt-4o", false, 300, false, false, false},
		{"chat max_completion_tokens wins", routeOpenAIChat, `{"model":"o3","max_tokens":10,"max_completion_tokens":5000}`, "o3", false, 5000, false, false, false},
		{"chat max null", routeOpenAIChat, `{"model":"o3","max_completion_tokens":null,"max_tokens":77}`, "o3", false, 77, false, false, false},
		{"chat max string ignored", routeOpenAIChat, `{"model":"o3","max_tokens":"77"}`, "o3", false, 0, false, false, false},
		{"stream asked", routeOpenAIChat, `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}`, "gpt-4o", true, 0, true, false, true},
		{"stream injected", routeOpenAIChat, `{"model":"gpt-4o","stream":true}`, "gpt-4o", true, 0, false, true, true},
		{"stream include false", routeOpenAIChat, `{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false,"include_obfuscation":false}}`, "gpt-4o", true, 0, false, true, true},
		{"stream options null", routeOpenAIChat, `{"model":"gpt-4o","stream":true,"stream_options":null}`, "gpt-4o", true, 0, false, true, true},
		{"stream string not a stream", routeOpenAIChat, `{"model":"gpt-4o","stream":"true"}`, "gpt-4o", false, 0, false, false, false},
		{"groq not injected", Route{Provider: ProviderGroq, Kind: KindOpenAIChat}, `{"model":"llama","stream":true}`, "llama", true, 0, false, false, false},
		{"mistral not injected", Route{Provider: ProviderMistral, Kind: KindOpenAIChat}, `{"model":"m","stream":true}`, "m", true, 0, false, false, false},
		{"together not injected", Route{Provider: ProviderTogether, Kind: KindOpenAIChat}, `{"model":"t","stream":true}`, "t", true, 0, false, false, false},
		{"deepseek injected", Route{Provider: ProviderDeepSeek, Kind: KindOpenAIChat}, `{"model":"deepseek-chat","stream":true}`, "deepseek-chat", true, 0, false, true, true},
		{"xai injected", Route{Provider: ProviderXAI, Kind: KindOpenAIChat}, `{"model":"grok-4","stream":true}`, "grok-4", true, 0, false, true, true},
		{"azure deployment wins", routeAzureDep, `{"model":"gpt-4o","stream":true,"max_tokens":9}`, "prod-4o", true, 9, false, true, true},
		{"azure no body model", routeAzureDep, `{"messages":[]}`, "prod-4o", false, 0, false, false, false},
		{"responses", routeResponses, `{"model":"gpt-5","stream":true,"max_output_tokens":2000,"max_tokens":1}`, "gpt-5", true, 2000, false, false, false},
		{"embeddings", routeEmbeddings, `{"model":"text-embedding-3-small","input":"x","stream":true}`, "text-embedding-3-small", false, 0, false, false, false},
		{"anthropic", routeAnthropic, `{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true}`, "claude-sonnet-4-5", true, 1024, false, false, false},
		{"gemini camel", routeGemini, `{"contents":[],"generationConfig":{"maxOutputTokens":8192}}`, "gemini-2.5-pro", false, 8192, false, false, false},
		{"gemini snake", routeGemini, `{"contents":[],"generation_config":{"max_output_tokens":64}}`, "gemini-2.5-pro", false, 64, false, false, false},
		{"gemini stream by method", routeGeminiSSE, `{"contents":[],"stream":false}`, "gemini-2.5-flash", true, 0, false, false, false},
	}
	for _, tc := range tests {
		req, err := ParseRequest(tc.route, []byte(tc.body))
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if req.Model != tc.model || req.Stream != tc.stream || req.MaxOutputTokens != tc.max ||
			req.ClientAskedUsage != tc.asked || req.InjectedUsage != tc.injected {
			t.Errorf("%s: got %+v", tc.name, req)
		}
		if tc.injected != (req.Body != nil) {
			t.Errorf("%s: Body set = %v, want %v", tc.name, req.Body != nil, tc.injected)
		}
		upstream := []byte(tc.body)
		if req.Body != nil {
			upstream = req.Body
		}
		if got := gjson.GetBytes(upstream, "stream_options.include_usage").Type == gjson.True; got != tc.wantIncUse {
			t.Errorf("%s: upstream include_usage = %v, want %v (%s)", tc.name, got, tc.wantIncUse, upstream)
		}
		if req.EstInputTokens <= 0 {
			t.Errorf("%s: EstInputTokens = %d", tc.name, req.EstInputTokens)
		}
	}
}

// Other stream_options members survive the injection.
func TestInjectKeepsStreamOptions(t *testing.T) {
	req, err := ParseRequest(routeOpenAIChat, []byte(`{"model":"gpt-4o","stream":true,"stream_options":{"include_obfuscation":false}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"model":"gpt-4o","stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true}}`
	if string(req.Body) != want {
		t.Errorf("body = %s\nwant %s", req.Body, want)
	}
}
