package fakeprovider

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/tidwall/gjson"
)

// ScenarioHeader selects a route by name, so one test server can serve many
// scripted cases on the same path.
const ScenarioHeader = "X-Fake-Scenario"

// Route maps requests to a transcript. Empty fields match anything; among
// matching routes the most specific wins (scenario, then path, then model),
// and the latest added wins a tie.
type Route struct {
	Path       string // exact URL path
	Model      string // model from the body "model" field or the URL path
	Scenario   string // value of the X-Fake-Scenario header
	Transcript Transcript
}

func (r Route) score() int {
	s := 0
	if r.Scenario != "" {
		s += 4
	}
	if r.Path != "" {
		s += 2
	}
	if r.Model != "" {
		s++
	}
	return s
}

// Recorded is one request as the provider received it.
type Recorded struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
	Body     []byte
	Model    string
	Scenario string
}

// Provider is an http.Handler that replays transcripts and, if enabled,
// answers unmatched requests like a real provider (see the demo behaviour in
// demo.go). It records every request it receives.
type Provider struct {
	mu       sync.Mutex
	routes   []Route
	router   func(r *http.Request, body []byte) (Transcript, bool)
	demo     *demo
	requests []Recorded
}

// Option configures a Provider.
type Option func(*Provider)

// WithRouter installs a routing function consulted before the routes.
func WithRouter(f func(r *http.Request, body []byte) (Transcript, bool)) Option {
	return func(p *Provider) { p.router = f }
}

// WithDemo answers requests no route matches with generated OpenAI,
// Anthropic and Gemini responses.
func WithDemo() Option {
	return func(p *Provider) {
		if p.demo == nil {
			p.demo = newDemo()
		}
	}
}

// WithClock fixes the demo's "created" timestamps (for golden tests).
func WithClock(now func() time.Time) Option {
	return func(p *Provider) {
		WithDemo()(p)
		p.demo.now = now
	}
}

// WithTokenDelay paces demo streams: the pause between two streamed events.
func WithTokenDelay(d time.Duration) Option {
	return func(p *Provider) {
		WithDemo()(p)
		p.demo.delay = d
	}
}

// New returns a Provider with no routes.
func New(opts ...Option) *Provider {
	p := &Provider{}
	for _, o := range opts {
		o(p)
	}
	return p
}

// NewDemo returns a Provider that answers every supported endpoint with
// generated responses.
func NewDemo(opts ...Option) *Provider {
	return New(append([]Option{WithDemo()}, opts...)...)
}

// Add registers a route.
func (p *Provider) Add(r Route) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.routes = append(p.routes, r)
}

// Handle registers t for every request to path.
func (p *Provider) Handle(path string, t Transcript) {
	p.Add(Route{Path: path, Transcript: t})
}

// Requests returns the received requests, oldest first.
func (p *Provider) Requests() []Recorded {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Recorded(nil), p.requests...)
}

// Reset forgets recorded requests (routes stay).
func (p *Provider) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests = nil
}

func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // the client went away mid-request
	}
	rec := Recorded{
		Method:   r.Method,
		Path:     r.URL.Path,
		RawQuery: r.URL.RawQuery,
		Header:   r.Header.Clone(),
		Body:     body,
		Model:    modelOf(r.URL.Path, body),
		Scenario: r.Header.Get(ScenarioHeader),
	}
	p.mu.Lock()
	p.requests = append(p.requests, rec)
	router := p.router
	t, ok := p.match(rec)
	d := p.demo
	p.mu.Unlock()
	if router != nil {
		if rt, rok := router(r, body); rok {
			rt.serve(w, r)
			return
		}
	}
	if ok {
		t.serve(w, r)
		return
	}
	if d != nil && d.serve(w, r, body, rec.Model) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": "fakeprovider: no transcript for " + r.Method + " " + r.URL.Path,
		"type":    "invalid_request_error", "param": nil, "code": "not_found",
	}})
}

func (p *Provider) match(rec Recorded) (Transcript, bool) {
	best, bestScore := -1, -1
	for i, rt := range p.routes {
		if (rt.Path != "" && rt.Path != rec.Path) ||
			(rt.Model != "" && rt.Model != rec.Model) ||
			(rt.Scenario != "" && rt.Scenario != rec.Scenario) {
			continue
		}
		if s := rt.score(); s >= bestScore {
			best, bestScore = i, s
		}
	}
	if best < 0 {
		return Transcript{}, false
	}
	return p.routes[best].Transcript, true
}

// Model-in-path forms (providers.md §5–§8): Gemini and Vertex
// models/{model}:method, Bedrock /model/{id}/…, Azure /deployments/{name}/….
var pathModel = []*regexp.Regexp{
	regexp.MustCompile(`/models/([^/:]+):`),
	regexp.MustCompile(`^/model/([^/]+)/`),
	regexp.MustCompile(`/deployments/([^/]+)/`),
}

func modelOf(path string, body []byte) string {
	if m := gjson.GetBytes(body, "model"); m.Type == gjson.String && m.Str != "" {
		return m.Str
	}
	for _, re := range pathModel {
		if m := re.FindStringSubmatch(path); m != nil {
			return m[1]
		}
	}
	return ""
}
