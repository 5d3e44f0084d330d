package envoyemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// guard bounds every wait in these tests so a bug hangs a test for a while
// instead of forever. It is never part of an assertion.
const guard = 10 * time.Second

// procScript is what the fake ExternalProcessor does with one stream. The
// returned error becomes the stream's status (nil = OK close).
type procScript func(s *srvStream) error

type fakeProc struct {
	extprocv3.UnimplementedExternalProcessorServer
	script procScript
	done   chan *srvStream
}

func (p *fakeProc) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ss := &srvStream{s: stream}
	err := p.script(ss)
	p.done <- ss
	return err
}

// srvStream is the server side of one Process stream as the script sees it.
type srvStream struct {
	s extprocv3.ExternalProcessor_ProcessServer

	mu        sync.Mutex
	got       []*extprocv3.ProcessingRequest
	recvErr   error
	cancelled bool
}

// recv returns the next message, or false once the client half-closed or
// reset the stream.
func (s *srvStream) recv() (*extprocv3.ProcessingRequest, bool) {
	req, err := s.s.Recv()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.recvErr = err
		return nil, false
	}
	s.got = append(s.got, req)
	return req, true
}

func (s *srvStream) send(r *extprocv3.ProcessingResponse) { _ = s.s.Send(r) }

func (s *srvStream) messages() []*extprocv3.ProcessingRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*extprocv3.ProcessingRequest(nil), s.got...)
}

// drainAndWaitCancel reads until the client closes, then waits for the
// client's reset to cancel the stream context. A client that only
// half-closed would leave the context alive until guard expires.
func (s *srvStream) drainAndWaitCancel() {
	for {
		if _, ok := s.recv(); !ok {
			break
		}
	}
	select {
	case <-s.s.Context().Done():
		s.mu.Lock()
		s.cancelled = true
		s.mu.Unlock()
	case <-time.After(guard):
	}
}

// continueReply is the no-op reply for any request.
func continueReply(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	return replyWith(req, &extprocv3.CommonResponse{})
}

// replyWith answers req with cr in the matching oneof.
func replyWith(req *extprocv3.ProcessingRequest, cr *extprocv3.CommonResponse) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: cr}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{HeaderMutation: cr.GetHeaderMutation()}}}
	default:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{HeaderMutation: cr.GetHeaderMutation()}}}
	}
}

// continueAll replies CONTINUE to everything until the client closes.
func continueAll(s *srvStream) error {
	for {
		req, ok := s.recv()
		if !ok {
			return nil
		}
		s.send(continueReply(req))
	}
}

type upstreamReq struct {
	method        string
	path          string
	host          string
	header        http.Header
	body          string
	contentLength int64
	chunked       bool
	trailer       http.Header
}

type harnessOpts struct {
	filter   *extprocfilterv3.ExternalProcessor
	script   procScript
	upstream http.HandlerFunc
	config   func(*Config)
}

type harness struct {
	t      *testing.T
	proc   *fakeProc
	proxy  *Proxy
	front  *httptest.Server
	upReqs chan upstreamReq
	metas  chan *structpb.Struct

	evMu   sync.Mutex
	evCond *sync.Cond
	events []Event
}

func newHarness(t *testing.T, o harnessOpts) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		proc:   &fakeProc{script: o.script, done: make(chan *srvStream, 16)},
		upReqs: make(chan upstreamReq, 16),
		metas:  make(chan *structpb.Struct, 16),
	}
	h.evCond = sync.NewCond(&h.evMu)
	if h.proc.script == nil {
		h.proc.script = continueAll
	}
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(gs, h.proc)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })

	upHandler := o.upstream
	if upHandler == nil {
		upHandler = func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = io.WriteString(w, "upstream-ok")
		}
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.upReqs <- upstreamReq{
			method: r.Method, path: r.URL.RequestURI(), host: r.Host, header: r.Header.Clone(),
			body: string(body), contentLength: r.ContentLength,
			chunked: len(r.TransferEncoding) > 0 && r.TransferEncoding[0] == "chunked",
			trailer: r.Trailer.Clone(),
		}
		upHandler(w, r)
	}))
	t.Cleanup(up.Close)
	u, _ := url.Parse(up.URL)

	filter := o.filter
	if filter == nil {
		filter = baseFilter()
	}
	cfg := Config{
		Upstream:          u,
		Processor:         cc,
		Filter:            filter,
		UpstreamHTTP1:     true,
		OnDynamicMetadata: func(s *structpb.Struct) { h.metas <- s },
		OnEvent: func(e Event) {
			h.evMu.Lock()
			h.events = append(h.events, e)
			h.evMu.Unlock()
			h.evCond.Broadcast()
		},
	}
	if o.config != nil {
		o.config(&cfg)
	}
	h.proxy, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.front = httptest.NewServer(h.proxy)
	t.Cleanup(h.front.Close)
	return h
}

// waitEvent blocks until an event matching pred was recorded. It may be
// called from any goroutine.
func (h *harness) waitEvent(pred func(Event) bool) bool { return h.waitCount(pred, 1) }

// waitCount blocks until n recorded events match pred.
func (h *harness) waitCount(pred func(Event) bool, n int) bool {
	return h.waitAll(func(evs []Event) bool {
		c := 0
		for _, e := range evs {
			if pred(e) {
				c++
			}
		}
		return c >= n
	})
}

func (h *harness) waitAll(cond func([]Event) bool) bool {
	deadline := time.Now().Add(guard)
	timer := time.AfterFunc(guard, h.evCond.Broadcast)
	defer timer.Stop()
	h.evMu.Lock()
	defer h.evMu.Unlock()
	for !cond(h.events) {
		if time.Now().After(deadline) {
			return false
		}
		h.evCond.Wait()
	}
	return true
}

func (h *harness) client() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 3 * guard}
}

func (h *harness) do(req *http.Request) (*http.Response, string) {
	h.t.Helper()
	resp, err := h.client().Do(req)
	if err != nil {
		h.t.Fatalf("client: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("client read: %v", err)
	}
	return resp, string(b)
}

func (h *harness) newRequest(method, path, body string) *http.Request {
	h.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.front.URL+path, r)
	if err != nil {
		h.t.Fatal(err)
	}
	return req
}

// stream returns the next finished server stream.
func (h *harness) stream() *srvStream {
	h.t.Helper()
	select {
	case s := <-h.proc.done:
		return s
	case <-time.After(guard):
		h.t.Fatal("no ext_proc stream finished")
		return nil
	}
}

func (h *harness) upstream() upstreamReq {
	h.t.Helper()
	select {
	case r := <-h.upReqs:
		return r
	case <-time.After(guard):
		h.t.Fatal("upstream received no request")
		return upstreamReq{}
	}
}

func (h *harness) noUpstream() {
	h.t.Helper()
	select {
	case r := <-h.upReqs:
		h.t.Fatalf("upstream was called: %s %s", r.method, r.path)
	default:
	}
}

// trace returns the last finished request's trace. The client can have the
// whole response before the handler finished, so it waits for EventDone.
func (h *harness) trace() *Trace {
	h.t.Helper()
	h.waitEvent(func(e Event) bool { return e.Kind == EventDone })
	ts := h.proxy.Traces()
	if len(ts) == 0 {
		h.t.Fatal("no trace recorded")
	}
	return ts[len(ts)-1]
}

func baseFilter() *extprocfilterv3.ExternalProcessor {
	return &extprocfilterv3.ExternalProcessor{MessageTimeout: durationpb.New(guard)}
}

func withMode(f *extprocfilterv3.ExternalProcessor, m *extprocfilterv3.ProcessingMode) *extprocfilterv3.ExternalProcessor {
	f.ProcessingMode = m
	return f
}

const (
	send    = extprocfilterv3.ProcessingMode_SEND
	skip    = extprocfilterv3.ProcessingMode_SKIP
	none    = extprocfilterv3.ProcessingMode_NONE
	stream  = extprocfilterv3.ProcessingMode_STREAMED
	buffer  = extprocfilterv3.ProcessingMode_BUFFERED
	partial = extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL
)

func bodyModes(req, resp extprocfilterv3.ProcessingMode_BodySendMode) *extprocfilterv3.ProcessingMode {
	return &extprocfilterv3.ProcessingMode{RequestBodyMode: req, ResponseBodyMode: resp}
}

func setRaw(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)}}
}

func appendRaw(k, v string) *corev3.HeaderValueOption {
	o := setRaw(k, v)
	o.Append = wrapperspb.Bool(true)
	return o
}

func setHeaders(opts ...*corev3.HeaderValueOption) *extprocv3.HeaderMutation {
	return &extprocv3.HeaderMutation{SetHeaders: opts}
}

func bodyMut(b string) *extprocv3.BodyMutation {
	return &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(b)}}
}

// describe renders a request as "kind eos=… body=…" for order assertions.
func describe(r *extprocv3.ProcessingRequest) string {
	switch v := r.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return fmt.Sprintf("request_headers eos=%t", v.RequestHeaders.GetEndOfStream())
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return fmt.Sprintf("response_headers eos=%t", v.ResponseHeaders.GetEndOfStream())
	case *extprocv3.ProcessingRequest_RequestBody:
		return fmt.Sprintf("request_body %q eos=%t", v.RequestBody.GetBody(), v.RequestBody.GetEndOfStream())
	case *extprocv3.ProcessingRequest_ResponseBody:
		return fmt.Sprintf("response_body %q eos=%t", v.ResponseBody.GetBody(), v.ResponseBody.GetEndOfStream())
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return "request_trailers"
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return "response_trailers"
	}
	return "unknown"
}

func describeAll(rs []*extprocv3.ProcessingRequest) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = describe(r)
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// protoHeader returns the raw_value of key in a HeaderMap and whether any
// entry used the deprecated value field.
func protoHeader(hm *corev3.HeaderMap, key string) (string, bool, bool) {
	for _, h := range hm.GetHeaders() {
		if h.GetKey() == key {
			return string(h.GetRawValue()), true, h.GetValue() != ""
		}
	}
	return "", false, false
}

func headersOf(r *extprocv3.ProcessingRequest) *corev3.HeaderMap {
	if h := r.GetRequestHeaders(); h != nil {
		return h.GetHeaders()
	}
	return r.GetResponseHeaders().GetHeaders()
}

func isEOFOrCanceled(err error) bool {
	return errors.Is(err, io.EOF) || strings.Contains(fmt.Sprint(err), "Canceled")
}
