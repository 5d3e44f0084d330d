package extproc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/tidwall/gjson"

	"github.com/creditgate/creditgate/envoy"
	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/test/envoyemu"
)

// emu puts the Envoy ext_proc filter emulator, configured with the filter we
// ship (envoy/envoy.yaml), between an HTTP client and a scripted upstream.
type emu struct {
	*env
	proxy *envoyemu.Proxy
	url   string

	mu       sync.Mutex
	upstream []upstreamRequest
	handler  http.HandlerFunc
}

// upstreamRequest is what the provider received.
type upstreamRequest struct {
	Header        http.Header
	Body          []byte
	ContentLength int64
	Path          string
}

type emuConfig struct {
	envConfig
	// Filter edits a copy of the shipped filter config.
	Filter func(*extprocfilterv3.ExternalProcessor)
	// Attributes plays what Envoy computes for request_attributes, e.g. the
	// mTLS peer's source.principal.
	Attributes func(*http.Request) map[string]any
}

func newEmu(t *testing.T, cfg emuConfig) *emu {
	t.Helper()
	m := &emu{env: newEnv(t, cfg.envConfig)}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m.mu.Lock()
		m.upstream = append(m.upstream, upstreamRequest{Header: r.Header.Clone(), Body: body, ContentLength: r.ContentLength, Path: r.URL.RequestURI()})
		h := m.handler
		m.mu.Unlock()
		if h == nil {
			http.Error(w, "no handler", http.StatusTeapot)
			return
		}
		h(w, r)
	}))
	t.Cleanup(up.Close)
	upURL, _ := url.Parse(up.URL)
	filter := shippedFilter(t)
	if cfg.Filter != nil {
		cfg.Filter(filter)
	}
	px, err := envoyemu.New(envoyemu.Config{
		Upstream: upURL, Processor: m.conn, Filter: filter, UpstreamHTTP1: true, Attributes: cfg.Attributes,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(px)
	t.Cleanup(srv.Close)
	m.proxy, m.url = px, srv.URL
	return m
}

func shippedFilter(t *testing.T) *extprocfilterv3.ExternalProcessor {
	t.Helper()
	f, err := envoy.ShippedExtProcFilter()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (m *emu) serve(h http.HandlerFunc) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.handler = h
}

func (m *emu) received() []upstreamRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]upstreamRequest(nil), m.upstream...)
}

// do sends one request through the proxy with the provider's Host, as an
// in-mesh client does.
func (m *emu) do(ctx context.Context, method, host, path string, header http.Header, body []byte) (*http.Response, []byte) {
	m.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, m.url+path, rd)
	if err != nil {
		m.t.Fatal(err)
	}
	req.Host = host
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		m.t.Fatalf("reading the response: %v", err)
	}
	return resp, b
}

// lastTrace waits for the request's trace: the emulator publishes it when
// the HTTP exchange ends, which may be just after the client saw the end.
func (m *emu) lastTrace(n int) *envoyemu.Trace {
	m.t.Helper()
	for deadline := time.Now().Add(guard); ; time.Sleep(10 * time.Millisecond) {
		if ts := m.proxy.Traces(); len(ts) >= n {
			return ts[n-1]
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("no trace for request %d", n)
		}
	}
}

func readBody(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "bodies", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func jsonAnswer(body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	}
}

// streamAnswer writes each chunk and flushes it; trailers, if any, are
// announced up front and sent after the body (HTTP/1 chunked trailers).
func streamAnswer(ctype string, chunks []string, trailers map[string]string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", ctype)
		for k := range trailers {
			w.Header().Add("Trailer", k)
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		for _, c := range chunks {
			_, _ = io.WriteString(w, c)
			_ = rc.Flush()
		}
		for k, v := range trailers {
			w.Header().Set(k, v)
		}
	}
}

// TestEmuKeySwap: whatever header the client's SDK put its virtual key in,
// the provider receives the real key where it expects it and the virtual key
// nowhere; the call is metered.
func TestEmuKeySwap(t *testing.T) {
	cases := []struct {
		name, host, path, keyHeader, keyValue string
		reqBody, respBody                     string
		wantHeader, wantValue                 string
	}{
		{"openai bearer", "api.openai.com", "/v1/chat/completions", "Authorization", "Bearer " + virtualKey,
			"openai_chat_request.json", "openai_chat_response.json", "Authorization", "Bearer " + realKey},
		{"anthropic x-api-key", "api.anthropic.com", "/v1/messages", "X-Api-Key", virtualKey,
			"anthropic_request.json", "anthropic_response.json", "X-Api-Key", realKey},
		{"anthropic from bearer", "api.anthropic.com", "/v1/messages", "Authorization", "Bearer " + virtualKey,
			"anthropic_request.json", "anthropic_response.json", "X-Api-Key", realKey},
		{"gemini x-goog-api-key", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent", "X-Goog-Api-Key", virtualKey,
			"gemini_request.json", "gemini_response.json", "X-Goog-Api-Key", realKey},
		{"gemini ?key= query", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent?key=" + virtualKey, "", "",
			"gemini_request.json", "gemini_response.json", "X-Goog-Api-Key", realKey},
		{"azure api-key", "myres.openai.azure.com", "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21", "Api-Key", virtualKey,
			"openai_chat_request.json", "openai_chat_response.json", "Api-Key", realKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := newEmu(t, emuConfig{envConfig: envConfig{Identity: extproc.Identity{Sources: []string{"apikey"},
				ProviderKeys: map[string]string{"openai": realKey, "anthropic": realKey, "gemini": realKey, "azure": realKey}}}})
			m.serve(jsonAnswer(readBody(t, c.respBody)))
			hdr := http.Header{"Content-Type": {"application/json"}}
			if c.keyHeader != "" {
				hdr.Set(c.keyHeader, c.keyValue)
			}
			resp, body := m.do(m.ctx, "POST", c.host, c.path, hdr, readBody(t, c.reqBody))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			up := m.received()
			if len(up) != 1 {
				t.Fatalf("upstream got %d requests", len(up))
			}
			if got := up[0].Header.Get(c.wantHeader); got != c.wantValue {
				t.Errorf("upstream %s = %q, want %q", c.wantHeader, got, c.wantValue)
			}
			for k, vs := range up[0].Header {
				for _, v := range vs {
					if strings.Contains(v, virtualKey) {
						t.Errorf("the virtual key reached the provider in %s", k)
					}
				}
			}
			if strings.Contains(up[0].Path, virtualKey) {
				t.Errorf("the virtual key reached the provider in the path %s", up[0].Path)
			}
			if resp.Header.Get("X-Creditgate-Cost") == "" {
				t.Errorf("no cost header on a metered call")
			}
			if types := entryTypes(m.requestEntries()); strings.Join(types, ",") != "reserve,capture" {
				t.Errorf("journal %v", types)
			}
		})
	}
}

// TestEmuIdentityWithoutKeys: a payer named by a header (set by an auth
// filter in front) or by the mesh principal. The account header never
// reaches the provider; the client's own provider key passes untouched.
func TestEmuIdentityWithoutKeys(t *testing.T) {
	const principal = "spiffe://cluster.local/ns/apps/sa/billing-bot"
	cases := []struct {
		name   string
		id     extproc.Identity
		header http.Header
		attrs  func(*http.Request) map[string]any
	}{
		{"header", extproc.Identity{Sources: []string{"header"}}, http.Header{"X-Creditgate-Account": {testAccount}}, nil},
		{"principal", extproc.Identity{Sources: []string{"principal"}, Principals: map[string]string{principal: testAccount}},
			// A client-sent account header is ignored and still stripped.
			http.Header{"X-Creditgate-Account": {"someone-else"}},
			func(*http.Request) map[string]any { return map[string]any{"source.principal": principal} }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := newEmu(t, emuConfig{envConfig: envConfig{Identity: c.id}, Attributes: c.attrs})
			m.serve(jsonAnswer(readBody(t, "openai_chat_response.json")))
			h := c.header.Clone()
			h.Set("Authorization", "Bearer sk-client-own-provider-key")
			resp, body := m.do(m.ctx, "POST", "api.openai.com", "/v1/chat/completions", h, readBody(t, "openai_chat_request.json"))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			up := m.received()[0]
			if v := up.Header.Values("X-Creditgate-Account"); len(v) != 0 {
				t.Errorf("the account header reached the provider: %q", v)
			}
			if got := up.Header.Get("Authorization"); got != "Bearer sk-client-own-provider-key" {
				t.Errorf("upstream authorization %q", got)
			}
			if types := entryTypes(m.requestEntries()); strings.Join(types, ",") != "reserve,capture" {
				t.Errorf("journal %v", types)
			}
		})
	}
}

// TestEmuPassthrough: a listed unmetered request goes upstream with no hold,
// and the request headers reply turns body processing off for both
// directions and response headers off (§2.6), so the emulator sends no body
// or response message at all.
func TestEmuPassthrough(t *testing.T) {
	m := newEmu(t, emuConfig{envConfig: envConfig{Passthrough: []string{"/v1/models"}}})
	models := []byte(`{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}`)
	m.serve(jsonAnswer(models))
	resp, body := m.do(m.ctx, "GET", "api.openai.com", "/v1/models", http.Header{"Authorization": {"Bearer " + virtualKey}}, nil)
	if resp.StatusCode != 200 || !bytes.Equal(body, models) {
		t.Fatalf("status %d body %s", resp.StatusCode, body)
	}
	tr := m.lastTrace(1)
	if !tr.Has(envoyemu.EventModeOverride) {
		t.Fatal("no mode_override applied")
	}
	for _, r := range tr.Received() {
		if mo := r.GetModeOverride(); mo != nil {
			if mo.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE || mo.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE ||
				mo.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SKIP {
				t.Errorf("mode_override %v, want both bodies NONE and response headers SKIP", mo)
			}
		}
	}
	for _, s := range tr.Sent() {
		if _, ok := s.GetRequest().(*extprocv3.ProcessingRequest_RequestHeaders); !ok {
			t.Errorf("sent %T after the passthrough reply", s.GetRequest())
		}
	}
	if es := m.requestEntries(); len(es) != 0 {
		t.Errorf("passthrough touched the ledger: %v", entryTypes(es))
	}
	if len(m.received()) != 1 {
		t.Errorf("upstream got %d requests", len(m.received()))
	}
}

// TestEmuPassthroughKeySwap: with a real key configured, a passthrough
// request must not carry the virtual key to the provider either.
func TestEmuPassthroughKeySwap(t *testing.T) {
	// Regression: the passthrough route once had no provider, so the real key
	// was never swapped in and the virtual key reached the provider.
	m := newEmu(t, emuConfig{envConfig: envConfig{Passthrough: []string{"/v1/models"},
		Identity: extproc.Identity{Sources: []string{"apikey"}, ProviderKeys: map[string]string{"openai": realKey}}}})
	m.serve(jsonAnswer([]byte(`{"object":"list","data":[]}`)))
	m.do(m.ctx, "GET", "api.openai.com", "/v1/models", http.Header{"Authorization": {"Bearer " + virtualKey}}, nil)
	if got := m.received()[0].Header.Get("Authorization"); got != "Bearer "+realKey {
		t.Errorf("upstream authorization %q, want the real key", got)
	}
}

// TestEmuIncludeUsageInjection: the mutated request body reaches the
// provider as valid JSON whose length matches its content-length (§2.4: a
// mismatch would fail the reply with status_on_error).
func TestEmuIncludeUsageInjection(t *testing.T) {
	m := newEmu(t, emuConfig{})
	m.serve(streamAnswer("text/event-stream", []string{
		"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
		"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":5,\"total_tokens\":15}}\n\ndata: [DONE]\n\n",
	}, nil))
	reqBody := readBody(t, "openai_chat_stream_request.json")
	resp, body := m.do(m.ctx, "POST", "api.openai.com", "/v1/chat/completions",
		http.Header{"Authorization": {"Bearer " + virtualKey}, "Content-Type": {"application/json"}}, reqBody)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	up := m.received()[0]
	if !json.Valid(up.Body) || !gjson.GetBytes(up.Body, "stream_options.include_usage").Bool() {
		t.Fatalf("upstream body %s", up.Body)
	}
	if up.ContentLength != int64(len(up.Body)) || up.Header.Get("Content-Length") != "" && up.Header.Get("Content-Length") != strconv.Itoa(len(up.Body)) {
		t.Errorf("upstream content-length %d for %d bytes", up.ContentLength, len(up.Body))
	}
	if len(up.Body) == len(reqBody) {
		t.Errorf("body not mutated")
	}
	if strings.Contains(string(body), `"usage":{`) {
		t.Errorf("client saw the injected usage chunk: %s", body)
	}
	if tr := m.lastTrace(1); tr.Has(envoyemu.EventProcessingError) || tr.Has(envoyemu.EventSpurious) {
		t.Errorf("filter errors: %+v", tr.Events)
	}
}

// TestEmuResponseModes: the response headers reply picks the body mode from
// the answer (design-notes §4.3) and the filter applies it.
func TestEmuResponseModes(t *testing.T) {
	geminiArray := []string{
		`[{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":2,"totalTokenCount":14},"modelVersion":"gemini-2.5-flash"}` + "\r\n,",
		"\r\n" + `{"candidates":[{"content":{"parts":[{"text":" there"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":6,"totalTokenCount":18},"modelVersion":"gemini-2.5-flash"}` + "\r\n]",
	}
	cases := []struct {
		name, host, path, header, reqBody string
		answer                            http.HandlerFunc
		wantMode                          extprocfilterv3.ProcessingMode_BodySendMode
		wantStatus                        int
		wantJournal                       string
		wantCostHeader                    bool
	}{
		{"json buffered", "api.openai.com", "/v1/chat/completions", "Authorization", "openai_chat_request.json",
			jsonAnswer(readBody(t, "openai_chat_response.json")), extprocfilterv3.ProcessingMode_BUFFERED, 200, "reserve,capture", true},
		{"provider error released", "api.anthropic.com", "/v1/messages", "X-Api-Key", "anthropic_request.json",
			func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(529)
				_, _ = io.WriteString(w, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`)
			}, extprocfilterv3.ProcessingMode_NONE, 529, "reserve,release", true},
		{"gemini alt=sse streamed", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "X-Goog-Api-Key", "gemini_request.json",
			streamAnswer("text/event-stream", []string{"data: " + strings.TrimSuffix(strings.TrimPrefix(geminiArray[0], "["), "\r\n,") + "\r\n\r\n",
				"data: " + strings.TrimSuffix(strings.TrimPrefix(geminiArray[1], "\r\n"), "\r\n]") + "\r\n\r\n"}, nil),
			extprocfilterv3.ProcessingMode_STREAMED, 200, "reserve,capture", false},
		{"gemini array streamed", "generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "X-Goog-Api-Key", "gemini_request.json",
			streamAnswer("application/json; charset=UTF-8", geminiArray, nil), extprocfilterv3.ProcessingMode_STREAMED, 200, "reserve,capture", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := newEmu(t, emuConfig{})
			m.serve(c.answer)
			key := virtualKey
			if c.header == "Authorization" {
				key = "Bearer " + key
			}
			resp, body := m.do(m.ctx, "POST", c.host, c.path, http.Header{c.header: {key}}, readBody(t, c.reqBody))
			if resp.StatusCode != c.wantStatus {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			tr := m.lastTrace(1)
			var got []extprocfilterv3.ProcessingMode_BodySendMode
			for _, r := range tr.Received() {
				if _, ok := r.GetResponse().(*extprocv3.ProcessingResponse_ResponseHeaders); ok && r.GetModeOverride() != nil {
					got = append(got, r.GetModeOverride().GetResponseBodyMode())
					if r.GetModeOverride().GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED {
						// Body modes are literal and apply to both directions (§2.6).
						t.Errorf("request body mode not restated: %v", r.GetModeOverride())
					}
				}
			}
			if len(got) != 1 || got[0] != c.wantMode || tr.Count(envoyemu.EventModeOverride) != 1 {
				t.Errorf("response body mode override %v (applied %d), want %v", got, tr.Count(envoyemu.EventModeOverride), c.wantMode)
			}
			if tr.Has(envoyemu.EventProcessingError) || tr.Has(envoyemu.EventSpurious) || tr.Has(envoyemu.EventLocalReply) {
				t.Errorf("filter errors: %+v", tr.Events)
			}
			if (resp.Header.Get("X-Creditgate-Cost") != "") != c.wantCostHeader {
				t.Errorf("cost header %q, want present=%v", resp.Header.Get("X-Creditgate-Cost"), c.wantCostHeader)
			}
			if types := strings.Join(entryTypes(m.requestEntries()), ","); types != c.wantJournal {
				t.Errorf("journal %s, want %s", types, c.wantJournal)
			}
			if c.wantJournal == "reserve,capture" {
				if cp := m.requestEntries()[1]; cp.Estimated {
					t.Errorf("capture estimated: %+v", cp)
				}
			}
		})
	}
}

// TestEmuGeminiArrayStreamFlows: the first element of a Gemini array stream
// reaches the client while the provider is still generating. The provider
// writes the rest only after the client has read the first element; a
// buffered response would deadlock here (guard makes that a failure).
func TestEmuGeminiArrayStreamFlows(t *testing.T) {
	m := newEmu(t, emuConfig{})
	clientGotFirst := make(chan struct{})
	m.serve(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		rc := http.NewResponseController(w)
		_, _ = io.WriteString(w, `[{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":2,"totalTokenCount":14},"modelVersion":"gemini-2.5-flash"}`+"\r\n")
		_ = rc.Flush()
		select {
		case <-clientGotFirst:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, ",\r\n"+`{"candidates":[{"content":{"parts":[{"text":" there"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":6,"totalTokenCount":18},"modelVersion":"gemini-2.5-flash"}`+"\r\n]")
	})
	ctx, cancel := context.WithTimeout(m.ctx, guard)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", m.url+"/v1beta/models/gemini-2.5-flash:streamGenerateContent", bytes.NewReader(readBody(t, "gemini_request.json")))
	req.Host = "generativelanguage.googleapis.com"
	req.Header.Set("X-Goog-Api-Key", virtualKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte(`"Hi"`)) {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("stream ended before the first element (%v): %s", err, got)
		}
	}
	close(clientGotFirst)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, rest...)
	if !json.Valid(got) || gjson.GetBytes(got, "#").Int() != 2 {
		t.Fatalf("client got %s", got)
	}
	m.lastTrace(1)
	m.drain()
	es := m.requestEntries()
	if strings.Join(entryTypes(es), ",") != "reserve,capture" || es[1].Amount != 36 || es[1].Estimated {
		t.Fatalf("journal %+v, want an exact 36 µUSD capture", es)
	}
}

// TestEmuUpstreamTrailers: an SSE answer with HTTP trailers. With the
// shipped trailer mode SKIP the last chunk has eos=false and nothing follows
// (§1.5), so the stream's close settles it; with SEND the trailers message
// does. Either way: exactly one exact capture, and the client gets the
// whole stream.
func TestEmuUpstreamTrailers(t *testing.T) {
	chunks := []string{
		"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n",
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":8}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
	}
	for _, mode := range []extprocfilterv3.ProcessingMode_HeaderSendMode{extprocfilterv3.ProcessingMode_SKIP, extprocfilterv3.ProcessingMode_SEND} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			m := newEmu(t, emuConfig{Filter: func(f *extprocfilterv3.ExternalProcessor) {
				f.ProcessingMode.ResponseTrailerMode = mode
			}})
			m.serve(streamAnswer("text/event-stream", chunks, map[string]string{"X-Upstream-Checksum": "abc"}))
			resp, body := m.do(m.ctx, "POST", "api.anthropic.com", "/v1/messages", http.Header{"X-Api-Key": {virtualKey}},
				readBody(t, "anthropic_stream_request.json"))
			if resp.StatusCode != 200 || string(body) != strings.Join(chunks, "") {
				t.Fatalf("status %d body %q", resp.StatusCode, body)
			}
			tr := m.lastTrace(1)
			sentTrailers := 0
			for _, s := range tr.Sent() {
				if b := s.GetResponseBody(); b != nil && b.GetEndOfStream() {
					t.Errorf("a body chunk had eos=true although trailers followed")
				}
				if s.GetResponseTrailers() != nil {
					sentTrailers++
				}
			}
			if want := map[bool]int{true: 1, false: 0}[mode == extprocfilterv3.ProcessingMode_SEND]; sentTrailers != want {
				t.Errorf("%d trailer messages, want %d", sentTrailers, want)
			}
			m.drain()
			es := m.requestEntries()
			if strings.Join(entryTypes(es), ",") != "reserve,capture" || es[1].Amount != 180 || es[1].Estimated {
				t.Fatalf("journal %+v, want one exact 180 µUSD capture", es)
			}
			if tr.Has(envoyemu.EventProcessingError) || tr.Has(envoyemu.EventSpurious) || tr.Has(envoyemu.EventLocalReply) {
				t.Errorf("filter errors: %+v", tr.Events)
			}
		})
	}
}

// TestEmuClientGoneBeforeResponse: the client disconnects after the reserve,
// while the provider has not answered yet. Envoy destroys the filter and
// closes the stream (§1.1 (d)); the prompt estimate is captured, flagged.
func TestEmuClientGoneBeforeResponse(t *testing.T) {
	m := newEmu(t, emuConfig{})
	upstreamHasIt := make(chan struct{})
	m.serve(func(w http.ResponseWriter, r *http.Request) {
		close(upstreamHasIt)
		<-r.Context().Done() // the provider is still thinking when the client leaves
	})
	ctx, cancel := context.WithCancel(m.ctx)
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", m.url+"/v1/chat/completions", bytes.NewReader(readBody(t, "openai_chat_request.json")))
		req.Host = "api.openai.com"
		req.Header.Set("Authorization", "Bearer "+virtualKey)
		_, err := http.DefaultClient.Do(req)
		errc <- err
	}()
	select {
	case <-upstreamHasIt:
	case <-time.After(guard):
		t.Fatal("the request never reached the provider")
	}
	cancel()
	if err := <-errc; err == nil {
		t.Fatal("the client was not cut off")
	}
	tr := m.lastTrace(1)
	if !tr.Has(envoyemu.EventClientAbort) {
		t.Fatalf("no client abort in the trace")
	}
	m.drain()
	es := m.requestEntries()
	if strings.Join(entryTypes(es), ",") != "reserve,capture" || !es[1].Estimated || es[1].Amount <= 0 || es[1].Amount >= es[0].Amount {
		t.Fatalf("journal %+v, want an estimated prompt capture below the hold", es)
	}
	if b := m.balance(); b.Held != 0 {
		t.Fatalf("held %s", b.Held)
	}
}
