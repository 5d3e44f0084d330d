package extproc_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/andybalholm/brotli"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/creditgate/creditgate/ledger/spool"
)

var update = flag.Bool("update", false, "rewrite the golden replies in testdata/process")

// processCase is one file of testdata/process: the exact message sequence
// Envoy's ext_proc filter sends for one HTTP request (envoy-extproc.md §1),
// the sidecar's setup, and what must happen to the money. The sidecar's
// replies are compared with <name>.golden.
type processCase struct {
	Comment string `json:"comment"`
	Server  struct {
		Sources      []string          `json:"sources"`
		Header       string            `json:"header"`
		Principals   map[string]string `json:"principals"`
		ProviderKeys map[string]string `json:"provider_keys"`
		Passthrough  []string          `json:"passthrough"`
		Spool        bool              `json:"spool"`
		FailOpen     struct {
			Routes     []string     `json:"routes"`
			CreditLine money.Micros `json:"credit_line"`
		} `json:"fail_open"`
	} `json:"server"`
	Funds  money.Micros `json:"funds"`
	Faults struct {
		Reserve string `json:"reserve"`
		Capture string `json:"capture"`
		Release string `json:"release"`
	} `json:"faults"`
	// ProtocolConfig is what the filter reports on the first message (§1.2);
	// absent means the shipped filter's modes (BUFFERED both ways).
	ProtocolConfig *struct {
		RequestBodyMode  string `json:"request_body_mode"`
		ResponseBodyMode string `json:"response_body_mode"`
	} `json:"protocol_config"`
	Steps []processStep `json:"steps"`
	Want  processWant   `json:"want"`
}

type processStep struct {
	// Send names the ProcessingRequest: request_headers, request_body,
	// request_trailers, response_headers, response_body, response_trailers.
	Send    string      `json:"send"`
	Headers [][2]string `json:"headers"`
	EOS     bool        `json:"eos"`
	Body    string      `json:"body"`
	// BodyFile is read from testdata/bodies instead of Body.
	BodyFile string `json:"body_file"`
	// Encode compresses the body before it is sent: "br" (brotli), so a
	// case file can hold a compressed response as reviewable text.
	Encode string `json:"encode"`
	// Attributes are the request attributes Envoy evaluated (§1.2), sent
	// on this message under "envoy.filters.http.ext_proc".
	Attributes map[string]string `json:"attributes"`
	// End ends the stream instead of sending: "close" is Envoy's
	// closeStream (half-close, then reset, §1.1), "cancel" a reset alone.
	End string `json:"end"`
}

type processWant struct {
	// StreamError is the gRPC code the server ends the stream with ("" =
	// the stream stays open until the client ends it).
	StreamError string `json:"stream_error"`
	// Journal lists the request entries written, in order.
	Journal []string `json:"journal"`
	// Capture checks the capture entry, if any.
	Capture *struct {
		// Amount is the debit, or "prompt_estimate": the request body's
		// estimated input tokens at the row's input price, what an early
		// end with nothing reported is charged.
		Amount    string `json:"amount"`
		Estimated bool   `json:"estimated"`
		Model     string `json:"model"`
		// Unreserved: charged without a hold (a fail-open admission).
		Unreserved bool `json:"unreserved"`
	} `json:"capture"`
	// ReleaseReason is a substring of the release entry's reason.
	ReleaseReason string `json:"release_reason"`
	// HoldOpen: the hold is still open at the end (a settlement was
	// spooled because Redis was down).
	HoldOpen bool `json:"hold_open"`
	// Spooled lists the spooled settlements ("capture", "release"); they
	// are then replayed into the ledger, after which the hold must be closed.
	Spooled []string `json:"spooled"`
	// Refused is the reason the sidecar refused the request, if it did.
	Refused string `json:"refused"`
	// Outcome, if set, is the one outcome the request was counted under
	// (Observer.Request).
	Outcome string `json:"outcome"`
}

func TestProcessScripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "process", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			runProcessCase(t, f)
		})
	}
}

func runProcessCase(t *testing.T, file string) {
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var c processCase
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	e := newEnv(t, envConfig{
		Identity: extproc.Identity{Sources: c.Server.Sources, Header: c.Server.Header,
			Principals: c.Server.Principals, ProviderKeys: c.Server.ProviderKeys},
		Passthrough: c.Server.Passthrough, Spool: c.Server.Spool, Funds: c.Funds,
		FailOpen: extproc.FailOpen{Routes: c.Server.FailOpen.Routes, CreditLine: c.Server.FailOpen.CreditLine},
	})
	e.faults.inject(fault(t, c.Faults.Reserve), fault(t, c.Faults.Capture), fault(t, c.Faults.Release))

	got := runScript(t, e, c)
	golden := strings.TrimSuffix(file, ".json") + ".golden"
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("replies differ from %s:\n--- got\n%s\n--- want\n%s", golden, got, want)
	}
	checkMoney(t, e, c)
}

func fault(t *testing.T, s string) error {
	switch s {
	case "":
		return nil
	case "unavailable":
		return errInjected
	}
	t.Fatalf("unknown fault %q", s)
	return nil
}

// runScript plays the case's messages in lockstep (each reply is read
// before the next message is sent; the server answers in order either way)
// and returns the normalized transcript of replies.
func runScript(t *testing.T, e *env, c processCase) []byte {
	ctx, cancel := context.WithTimeout(e.ctx, guard)
	defer cancel()
	sctx, reset := context.WithCancel(ctx)
	defer reset()
	cs, err := e.client.Process(sctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []any
	first := true
	streamErr := ""
	ended := false
	autoContentLength(t, c.Steps)
	for i, s := range c.Steps {
		if s.End != "" {
			endStream(t, cs, reset, s.End)
			ended = true
			break
		}
		req := buildRequest(t, s)
		// §1.2: metadata_context on every message, protocol_config on the
		// first one only.
		req.MetadataContext = &corev3.Metadata{}
		if first {
			req.ProtocolConfig = protocolConfig(t, c)
			first = false
		}
		if err := cs.Send(req); err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("step %d: send: %v", i, err)
		}
		reply, err := cs.Recv()
		if err != nil {
			streamErr = status.Code(err).String()
			out = append(out, map[string]any{"step": i, "stream_ended": streamErr})
			ended = true
			break
		}
		out = append(out, map[string]any{"step": i, "send": s.Send, "reply": normalizeReply(t, reply)})
	}
	if !ended {
		// Envoy closes the stream once the request is over (§1.1 (c)/(d)).
		endStream(t, cs, reset, "close")
	}
	if streamErr != c.Want.StreamError {
		t.Errorf("stream ended with %q, want %q", streamErr, c.Want.StreamError)
	}
	// Settlements of ended streams are done once Drain returns.
	e.drain()
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

// autoContentLength fills a request header content-length written "auto"
// with the length of the request body the case sends next, or an arbitrary
// length when the request is refused before its body.
func autoContentLength(t *testing.T, steps []processStep) {
	for i := range steps {
		for j, kv := range steps[i].Headers {
			if kv[0] != "content-length" || kv[1] != "auto" {
				continue
			}
			n := 64
			for _, s := range steps[i+1:] {
				if s.Send == "request_body" {
					n = len(stepBody(t, s))
					break
				}
			}
			steps[i].Headers[j][1] = fmt.Sprint(n)
		}
	}
}

func stepBody(t *testing.T, s processStep) []byte {
	b := []byte(s.Body)
	if s.BodyFile != "" {
		var err error
		if b, err = os.ReadFile(filepath.Join("testdata", "bodies", s.BodyFile)); err != nil {
			t.Fatal(err)
		}
	}
	switch s.Encode {
	case "":
		return b
	case "br":
		var buf bytes.Buffer
		w := brotli.NewWriter(&buf)
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	t.Fatalf("unknown encode %q", s.Encode)
	return nil
}

func endStream(t *testing.T, cs extprocv3.ExternalProcessor_ProcessClient, reset context.CancelFunc, how string) {
	switch how {
	case "close":
		_ = cs.CloseSend()
		reset()
	case "cancel":
		reset()
	default:
		t.Fatalf("unknown end %q", how)
	}
}

func protocolConfig(t *testing.T, c processCase) *extprocv3.ProtocolConfiguration {
	mode := func(s string) extprocfilterv3.ProcessingMode_BodySendMode {
		v, ok := extprocfilterv3.ProcessingMode_BodySendMode_value[s]
		if !ok {
			t.Fatalf("unknown body mode %q", s)
		}
		return extprocfilterv3.ProcessingMode_BodySendMode(v)
	}
	if c.ProtocolConfig == nil {
		return &extprocv3.ProtocolConfiguration{RequestBodyMode: extprocfilterv3.ProcessingMode_BUFFERED,
			ResponseBodyMode: extprocfilterv3.ProcessingMode_BUFFERED}
	}
	return &extprocv3.ProtocolConfiguration{RequestBodyMode: mode(c.ProtocolConfig.RequestBodyMode),
		ResponseBodyMode: mode(c.ProtocolConfig.ResponseBodyMode)}
}

// buildRequest encodes one step as Envoy does (§1.3): lower-case keys,
// values in raw_value only, pseudo-headers as entries, plus the headers
// the connection manager and router add.
func buildRequest(t *testing.T, s processStep) *extprocv3.ProcessingRequest {
	hm := func(extra ...[2]string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for _, kv := range append(append([][2]string{}, s.Headers...), extra...) {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: strings.ToLower(kv[0]), RawValue: []byte(kv[1])})
		}
		return m
	}
	body := stepBody(t, s)
	req := &extprocv3.ProcessingRequest{}
	switch s.Send {
	case "request_headers":
		req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: hm([2]string{"x-forwarded-proto", "http"}, [2]string{"x-request-id", "envoy-xrid-1"}), EndOfStream: s.EOS}}
	case "request_body":
		req.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: s.EOS}}
	case "request_trailers":
		req.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{Trailers: hm()}}
	case "response_headers":
		req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
			Headers: hm([2]string{"x-envoy-upstream-service-time", "12"}), EndOfStream: s.EOS}}
	case "response_body":
		req.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: s.EOS}}
	case "response_trailers":
		req.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{Trailers: hm()}}
	default:
		t.Fatalf("unknown message %q", s.Send)
	}
	if len(s.Attributes) > 0 {
		f := map[string]any{}
		for k, v := range s.Attributes {
			f[k] = v
		}
		st, err := structpb.NewStruct(f)
		if err != nil {
			t.Fatal(err)
		}
		req.Attributes = map[string]*structpb.Struct{"envoy.filters.http.ext_proc": st}
	}
	return req
}

var requestIDRE = regexp.MustCompile(`envoy-xrid-1\.[0-9a-f]{12}`)

// normalizeReply renders a reply as JSON with every field protojson emits,
// bytes fields (raw_value, bodies) decoded to text for review, and the
// random part of the ledger request id replaced.
func normalizeReply(t *testing.T, r *extprocv3.ProcessingResponse) any {
	b, err := protojson.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	b = requestIDRE.ReplaceAll(b, []byte("REQUEST_ID"))
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return decodeBytes(v)
}

func decodeBytes(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && (k == "rawValue" || k == "body") {
				if d, err := base64.StdEncoding.DecodeString(s); err == nil && utf8.Valid(d) {
					x[k] = requestIDRE.ReplaceAllString(string(d), "REQUEST_ID")
					continue
				}
			}
			x[k] = decodeBytes(val)
		}
	case []any:
		for i := range x {
			x[i] = decodeBytes(x[i])
		}
	}
	return v
}

// checkMoney verifies the ledger against the case's expectations, and the
// invariants every case must keep: one terminal entry at most, nothing
// left held unless a settlement was spooled, the sidecar's own held gauge
// back at zero, and a clean audit.
func checkMoney(t *testing.T, e *env, c processCase) {
	t.Helper()
	w := c.Want
	es := e.requestEntries()
	types := entryTypes(es)
	want := w.Journal
	if want == nil {
		want = []string{}
	}
	if !reflect.DeepEqual(types, want) {
		t.Errorf("journal %v, want %v", types, want)
	}
	checkEntries(t, e, c, es)
	if got := e.obs.held(); got != 0 {
		t.Errorf("the sidecar's held gauge ended at %d µUSD, want 0", got)
	}
	if w.Refused != "" {
		if r := e.obs.refusals(); r[w.Refused] != 1 || len(r) != 1 {
			t.Errorf("refusals %v, want one %q", r, w.Refused)
		}
	} else if r := e.obs.refusals(); len(r) != 0 {
		t.Errorf("unexpected refusals %v", r)
	}
	var spooled []string
	for _, s := range e.spooled() {
		switch {
		case s.Capture != nil:
			spooled = append(spooled, "capture")
		case s.Release != nil:
			spooled = append(spooled, "release")
		case s.Charge != nil:
			spooled = append(spooled, "charge")
		}
	}
	sort.Strings(spooled)
	if fmt.Sprint(spooled) != fmt.Sprint(w.Spooled) {
		t.Errorf("spooled %v, want %v", spooled, w.Spooled)
	}
	if w.Outcome != "" {
		if o := e.obs.outcomes(); o[w.Outcome] != 1 || len(o) != 1 {
			t.Errorf("outcomes %v, want one %q", o, w.Outcome)
		}
	}
	held := e.balance().Held
	if w.HoldOpen != (held != 0) {
		t.Errorf("held %s at the end, want hold_open=%v", held, w.HoldOpen)
	}
	if len(w.Spooled) > 0 {
		// Redis is back: the replay lands the settlement and closes the hold.
		e.faults.inject(nil, nil, nil)
		if n, err := e.spool.Replay(e.ctx, e.led, func(s spool.Settlement, err error) {
			t.Errorf("spooled settlement rejected: %+v: %v", s, err)
		}); err != nil || n != len(w.Spooled) {
			t.Fatalf("replay applied %d, err %v", n, err)
		}
		if b := e.balance(); b.Held != 0 {
			t.Errorf("held %s after replaying the spool", b.Held)
		}
		after := e.requestEntries()
		if len(after) != len(es)+len(w.Spooled) {
			t.Errorf("journal after replay %v", entryTypes(after))
		}
		checkEntries(t, e, c, after)
	}
	e.audit()
}

// checkEntries checks the capture and release entries against the case.
func checkEntries(t *testing.T, e *env, c processCase, es []ledger.Entry) {
	t.Helper()
	w := c.Want
	for _, en := range es {
		switch {
		case en.Type == "capture" && w.Capture == nil:
			t.Errorf("unexpected capture %+v", en)
		case en.Type == "capture":
			want := expectedAmount(t, e, c, en)
			if en.Amount != want || en.Estimated != w.Capture.Estimated || (w.Capture.Model != "" && en.Model != w.Capture.Model) ||
				en.Unreserved != w.Capture.Unreserved {
				t.Errorf("capture %s estimated=%v model=%q unreserved=%v, want %s estimated=%v model=%q unreserved=%v",
					en.Amount, en.Estimated, en.Model, en.Unreserved, want, w.Capture.Estimated, w.Capture.Model, w.Capture.Unreserved)
			}
		case en.Type == "release" && (w.ReleaseReason == "" || !strings.Contains(en.Reason, w.ReleaseReason)):
			t.Errorf("release reason %q, want it to contain %q", en.Reason, w.ReleaseReason)
		}
	}
}

func expectedAmount(t *testing.T, e *env, c processCase, en ledger.Entry) money.Micros {
	t.Helper()
	if c.Want.Capture.Amount != "prompt_estimate" {
		m, err := money.ParseUSD(c.Want.Capture.Amount)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	var body []byte
	for _, s := range c.Steps {
		if s.Send == "request_body" {
			body = stepBody(t, s)
			break
		}
	}
	row, err := e.cat.Lookup(en.Provider, en.Model, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cost, err := row.Cost(pricing.Usage{InputTokens: provider.EstimateInputTokens(body)})
	if err != nil {
		t.Fatal(err)
	}
	if cost == 0 {
		t.Fatal("a zero prompt estimate proves nothing")
	}
	m, _ := cost.Split()
	return m
}
