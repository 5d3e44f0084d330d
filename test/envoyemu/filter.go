package envoyemu

import (
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// filterStatus is the union of Envoy's FilterHeadersStatus,
// FilterDataStatus and FilterTrailersStatus values the filter returns.
type filterStatus int

const (
	fsContinue filterStatus = iota
	fsStopIteration
	fsStopAndBuffer
	fsStopAndWatermark
	fsStopNoBuffer
)

type openState int

const (
	openOK openState = iota
	openError
	openIgnoreError
)

// filter is one instance of Envoy's ext_proc Filter for one HTTP stream.
type filter struct {
	x   *exchange
	cfg *filterConfig

	dec *procState
	enc *procState

	stream                *procStream
	streams               []*procStream
	processingComplete    bool
	sentImmediateResponse bool
	protocolConfigEncoded bool

	failureModeAllowRoute *bool
	forwardingUntyped     []string
	receivingUntyped      []string
	routeMetadata         metadata.MD
}

func newFilter(x *exchange) *filter {
	f := &filter{
		x:                 x,
		cfg:               x.p.fc,
		forwardingUntyped: x.p.fc.forwardingUntyped,
		receivingUntyped:  x.p.fc.receivingUntyped,
	}
	f.dec = &procState{f: f, dir: Request}
	f.enc = &procState{f: f, dir: Response}
	f.dec.setProcessingMode(f.cfg.mode)
	f.enc.setProcessingMode(f.cfg.mode)
	if x.p.cfg.PerRoute != nil {
		f.mergePerRouteConfig(x.p.cfg.PerRoute(x.r))
	}
	return f
}

// mergePerRouteConfig applies ExtProcPerRoute (envoy-extproc.md §1.4, §5).
func (f *filter) mergePerRouteConfig(pr *extprocfilterv3.ExtProcPerRoute) {
	if pr == nil {
		return
	}
	if pr.GetDisabled() {
		off := &extprocfilterv3.ProcessingMode{
			RequestHeaderMode:  extprocfilterv3.ProcessingMode_SKIP,
			ResponseHeaderMode: extprocfilterv3.ProcessingMode_SKIP,
		}
		f.dec.setProcessingMode(off)
		f.enc.setProcessingMode(off)
		return
	}
	o := pr.GetOverrides()
	if o == nil {
		return
	}
	if pm := o.GetProcessingMode(); pm != nil {
		f.dec.setProcessingMode(pm)
		f.enc.setProcessingMode(pm)
	}
	if mo := o.GetMetadataOptions(); mo != nil {
		if mo.GetForwardingNamespaces() != nil {
			f.forwardingUntyped = mo.GetForwardingNamespaces().GetUntyped()
		}
		if mo.GetReceivingNamespaces() != nil {
			f.receivingUntyped = mo.GetReceivingNamespaces().GetUntyped()
		}
	}
	if fma := o.GetFailureModeAllow(); fma != nil {
		v := fma.GetValue()
		f.failureModeAllowRoute = &v
	}
	if len(o.GetGrpcInitialMetadata()) > 0 {
		f.routeMetadata = metadata.MD{}
		for _, hv := range o.GetGrpcInitialMetadata() {
			f.routeMetadata.Set(hv.GetKey(), initialMetadataValue(hv.GetValue(), hv.GetRawValue()))
		}
	}
}

func (f *filter) initialMetadata() metadata.MD {
	md := f.cfg.initialMetadata.Copy()
	for k, v := range f.routeMetadata {
		md[k] = v // merged by key (envoy-extproc.md §5 per-route)
	}
	return md
}

func (f *filter) failureModeAllow() bool {
	if f.failureModeAllowRoute != nil {
		return *f.failureModeAllowRoute
	}
	return f.cfg.failureModeAllow
}

func (f *filter) state(d Direction) *procState {
	if d == Request {
		return f.dec
	}
	return f.enc
}

func (f *filter) rejectedMutation() { f.x.p.stats.rejectedMutations.Add(1) }

// openStream opens the gRPC stream lazily, at the first message that has to
// be sent (envoy-extproc.md §1.1).
func (f *filter) openStream() openState {
	if f.processingComplete {
		return openIgnoreError
	}
	if f.stream == nil {
		s, err := openProcStream(f.x)
		if err != nil {
			st := status.Convert(err)
			f.x.record(Event{Kind: EventStreamOpenFailed, Detail: err.Error()})
			f.onGrpcError(st.Code(), st.Message())
			if f.sentImmediateResponse {
				return openError
			}
			return openIgnoreError
		}
		f.x.p.stats.streamsStarted.Add(1)
		f.x.record(Event{Kind: EventStreamOpen})
		f.stream = s
		f.streams = append(f.streams, s)
	}
	return openOK
}

// closeStream is Filter::closeStream: half-close then reset (§1.1).
func (f *filter) closeStream() {
	if f.stream == nil {
		return
	}
	f.stream.close()
	f.stream = nil
	f.x.p.stats.streamsClosed.Add(1)
	f.x.record(Event{Kind: EventHalfClose})
	f.x.record(Event{Kind: EventReset})
}

func (f *filter) closeStreamMaybeGraceful() {
	f.processingComplete = true
	f.closeStream()
}

// onDestroy: envoy-extproc.md §1.1 (d); also what a downstream reset triggers.
func (f *filter) onDestroy() {
	f.processingComplete = true
	f.dec.stopMessageTimer()
	f.enc.stopMessageTimer()
	f.closeStreamMaybeGraceful()
}

func (f *filter) sendRequest(s *procState, req *extprocv3.ProcessingRequest) {
	if f.stream == nil {
		return
	}
	f.stream.send(req)
	f.x.p.stats.msgsSent.Add(1)
	f.x.record(Event{Kind: EventSend, Dir: s.dir, Request: req})
}

// encodeProtocolConfig: protocol_config only on the first message of the
// stream, with the effective body modes (envoy-extproc.md §1.2).
func (f *filter) encodeProtocolConfig(req *extprocv3.ProcessingRequest) {
	if f.protocolConfigEncoded {
		return
	}
	req.ProtocolConfig = &extprocv3.ProtocolConfiguration{
		RequestBodyMode:                         f.dec.bodyMode,
		ResponseBodyMode:                        f.enc.bodyMode,
		SendBodyWithoutWaitingForHeaderResponse: f.cfg.sendBodyWithoutWaiting,
	}
	f.protocolConfigEncoded = true
}

// addAttributes: once per direction, on its first message, under the key
// "envoy.filters.http.ext_proc", and only when attributes are configured
// (envoy-extproc.md §1.2).
func (f *filter) addAttributes(s *procState, req *extprocv3.ProcessingRequest) {
	names := f.cfg.requestAttributes
	if s.dir == Response {
		names = f.cfg.responseAttributes
	}
	if s.attributesSent || len(names) == 0 {
		return
	}
	s.attributesSent = true
	req.Attributes = map[string]*structpb.Struct{filterName: f.x.evaluateAttributes(s.dir, names)}
}

// addDynamicMetadata: metadata_context on every message, even when empty
// (envoy-extproc.md §1.2).
func (f *filter) addDynamicMetadata(req *extprocv3.ProcessingRequest) {
	md := &corev3.Metadata{}
	for _, ns := range f.forwardingUntyped {
		if v, ok := f.x.dynMeta[ns]; ok {
			if md.FilterMetadata == nil {
				md.FilterMetadata = map[string]*structpb.Struct{}
			}
			md.FilterMetadata[ns] = proto.Clone(v).(*structpb.Struct)
		}
	}
	req.MetadataContext = md
}

func (f *filter) buildHeaderRequest(s *procState, h *headerMap, eos bool) *extprocv3.ProcessingRequest {
	req := &extprocv3.ProcessingRequest{}
	f.addAttributes(s, req)
	f.addDynamicMetadata(req)
	hh := &extprocv3.HttpHeaders{Headers: h.toProto(f.cfg.forward), EndOfStream: eos}
	if s.dir == Request {
		req.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hh}
	} else {
		req.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hh}
	}
	f.encodeProtocolConfig(req)
	return req
}

func (f *filter) setupBodyChunk(s *procState, data []byte, eos bool) *extprocv3.ProcessingRequest {
	req := &extprocv3.ProcessingRequest{}
	f.addAttributes(s, req)
	f.addDynamicMetadata(req)
	hb := &extprocv3.HttpBody{Body: append([]byte{}, data...), EndOfStream: eos}
	if s.dir == Request {
		req.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: hb}
	} else {
		req.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: hb}
	}
	f.encodeProtocolConfig(req)
	return req
}

func (f *filter) sendBodyChunk(s *procState, next cbState, req *extprocv3.ProcessingRequest) {
	s.onStartProcessorCall(next)
	f.sendRequest(s, req)
}

func (f *filter) sendTrailers(s *procState, t *headerMap) {
	if s.trailersSentToServer || t == nil {
		return
	}
	s.trailersSentToServer = true
	req := &extprocv3.ProcessingRequest{}
	f.addAttributes(s, req)
	f.addDynamicMetadata(req)
	ht := &extprocv3.HttpTrailers{Trailers: t.toProto(f.cfg.forward)}
	if s.dir == Request {
		req.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: ht}
	} else {
		req.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: ht}
	}
	next := s.callback
	if next == cbIdle {
		next = cbTrailers
	}
	s.onStartProcessorCall(next)
	f.encodeProtocolConfig(req)
	f.sendRequest(s, req)
}

// decodeHeaders: content-length is removed after the headers message was
// built, so the server still sees it (envoy-extproc.md §2.4).
func (f *filter) decodeHeaders(h *headerMap, eos bool) filterStatus {
	if eos {
		f.dec.completeBodyAvailable = true
	}
	st := fsContinue
	if f.dec.sendHeaders {
		st = f.onHeaders(f.dec, h, eos)
	}
	if !f.processingComplete && f.dec.shouldRemoveContentLength() {
		h.del("content-length")
	}
	return st
}

// encodeHeaders also closes the stream when the response direction needs no
// processing (envoy-extproc.md §1.1 (b)).
func (f *filter) encodeHeaders(h *headerMap, eos bool) filterStatus {
	if eos {
		f.enc.completeBodyAvailable = true
	}
	st := fsContinue
	if !f.processingComplete && f.enc.sendHeaders {
		st = f.onHeaders(f.enc, h, eos)
	}
	if !f.processingComplete && f.enc.shouldRemoveContentLength() {
		h.del("content-length")
	}
	if f.enc.noExternalProcess() {
		f.closeStreamMaybeGraceful()
	}
	return st
}

func (f *filter) onHeaders(s *procState, h *headerMap, eos bool) filterStatus {
	switch f.openStream() {
	case openError:
		return fsStopIteration
	case openIgnoreError:
		return fsContinue
	}
	s.headers = h
	s.noBody = eos
	req := f.buildHeaderRequest(s, h, eos)
	s.onStartProcessorCall(cbHeaders)
	f.sendRequest(s, req)
	s.paused = true
	return fsStopIteration
}

// onData is Filter::onData. data may be drained (moved into the filter).
func (f *filter) onData(s *procState, data *[]byte, eos bool) filterStatus {
	s.bodyReceived = true
	if eos {
		s.completeBodyAvailable = true
	}
	if s.bodyReplaced {
		*data = nil // §2.2 CONTINUE_AND_REPLACE: later original body data dropped
		return fsContinue
	}
	if f.processingComplete {
		return fsContinue
	}
	if s.callback == cbHeaders {
		if !(s.bodyMode == modeStreamed && f.cfg.sendBodyWithoutWaiting) {
			// envoy-extproc.md §1.6: hold data while the headers reply is pending.
			s.paused = true
			if s.bodyMode == modeBuffered {
				return fsStopAndBuffer
			}
			return fsStopAndWatermark
		}
	}
	switch s.bodyMode {
	case modeBuffered:
		return f.handleDataBufferedMode(s, data, eos)
	case modeStreamed:
		return f.handleDataStreamedMode(s, data, eos)
	case modePartial:
		return f.handleDataBufferedPartialMode(s, data, eos)
	default:
		return fsContinue
	}
}

// handleDataBufferedMode: envoy-extproc.md §1.5 BUFFERED: one message with the
// whole body at end of stream.
func (f *filter) handleDataBufferedMode(s *procState, data *[]byte, eos bool) filterStatus {
	if !eos {
		s.paused = true
		return fsStopAndBuffer
	}
	switch f.openStream() {
	case openError:
		return fsStopNoBuffer
	case openIgnoreError:
		return fsContinue
	}
	fd := s.fm()
	fd.appendBuf(*data)
	*data = nil
	if f.x.checkBufferLimit(fd) {
		return fsStopNoBuffer
	}
	req := f.setupBodyChunk(s, fd.buf, eos)
	f.sendBodyChunk(s, cbBufferedBody, req)
	s.paused = true
	return fsStopNoBuffer
}

// handleDataStreamedMode: envoy-extproc.md §1.5 STREAMED and §3: each data
// callback is sent at once and queued; downstream gets nothing for it until
// its reply arrives.
func (f *filter) handleDataStreamedMode(s *procState, data *[]byte, eos bool) filterStatus {
	switch f.openStream() {
	case openError:
		return fsStopNoBuffer
	case openIgnoreError:
		return fsContinue
	}
	req := f.setupBodyChunk(s, *data, eos)
	s.queue.push(*data, eos)
	*data = nil
	if s.callback == cbHeaders {
		f.sendBodyChunk(s, cbHeaders, req)
	} else {
		f.sendBodyChunk(s, cbStreamedBody, req)
	}
	if eos || s.callback == cbHeaders {
		s.paused = true
		return fsStopNoBuffer
	}
	return fsContinue
}

// handleDataBufferedPartialMode: envoy-extproc.md §1.5 BUFFERED_PARTIAL.
func (f *filter) handleDataBufferedPartialMode(s *procState, data *[]byte, eos bool) filterStatus {
	if s.partialBodyProcessed {
		s.headers = nil
		return fsContinue
	}
	s.queue.push(*data, eos)
	*data = nil
	if s.callback == cbBufferedPartialBody {
		s.paused = true
		return fsStopNoBuffer
	}
	if eos || s.queueOverHighLimit() {
		switch f.openStream() {
		case openError:
			return fsStopNoBuffer
		case openIgnoreError:
			return fsContinue
		}
		all := s.queue.consolidate()
		req := f.setupBodyChunk(s, all.data, all.eos)
		f.sendBodyChunk(s, cbBufferedPartialBody, req)
		s.paused = true
	}
	return fsStopNoBuffer
}

// onTrailers: trailers are sent only after every outstanding body reply, and
// only when they exist (envoy-extproc.md §1.5).
func (f *filter) onTrailers(s *procState, t *headerMap) filterStatus {
	if f.processingComplete {
		return fsContinue
	}
	bodyDelivered := s.completeBodyAvailable
	s.completeBodyAvailable = true
	s.trailersAvailable = true
	s.trailers = t
	if s.callback != cbIdle {
		s.paused = true
		return fsStopIteration
	}
	fd := s.fm()
	if !bodyDelivered && ((fd.hasBuf && s.bodyMode == modeBuffered) || (!s.queue.empty() && s.bodyMode == modePartial)) {
		switch f.openStream() {
		case openError:
			return fsStopIteration
		case openIgnoreError:
			return fsContinue
		}
		// The body is complete now; it goes with eos=false because trailers follow.
		if s.bodyMode == modeBuffered {
			f.sendBodyChunk(s, cbBufferedBody, f.setupBodyChunk(s, fd.buf, false))
		} else {
			all := s.queue.consolidate()
			f.sendBodyChunk(s, cbBufferedPartialBody, f.setupBodyChunk(s, all.data, false))
		}
		s.paused = true
		return fsStopIteration
	}
	if !s.sendTrailers {
		return fsContinue
	}
	switch f.openStream() {
	case openError:
		return fsStopIteration
	case openIgnoreError:
		return fsContinue
	}
	f.sendTrailers(s, t)
	s.paused = true
	return fsStopIteration
}

func (f *filter) inHeaderProcessState() bool {
	return f.dec.callback == cbHeaders || f.enc.callback == cbHeaders
}

// effectiveModeOverride: DEFAULT header/trailer modes keep the filter-level
// processing_mode; body modes are literal (envoy-extproc.md §2.6).
func effectiveModeOverride(target, existing *extprocfilterv3.ProcessingMode) *extprocfilterv3.ProcessingMode {
	m := proto.Clone(existing).(*extprocfilterv3.ProcessingMode)
	if target.GetRequestHeaderMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		m.RequestHeaderMode = target.GetRequestHeaderMode()
	}
	if target.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		m.ResponseHeaderMode = target.GetResponseHeaderMode()
	}
	if target.GetRequestTrailerMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		m.RequestTrailerMode = target.GetRequestTrailerMode()
	}
	if target.GetResponseTrailerMode() != extprocfilterv3.ProcessingMode_DEFAULT {
		m.ResponseTrailerMode = target.GetResponseTrailerMode()
	}
	m.RequestBodyMode = target.GetRequestBodyMode()
	m.ResponseBodyMode = target.GetResponseBodyMode()
	return m
}

// modeOverrideAllowed: allowed_override_modes must contain an exact match,
// request_header_mode excluded (envoy-extproc.md §2.6).
func (f *filter) modeOverrideAllowed(m *extprocfilterv3.ProcessingMode) bool {
	if len(f.cfg.allowedOverrideModes) == 0 {
		return true
	}
	for _, o := range f.cfg.allowedOverrideModes {
		if m.GetRequestBodyMode() == o.GetRequestBodyMode() &&
			m.GetRequestTrailerMode() == o.GetRequestTrailerMode() &&
			m.GetResponseHeaderMode() == o.GetResponseHeaderMode() &&
			m.GetResponseBodyMode() == o.GetResponseBodyMode() &&
			m.GetResponseTrailerMode() == o.GetResponseTrailerMode() {
			return true
		}
	}
	return false
}

func isLastBodyResponse(s *procState) bool {
	if s.bodyMode == modeStreamed && !s.queue.empty() {
		return s.queue.chunks[0].eos
	}
	return false // BUFFERED and BUFFERED_PARTIAL skip the optimisation
}

// onReceiveMessage is Filter::onReceiveMessage.
func (f *filter) onReceiveMessage(r *extprocv3.ProcessingResponse) {
	if f.processingComplete {
		// envoy-extproc.md §2.1: a reply after processing completed is ignored.
		f.x.record(Event{Kind: EventRecvIgnored, Response: r})
		return
	}
	f.x.record(Event{Kind: EventRecv, Response: r})
	if r.GetOverrideMessageTimeout() != nil {
		// §2.7: the rest of the reply is ignored.
		f.onNewTimeout(r.GetOverrideMessageTimeout().AsDuration())
		return
	}
	// envoy-extproc.md §2.6: only in a headers reply state, both directions.
	if f.cfg.allowModeOverride && !f.cfg.sendBodyWithoutWaiting && f.inHeaderProcessState() && r.GetModeOverride() != nil {
		m := effectiveModeOverride(r.GetModeOverride(), f.cfg.mode)
		if f.modeOverrideAllowed(m) {
			f.dec.setProcessingMode(m)
			f.enc.setProcessingMode(m)
			f.x.record(Event{Kind: EventModeOverride, Detail: m.String()})
		}
	}
	isLastBody := false
	var err error
	switch v := r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		f.setDynamicMetadata(r)
		err = f.dec.handleHeadersResponse(v.RequestHeaders)
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		f.setDynamicMetadata(r)
		err = f.enc.handleHeadersResponse(v.ResponseHeaders)
	case *extprocv3.ProcessingResponse_RequestBody:
		isLastBody = isLastBodyResponse(f.dec)
		f.setDynamicMetadata(r)
		err = f.dec.handleBodyResponse(v.RequestBody)
	case *extprocv3.ProcessingResponse_ResponseBody:
		isLastBody = isLastBodyResponse(f.enc)
		f.setDynamicMetadata(r)
		err = f.enc.handleBodyResponse(v.ResponseBody)
	case *extprocv3.ProcessingResponse_RequestTrailers:
		f.setDynamicMetadata(r)
		err = f.dec.handleTrailersResponse(v.RequestTrailers)
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		f.setDynamicMetadata(r)
		err = f.enc.handleTrailersResponse(v.ResponseTrailers)
	case *extprocv3.ProcessingResponse_ImmediateResponse:
		if f.cfg.disableImmediateResponse {
			// §2.5: disable_immediate_response makes the message spurious.
			err = spurious("unhandled immediate response due to config disabled it")
			break
		}
		f.setDynamicMetadata(r)
		f.processingComplete = true
		f.onFinishProcessorCalls()
		f.closeStreamMaybeGraceful()
		f.sendImmediateResponse(v.ImmediateResponse)
	case *extprocv3.ProcessingResponse_StreamedImmediateResponse:
		err = spurious("unhandled message: StreamedImmediateResponse is not emulated")
	default:
		// §2.1: a reply with no response oneof is spurious.
		err = spurious("unhandled message")
	}
	switch {
	case err == nil:
		f.x.p.stats.msgsReceived.Add(1)
	case isSpurious(err):
		f.x.p.stats.spurious.Add(1)
		f.x.record(Event{Kind: EventSpurious, Detail: err.Error()})
		// §2.1 (since 1.35): fail-closed → local reply with status_on_error,
		// fail-open → close the stream and continue unmodified.
		if f.failureModeAllow() {
			f.x.p.stats.failureModeAllowed.Add(1)
			f.closeStream()
			f.clearAsyncState()
			f.processingComplete = true
		} else {
			f.handleErrorResponse(err)
		}
	default:
		f.x.p.stats.msgsReceived.Add(1)
		f.x.record(Event{Kind: EventProcessingError, Detail: err.Error()})
		f.handleErrorResponse(err)
	}
	f.closeGrpcStreamIfLastRespReceived(r, isLastBody)
}

// setDynamicMetadata keeps only the namespaces listed in
// metadata_options.receiving_namespaces.untyped (envoy-extproc.md §2.2).
// Envoy writes through the callbacks of the reply's direction; both land in
// the same request StreamInfo, which is what the access log sees.
func (f *filter) setDynamicMetadata(r *extprocv3.ProcessingResponse) {
	dm := r.GetDynamicMetadata()
	if dm == nil || len(f.receivingUntyped) == 0 {
		return
	}
	for ns, v := range dm.GetFields() {
		if !contains(f.receivingUntyped, ns) {
			continue
		}
		f.x.mergeDynamicMetadata(ns, v.GetStructValue())
		f.x.record(Event{Kind: EventDynamicMetadata, Detail: ns})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// closeGrpcStreamIfLastRespReceived is the 1.37 stream-close optimisation
// (envoy-extproc.md §1.1 (c)).
func (f *filter) closeGrpcStreamIfLastRespReceived(r *extprocv3.ProcessingResponse, isLastBody bool) {
	if f.stream == nil {
		return
	}
	last := false
	switch r.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		last = (f.dec.noBody || (f.dec.bodyMode == modeNone && !f.dec.sendTrailers)) && f.enc.noExternalProcess()
	case *extprocv3.ProcessingResponse_RequestBody:
		last = isLastBody && f.enc.noExternalProcess()
	case *extprocv3.ProcessingResponse_RequestTrailers:
		last = f.enc.noExternalProcess()
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		last = f.enc.noBody || (f.enc.bodyMode == modeNone && !f.enc.sendTrailers)
	case *extprocv3.ProcessingResponse_ResponseBody:
		last = isLastBody
	case *extprocv3.ProcessingResponse_ResponseTrailers:
		last = true
	}
	if last {
		f.closeStreamMaybeGraceful()
	}
}

func (f *filter) handleErrorResponse(err error) {
	f.processingComplete = true
	f.onFinishProcessorCalls()
	f.closeStream()
	f.sendImmediateResponse(&extprocv3.ImmediateResponse{
		Status:  httpStatus(f.cfg.statusOnError),
		Details: err.Error(),
	})
}

func (f *filter) onFinishProcessorCalls() {
	f.dec.onFinishProcessorCall(cbIdle)
	f.enc.onFinishProcessorCall(cbIdle)
}

func (f *filter) clearAsyncState() {
	f.dec.clearAsyncState()
	f.enc.clearAsyncState()
}

// onGrpcError: envoy-extproc.md §2.8.
func (f *filter) onGrpcError(code codes.Code, msg string) {
	f.x.p.stats.streamsFailed.Add(1)
	f.x.record(Event{Kind: EventGRPCError, Detail: fmt.Sprintf("%s: %s", code, msg)})
	if f.processingComplete {
		return
	}
	if f.failureModeAllow() {
		f.x.p.stats.failureModeAllowed.Add(1)
		f.onGrpcCloseWithStatus()
		return
	}
	f.processingComplete = true
	f.onFinishProcessorCalls()
	f.closeStream()
	f.sendImmediateResponse(&extprocv3.ImmediateResponse{
		Status:  httpStatus(f.cfg.statusOnError),
		Details: fmt.Sprintf("ext_proc_error_gRPC_error_%d{%s}", uint32(code), msg),
	})
}

// onGrpcClose: a server-side OK close means "carry on without ext_proc";
// queued chunks are re-injected unmodified (envoy-extproc.md §1.1).
func (f *filter) onGrpcClose() {
	f.x.record(Event{Kind: EventServerClose})
	f.onGrpcCloseWithStatus()
}

func (f *filter) onGrpcCloseWithStatus() {
	if f.processingComplete {
		return
	}
	f.processingComplete = true
	f.closeStream()
	f.clearAsyncState()
}

// onMessageTimeout: envoy-extproc.md §2.7.
func (f *filter) onMessageTimeout() {
	f.x.p.stats.messageTimeouts.Add(1)
	f.x.record(Event{Kind: EventTimeout})
	if f.failureModeAllow() {
		f.processingComplete = true
		f.closeStream()
		f.x.p.stats.failureModeAllowed.Add(1)
		f.clearAsyncState()
		return
	}
	f.processingComplete = true
	f.closeStream()
	f.onFinishProcessorCalls()
	f.sendImmediateResponse(&extprocv3.ImmediateResponse{
		Status:  httpStatus(504),
		Details: "ext_proc_error_per-message_timeout_exceeded",
	})
}

func (f *filter) onNewTimeout(d time.Duration) {
	ms := d.Milliseconds()
	if ms < 1 || time.Duration(ms)*time.Millisecond > f.cfg.maxMessageTimeout {
		f.x.p.stats.overrideIgnored.Add(1)
		return
	}
	nd := time.Duration(ms) * time.Millisecond
	restarted := f.dec.restartMessageTimer(nd)
	if f.enc.restartMessageTimer(nd) {
		restarted = true
	}
	if !restarted {
		f.x.p.stats.overrideIgnored.Add(1)
		return
	}
	f.x.p.stats.overrideReceived.Add(1)
}

// sendImmediateResponse: envoy-extproc.md §2.5. A status below 200 becomes
// 200; headers go through the filter's mutation rules and failures are only
// logged; details have whitespace replaced by '_'.
func (f *filter) sendImmediateResponse(ir *extprocv3.ImmediateResponse) {
	code := 200
	if ir.GetStatus() != nil {
		code = int(ir.GetStatus().GetCode())
	}
	if code < 200 {
		code = 200
	}
	mutate := func(h *headerMap) {
		if ir.GetHeaders() != nil {
			_ = applyHeaderMutations(ir.GetHeaders(), h, false, f.cfg.checker, false, f.rejectedMutation)
		}
	}
	f.sentImmediateResponse = true
	details := strings.Map(func(r rune) rune {
		if strings.ContainsRune(" \t\f\v\n\r", r) {
			return '_'
		}
		return r
	}, ir.GetDetails())
	f.x.sendLocalReply(code, ir.GetBody(), mutate, details)
}
