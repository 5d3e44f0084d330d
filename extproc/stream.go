package extproc

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/andybalholm/brotli"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/creditgate/creditgate/ledger/spool"
)

// phase is where one stream is in Envoy's message sequence
// (envoy-extproc.md §1.5): request headers, request body, response
// headers, response body; then done.
type phase int

const (
	phaseRequestHeaders phase = iota
	phaseRequestBody
	phaseResponseHeaders
	phaseResponseBody
	phaseDone
)

// stream is the state of one HTTP request.
type stream struct {
	s   *Server
	ctx context.Context
	log *slog.Logger

	phase       phase
	passthrough bool
	reqBodyMode extprocfilterv3.ProcessingMode_BodySendMode

	requestID string
	account   string
	route     provider.Route
	req       provider.Request
	row       *pricing.Row
	start     time.Time
	reqBody   []byte

	reserved       bool
	failOpen       bool         // admitted without a hold: the ledger was unreachable (Options.FailOpen)
	estimate       money.Micros // the worst-case cost reserved, or admitted fail open
	host, path     string
	forwarded      bool   // the request-body reply that lets the request go upstream was sent
	answered       string // the model that answered, once known
	stopKeepAlive  func() // ends keepHoldAlive; nil when there is no hold
	hold           ledger.Hold
	settled        bool
	captured       *ledger.CaptureResult
	usageEstimated bool

	status    int
	streaming bool
	encoding  string // response content-encoding we must decode
	parser    provider.StreamParser
	respBody  []byte // buffered response, or the compressed stream
	truncated bool   // respBody hit MaxBufferedResponse
}

func newStream(s *Server, ctx context.Context) *stream {
	return &stream{s: s, ctx: ctx, log: s.opt.Logger, reqBodyMode: extprocfilterv3.ProcessingMode_BUFFERED}
}

// handle answers one message. A non-nil error ends the stream: it means
// Envoy sent something its state machine never sends.
func (st *stream) handle(req *extprocv3.ProcessingRequest) (*extprocv3.ProcessingResponse, error) {
	if pc := req.GetProtocolConfig(); pc != nil {
		// envoy-extproc.md §1.2: only on the first message.
		st.reqBodyMode = pc.GetRequestBodyMode()
	}
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if st.phase != phaseRequestHeaders {
			return nil, errors.New("request_headers out of order")
		}
		return st.onRequestHeaders(r.RequestHeaders, attributesFrom(req)), nil
	case *extprocv3.ProcessingRequest_RequestBody:
		if st.phase != phaseRequestBody {
			// A passthrough request whose body still arrives (e.g. a filter
			// config without mode_override support) is let through untouched.
			if st.passthrough {
				return requestBodyReply(nil, nil), nil
			}
			return nil, errors.New("request_body out of order")
		}
		return st.onRequestBody(r.RequestBody), nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}, nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		// The response can start before the request body finished
		// (envoy-extproc.md §1.5, last rule), e.g. an upstream that answers
		// early with an error.
		if st.phase != phaseResponseHeaders && !(st.phase == phaseRequestBody || st.passthrough) {
			return nil, errors.New("response_headers out of order")
		}
		return st.onResponseHeaders(r.ResponseHeaders), nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		if st.phase != phaseResponseBody {
			if st.passthrough || st.phase == phaseDone {
				return responseBodyReply(nil, nil, false, nil), nil
			}
			return nil, errors.New("response_body out of order")
		}
		return st.onResponseBody(r.ResponseBody), nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		// Trailers end a response that has them (envoy-extproc.md §1.5): the
		// last body chunk then had eos=false, and the upstream finished
		// normally. A BUFFERED body came whole and is priced from what was
		// kept. Bytes a stream parser still holds cannot be sent any more
		// (the body is gone); only an unterminated last event can be there.
		var md *structpb.Struct
		if st.phase == phaseResponseBody && !st.settled {
			if st.streaming {
				st.settleStream(true)
			} else {
				st.settleBuffered()
			}
			st.phase = phaseDone
			md = st.settledMetadata()
		}
		return &extprocv3.ProcessingResponse{
			Response:        &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}},
			DynamicMetadata: md,
		}, nil
	default:
		return nil, fmt.Errorf("unexpected message %T", r)
	}
}

func (st *stream) refuse(code int, reason, errType, msg string, extra *mutation) *extprocv3.ProcessingResponse {
	st.s.opt.Observer.Refused(reason)
	st.log.Info("refused", "reason", reason, "status", code, "message", msg)
	st.phase = phaseDone
	ct, body := provider.ErrorBody(st.route.Dialect, code, errType, msg)
	m := &mutation{}
	if extra != nil {
		*m = *extra
	}
	// Stainless SDKs retry 408/409/429/5xx unless told not to; a refusal for
	// money or identity must not be retried (providers.md §11). A 503 (the
	// ledger is unreachable) is transient: the SDKs' own retries are wanted
	// there, as for Envoy's status_on_error 503, so it is not marked.
	if code != 503 {
		m.setHeader("x-should-retry", "false")
	}
	return immediate(code, ct, body, "creditgate_"+reason, m)
}

func (st *stream) onRequestHeaders(h *extprocv3.HttpHeaders, attrs map[string]string) *extprocv3.ProcessingResponse {
	hd := headersFrom(h.GetHeaders())
	authority, path, method := hd.get(":authority"), hd.get(":path"), hd.get(":method")
	st.requestID = newRequestID(hd.get("x-request-id"))
	st.start = st.s.opt.Clock()
	st.log = st.s.opt.Logger.With("request_id", st.requestID)
	st.route.Dialect = provider.DialectOpenAI

	route, rerr := st.s.opt.Detector.DetectRequest(method, authority, path)
	if route.Provider != "" {
		// Also on an unmetered path of a known host: the provider decides
		// the error shape and which real key a passthrough request carries.
		st.route = route
	}
	host := provider.Host(authority)
	st.host, st.path = host, path
	st.passthrough = rerr != nil && st.s.passthrough(host, path)

	ictx, icancel := st.callContext()
	account, keyHeader, err := st.s.opt.Identity.resolve(ictx, st.s.opt.Ledger, st.s.keys, hd, attrs)
	icancel()
	switch {
	case errors.Is(err, errUnknownPayer):
		return st.refuse(401, "unknown_payer", "authentication_error",
			"creditgate: this request has no paying account (unknown API key or identity)", nil)
	case err != nil:
		st.log.Error("identity lookup failed", "err", err)
		st.s.opt.Observer.LedgerError("identity")
		return st.refuse(503, "ledger_unavailable", "api_error", "creditgate: the credit ledger is unavailable; try again later", nil)
	}
	st.account = account
	st.log = st.log.With("account", account)

	m := &mutation{}
	m.removeHeader(st.s.opt.Identity.header())
	if keyHeader != "" {
		if real, ok := st.s.opt.Identity.ProviderKeys[st.route.Provider]; ok && real != "" {
			if keyHeader == queryKey {
				// envoy-extproc.md §2.3: :path may be set by a headers reply.
				m.setHeader(":path", withoutQueryKey(path))
			} else {
				m.removeHeader(keyHeader)
			}
			setProviderKey(m, st.route.Provider, real)
		}
	}

	if st.passthrough {
		st.log.Debug("passthrough", "path", pathOnly(path)) // the query may hold a key
		st.phase = phaseDone
		// Nothing more to see: skip bodies and response headers.
		mode := modeOverride(extprocfilterv3.ProcessingMode_NONE, extprocfilterv3.ProcessingMode_NONE)
		mode.ResponseHeaderMode = extprocfilterv3.ProcessingMode_SKIP
		return requestHeadersReply(m, mode)
	}
	if rerr != nil {
		return st.refuse(404, "unknown_route", "not_found_error",
			// The query is left out: Gemini clients may carry their key in it.
			fmt.Sprintf("creditgate: %s %s%s is not a metered LLM API and is not on the passthrough list", method, host, pathOnly(path)), nil)
	}
	if h.GetEndOfStream() {
		// envoy-extproc.md §1.6: no body will follow.
		return st.refuse(400, "bad_request", "invalid_request_error", "creditgate: the request has no body", nil)
	}
	if st.reqBodyMode == extprocfilterv3.ProcessingMode_NONE {
		// protocol_config (§1.2) says no request body will come: the call
		// would go upstream unmetered, with no reserve, and the response
		// would pass as if unreserved. Refuse instead of waving it through.
		return st.refuse(500, "bad_config", "api_error",
			"creditgate: the ext_proc filter must send the request body BUFFERED", nil)
	}
	if !st.s.opt.KeepAcceptEncoding {
		m.removeHeader("accept-encoding")
	}
	st.phase = phaseRequestBody
	return requestHeadersReply(m, nil)
}

func pathOnly(p string) string {
	p, _, _ = strings.Cut(p, "?")
	return p
}

// setProviderKey writes the real provider key where that provider expects it.
func setProviderKey(m *mutation, prov, key string) {
	switch prov {
	case provider.ProviderAnthropic:
		m.setHeader("x-api-key", key)
	case provider.ProviderGemini:
		m.setHeader("x-goog-api-key", key)
	case provider.ProviderAzure:
		m.setHeader("api-key", key)
	default:
		m.setHeader("authorization", "Bearer "+key)
	}
}

func (st *stream) onRequestBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	st.reqBody = append(st.reqBody, b.GetBody()...)
	if !b.GetEndOfStream() {
		if st.reqBodyMode != extprocfilterv3.ProcessingMode_BUFFERED {
			// In STREAMED mode the chunk we would answer goes upstream before
			// we could reserve: refuse loudly instead of metering too late.
			return st.refuse(500, "bad_config", "api_error",
				"creditgate: the ext_proc filter must send the request body BUFFERED", nil)
		}
		// BUFFERED with trailers: the whole body, eos=false (envoy-extproc.md §1.5).
	}
	st.phase = phaseResponseHeaders
	req, err := provider.ParseRequest(st.route, st.reqBody)
	if err != nil {
		return st.refuse(400, "bad_request", "invalid_request_error", "creditgate: "+err.Error(), nil)
	}
	st.req = req
	st.log = st.log.With("provider", st.route.Provider, "model", req.Model)
	row, err := st.s.opt.Prices.Lookup(st.route.Provider, req.Model, st.start)
	if err != nil {
		st.s.opt.Observer.Unpriced(st.route.Provider, req.Model)
		return st.refuse(400, "unpriced_model", "invalid_request_error",
			fmt.Sprintf("creditgate: model %q of provider %s has no price in the catalog, so it cannot be metered", req.Model, st.route.Provider), nil)
	}
	st.row = row
	est := row.Estimate(req.EstInputTokens, req.MaxOutputTokens)
	st.estimate = est
	t0 := time.Now()
	rctx, rcancel := st.callContext()
	defer rcancel()
	hold, err := st.s.opt.Ledger.Reserve(rctx, ledger.ReserveRequest{
		Account: st.account, RequestID: st.requestID, Estimate: est, TTL: st.s.opt.HoldTTL,
		Provider: st.route.Provider, Model: req.Model, Time: st.start,
	})
	st.s.opt.Observer.ReserveLatency(time.Since(t0))
	var ins *ledger.InsufficientFundsError
	if err == nil || errors.As(err, &ins) {
		st.s.ledgerAnswered(st.account)
	}
	switch {
	case errors.As(err, &ins):
		return st.refuseFunds(ins, est)
	case errors.Is(err, ledger.ErrNoAccount):
		return st.refuse(403, "unknown_payer", "permission_error",
			fmt.Sprintf("creditgate: account %q does not exist", st.account), nil)
	case err != nil:
		st.log.Error("reserve failed", "err", err)
		st.s.opt.Observer.LedgerError("reserve")
		if st.admitFailOpen(err, est) {
			// No release is spooled: if the hold landed after all, Charge
			// captures it at settlement.
			return st.forward(req)
		}
		// The outcome is unknown: the hold may have landed before the error.
		// The request is refused, so release it when Redis is back instead
		// of blocking the funds until the hold expires (a release of a hold
		// that never landed replays as a no-op).
		st.spool(spool.Settlement{Release: &spool.Release{Account: st.account, RequestID: st.requestID,
			Reason: "refused: reserve outcome unknown"}}, err)
		return st.refuse(503, "ledger_unavailable", "api_error", "creditgate: the credit ledger is unavailable; try again later", nil)
	}
	st.reserved, st.hold = true, hold
	st.s.opt.Observer.Holding(int64(hold.Amount))
	st.keepHoldAlive()
	st.log.Debug("reserved", "estimate", est.String())
	return st.forward(req)
}

// admitFailOpen lets a request through without a hold when the ledger is
// unreachable, its route fails open and its account's credit line has room
// (design-notes §6). It reports whether it did.
func (st *stream) admitFailOpen(err error, est money.Micros) bool {
	if !errors.Is(err, ledger.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if !st.s.failOpen(st.host, st.path) {
		return false
	}
	ok, exposure := st.s.admitFailOpen(st.account, est)
	if !ok {
		st.log.Warn("ledger unavailable and the fail-open credit line is used up; failing closed",
			"estimate", est.String(), "exposure", exposure.String(), "credit_line", st.s.opt.FailOpen.CreditLine.String())
		return false
	}
	st.failOpen = true
	st.log.Warn("ledger unavailable; admitted fail open without a hold", "err", err,
		"estimate", est.String(), "exposure", exposure.String(), "credit_line", st.s.opt.FailOpen.CreditLine.String())
	return true
}

// metered reports whether the request went on with money behind it: a hold,
// or a fail-open admission to be charged at settlement.
func (st *stream) metered() bool { return st.reserved || st.failOpen }

// forward lets an admitted request go upstream, with its body rewritten
// when the provider parser changed it.
func (st *stream) forward(req provider.Request) *extprocv3.ProcessingResponse {
	if req.Body == nil {
		return requestBodyReply(nil, nil)
	}
	// envoy-extproc.md §2.4: BUFFERED with headers SEND keeps content-length,
	// and a mutated body must come with the matching length in the same reply.
	m := &mutation{}
	m.setHeader("content-length", strconv.Itoa(len(req.Body)))
	return requestBodyReply(m, req.Body)
}

func (st *stream) refuseFunds(ins *ledger.InsufficientFundsError, est money.Micros) *extprocv3.ProcessingResponse {
	afford := st.row.MaxAffordableOutput(st.req.EstInputTokens, ins.Available)
	msg := fmt.Sprintf("creditgate: insufficient credit: this request needs up to $%s but $%s is available (balance $%s, held by requests in flight $%s).",
		est, max(ins.Available, 0), ins.Balance, ins.Held)
	if afford > 0 {
		msg += fmt.Sprintf(" The largest max_tokens affordable for this prompt is %d.", afford)
	} else {
		msg += " The balance does not cover this prompt; top up the account."
	}
	m := &mutation{}
	m.setHeader("x-creditgate-balance", ins.Balance.String())
	m.setHeader("x-creditgate-available", max(ins.Available, 0).String())
	return st.refuse(402, "insufficient_funds", "insufficient_quota", msg, m)
}

func (st *stream) onResponseHeaders(h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	hd := headersFrom(h.GetHeaders())
	st.status, _ = strconv.Atoi(hd.get(":status"))
	if st.passthrough || !st.metered() {
		st.phase = phaseDone
		return responseHeadersReply(nil, nil, nil)
	}
	if st.status < 200 || st.status > 299 {
		// The provider does not charge for a refused call: release, and stop
		// looking at the body (design-notes §4.3).
		r := st.release(fmt.Sprintf("upstream status %d", st.status))
		m := &mutation{}
		m.setHeader("x-creditgate-cost", money.Micros(0).String())
		if r != nil {
			m.setHeader("x-creditgate-balance", r.Balance.String())
		}
		st.phase = phaseDone
		outcome := "released"
		if st.failOpen {
			outcome = "not_charged"
		}
		return responseHeadersReply(m, modeOverride(st.reqBodyMode, extprocfilterv3.ProcessingMode_NONE),
			st.metadata(outcome, 0, false))
	}
	st.encoding = strings.ToLower(strings.TrimSpace(hd.get("content-encoding")))
	if st.encoding == "identity" {
		st.encoding = ""
	}
	// Gemini :streamGenerateContent without alt=sse streams one JSON array
	// as application/json (providers.md §7): it is a stream too, parsed by
	// the ArrayStream parser. Buffering it held every token back until the
	// end and risked Envoy's buffer limit on long answers.
	st.streaming = strings.Contains(strings.ToLower(hd.get("content-type")), "text/event-stream") || st.route.ArrayStream
	if h.GetEndOfStream() {
		// A 2xx with no body: nothing reported; settle on the estimate.
		st.phase = phaseResponseBody
		st.settleStream(false)
		st.phase = phaseDone
		return responseHeadersReply(nil, nil, st.settledMetadata())
	}
	st.phase = phaseResponseBody
	if st.streaming {
		st.parser = provider.NewStreamParser(st.route, st.req)
		// Tokens must keep flowing to the client: stream the response body
		// (design-notes §4.3).
		return responseHeadersReply(nil, modeOverride(st.reqBodyMode, extprocfilterv3.ProcessingMode_STREAMED), nil)
	}
	return responseHeadersReply(nil, modeOverride(st.reqBodyMode, extprocfilterv3.ProcessingMode_BUFFERED), nil)
}

func (st *stream) onResponseBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	chunk := b.GetBody()
	eos := b.GetEndOfStream()
	if !st.streaming {
		st.keep(chunk)
		if !eos {
			return responseBodyReply(nil, nil, false, nil)
		}
		m := st.settleBuffered()
		st.phase = phaseDone
		return responseBodyReply(m, nil, false, st.settledMetadata())
	}
	var out []byte
	var changed bool
	if st.encoding != "" {
		// A compressed stream cannot be filtered chunk by chunk; it is kept
		// and parsed at its end (usage comes last anyway). accept-encoding is
		// stripped upstream by default so this is rare.
		st.keep(chunk)
		out = chunk
	} else {
		out = st.parser.Feed(chunk)
		changed = !bytes.Equal(out, chunk)
	}
	if !eos {
		if !changed {
			return responseBodyReply(nil, nil, false, nil)
		}
		return responseBodyReply(nil, out, len(out) == 0, nil)
	}
	tail := st.settleStream(true)
	st.phase = phaseDone
	if len(tail) > 0 {
		out = append(out, tail...)
		changed = true
	}
	if !changed {
		return responseBodyReply(nil, nil, false, st.settledMetadata())
	}
	return responseBodyReply(nil, out, len(out) == 0, st.settledMetadata())
}

func (st *stream) keep(b []byte) {
	if len(st.respBody)+len(b) > st.s.opt.MaxBufferedResponse {
		st.truncated = true
		return
	}
	st.respBody = append(st.respBody, b...)
}

// decoded returns the kept response bytes, decompressed if needed. A
// truncated compressed stream yields what could be decoded.
func (st *stream) decoded() []byte {
	var r io.Reader
	switch st.encoding {
	case "":
		return st.respBody
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(bytes.NewReader(st.respBody))
		if err != nil {
			return nil
		}
		r = zr
	case "br":
		r = brotli.NewReader(bytes.NewReader(st.respBody))
	default:
		st.log.Warn("unsupported content-encoding; usage cannot be read", "encoding", st.encoding)
		return nil
	}
	out, _ := io.ReadAll(io.LimitReader(r, int64(st.s.opt.MaxBufferedResponse)))
	return out
}

// settleBuffered prices a whole JSON response and returns the cost headers
// (headers are still held in BUFFERED mode, envoy-extproc.md §2.2).
func (st *stream) settleBuffered() *mutation {
	body := st.decoded()
	res, err := provider.ParseBody(st.route, st.req, body)
	if err != nil && !res.HaveUsage {
		// A 2xx the provider billed but we cannot read (truncated past the
		// buffer limit, an encoding we cannot decode): count its bytes as
		// output for the estimate rather than charge the prompt alone. The
		// estimate is capped at the hold in settle.
		res.OutputBytes = max(res.OutputBytes, int64(len(st.respBody)))
		st.log.Warn("response body unreadable; charging an estimate", "err", err)
	}
	if res.Model == "" {
		res.Model = st.req.Model
	}
	r := st.settle(res, "")
	m := &mutation{}
	if r != nil {
		m.setHeader("x-creditgate-cost", r.Debited.String())
		m.setHeader("x-creditgate-balance", r.Balance.String())
	}
	return m
}

// settleStream finishes the stream parser and captures. atEnd is false for
// an early end. It returns bytes the parser held back that must still reach
// the client.
func (st *stream) settleStream(atEnd bool) []byte {
	var res provider.Result
	switch {
	case st.parser == nil:
	case st.encoding != "":
		p := provider.NewStreamParser(st.route, st.req)
		p.Feed(st.decoded())
		res = p.Finish()
		// Every compressed byte already went to the client unchanged; a
		// decoded tail appended to it would corrupt the compressed stream.
		res.Tail = nil
	default:
		res = st.parser.Finish()
	}
	if res.Model == "" {
		res.Model = st.req.Model
	}
	reason := ""
	if !atEnd {
		reason = "early end"
	}
	st.settle(res, reason)
	return res.Tail
}

// settle captures the cost of res, or releases the hold when the provider
// reported an error and no usage. It is the only place money moves after
// the reserve, and it runs exactly once per stream.
func (st *stream) settle(res provider.Result, why string) *ledger.CaptureResult {
	if st.settled || !st.metered() {
		return nil
	}
	st.markSettled()
	if res.Err != nil && !res.HaveUsage && res.OutputBytes == 0 {
		// Type and code only: provider messages can echo (masked) keys.
		st.log.Info("provider reported an error and no usage; releasing", "provider_error_type", res.Err.Type, "provider_error_code", res.Err.Code)
		st.release("provider error: " + res.Err.Type)
		return nil
	}
	usage, estimated := res.Settle(st.req)
	row := st.row
	// Price on the model that answered, in force when the call started
	// (design-notes §5); fall back to the requested model's row.
	if res.Model != "" && res.Model != st.req.Model {
		if r, err := st.s.opt.Prices.Lookup(st.route.Provider, res.Model, st.start); err == nil {
			row = r
		}
	}
	cost, err := row.Cost(usage)
	if err != nil {
		// An impossible usage (overflow): charge the hold rather than lose it.
		st.log.Error("cost overflow; charging the hold", "err", err)
		cost, estimated = money.Pico(st.estimate)*money.PicoPerMicro, true
	}
	if hold := money.Pico(st.estimate) * money.PicoPerMicro; estimated && cost > hold {
		// An estimate never exceeds the worst case the call was admitted
		// for: the output cap bounds what the provider could have billed.
		// Only usage the provider reported can go beyond the hold.
		cost = hold
	}
	uj, _ := json.Marshal(usage)
	ctx, cancel := st.settleContext()
	defer cancel()
	t0 := time.Now()
	capReq := ledger.CaptureRequest{
		Account: st.account, RequestID: st.requestID, Cost: cost, Provider: st.route.Provider, Model: res.Model,
		PriceRow: row.ID, Usage: string(uj), Estimated: estimated, Time: st.s.opt.Clock(),
	}
	op, call, item := "capture", st.s.opt.Ledger.Capture, spool.Settlement{Capture: &capReq}
	if st.failOpen {
		// No hold: debit the cost outright (Ledger.Charge).
		op, call, item = "charge", st.s.opt.Ledger.Charge, spool.Settlement{Charge: &capReq}
	}
	r, err := call(ctx, capReq)
	st.s.opt.Observer.CaptureLatency(time.Since(t0))
	if err != nil {
		st.s.opt.Observer.LedgerError(op)
		st.s.opt.Observer.Request(st.route.Provider, res.Model, "error")
		switch {
		case st.spool(item, err):
			st.log.Warn(op+" could not reach the ledger; spooled for replay", "err", err, "cost", cost.String())
		case st.failOpen:
			st.log.Error("charge of a fail-open request failed; its cost is not debited", "err", err, "cost", cost.String())
		default:
			st.log.Error("capture failed; the hold stays until it expires", "err", err, "cost", cost.String())
		}
		return nil
	}
	outcome := "charged"
	switch {
	case st.failOpen:
		outcome = "fail_open"
	case estimated:
		outcome = "estimated"
	}
	st.s.opt.Observer.Request(st.route.Provider, res.Model, outcome)
	st.s.opt.Observer.Charged(st.route.Provider, res.Model, int64(r.Debited))
	st.log.Info("charged", "cost", cost.String(), "debited", r.Debited.String(), "balance", r.Balance.String(),
		"estimated", estimated, "why", why, "answered_model", res.Model, "price_row", row.ID)
	st.captured = &r
	st.answered = res.Model
	st.usageEstimated = estimated
	return &r
}

// markSettled ends this stream's hold in the sidecar's own accounting. It
// runs once: settle marks the hold before it may turn into a release (a
// provider error with no usage), and release marks it too; decrementing
// twice drove the held gauge negative.
func (st *stream) markSettled() {
	if st.settled {
		return
	}
	st.settled = true
	if st.stopKeepAlive != nil {
		st.stopKeepAlive()
	}
	if st.reserved {
		st.s.opt.Observer.Holding(-int64(st.hold.Amount))
	}
}

func (st *stream) release(reason string) *ledger.ReleaseResult {
	st.markSettled()
	ctx, cancel := st.settleContext()
	defer cancel()
	r, err := st.s.opt.Ledger.Release(ctx, st.account, st.requestID, reason)
	if st.failOpen && (err == nil || errors.Is(err, ledger.ErrNoHold) || errors.Is(err, ledger.ErrUnavailable)) {
		// Admitted without a hold: nothing to charge. The reserve that timed
		// out may have landed after all, so its hold is released too — now,
		// or from the spool (where a hold that never landed replays as done).
		if errors.Is(err, ledger.ErrUnavailable) {
			st.spool(spool.Settlement{Release: &spool.Release{Account: st.account, RequestID: st.requestID, Reason: reason}}, err)
		}
		st.s.opt.Observer.Request(st.route.Provider, st.req.Model, "fail_open")
		st.log.Info("fail-open request not charged", "reason", reason)
		return nil
	}
	if err != nil {
		st.s.opt.Observer.LedgerError("release")
		if !st.spool(spool.Settlement{Release: &spool.Release{Account: st.account, RequestID: st.requestID, Reason: reason}}, err) {
			st.log.Error("release failed; the hold stays until it expires", "err", err)
		}
		return nil
	}
	st.s.opt.Observer.Request(st.route.Provider, st.req.Model, "released")
	st.log.Info("released", "reason", reason)
	return &r
}

// spool keeps a settlement that could not reach Redis for replay
// (design-notes §6); it reports whether it did.
func (st *stream) spool(item spool.Settlement, err error) bool {
	if st.s.opt.Spool == nil || !errors.Is(err, ledger.ErrUnavailable) {
		return false
	}
	if serr := st.s.opt.Spool.Add(item); serr != nil {
		st.log.Error("spool write failed; the settlement is lost until the hold expires", "err", serr)
		return false
	}
	return true
}

// callContext bounds a ledger call made while Envoy waits for our reply, so
// the sidecar answers (503 in the provider's shape) before Envoy's
// message_timeout turns a slow Redis into a bare 504.
func (st *stream) callContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(st.ctx, st.s.opt.LedgerTimeout)
}

// settleContext outlives the gRPC stream: a settlement started because the
// stream ended must still reach Redis.
func (st *stream) settleContext() (context.Context, context.CancelFunc) {
	d := st.s.opt.SettleTimeout
	if st.ctx.Err() == nil && st.s.opt.LedgerTimeout < d {
		// Envoy is waiting for our reply: answer before its message_timeout
		// (a slow ledger spools the settlement instead of a 504).
		d = st.s.opt.LedgerTimeout
	}
	return context.WithTimeout(context.WithoutCancel(st.ctx), d)
}

func (st *stream) settledMetadata() *structpb.Struct {
	if st.captured == nil {
		return nil
	}
	return st.metadata("charged", st.captured.Debited, st.usageEstimated)
}

func (st *stream) metadata(outcome string, cost money.Micros, estimated bool) *structpb.Struct {
	f := map[string]any{
		"account": st.account, "request_id": st.requestID, "provider": st.route.Provider, "model": st.answeredModel(),
		"outcome": outcome, "cost_usd": cost.String(), "estimated": estimated,
	}
	if st.failOpen {
		f["fail_open"] = true
	}
	if st.captured != nil {
		f["balance_usd"] = st.captured.Balance.String()
	}
	return metadata(f)
}

// answeredModel is the model that answered, else the requested one.
func (st *stream) answeredModel() string {
	if st.answered != "" {
		return st.answered
	}
	return st.req.Model
}

// keepHoldAlive extends the hold every half TTL until the request settles,
// so a call that runs longer than the hold TTL — a long generation, streamed
// or not, or a long wait for a buffered answer — never outlives its hold and
// becomes a late capture. It costs one Redis round trip per half TTL, none
// per chunk, and runs beside the stream (it only reads fields fixed before
// it starts).
func (st *stream) keepHoldAlive() {
	stop := make(chan struct{})
	st.stopKeepAlive = sync.OnceFunc(func() { close(stop) })
	ttl, account, id, log := st.s.opt.HoldTTL, st.account, st.requestID, st.log
	go func() {
		t := time.NewTicker(ttl / 2)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.WithoutCancel(st.ctx), st.s.opt.LedgerTimeout)
			ok, err := st.s.opt.Ledger.Extend(ctx, account, id, st.s.opt.Clock().Add(ttl))
			cancel()
			switch {
			case err != nil:
				st.s.opt.Observer.LedgerError("extend")
				log.Warn("could not extend the hold of a long call", "err", err)
			case !ok:
				log.Warn("the hold of a long call had already ended; its capture will be late")
				return
			}
		}
	}()
}

// sent records a reply that reached Envoy.
func (st *stream) sent(resp *extprocv3.ProcessingResponse) {
	if resp.GetRequestBody() != nil && st.metered() {
		st.forwarded = true
	}
}

// finish runs when the stream ends for any reason. A request that reserved
// but did not settle (client abort, reset, shutdown, trailers never seen) is
// settled now on the best knowledge and flagged estimated (design-notes §4.5).
func (st *stream) finish() {
	if st.stopKeepAlive != nil {
		defer st.stopKeepAlive()
	}
	if !st.metered() || st.settled {
		return
	}
	switch {
	case st.status == 0 && !st.forwarded:
		// Our request-body reply never reached Envoy, so the request never
		// went upstream (e.g. Envoy gave up waiting for the reserve).
		st.release("ended before the request went upstream")
	case st.status == 0:
		// No response seen: the upstream may have run the prompt. Charge the
		// prompt estimate, flagged.
		st.settle(provider.Result{Model: st.req.Model}, "ended before the response")
	case st.status < 200 || st.status > 299:
		st.release(fmt.Sprintf("upstream status %d", st.status))
	case st.streaming:
		st.settleStream(false)
	default:
		res, _ := provider.ParseBody(st.route, st.req, st.decoded())
		if res.Model == "" {
			res.Model = st.req.Model
		}
		st.settle(res, "ended before the response body")
	}
}
