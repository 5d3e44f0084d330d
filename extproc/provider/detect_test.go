package provider

import (
	"errors"
	"testing"
)

func TestDetect(t *testing.T) {
	d := &Detector{Hosts: map[string]string{
		"llm.test":            ProviderOpenAI,
		"*.gw.internal":       ProviderAnthropic,
		"api.openai.com":      ProviderAzure, // extra hosts override built-ins
		"vertex.example":      ProviderGemini,
		"mistral.self.hosted": ProviderMistral,
	}}
	tests := []struct {
		authority, path string
		want            Route
		err             error
	}{
		{"llm.test:8443", "/v1/chat/completions", Route{Provider: "openai", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"llm.test", "/v1/responses?x=1", Route{Provider: "openai", Kind: KindOpenAIResponses, Dialect: "openai"}, nil},
		{"LLM.TEST", "/v1/embeddings/", Route{Provider: "openai", Kind: KindOpenAIEmbeddings, Dialect: "openai"}, nil},
		{"llm.test", "/v1/models", hostOnly("openai"), ErrUnknownPath},
		{"llm.test", "/v1/responses/resp_1", hostOnly("openai"), ErrUnknownPath},
		{"a.b.gw.internal", "/v1/messages", Route{Provider: "anthropic", Kind: KindAnthropicMessages, Dialect: "anthropic"}, nil},
		{"gw.internal", "/v1/messages", Route{}, ErrUnknownHost},
		{"api.openai.com", "/v1/chat/completions", hostOnly("azure"), ErrUnknownPath}, // overridden to azure
		{"vertex.example", "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
			Route{Provider: "gemini", Kind: KindGeminiStream, ModelFromPath: "gemini-2.5-pro", Dialect: "gemini"}, nil},
		{"mistral.self.hosted", "/v1/fim/completions", Route{Provider: "mistral", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"unknown.example", "/v1/chat/completions", Route{}, ErrUnknownHost},
		{"", "/v1/chat/completions", Route{}, ErrUnknownHost},
		{"[::1]:8080", "/v1/chat/completions", Route{}, ErrUnknownHost},
	}
	for _, tc := range tests {
		got, err := d.Detect(tc.authority, tc.path)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("Detect(%q, %q) = %+v, %v; want %+v, %v", tc.authority, tc.path, got, err, tc.want, tc.err)
		}
	}
}

func TestDetectBuiltin(t *testing.T) {
	var d Detector // no extra hosts
	tests := []struct {
		authority, path string
		want            Route
		err             error
	}{
		{"api.openai.com", "/v1/chat/completions", Route{Provider: "openai", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"api.openai.com:443", "/v1/responses", Route{Provider: "openai", Kind: KindOpenAIResponses, Dialect: "openai"}, nil},
		{"api.openai.com", "/v1/embeddings", Route{Provider: "openai", Kind: KindOpenAIEmbeddings, Dialect: "openai"}, nil},
		{"api.openai.com", "/v1/models", hostOnly("openai"), ErrUnknownPath},
		{"api.openai.com", "/v1/responses/input_tokens", hostOnly("openai"), ErrUnknownPath},
		{"api.openai.com", "/v1/chat/completions/chatcmpl-1", hostOnly("openai"), ErrUnknownPath},

		{"res1.openai.azure.com", "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
			Route{Provider: "azure", Kind: KindAzureChat, ModelFromPath: "gpt4o", Dialect: "openai"}, nil},
		{"res1.cognitiveservices.azure.com", "/openai/deployments/emb/embeddings?api-version=2024-10-21",
			Route{Provider: "azure", Kind: KindAzureEmbeddings, ModelFromPath: "emb", Dialect: "openai"}, nil},
		{"res1.openai.azure.com", "/openai/v1/chat/completions", Route{Provider: "azure", Kind: KindAzureChat, Dialect: "openai"}, nil},
		{"res1.openai.azure.com", "/openai/responses?api-version=2025-03-01-preview", Route{Provider: "azure", Kind: KindAzureResponses, Dialect: "openai"}, nil},
		{"res1.openai.azure.com", "/openai/v1/responses", Route{Provider: "azure", Kind: KindAzureResponses, Dialect: "openai"}, nil},
		{"res1.openai.azure.com", "/openai/v1/embeddings", Route{Provider: "azure", Kind: KindAzureEmbeddings, Dialect: "openai"}, nil},
		{"res1.openai.azure.com", "/openai/deployments//chat/completions", hostOnly("azure"), ErrUnknownPath},
		{"res1.openai.azure.com", "/openai/deployments/gpt4o/images/generations", hostOnly("azure"), ErrUnknownPath},
		{"openai.azure.com", "/openai/v1/chat/completions", Route{}, ErrUnknownHost},
		{"evil-openai.azure.com.attacker.example", "/openai/v1/chat/completions", Route{}, ErrUnknownHost},

		{"api.anthropic.com", "/v1/messages", Route{Provider: "anthropic", Kind: KindAnthropicMessages, Dialect: "anthropic"}, nil},
		{"api.anthropic.com", "/v1/messages?beta=true", Route{Provider: "anthropic", Kind: KindAnthropicMessages, Dialect: "anthropic"}, nil},
		{"api.anthropic.com", "/v1/messages/count_tokens", hostOnly("anthropic"), ErrUnknownPath},
		{"api.anthropic.com", "/v1/messages/batches", hostOnly("anthropic"), ErrUnknownPath},

		{"generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent",
			Route{Provider: "gemini", Kind: KindGeminiGenerate, ModelFromPath: "gemini-2.5-flash", Dialect: "gemini"}, nil},
		{"generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
			Route{Provider: "gemini", Kind: KindGeminiStream, ModelFromPath: "gemini-2.5-flash", Dialect: "gemini"}, nil},
		{"generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?key=k",
			Route{Provider: "gemini", Kind: KindGeminiStream, ModelFromPath: "gemini-2.5-flash", Dialect: "gemini", ArrayStream: true}, nil},
		{"generativelanguage.googleapis.com", "/v1/tunedModels/my-tune:generateContent",
			Route{Provider: "gemini", Kind: KindGeminiGenerate, ModelFromPath: "my-tune", Dialect: "gemini"}, nil},
		{"generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:countTokens", hostOnly("gemini"), ErrUnknownPath},
		{"generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash", hostOnly("gemini"), ErrUnknownPath},
		{"generativelanguage.googleapis.com", "/v1beta/models/:generateContent", hostOnly("gemini"), ErrUnknownPath},
		{"generativelanguage.googleapis.com", "/v1beta/files/x:generateContent", hostOnly("gemini"), ErrUnknownPath},

		{"api.deepseek.com", "/chat/completions", Route{Provider: "deepseek", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"api.deepseek.com", "/v1/chat/completions", Route{Provider: "deepseek", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"api.groq.com", "/openai/v1/chat/completions", Route{Provider: "groq", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"api.groq.com", "/v1/chat/completions", hostOnly("groq"), ErrUnknownPath},
		{"api.mistral.ai", "/v1/chat/completions", Route{Provider: "mistral", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"api.mistral.ai", "/v1/embeddings", Route{Provider: "mistral", Kind: KindOpenAIEmbeddings, Dialect: "openai"}, nil},
		{"api.x.ai", "/v1/chat/completions", Route{Provider: "xai", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"api.x.ai", "/v1/responses", Route{Provider: "xai", Kind: KindOpenAIResponses, Dialect: "openai"}, nil},
		{"api.together.xyz", "/v1/chat/completions", Route{Provider: "together", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
		{"api.together.ai", "/v1/embeddings", Route{Provider: "together", Kind: KindOpenAIEmbeddings, Dialect: "openai"}, nil},
		{"api.openai.com.", "/v1/chat/completions", Route{Provider: "openai", Kind: KindOpenAIChat, Dialect: "openai"}, nil},
	}
	for _, tc := range tests {
		got, err := d.Detect(tc.authority, tc.path)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("Detect(%q, %q) = %+v, %v; want %+v, %v", tc.authority, tc.path, got, err, tc.want, tc.err)
		}
	}
}

func TestDetectRequestMethod(t *testing.T) {
	var d Detector
	if _, err := d.DetectRequest("GET", "api.openai.com", "/v1/chat/completions"); !errors.Is(err, ErrUnknownPath) {
		t.Errorf("GET: err = %v, want ErrUnknownPath", err)
	}
	if r, err := d.DetectRequest("post", "api.openai.com", "/v1/chat/completions"); err != nil || r.Kind != KindOpenAIChat {
		t.Errorf("POST: %+v, %v", r, err)
	}
	if _, err := d.DetectRequest("POST", "nope.example", "/v1/chat/completions"); !errors.Is(err, ErrUnknownHost) {
		t.Errorf("unknown host: err = %v", err)
	}
}

func TestDetectorValidate(t *testing.T) {
	good := &Detector{Hosts: map[string]string{"a.test": ProviderOpenAI, "*.b.test": ProviderGemini, "::1": ProviderGroq}}
	if err := good.Validate(); err != nil {
		t.Errorf("valid hosts: %v", err)
	}
	for _, hosts := range []map[string]string{
		{"a.test": "vllm"},
		{"A.test": ProviderOpenAI},
		{"a.test:8080": ProviderOpenAI},
	} {
		if err := (&Detector{Hosts: hosts}).Validate(); err == nil {
			t.Errorf("Validate(%v) = nil, want an error", hosts)
		}
	}
}
