package envoyemu

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestHeadersOnlyRequest covers §1.2, §1.3, §1.5 (GET: headers eos=true and
// no body message) and the 1.37 close after the last expected reply (§1.1c).
func TestHeadersOnlyRequest(t *testing.T) {
	f := baseFilter()
	f.RequestAttributes = []string{"request.path", "source.principal", "request.unknown"}
	f.MetadataOptions = &extprocfilterv3.MetadataOptions{
		ForwardingNamespaces: &extprocfilterv3.MetadataOptions_MetadataNamespaces{Untyped: []string{"envoy.filters.http.jwt_authn", "absent"}},
	}
	jwt, _ := structpb.NewStruct(map[string]any{"sub": "alice"})
	h := newHarness(t, harnessOpts{filter: f, config: func(c *Config) {
		c.Attributes = func(*http.Request) map[string]any { return map[string]any{"source.principal": "spiffe://ns/team-a"} }
		c.DynamicMetadata = func(*http.Request) map[string]*structpb.Struct {
			return map[string]*structpb.Struct{"envoy.filters.http.jwt_authn": jwt}
		}
	}})
	req := h.newRequest("GET", "/v1/models?limit=2", "")
	req.Host = "api.example.com"
	req.Header.Set("X-Tenant", "Acme")
	resp, body := h.do(req)
	if resp.StatusCode != 200 || body != "upstream-ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	s := h.stream()
	got := describeAll(s.messages())
	want := []string{"request_headers eos=true", "response_headers eos=false"}
	if !equalStrings(got, want) {
		t.Fatalf("messages = %q, want %q", got, want)
	}
	msgs := s.messages()
	rh := headersOf(msgs[0])
	for k, v := range map[string]string{
		":authority": "api.example.com", ":path": "/v1/models?limit=2", ":method": "GET",
		":scheme": "http", "x-tenant": "Acme", "x-forwarded-proto": "http",
	} {
		gotV, ok, usedValue := protoHeader(rh, k)
		if !ok || gotV != v || usedValue {
			t.Errorf("request header %s = %q (present %t, value field used %t), want raw_value %q", k, gotV, ok, usedValue, v)
		}
	}
	if id, ok, _ := protoHeader(rh, "x-request-id"); !ok || len(id) != 36 {
		t.Errorf("x-request-id = %q, want a generated UUID", id)
	}
	if _, ok, _ := protoHeader(rh, "host"); ok {
		t.Error("host entry present; HTTP/1 Host must become :authority only")
	}
	if st, ok, _ := protoHeader(headersOf(msgs[1]), ":status"); !ok || st != "200" {
		t.Errorf(":status = %q", st)
	}
	if _, ok, _ := protoHeader(headersOf(msgs[1]), "x-envoy-upstream-service-time"); !ok {
		t.Error("response headers lack x-envoy-upstream-service-time")
	}
	// protocol_config on the first message only.
	if pc := msgs[0].GetProtocolConfig(); pc == nil || pc.GetRequestBodyMode() != none || pc.GetResponseBodyMode() != none {
		t.Errorf("first protocol_config = %v", pc)
	}
	if msgs[1].GetProtocolConfig() != nil {
		t.Error("protocol_config repeated on the second message")
	}
	// attributes once per direction, only when configured.
	attrs := msgs[0].GetAttributes()["envoy.filters.http.ext_proc"].GetFields()
	if attrs["request.path"].GetStringValue() != "/v1/models?limit=2" || attrs["source.principal"].GetStringValue() != "spiffe://ns/team-a" {
		t.Errorf("request attributes = %v", attrs)
	}
	if _, ok := attrs["request.unknown"]; ok {
		t.Error("an attribute without a value was sent")
	}
	if msgs[1].GetAttributes() != nil {
		t.Error("response message carries attributes though none are configured")
	}
	// metadata_context on every message, forwarding only present namespaces.
	for i, m := range msgs {
		if m.GetMetadataContext() == nil {
			t.Errorf("message %d lacks metadata_context", i)
		}
		fm := m.GetMetadataContext().GetFilterMetadata()
		if fm["envoy.filters.http.jwt_authn"].GetFields()["sub"].GetStringValue() != "alice" || len(fm) != 1 {
			t.Errorf("message %d metadata_context = %v", i, fm)
		}
	}
	// §1.1(c): the stream is closed right after the response headers reply.
	if !isEOFOrCanceled(s.recvErr) {
		t.Errorf("server saw %v, want EOF or cancel", s.recvErr)
	}
}

// TestBufferedBothDirections covers §1.5 BUFFERED, §2.2 header mutation in a
// buffered body reply and §2.4 (content-length kept, set in the same reply).
func TestBufferedBothDirections(t *testing.T) {
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			switch req.GetRequest().(type) {
			case *extprocv3.ProcessingRequest_RequestBody:
				s.send(replyWith(req, &extprocv3.CommonResponse{
					HeaderMutation: setHeaders(setRaw("content-length", "9"), setRaw("x-added", "yes")),
					BodyMutation:   bodyMut("new-input"),
				}))
			case *extprocv3.ProcessingRequest_ResponseBody:
				s.send(replyWith(req, &extprocv3.CommonResponse{
					HeaderMutation: setHeaders(setRaw("content-length", "10"), setRaw("x-resp", "1")),
					BodyMutation:   bodyMut("new-output"),
				}))
			default:
				s.send(continueReply(req))
			}
		}
	}
	f := withMode(baseFilter(), bodyModes(buffer, buffer))
	f.RequestAttributes = []string{"request.method"}
	f.ResponseAttributes = []string{"response.code"}
	h := newHarness(t, harnessOpts{filter: f, script: script})
	resp, body := h.do(h.newRequest("POST", "/v1/chat/completions", "hello world"))
	if resp.StatusCode != 200 || body != "new-output" || resp.Header.Get("X-Resp") != "1" {
		t.Fatalf("client got %d %q %v", resp.StatusCode, body, resp.Header)
	}
	up := h.upstream()
	if up.body != "new-input" || up.header.Get("X-Added") != "yes" || up.contentLength != 9 {
		t.Errorf("upstream got %q cl=%d headers=%v", up.body, up.contentLength, up.header)
	}
	s := h.stream()
	want := []string{
		"request_headers eos=false",
		`request_body "hello world" eos=true`,
		"response_headers eos=false",
		`response_body "upstream-ok" eos=true`,
	}
	if got := describeAll(s.messages()); !equalStrings(got, want) {
		t.Fatalf("messages = %q, want %q", got, want)
	}
	// Attributes once per direction, on its first message (§1.2).
	for i, m := range s.messages() {
		attrs := m.GetAttributes()["envoy.filters.http.ext_proc"].GetFields()
		switch i {
		case 0:
			if attrs["request.method"].GetStringValue() != "POST" || len(attrs) != 1 {
				t.Errorf("request attributes %v", attrs)
			}
		case 2:
			if attrs["response.code"].GetNumberValue() != 200 || len(attrs) != 1 {
				t.Errorf("response attributes %v", attrs)
			}
		default:
			if m.GetAttributes() != nil {
				t.Errorf("message %d repeats attributes", i)
			}
		}
	}
	// The server still sees content-length in BUFFERED with headers SEND.
	if cl, ok, _ := protoHeader(headersOf(s.messages()[0]), "content-length"); !ok || cl != "11" {
		t.Errorf("request content-length seen by server = %q %t", cl, ok)
	}
}

// TestContentLengthMismatch: §2.4, a buffered body mutation whose length does
// not match the kept content-length is a local reply with status_on_error.
func TestContentLengthMismatch(t *testing.T) {
	tests := []struct {
		name       string
		mutation   *extprocv3.CommonResponse
		wantStatus int
		wantBody   string
	}{
		{"mismatch", &extprocv3.CommonResponse{BodyMutation: bodyMut("a longer body")}, 503, ""},
		{"clear body with nonzero length", &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{ClearBody: true}}}, 503, ""},
		{"length fixed in same reply", &extprocv3.CommonResponse{
			HeaderMutation: setHeaders(setRaw("content-length", "13")),
			BodyMutation:   bodyMut("a longer body"),
		}, 200, "a longer body"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := withMode(baseFilter(), bodyModes(buffer, none))
			f.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable}
			script := func(s *srvStream) error {
				for {
					req, ok := s.recv()
					if !ok {
						return nil
					}
					if req.GetRequestBody() != nil {
						s.send(replyWith(req, tc.mutation))
						continue
					}
					s.send(continueReply(req))
				}
			}
			h := newHarness(t, harnessOpts{filter: f, script: script})
			resp, _ := h.do(h.newRequest("POST", "/x", "short"))
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantStatus != 200 {
				h.noUpstream()
				if d := h.trace().ResponseCodeDetails; d != "mismatch_between_content_length_and_the_length_of_the_mutated_body" {
					t.Errorf("details = %q", d)
				}
				return
			}
			if up := h.upstream(); up.body != tc.wantBody {
				t.Errorf("upstream body %q", up.body)
			}
		})
	}
}

// TestStreamedResponseFlushesEachChunk covers §1.5 STREAMED, §3 (one reply per
// chunk, downstream gets a chunk when its reply arrives), HTTP/1 framing with
// the final empty eos chunk (§1.6) and content-length removal (§2.4).
func TestStreamedResponseFlushesEachChunk(t *testing.T) {
	clientGotFirst := make(chan struct{})
	var h *harness
	serverGotFirst := make(chan struct{})
	script := func(s *srvStream) error {
		n := 0
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			if rb := req.GetResponseBody(); rb != nil {
				n++
				switch n {
				case 1:
					close(serverGotFirst)
					s.send(continueReply(req))
				case 2:
					// Reply to chunk 2 only after the client has read chunk 1:
					// proves chunk 1 was flushed on its own reply.
					select {
					case <-clientGotFirst:
					case <-time.After(guard):
						t.Error("client never received chunk 1 on its own: not flushed after its reply")
					}
					s.send(replyWith(req, &extprocv3.CommonResponse{BodyMutation: bodyMut(strings.ToUpper(string(rb.GetBody())))}))
				default:
					s.send(continueReply(req))
				}
				continue
			}
			s.send(continueReply(req))
		}
	}
	upstream := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Content-Length", "20")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		h.waitEvent(func(e Event) bool { return e.Kind == EventDownstreamHeader })
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-serverGotFirst
		_, _ = io.WriteString(w, "data: 2\n\n")
	}
	f := withMode(baseFilter(), bodyModes(none, stream))
	h = newHarness(t, harnessOpts{filter: f, script: script, upstream: upstream})
	resp, err := h.client().Do(h.newRequest("GET", "/stream", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ContentLength != -1 || resp.Header.Get("Content-Length") != "" {
		t.Errorf("content-length kept downstream in STREAMED: %d", resp.ContentLength)
	}
	br := bufio.NewReader(resp.Body)
	first := make([]byte, len("data: one\n\n"))
	if _, err := io.ReadFull(br, first); err != nil || string(first) != "data: one\n\n" {
		t.Fatalf("first chunk %q %v", first, err)
	}
	close(clientGotFirst)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "DATA: 2\n\n" {
		t.Fatalf("rest %q %v", rest, err)
	}
	s := h.stream()
	want := []string{
		"request_headers eos=true",
		"response_headers eos=false",
		`response_body "data: one\n\n" eos=false`,
		`response_body "data: 2\n\n" eos=false`,
		`response_body "" eos=true`,
	}
	if got := describeAll(s.messages()); !equalStrings(got, want) {
		t.Fatalf("messages = %q, want %q", got, want)
	}
	if cl, ok, _ := protoHeader(headersOf(s.messages()[1]), "content-length"); !ok || cl != "20" {
		t.Errorf("server must still see content-length, got %q %t", cl, ok)
	}
}

// TestStreamedCoalescing: §1.6 / §3 step 1. Data arriving while the headers
// reply is pending is sent as one chunk after it; if the whole body arrived,
// it goes as one eos=true chunk processed like BUFFERED (header mutation in
// the body reply honoured).
func TestStreamedCoalescing(t *testing.T) {
	tests := []struct {
		name         string
		finishEarly  bool
		want         []string
		wantLateHdr  string
		wantDownBody string
	}{
		{
			name: "partial body held",
			want: []string{
				"request_headers eos=true",
				"response_headers eos=false",
				`response_body "AAABBB" eos=false`,
				`response_body "CCC" eos=false`,
				`response_body "" eos=true`,
			},
			wantLateHdr:  "",
			wantDownBody: "AAABBBCCC",
		},
		{
			name:        "whole body held",
			finishEarly: true,
			want: []string{
				"request_headers eos=true",
				"response_headers eos=false",
				`response_body "AAABBB" eos=true`,
			},
			wantLateHdr:  "set-in-body-reply",
			wantDownBody: "AAABBB",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h *harness
			bodyMsgSeen := make(chan struct{})
			respData := func(e Event) bool { return e.Kind == EventSourceData && e.Dir == Response && e.Bytes > 0 }
			script := func(s *srvStream) error {
				closed := false
				for {
					req, ok := s.recv()
					if !ok {
						return nil
					}
					switch {
					case req.GetResponseHeaders() != nil:
						if tc.finishEarly {
							h.waitEvent(func(e Event) bool { return e.Kind == EventSourceData && e.Dir == Response && e.EOS })
						} else {
							h.waitCount(respData, 2)
						}
						s.send(continueReply(req))
					case req.GetResponseBody() != nil:
						if !closed {
							close(bodyMsgSeen)
							closed = true
						}
						s.send(replyWith(req, &extprocv3.CommonResponse{HeaderMutation: setHeaders(setRaw("x-late", "set-in-body-reply"))}))
					default:
						s.send(continueReply(req))
					}
				}
			}
			upstream := func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(200)
				w.(http.Flusher).Flush()
				_, _ = io.WriteString(w, "AAA")
				w.(http.Flusher).Flush()
				h.waitCount(respData, 1)
				_, _ = io.WriteString(w, "BBB")
				w.(http.Flusher).Flush()
				if tc.finishEarly {
					return
				}
				<-bodyMsgSeen
				_, _ = io.WriteString(w, "CCC")
			}
			h = newHarness(t, harnessOpts{filter: withMode(baseFilter(), bodyModes(none, stream)), script: script, upstream: upstream})
			resp, body := h.do(h.newRequest("GET", "/", ""))
			if body != tc.wantDownBody || resp.Header.Get("X-Late") != tc.wantLateHdr {
				t.Errorf("client got %q x-late=%q", body, resp.Header.Get("X-Late"))
			}
			if got := describeAll(h.stream().messages()); !equalStrings(got, tc.want) {
				t.Fatalf("messages = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestStreamedRequestHTTP1Framing: request STREAMED from an HTTP/1 client ends
// with an empty eos chunk; content-length is removed upstream (§1.6, §2.4).
func TestStreamedRequestHTTP1Framing(t *testing.T) {
	var h *harness
	pr, pw := io.Pipe()
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			s.send(continueReply(req))
		}
	}
	h = newHarness(t, harnessOpts{filter: withMode(baseFilter(), bodyModes(stream, none)), script: script})
	go func() {
		h.waitEvent(func(e Event) bool { return e.Kind == EventUpstreamRequest })
		_, _ = io.WriteString(pw, "part1")
		upData := func(e Event) bool { return e.Kind == EventUpstreamData && e.Bytes == 5 }
		h.waitCount(upData, 1)
		_, _ = io.WriteString(pw, "part2")
		h.waitCount(upData, 2)
		_ = pw.Close()
	}()
	req := h.newRequest("POST", "/upload", "")
	req.Body = pr
	req.ContentLength = -1
	resp, _ := h.do(req)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up := h.upstream()
	if up.body != "part1part2" || !up.chunked {
		t.Errorf("upstream got %q chunked=%t", up.body, up.chunked)
	}
	want := []string{
		"request_headers eos=false",
		`request_body "part1" eos=false`,
		`request_body "part2" eos=false`,
		`request_body "" eos=true`,
		"response_headers eos=false",
	}
	if got := describeAll(h.stream().messages()); !equalStrings(got, want) {
		t.Errorf("messages = %q, want %q", got, want)
	}
}

// TestModeOverride covers §2.6.
func TestModeOverride(t *testing.T) {
	override := &extprocfilterv3.ProcessingMode{ResponseBodyMode: buffer}
	tests := []struct {
		name     string
		allow    bool
		mode     *extprocfilterv3.ProcessingMode
		allowed  []*extprocfilterv3.ProcessingMode
		override *extprocfilterv3.ProcessingMode
		want     []string
	}{
		{
			name: "applied to the response direction", allow: true, override: override,
			want: []string{"request_headers eos=true", "response_headers eos=false", `response_body "upstream-ok" eos=true`},
		},
		{
			name: "ignored without allow_mode_override", allow: false, override: override,
			want: []string{"request_headers eos=true", "response_headers eos=false"},
		},
		{
			name: "allowed_override_modes without a match", allow: true, override: override,
			allowed: []*extprocfilterv3.ProcessingMode{{ResponseBodyMode: stream}},
			want:    []string{"request_headers eos=true", "response_headers eos=false"},
		},
		{
			name: "allowed_override_modes ignores request_header_mode", allow: true,
			override: &extprocfilterv3.ProcessingMode{RequestHeaderMode: skip, ResponseBodyMode: buffer},
			allowed:  []*extprocfilterv3.ProcessingMode{{ResponseBodyMode: buffer}},
			want:     []string{"request_headers eos=true", "response_headers eos=false", `response_body "upstream-ok" eos=true`},
		},
		{
			name: "SKIP response headers", allow: true,
			override: &extprocfilterv3.ProcessingMode{ResponseHeaderMode: skip},
			want:     []string{"request_headers eos=true"},
		},
		{
			name: "omitted body mode means NONE", allow: true,
			mode:     &extprocfilterv3.ProcessingMode{ResponseBodyMode: buffer},
			override: &extprocfilterv3.ProcessingMode{ResponseHeaderMode: send},
			want:     []string{"request_headers eos=true", "response_headers eos=false"},
		},
		{
			name: "DEFAULT header mode keeps the filter's SKIP", allow: true,
			mode:     &extprocfilterv3.ProcessingMode{ResponseHeaderMode: skip},
			override: &extprocfilterv3.ProcessingMode{ResponseBodyMode: buffer},
			want:     []string{"request_headers eos=true", `response_body "upstream-ok" eos=true`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := withMode(baseFilter(), tc.mode)
			f.AllowModeOverride = tc.allow
			f.AllowedOverrideModes = tc.allowed
			script := func(s *srvStream) error {
				for {
					req, ok := s.recv()
					if !ok {
						return nil
					}
					r := continueReply(req)
					if req.GetRequestHeaders() != nil {
						r.ModeOverride = tc.override
					}
					s.send(r)
				}
			}
			h := newHarness(t, harnessOpts{filter: f, script: script})
			if resp, body := h.do(h.newRequest("GET", "/", "")); resp.StatusCode != 200 || body != "upstream-ok" {
				t.Fatalf("client got %d %q", resp.StatusCode, body)
			}
			if got := describeAll(h.stream().messages()); !equalStrings(got, tc.want) {
				t.Fatalf("messages = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestModeOverrideOnlyInHeadersReply: an override on a body reply is ignored.
func TestModeOverrideOnlyInHeadersReply(t *testing.T) {
	f := withMode(baseFilter(), bodyModes(buffer, none))
	f.AllowModeOverride = true
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			r := continueReply(req)
			if req.GetRequestBody() != nil {
				r.ModeOverride = &extprocfilterv3.ProcessingMode{ResponseBodyMode: buffer}
			}
			s.send(r)
		}
	}
	h := newHarness(t, harnessOpts{filter: f, script: script})
	h.do(h.newRequest("POST", "/", "x"))
	want := []string{"request_headers eos=false", `request_body "x" eos=true`, "response_headers eos=false"}
	if got := describeAll(h.stream().messages()); !equalStrings(got, want) {
		t.Fatalf("messages = %q, want %q", got, want)
	}
}

// silent reads everything and never replies.
func silent(s *srvStream) error {
	for {
		if _, ok := s.recv(); !ok {
			return nil
		}
	}
}

// TestMessageTimeout covers §2.7: 504 fail-closed, unmodified fail-open.
func TestMessageTimeout(t *testing.T) {
	for _, failOpen := range []bool{false, true} {
		t.Run(map[bool]string{false: "fail-closed", true: "fail-open"}[failOpen], func(t *testing.T) {
			f := baseFilter()
			f.MessageTimeout = durationpb.New(time.Millisecond)
			f.FailureModeAllow = failOpen
			h := newHarness(t, harnessOpts{filter: f, script: silent})
			resp, body := h.do(h.newRequest("GET", "/", ""))
			if failOpen {
				if resp.StatusCode != 200 || body != "upstream-ok" {
					t.Fatalf("got %d %q", resp.StatusCode, body)
				}
				h.upstream()
			} else {
				if resp.StatusCode != 504 {
					t.Fatalf("got %d, want 504", resp.StatusCode)
				}
				h.noUpstream()
				if d := h.trace().ResponseCodeDetails; d != "ext_proc_error_per-message_timeout_exceeded" {
					t.Errorf("details %q", d)
				}
			}
			if h.proxy.Stats().MessageTimeouts < 1 {
				t.Error("message_timeouts not counted")
			}
		})
	}
}

// TestSpuriousReply covers §2.1.
func TestSpuriousReply(t *testing.T) {
	wrongKind := func(s *srvStream) error {
		if _, ok := s.recv(); !ok {
			return nil
		}
		s.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}})
		return silent(s)
	}
	empty := func(s *srvStream) error {
		if _, ok := s.recv(); !ok {
			return nil
		}
		s.send(&extprocv3.ProcessingResponse{})
		return silent(s)
	}
	tests := []struct {
		name       string
		script     procScript
		failOpen   bool
		wantStatus int
	}{
		{"body reply to headers, fail-closed", wrongKind, false, 500},
		{"body reply to headers, fail-open", wrongKind, true, 200},
		{"no response oneof, fail-closed", empty, false, 500},
		{"no response oneof, fail-open", empty, true, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := baseFilter()
			f.FailureModeAllow = tc.failOpen
			h := newHarness(t, harnessOpts{filter: f, script: tc.script})
			resp, _ := h.do(h.newRequest("GET", "/", ""))
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.failOpen {
				h.upstream()
			} else {
				h.noUpstream()
			}
			if h.proxy.Stats().SpuriousMsgsReceived != 1 {
				t.Errorf("spurious count %d", h.proxy.Stats().SpuriousMsgsReceived)
			}
		})
	}
}

// TestImmediateResponse covers §2.5 before the response started.
func TestImmediateResponse(t *testing.T) {
	tests := []struct {
		name       string
		ir         *extprocv3.ImmediateResponse
		wantStatus int
	}{
		{"429 with headers and body", &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests},
			Headers: setHeaders(setRaw("x-reason", "quota")),
			Body:    []byte(`{"error":"insufficient credit"}`),
			Details: "out of credit",
		}, 429},
		{"status below 200 becomes 200", &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Continue},
			Body:   []byte(`{"error":"insufficient credit"}`),
		}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			script := func(s *srvStream) error {
				if _, ok := s.recv(); !ok {
					return nil
				}
				s.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: tc.ir}})
				return silent(s)
			}
			h := newHarness(t, harnessOpts{script: script})
			resp, body := h.do(h.newRequest("POST", "/v1/chat/completions", "{}"))
			if resp.StatusCode != tc.wantStatus || body != string(tc.ir.GetBody()) {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
			if resp.Header.Get("Content-Type") != "text/plain" {
				t.Errorf("content-type %q", resp.Header.Get("Content-Type"))
			}
			if tc.ir.GetHeaders() != nil && resp.Header.Get("X-Reason") != "quota" {
				t.Errorf("immediate response headers not applied: %v", resp.Header)
			}
			h.noUpstream()
			tr := h.trace()
			if tc.ir.GetDetails() != "" && tr.ResponseCodeDetails != "out_of_credit" {
				t.Errorf("details %q", tr.ResponseCodeDetails)
			}
			for _, e := range tr.Events {
				if e.Kind == EventLocalReply && e.Status != tc.wantStatus {
					t.Errorf("local reply status %d, want %d", e.Status, tc.wantStatus)
				}
			}
			// The local reply's own headers do not go through ext_proc.
			if n := len(h.stream().messages()); n != 1 {
				t.Errorf("server got %d messages, want only request_headers", n)
			}
		})
	}
}

// TestImmediateResponseAfterHeadersSentResetsClient: §2.5, once response
// headers went downstream the local reply becomes a reset.
func TestImmediateResponseAfterHeadersSentResetsClient(t *testing.T) {
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			if req.GetResponseBody() != nil {
				s.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
					ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: 402}, Body: []byte("stop")},
				}})
				return silent(s)
			}
			s.send(continueReply(req))
		}
	}
	var h *harness
	upstream := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		h.waitEvent(func(e Event) bool { return e.Kind == EventDownstreamHeader })
		_, _ = io.WriteString(w, "data: x\n\n")
		w.(http.Flusher).Flush()
		h.waitEvent(func(e Event) bool { return e.Kind == EventDone })
	}
	h = newHarness(t, harnessOpts{filter: withMode(baseFilter(), bodyModes(none, stream)), script: script, upstream: upstream})
	resp, err := h.client().Do(h.newRequest("GET", "/", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("client read %q without error; want a reset", b)
	}
	if !h.trace().Has(EventDownstreamReset) {
		t.Error("no downstream_reset event")
	}
}

// TestHeaderMutationRules covers §2.3 on a request headers reply.
func TestHeaderMutationRules(t *testing.T) {
	type check func(t *testing.T, up upstreamReq)
	hdr := func(k, want string) check {
		return func(t *testing.T, up upstreamReq) {
			t.Helper()
			if got := strings.Join(up.header.Values(k), ","); got != want {
				t.Errorf("upstream %s = %q, want %q", k, got, want)
			}
		}
	}
	is := func(what string, get func(upstreamReq) string, want string) check {
		return func(t *testing.T, up upstreamReq) {
			t.Helper()
			if got := get(up); got != want {
				t.Errorf("upstream %s = %q, want %q", what, got, want)
			}
		}
	}
	upHost := func(u upstreamReq) string { return u.host }
	upMethod := func(u upstreamReq) string { return u.method }
	upPath := func(u upstreamReq) string { return u.path }
	both := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-both", Value: "a", RawValue: []byte("b")}}}}
	valueOnly := &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-value-only", Value: "ignored"}}}}
	tests := []struct {
		name         string
		rules        *mutationrulesv3.HeaderMutationRules
		mutation     *extprocv3.HeaderMutation
		wantStatus   int
		wantRejected int64
		checks       []check
	}{
		{name: ":authority ignored", mutation: setHeaders(setRaw(":authority", "evil.example")), wantStatus: 200, wantRejected: 1,
			checks: []check{is("host", upHost, "api.example.com")}},
		{name: ":authority with allow_all_routing", rules: &mutationrulesv3.HeaderMutationRules{AllowAllRouting: wrapperspb.Bool(true)},
			mutation: setHeaders(setRaw(":authority", "other.example")), wantStatus: 200,
			checks: []check{is("host", upHost, "other.example")}},
		{name: ":method ignored", mutation: setHeaders(setRaw(":method", "DELETE")), wantStatus: 200, wantRejected: 1,
			checks: []check{is("method", upMethod, "POST")}},
		{name: ":path can be set", mutation: setHeaders(setRaw(":path", "/rewritten?q=1")), wantStatus: 200,
			checks: []check{is("path", upPath, "/rewritten?q=1")}},
		{name: "append to :path ignored", mutation: setHeaders(appendRaw(":path", "/x")), wantStatus: 200, wantRejected: 1,
			checks: []check{is("path", upPath, "/orig")}},
		{name: "x-envoy ignored", mutation: setHeaders(setRaw("x-envoy-foo", "1")), wantStatus: 200, wantRejected: 1, checks: []check{hdr("X-Envoy-Foo", "")}},
		{name: "x-envoy with allow_envoy", rules: &mutationrulesv3.HeaderMutationRules{AllowEnvoy: wrapperspb.Bool(true)},
			mutation: setHeaders(setRaw("x-envoy-foo", "1")), wantStatus: 200, checks: []check{hdr("X-Envoy-Foo", "1")}},
		{name: "remove pseudo header ignored", mutation: &extprocv3.HeaderMutation{RemoveHeaders: []string{":path", "host", "x-tenant"}},
			wantStatus: 200, wantRejected: 2, checks: []check{hdr("X-Tenant", ""), is("path", upPath, "/orig"), is("host", upHost, "api.example.com")}},
		{name: "append defaults to overwrite", mutation: setHeaders(setRaw("x-tenant", "replaced")), wantStatus: 200, checks: []check{hdr("X-Tenant", "replaced")}},
		{name: "append true adds a value", mutation: setHeaders(appendRaw("x-tenant", "second")), wantStatus: 200, checks: []check{hdr("X-Tenant", "acme,second")}},
		{name: "value only sets empty string", mutation: valueOnly, wantStatus: 200, checks: []check{func(t *testing.T, up upstreamReq) {
			v, ok := up.header["X-Value-Only"]
			if !ok || len(v) != 1 || v[0] != "" {
				t.Errorf("x-value-only = %v %t", v, ok)
			}
		}}},
		{name: "value and raw_value both set", mutation: both, wantStatus: 500, wantRejected: 1},
		{name: "invalid character", mutation: setHeaders(setRaw("x-bad", "a\nb")), wantStatus: 500, wantRejected: 1},
		{name: "disallow_is_error", rules: &mutationrulesv3.HeaderMutationRules{DisallowIsError: wrapperspb.Bool(true)},
			mutation: setHeaders(setRaw(":authority", "evil.example")), wantStatus: 500, wantRejected: 1},
		{name: "disallow_all", rules: &mutationrulesv3.HeaderMutationRules{DisallowAll: wrapperspb.Bool(true)},
			mutation: setHeaders(setRaw("x-tenant", "nope")), wantStatus: 200, wantRejected: 1, checks: []check{hdr("X-Tenant", "acme")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := baseFilter()
			f.MutationRules = tc.rules
			script := func(s *srvStream) error {
				for {
					req, ok := s.recv()
					if !ok {
						return nil
					}
					if req.GetRequestHeaders() != nil {
						s.send(replyWith(req, &extprocv3.CommonResponse{HeaderMutation: tc.mutation}))
						continue
					}
					s.send(continueReply(req))
				}
			}
			h := newHarness(t, harnessOpts{filter: f, script: script})
			req := h.newRequest("POST", "/orig", "{}")
			req.Host = "api.example.com"
			req.Header.Set("X-Tenant", "acme")
			resp, _ := h.do(req)
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if got := h.proxy.Stats().RejectedHeaderMutations; got != tc.wantRejected {
				t.Errorf("rejected_header_mutations = %d, want %d", got, tc.wantRejected)
			}
			if tc.wantStatus != 200 {
				h.noUpstream()
				return
			}
			up := h.upstream()
			for _, c := range tc.checks {
				c(t, up)
			}
		})
	}
}

// TestDynamicMetadataNamespaces: only receiving_namespaces.untyped reach the
// access log; fields merge across replies (§2.2).
func TestDynamicMetadataNamespaces(t *testing.T) {
	f := baseFilter()
	f.MetadataOptions = &extprocfilterv3.MetadataOptions{
		ReceivingNamespaces: &extprocfilterv3.MetadataOptions_MetadataNamespaces{Untyped: []string{"creditgate"}},
	}
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			r := continueReply(req)
			if req.GetRequestHeaders() != nil {
				r.DynamicMetadata, _ = structpb.NewStruct(map[string]any{
					"creditgate": map[string]any{"reserved_micros": 1500, "key": "k1"},
					"other":      map[string]any{"x": 1},
				})
			} else {
				r.DynamicMetadata, _ = structpb.NewStruct(map[string]any{
					"creditgate": map[string]any{"charged_micros": 1200},
				})
			}
			s.send(r)
		}
	}
	h := newHarness(t, harnessOpts{filter: f, script: script})
	h.do(h.newRequest("GET", "/", ""))
	var md *structpb.Struct
	select {
	case md = <-h.metas:
	case <-time.After(guard):
		t.Fatal("OnDynamicMetadata not called")
	}
	got := md.AsMap()
	if _, ok := got["other"]; ok {
		t.Errorf("namespace outside receiving_namespaces reached the log: %v", got)
	}
	cg, _ := got["creditgate"].(map[string]any)
	if cg["reserved_micros"] != float64(1500) || cg["charged_micros"] != float64(1200) || cg["key"] != "k1" {
		t.Errorf("creditgate metadata = %v", cg)
	}
}

// TestClientAbortCancelsStream: a downstream disconnect resets the gRPC stream.
func TestClientAbortCancelsStream(t *testing.T) {
	serverDone := make(chan *srvStream, 1)
	gotChunk := make(chan struct{})
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				break
			}
			s.send(continueReply(req))
			if req.GetResponseBody() != nil {
				close(gotChunk)
				break
			}
		}
		s.drainAndWaitCancel()
		serverDone <- s
		return nil
	}
	var h *harness
	upstream := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		h.waitEvent(func(e Event) bool { return e.Kind == EventDownstreamHeader })
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // never finishes on its own
	}
	h = newHarness(t, harnessOpts{filter: withMode(baseFilter(), bodyModes(none, stream)), script: script, upstream: upstream})
	ctx, cancel := context.WithCancel(context.Background())
	req := h.newRequest("GET", "/", "").WithContext(ctx)
	resp, err := h.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("data: first\n\n"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	<-gotChunk
	cancel()
	resp.Body.Close()
	var s *srvStream
	select {
	case s = <-serverDone:
	case <-time.After(2 * guard):
		t.Fatal("server stream never ended")
	}
	if !s.cancelled {
		t.Errorf("server stream context was not cancelled (recv err %v)", s.recvErr)
	}
	if !h.waitEvent(func(e Event) bool { return e.Kind == EventClientAbort }) {
		t.Error("no client_abort event")
	}
}

// TestGRPCErrors covers §2.8 and the server-side OK close of §1.1.
func TestGRPCErrors(t *testing.T) {
	fail := func(s *srvStream) error {
		s.recv()
		return status.Error(codes.Internal, "boom")
	}
	okClose := func(s *srvStream) error {
		s.recv()
		return nil
	}
	tests := []struct {
		name        string
		script      procScript
		failOpen    bool
		statusOnErr int
		wantStatus  int
		wantDetails string
	}{
		{"fail-closed default 500", fail, false, 0, 500, "ext_proc_error_gRPC_error_13{boom}"},
		{"fail-closed status_on_error", fail, false, 503, 503, "ext_proc_error_gRPC_error_13{boom}"},
		{"fail-open continues", fail, true, 0, 200, ""},
		{"server OK close continues", okClose, false, 0, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := baseFilter()
			f.FailureModeAllow = tc.failOpen
			if tc.statusOnErr != 0 {
				f.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode(tc.statusOnErr)}
			}
			h := newHarness(t, harnessOpts{filter: f, script: tc.script})
			resp, body := h.do(h.newRequest("GET", "/", ""))
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantStatus == 200 {
				if body != "upstream-ok" {
					t.Errorf("body %q", body)
				}
				h.upstream()
				// No further messages after the stream ended.
				if n := h.trace().Count(EventSend); n != 1 {
					t.Errorf("sent %d messages, want 1", n)
				}
				return
			}
			h.noUpstream()
			if d := h.trace().ResponseCodeDetails; d != tc.wantDetails {
				t.Errorf("details %q, want %q", d, tc.wantDetails)
			}
		})
	}
}

// TestServerCloseReinjectsQueuedChunks: §1.1, chunks queued when the server
// closes go out unmodified.
func TestServerCloseReinjectsQueuedChunks(t *testing.T) {
	var h *harness
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			if req.GetResponseBody() != nil {
				return nil // close with OK while the chunk awaits its reply
			}
			s.send(continueReply(req))
		}
	}
	upstream := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		h.waitEvent(func(e Event) bool { return e.Kind == EventDownstreamHeader })
		_, _ = io.WriteString(w, "kept")
		w.(http.Flusher).Flush()
		h.waitEvent(func(e Event) bool { return e.Kind == EventServerClose })
		_, _ = io.WriteString(w, "+tail")
	}
	h = newHarness(t, harnessOpts{filter: withMode(baseFilter(), bodyModes(none, stream)), script: script, upstream: upstream})
	resp, body := h.do(h.newRequest("GET", "/", ""))
	if resp.StatusCode != 200 || body != "kept+tail" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// TestBufferLimit: BUFFERED over the buffer limit fails with 413 on requests
// and 500 on responses (§1.6).
func TestBufferLimit(t *testing.T) {
	tests := []struct {
		name         string
		mode         *extprocfilterv3.ProcessingMode
		body         string
		wantStatus   int
		wantUpstream bool
	}{
		{"request", bodyModes(buffer, none), strings.Repeat("x", 100), 413, false},
		{"response", bodyModes(none, buffer), "", 500, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{
				filter: withMode(baseFilter(), tc.mode),
				config: func(c *Config) { c.BufferLimit = 8 }, // "upstream-ok" is 11 bytes
			})
			method := "GET"
			if tc.body != "" {
				method = "POST"
			}
			resp, _ := h.do(h.newRequest(method, "/", tc.body))
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantUpstream {
				h.upstream()
			} else {
				h.noUpstream()
			}
		})
	}
}

// TestLazyStreamOpen: §1.1, the stream opens at the first message needed.
func TestLazyStreamOpen(t *testing.T) {
	t.Run("request headers skipped", func(t *testing.T) {
		f := withMode(baseFilter(), &extprocfilterv3.ProcessingMode{RequestHeaderMode: skip})
		h := newHarness(t, harnessOpts{filter: f})
		h.do(h.newRequest("GET", "/", ""))
		msgs := h.stream().messages()
		if got := describeAll(msgs); !equalStrings(got, []string{"response_headers eos=false"}) {
			t.Fatalf("messages = %q", got)
		}
		if msgs[0].GetProtocolConfig() == nil {
			t.Error("first message of the stream lacks protocol_config")
		}
		tr := h.trace()
		open, upResp := -1, -1
		for i, e := range tr.Events {
			switch e.Kind {
			case EventStreamOpen:
				open = i
			case EventUpstreamResponse:
				upResp = i
			}
		}
		if open < upResp {
			t.Errorf("stream opened at event %d, before the upstream response at %d", open, upResp)
		}
	})
	t.Run("nothing to send", func(t *testing.T) {
		f := withMode(baseFilter(), &extprocfilterv3.ProcessingMode{RequestHeaderMode: skip, ResponseHeaderMode: skip})
		h := newHarness(t, harnessOpts{filter: f})
		if resp, body := h.do(h.newRequest("GET", "/", "")); resp.StatusCode != 200 || body != "upstream-ok" {
			t.Fatalf("got %d %q", resp.StatusCode, body)
		}
		if h.trace().Has(EventStreamOpen) || h.proxy.Stats().StreamsStarted != 0 {
			t.Error("a stream was opened though nothing needed sending")
		}
	})
}

// TestContinueAndReplace: §2.2, body_mutation in a headers reply replaces the
// body, removes content-length and stops body processing.
func TestContinueAndReplace(t *testing.T) {
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			if req.GetRequestHeaders() != nil {
				s.send(replyWith(req, &extprocv3.CommonResponse{
					Status:       extprocv3.CommonResponse_CONTINUE_AND_REPLACE,
					BodyMutation: bodyMut(`{"replaced":true}`),
				}))
				continue
			}
			s.send(continueReply(req))
		}
	}
	h := newHarness(t, harnessOpts{filter: withMode(baseFilter(), bodyModes(buffer, none)), script: script})
	resp, _ := h.do(h.newRequest("POST", "/", `{"original":1}`))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up := h.upstream()
	if up.body != `{"replaced":true}` || up.contentLength != -1 {
		t.Errorf("upstream got %q cl=%d", up.body, up.contentLength)
	}
	want := []string{"request_headers eos=false", "response_headers eos=false"}
	if got := describeAll(h.stream().messages()); !equalStrings(got, want) {
		t.Errorf("messages = %q, want %q (no request_body after CONTINUE_AND_REPLACE)", got, want)
	}
}

// TestUpstreamResetMidStream: the router resets the client when the upstream
// dies after its headers.
func TestUpstreamResetMidStream(t *testing.T) {
	upstream := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	// Headers are skipped so the response headers reach the client before the
	// upstream dies; the reset then hits the body.
	off := &extprocfilterv3.ProcessingMode{RequestHeaderMode: skip, ResponseHeaderMode: skip}
	h := newHarness(t, harnessOpts{filter: withMode(baseFilter(), off), upstream: upstream})
	resp, err := h.client().Do(h.newRequest("GET", "/", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("client read the whole body; want a reset")
	}
	if !h.waitEvent(func(e Event) bool { return e.Kind == EventDownstreamReset }) {
		t.Error("no downstream_reset event")
	}
}

// TestNewRejectsUnsupported: configurations the emulator does not model fail
// loudly instead of behaving differently from Envoy.
func TestNewRejectsUnsupported(t *testing.T) {
	for _, f := range []*extprocfilterv3.ExternalProcessor{
		{ProcessingMode: &extprocfilterv3.ProcessingMode{ResponseBodyMode: extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED}},
		{ObservabilityMode: true},
	} {
		_, err := New(Config{Upstream: mustURL("http://127.0.0.1:1"), ProcessorTarget: "127.0.0.1:1", Filter: f})
		if !errors.Is(err, ErrUnsupported) {
			t.Errorf("New(%v) = %v, want ErrUnsupported", f, err)
		}
	}
}

// TestStreamClosedAfterLastReply: since 1.37 the stream closes as soon as the
// last expected reply arrived, not at the end of the HTTP request (§1.1 (c)).
// The upstream holds its body until it sees the close; without the
// optimisation the close would only come after the body and this test would
// see "false".
func TestStreamClosedAfterLastReply(t *testing.T) {
	var h *harness
	upstream := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		closed := h.waitEvent(func(e Event) bool { return e.Kind == EventHalfClose })
		_, _ = io.WriteString(w, strconv.FormatBool(closed))
	}
	h = newHarness(t, harnessOpts{upstream: upstream})
	if _, body := h.do(h.newRequest("GET", "/", "")); body != "true" {
		t.Fatalf("stream still open while the response body was pending (body %q)", body)
	}
	if s := h.stream(); !isEOFOrCanceled(s.recvErr) {
		t.Errorf("server saw %v", s.recvErr)
	}
	tr := h.trace()
	if !tr.Has(EventReset) {
		t.Error("half-close was not followed by a reset")
	}
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

// TestBufferedPartialOverLimit: §1.5 BUFFERED_PARTIAL sends the prefix with
// eos=false once the queue exceeds the limit; later data passes unprocessed.
func TestBufferedPartialOverLimit(t *testing.T) {
	var h *harness
	pr, pw := io.Pipe()
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			if rb := req.GetRequestBody(); rb != nil {
				s.send(replyWith(req, &extprocv3.CommonResponse{BodyMutation: bodyMut(strings.ToUpper(string(rb.GetBody())))}))
				continue
			}
			s.send(continueReply(req))
		}
	}
	h = newHarness(t, harnessOpts{
		filter: withMode(baseFilter(), bodyModes(partial, none)),
		script: script,
		config: func(c *Config) { c.BufferLimit = 8 },
	})
	go func() {
		// Write only after the headers reply was handled, so the body is not
		// "complete before the headers reply" (§1.6).
		h.waitEvent(func(e Event) bool { return e.Kind == EventRecv })
		_, _ = io.WriteString(pw, "abcdefghijkl") // 12 bytes > limit 8
		h.waitEvent(func(e Event) bool { return e.Kind == EventUpstreamRequest })
		_, _ = io.WriteString(pw, "-tail")
		_ = pw.Close()
	}()
	req := h.newRequest("POST", "/", "")
	req.Body, req.ContentLength = pr, -1
	if resp, _ := h.do(req); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if up := h.upstream(); up.body != "ABCDEFGHIJKL-tail" {
		t.Errorf("upstream body %q", up.body)
	}
	want := []string{"request_headers eos=false", `request_body "abcdefghijkl" eos=false`, "response_headers eos=false"}
	if got := describeAll(h.stream().messages()); !equalStrings(got, want) {
		t.Fatalf("messages = %q, want %q", got, want)
	}
}

// TestRequestTrailers: with trailers the last body chunk has eos=false, no
// empty eos chunk is sent, and the trailers message follows the body replies
// (§1.5, §1.6); a trailers reply mutates them.
func TestRequestTrailers(t *testing.T) {
	pr, pw := io.Pipe()
	script := func(s *srvStream) error {
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			if req.GetRequestTrailers() != nil {
				s.send(replyWith(req, &extprocv3.CommonResponse{HeaderMutation: setHeaders(setRaw("x-checksum", "verified"))}))
				continue
			}
			s.send(continueReply(req))
		}
	}
	f := withMode(baseFilter(), &extprocfilterv3.ProcessingMode{RequestBodyMode: stream, RequestTrailerMode: send})
	h := newHarness(t, harnessOpts{filter: f, script: script})
	req := h.newRequest("POST", "/", "")
	req.Body, req.ContentLength = pr, -1
	req.Trailer = http.Header{"X-Checksum": nil}
	go func() {
		_, _ = io.WriteString(pw, "payload")
		req.Trailer.Set("X-Checksum", "abc123")
		_ = pw.Close()
	}()
	if resp, _ := h.do(req); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	up := h.upstream()
	if up.body != "payload" || up.trailer.Get("X-Checksum") != "verified" {
		t.Errorf("upstream body %q trailer %v", up.body, up.trailer)
	}
	msgs := h.stream().messages()
	want := []string{"request_headers eos=false", `request_body "payload" eos=false`, "request_trailers", "response_headers eos=false"}
	if got := describeAll(msgs); !equalStrings(got, want) {
		t.Fatalf("messages = %q, want %q", got, want)
	}
	if v, ok, _ := protoHeader(msgs[2].GetRequestTrailers().GetTrailers(), "x-checksum"); !ok || v != "abc123" {
		t.Errorf("trailers sent %v", msgs[2].GetRequestTrailers())
	}
}

// TestSendBodyWithoutWaiting: §2.10, STREAMED chunks go before the headers
// reply; the server still answers headers first, then each chunk.
func TestSendBodyWithoutWaiting(t *testing.T) {
	script := func(s *srvStream) error {
		hdr, ok := s.recv()
		if !ok {
			return nil
		}
		if !hdr.GetProtocolConfig().GetSendBodyWithoutWaitingForHeaderResponse() {
			t.Error("protocol_config does not announce send_body_without_waiting_for_header_response")
		}
		// The body arrives although the headers are unanswered.
		var bodies []*extprocv3.ProcessingRequest
		for {
			req, ok := s.recv()
			if !ok {
				return nil
			}
			bodies = append(bodies, req)
			if req.GetRequestBody().GetEndOfStream() {
				break
			}
		}
		s.send(continueReply(hdr))
		for _, b := range bodies {
			s.send(continueReply(b))
		}
		return continueAll(s)
	}
	f := withMode(baseFilter(), bodyModes(stream, none))
	f.SendBodyWithoutWaitingForHeaderResponse = true
	h := newHarness(t, harnessOpts{filter: f, script: script})
	resp, _ := h.do(h.newRequest("POST", "/", "early-body"))
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if up := h.upstream(); up.body != "early-body" {
		t.Errorf("upstream body %q", up.body)
	}
	want := []string{"request_headers eos=false", `request_body "early-body" eos=false`, `request_body "" eos=true`, "response_headers eos=false"}
	if got := describeAll(h.stream().messages()); !equalStrings(got, want) {
		t.Fatalf("messages = %q, want %q", got, want)
	}
}

// TestPerRoute: ExtProcPerRoute disables the filter or overrides the
// processing mode, failure_mode_allow and gRPC initial metadata (§1.4, §5).
func TestPerRoute(t *testing.T) {
	gotMD := make(chan metadata.MD, 4)
	script := func(s *srvStream) error {
		md, _ := metadata.FromIncomingContext(s.s.Context())
		gotMD <- md
		return continueAll(s)
	}
	f := baseFilter()
	f.GrpcService = &corev3.GrpcService{
		TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "ext_proc"}},
		InitialMetadata: []*corev3.HeaderValue{{Key: "x-filter", Value: "base"}, {Key: "x-route", Value: "default"}}}
	perRoute := func(r *http.Request) *extprocfilterv3.ExtProcPerRoute {
		switch r.URL.Path {
		case "/healthz":
			return &extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Disabled{Disabled: true}}
		case "/v1/chat":
			return &extprocfilterv3.ExtProcPerRoute{Override: &extprocfilterv3.ExtProcPerRoute_Overrides{Overrides: &extprocfilterv3.ExtProcOverrides{
				ProcessingMode:      bodyModes(buffer, none),
				GrpcInitialMetadata: []*corev3.HeaderValue{{Key: "x-route", Value: "chat"}},
			}}}
		}
		return nil
	}
	h := newHarness(t, harnessOpts{filter: f, script: script, config: func(c *Config) { c.PerRoute = perRoute }})

	if resp, body := h.do(h.newRequest("GET", "/healthz", "")); resp.StatusCode != 200 || body != "upstream-ok" {
		t.Fatalf("healthz %d %q", resp.StatusCode, body)
	}
	if h.trace().Has(EventStreamOpen) {
		t.Error("disabled route opened a stream")
	}

	h.do(h.newRequest("POST", "/v1/chat", "hi"))
	want := []string{"request_headers eos=false", `request_body "hi" eos=true`, "response_headers eos=false"}
	if got := describeAll(h.stream().messages()); !equalStrings(got, want) {
		t.Errorf("messages = %q, want %q", got, want)
	}
	md := <-gotMD
	if strings.Join(md.Get("x-filter"), ",") != "base" || strings.Join(md.Get("x-route"), ",") != "chat" {
		t.Errorf("initial metadata %v, want x-filter=base and x-route merged to chat", md)
	}
}
