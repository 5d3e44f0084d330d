package provider

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Kind names one metered API shape. OpenAI-compatible providers (DeepSeek,
// Groq, Mistral, xAI, Together) reuse the openai.* kinds; Route.Provider
// tells them apart.
type Kind string

const (
	KindOpenAIChat        Kind = "openai.chat"
	KindOpenAIResponses   Kind = "openai.responses"
	KindOpenAIEmbeddings  Kind = "openai.embeddings"
	KindAzureChat         Kind = "azure.chat"
	KindAzureResponses    Kind = "azure.responses"
	KindAzureEmbeddings   Kind = "azure.embeddings"
	KindAnthropicMessages Kind = "anthropic.messages"
	KindGeminiGenerate    Kind = "gemini.generate"
	KindGeminiStream      Kind = "gemini.stream"
)

// Provider names. Extra hosts given to a Detector must map to one of these.
const (
	ProviderOpenAI    = "openai"
	ProviderAzure     = "azure"
	ProviderAnthropic = "anthropic"
	ProviderGemini    = "gemini"
	ProviderDeepSeek  = "deepseek"
	ProviderGroq      = "groq"
	ProviderMistral   = "mistral"
	ProviderXAI       = "xai"
	ProviderTogether  = "together"
)

// Error dialects: the shape a client's SDK expects its errors in (§11).
const (
	DialectOpenAI    = "openai"
	DialectAnthropic = "anthropic"
	DialectGemini    = "gemini"
)

// Route is what Detect learned from :authority and :path.
type Route struct {
	Provider string `json:"provider"`
	Kind     Kind   `json:"kind"`
	// ModelFromPath is the model named by the URL: the Gemini model or the
	// Azure deployment. When set it wins over the body's model, because that
	// is what the provider serves (Azure ignores the body model on
	// deployment routes, §5).
	ModelFromPath string `json:"model_from_path,omitempty"`
	// Dialect is the error envelope clients of this route understand.
	Dialect string `json:"dialect"`
	// ArrayStream is set for Gemini :streamGenerateContent without alt=sse:
	// the body is one JSON array sent incrementally rather than SSE (§7).
	ArrayStream bool `json:"array_stream,omitempty"`
}

// IsChat reports whether the route is an OpenAI-style chat completion, the
// only shape whose streams need stream_options.include_usage (§1.3).
func (r Route) IsChat() bool { return r.Kind == KindOpenAIChat || r.Kind == KindAzureChat }

// IsResponses reports whether the route is the OpenAI Responses API.
func (r Route) IsResponses() bool {
	return r.Kind == KindOpenAIResponses || r.Kind == KindAzureResponses
}

// IsEmbeddings reports whether the route is an embeddings call.
func (r Route) IsEmbeddings() bool {
	return r.Kind == KindOpenAIEmbeddings || r.Kind == KindAzureEmbeddings
}

// IsGemini reports whether the route is a Gemini generateContent call.
func (r Route) IsGemini() bool { return r.Kind == KindGeminiGenerate || r.Kind == KindGeminiStream }

var (
	// ErrUnknownHost: the authority is not a known LLM provider. The caller
	// decides (default: refuse, design-notes §4).
	ErrUnknownHost = errors.New("provider: unknown host")
	// ErrUnknownPath: a known LLM host, but the path is not a metered API
	// (e.g. GET /v1/models, /v1/messages/count_tokens). The caller decides
	// whether to pass it through.
	ErrUnknownPath = errors.New("provider: path is not a metered API")
)

// builtinHosts maps exact hosts to providers; an immutable table.
var builtinHosts = map[string]string{
	"api.openai.com":                    ProviderOpenAI,
	"api.anthropic.com":                 ProviderAnthropic,
	"generativelanguage.googleapis.com": ProviderGemini,
	"api.deepseek.com":                  ProviderDeepSeek,
	"api.groq.com":                      ProviderGroq,
	"api.mistral.ai":                    ProviderMistral,
	"api.x.ai":                          ProviderXAI,
	"api.together.xyz":                  ProviderTogether,
	"api.together.ai":                   ProviderTogether,
}

// builtinSuffixes maps host suffixes (Azure resource hosts) to providers.
var builtinSuffixes = []struct{ suffix, provider string }{
	{".openai.azure.com", ProviderAzure},
	{".cognitiveservices.azure.com", ProviderAzure},
}

// Detector maps a request's :authority and :path to a Route.
type Detector struct {
	// Hosts adds or overrides host→provider entries, for tests and
	// self-hosted OpenAI-compatible gateways. Keys are lower-case hosts
	// without port; a key starting with "*." matches any subdomain.
	// Values are provider names (ProviderOpenAI, …).
	Hosts map[string]string
}

// Detect maps :authority (port ignored) and :path (query ignored except
// Gemini's alt=sse) to a Route. It does not look at the method; see
// DetectRequest.
func (d *Detector) Detect(authority, path string) (Route, error) {
	host := normalizeHost(authority)
	prov, ok := d.providerFor(host)
	if !ok {
		return Route{}, fmt.Errorf("%w: %q", ErrUnknownHost, host)
	}
	p, query, _ := strings.Cut(path, "?")
	r, ok := matchPath(prov, p, query)
	if !ok {
		// The provider is still known: callers need it to answer in the
		// provider's error shape and to swap keys on passthrough routes.
		return hostOnly(prov), fmt.Errorf("%w: %s %s", ErrUnknownPath, host, p)
	}
	return r, nil
}

// hostOnly is the Route of a known provider host whose path is not metered:
// Provider and Dialect set, no Kind.
func hostOnly(prov string) Route {
	switch prov {
	case ProviderAnthropic:
		return Route{Provider: prov, Dialect: DialectAnthropic}
	case ProviderGemini:
		return Route{Provider: prov, Dialect: DialectGemini}
	}
	return Route{Provider: prov, Dialect: DialectOpenAI}
}

// DetectRequest is Detect plus the method: every metered API is a POST, so
// any other method on a known host (GET /v1/chat/completions lists stored
// completions) is ErrUnknownPath.
func (d *Detector) DetectRequest(method, authority, path string) (Route, error) {
	r, err := d.Detect(authority, path)
	if err != nil {
		return r, err
	}
	if !strings.EqualFold(method, "POST") {
		return hostOnly(r.Provider), fmt.Errorf("%w: method %s", ErrUnknownPath, method)
	}
	return r, nil
}

// Validate reports Hosts entries that name no known provider; such a host
// would detect as ErrUnknownPath on every path.
func (d *Detector) Validate() error {
	var errs []error
	for h, p := range d.Hosts {
		if !knownProvider(p) {
			errs = append(errs, fmt.Errorf("provider: host %q maps to unknown provider %q", h, p))
		}
		if _, _, err := net.SplitHostPort(h); err == nil || h != strings.ToLower(h) {
			errs = append(errs, fmt.Errorf("provider: host %q must be lower-case without port", h))
		}
	}
	return errors.Join(errs...)
}

func knownProvider(p string) bool {
	switch p {
	case ProviderAzure, ProviderAnthropic, ProviderGemini:
		return true
	}
	_, ok := openAIStylePaths[p]
	return ok
}

func (d *Detector) providerFor(host string) (string, bool) {
	if d != nil {
		if p, ok := d.Hosts[host]; ok {
			return p, true
		}
		for k, p := range d.Hosts {
			if strings.HasPrefix(k, "*.") && strings.HasSuffix(host, k[1:]) {
				return p, true
			}
		}
	}
	if p, ok := builtinHosts[host]; ok {
		return p, true
	}
	for _, s := range builtinSuffixes {
		if strings.HasSuffix(host, s.suffix) && len(host) > len(s.suffix) {
			return s.provider, true
		}
	}
	return "", false
}

// Host is the host of an :authority as the Detector matches it: lower-case,
// without port, brackets or a trailing dot. Callers that match hosts
// themselves (passthrough lists) use it so both agree on what a host is.
func Host(authority string) string { return normalizeHost(authority) }

func normalizeHost(authority string) string {
	h := strings.ToLower(strings.TrimSpace(authority))
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.Trim(h, "[]"), ".")
}

// openAIStylePaths lists, per OpenAI-compatible provider, the metered paths.
var openAIStylePaths = map[string]map[string]Kind{
	ProviderOpenAI: {
		"/v1/chat/completions": KindOpenAIChat,
		"/v1/responses":        KindOpenAIResponses,
		"/v1/embeddings":       KindOpenAIEmbeddings,
	},
	ProviderDeepSeek: {
		"/chat/completions":      KindOpenAIChat,
		"/v1/chat/completions":   KindOpenAIChat,
		"/beta/chat/completions": KindOpenAIChat,
	},
	ProviderGroq: {
		"/openai/v1/chat/completions": KindOpenAIChat,
		"/openai/v1/responses":        KindOpenAIResponses,
	},
	ProviderMistral: {
		"/v1/chat/completions": KindOpenAIChat,
		"/v1/fim/completions":  KindOpenAIChat, // same usage and stream shape as chat
		"/v1/embeddings":       KindOpenAIEmbeddings,
	},
	ProviderXAI: {
		"/v1/chat/completions": KindOpenAIChat,
		"/v1/responses":        KindOpenAIResponses,
	},
	ProviderTogether: {
		"/v1/chat/completions": KindOpenAIChat,
		"/v1/embeddings":       KindOpenAIEmbeddings,
	},
}

func matchPath(prov, path, query string) (Route, bool) {
	path = strings.TrimSuffix(path, "/")
	switch prov {
	case ProviderAzure:
		return matchAzure(path)
	case ProviderAnthropic:
		if path == "/v1/messages" {
			return Route{Provider: prov, Kind: KindAnthropicMessages, Dialect: DialectAnthropic}, true
		}
		return Route{}, false
	case ProviderGemini:
		return matchGemini(path, query)
	}
	paths, ok := openAIStylePaths[prov]
	if !ok {
		return Route{}, false
	}
	k, ok := paths[path]
	if !ok {
		return Route{}, false
	}
	return Route{Provider: prov, Kind: k, Dialect: DialectOpenAI}, true
}

// matchAzure handles the classic deployment routes
// (/openai/deployments/{dep}/chat/completions, model = deployment) and the
// non-deployment and v1 routes (model in the body) of §5.
func matchAzure(path string) (Route, bool) {
	r := Route{Provider: ProviderAzure, Dialect: DialectOpenAI}
	if rest, ok := strings.CutPrefix(path, "/openai/deployments/"); ok {
		dep, op, ok := strings.Cut(rest, "/")
		if !ok || dep == "" {
			return Route{}, false
		}
		switch op {
		case "chat/completions":
			r.Kind = KindAzureChat
		case "embeddings":
			r.Kind = KindAzureEmbeddings
		default:
			return Route{}, false
		}
		r.ModelFromPath = dep
		return r, true
	}
	switch path {
	case "/openai/v1/chat/completions":
		r.Kind = KindAzureChat
	case "/openai/responses", "/openai/v1/responses":
		r.Kind = KindAzureResponses
	case "/openai/v1/embeddings":
		r.Kind = KindAzureEmbeddings
	default:
		return Route{}, false
	}
	return r, true
}

// matchGemini accepts any path ending in models/{model}:generateContent or
// :streamGenerateContent, so the same rule serves v1beta, v1, tuned models
// and Vertex's .../publishers/google/models/{model} when such a host is
// mapped to gemini.
func matchGemini(path, query string) (Route, bool) {
	i := strings.LastIndex(path, "/")
	if i < 0 {
		return Route{}, false
	}
	seg := path[i+1:]
	model, method, ok := strings.Cut(seg, ":")
	if !ok || model == "" {
		return Route{}, false
	}
	parent := path[:i]
	if !strings.HasSuffix(parent, "/models") && !strings.HasSuffix(parent, "/tunedModels") {
		return Route{}, false
	}
	r := Route{Provider: ProviderGemini, Dialect: DialectGemini, ModelFromPath: model}
	switch method {
	case "generateContent":
		r.Kind = KindGeminiGenerate
	case "streamGenerateContent":
		r.Kind = KindGeminiStream
		r.ArrayStream = !hasAltSSE(query)
	default:
		return Route{}, false
	}
	return r, true
}

func hasAltSSE(query string) bool {
	for _, kv := range strings.Split(query, "&") {
		if strings.EqualFold(kv, "alt=sse") {
			return true
		}
	}
	return false
}
