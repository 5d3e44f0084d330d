package envoyemu

import (
	"strconv"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

type bodyMode = extprocfilterv3.ProcessingMode_BodySendMode

const (
	modeNone     = extprocfilterv3.ProcessingMode_NONE
	modeStreamed = extprocfilterv3.ProcessingMode_STREAMED
	modeBuffered = extprocfilterv3.ProcessingMode_BUFFERED
	modePartial  = extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL
)

// cbState is ProcessorState::CallbackState: which reply a direction awaits.
type cbState int

const (
	cbIdle cbState = iota
	cbHeaders
	cbBufferedBody
	cbStreamedBody
	cbBufferedPartialBody
	cbTrailers
)

// queuedChunk and chunkQueue are Envoy's ChunkQueue: STREAMED chunks that were
// sent to the server and wait for their reply (envoy-extproc.md §3 step 3).
type queuedChunk struct {
	data []byte
	eos  bool
}

type chunkQueue struct {
	chunks []*queuedChunk
	bytes  int
}

func (q *chunkQueue) push(data []byte, eos bool) {
	q.chunks = append(q.chunks, &queuedChunk{data: data, eos: eos})
	q.bytes += len(data)
}

func (q *chunkQueue) pop() *queuedChunk {
	if len(q.chunks) == 0 {
		return nil
	}
	c := q.chunks[0]
	q.chunks = q.chunks[1:]
	q.bytes -= len(c.data)
	return c
}

func (q *chunkQueue) empty() bool { return len(q.chunks) == 0 }

// consolidate merges every queued chunk into one carrying the last eos.
func (q *chunkQueue) consolidate() *queuedChunk {
	if len(q.chunks) > 1 {
		merged := &queuedChunk{eos: q.chunks[len(q.chunks)-1].eos}
		for _, c := range q.chunks {
			merged.data = append(merged.data, c.data...)
		}
		q.chunks = []*queuedChunk{merged}
	}
	if len(q.chunks) == 0 {
		return &queuedChunk{}
	}
	return q.chunks[0]
}

// clear keeps Envoy's ChunkQueue::clear quirk: it only drops the queue when it
// holds more than one chunk.
func (q *chunkQueue) clear() {
	if len(q.chunks) > 1 {
		q.chunks = nil
		q.bytes = 0
	}
}

// procState is ProcessorState: one direction's state machine on the shared
// gRPC stream (envoy-extproc.md §1.1).
type procState struct {
	f   *filter
	dir Direction

	callback              cbState
	paused                bool
	completeBodyAvailable bool
	noBody                bool
	bodyReplaced          bool
	bodyReceived          bool
	partialBodyProcessed  bool
	trailersAvailable     bool
	trailersSentToServer  bool
	attributesSent        bool

	sendHeaders  bool
	sendTrailers bool
	bodyMode     bodyMode

	headers  *headerMap // held headers, nil once released for mutation
	trailers *headerMap
	queue    chunkQueue

	timer              *time.Timer
	timerGen           uint64
	timerEnabled       bool
	newTimeoutReceived bool
}

// setProcessingMode is {Decoding,Encoding}ProcessorState::setProcessingModeInternal:
// headers are sent unless SKIP, trailers only if SEND (envoy-extproc.md §1.4).
func (s *procState) setProcessingMode(m *extprocfilterv3.ProcessingMode) {
	if s.dir == Request {
		s.sendHeaders = m.GetRequestHeaderMode() != extprocfilterv3.ProcessingMode_SKIP
		s.sendTrailers = m.GetRequestTrailerMode() == extprocfilterv3.ProcessingMode_SEND
		s.bodyMode = m.GetRequestBodyMode()
		return
	}
	s.sendHeaders = m.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SKIP
	s.sendTrailers = m.GetResponseTrailerMode() == extprocfilterv3.ProcessingMode_SEND
	s.bodyMode = m.GetResponseBodyMode()
}

func (s *procState) noExternalProcess() bool {
	return !s.sendHeaders && !s.sendTrailers && s.bodyMode == modeNone
}

// shouldRemoveContentLength: envoy-extproc.md §2.4.
func (s *procState) shouldRemoveContentLength() bool {
	return s.bodyMode == modeStreamed || s.bodyMode == modePartial ||
		(s.bodyMode == modeBuffered && !s.sendHeaders)
}

func (s *procState) fm() *fmDir { return s.f.x.fmDir(s.dir) }

func (s *procState) queueOverHighLimit() bool { return s.queue.bytes > s.f.x.p.bufferLimit() }

// onStartProcessorCall arms (re-arms) the message timer: every message sent
// resets it (envoy-extproc.md §2.7).
func (s *procState) onStartProcessorCall(next cbState) {
	s.callback = next
	s.armTimer(s.f.cfg.messageTimeout)
	s.newTimeoutReceived = false
}

// onFinishProcessorCall stops the timer: every reply stops it, even with
// STREAMED chunks still outstanding (envoy-extproc.md §2.7, §3 step 4).
func (s *procState) onFinishProcessorCall(next cbState) {
	s.stopMessageTimer()
	s.callback = next
	s.newTimeoutReceived = false
}

func (s *procState) armTimer(d time.Duration) {
	s.stopMessageTimer()
	s.timerEnabled = true
	gen := s.timerGen
	x, dir := s.f.x, s.dir
	s.timer = time.AfterFunc(d, func() { x.post(event{kind: evTimer, dir: dir, gen: gen}) })
}

func (s *procState) stopMessageTimer() {
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timerEnabled = false
	s.timerGen++ // a timer that already fired is recognised as stale
}

// restartMessageTimer serves override_message_timeout: only while the timer
// runs and once per state (envoy-extproc.md §2.7).
func (s *procState) restartMessageTimer(d time.Duration) bool {
	if !s.timerEnabled || s.newTimeoutReceived {
		return false
	}
	s.armTimer(d)
	s.newTimeoutReceived = true
	return true
}

func (s *procState) continueIfNecessary() {
	if s.paused {
		s.paused = false
		s.f.x.continueProcessing(s.fm())
	}
}

// clearAsyncState re-injects queued chunks unmodified and continues
// (envoy-extproc.md §1.1, server-side close; also timeouts and spurious
// replies when failing open).
func (s *procState) clearAsyncState() {
	s.onFinishProcessorCall(cbIdle)
	all := s.queue.consolidate()
	if len(all.data) > 0 {
		s.f.x.injectData(s.fm(), all.data, all.eos)
		all.data = nil
	}
	s.continueIfNecessary()
}

func (s *procState) processHeaderMutation(cr *extprocv3.CommonResponse) error {
	return applyHeaderMutations(cr.GetHeaderMutation(), s.headers,
		cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE,
		s.f.cfg.checker, s.shouldRemoveContentLength(), s.f.rejectedMutation)
}

// handleHeadersResponse: envoy-extproc.md §2.2 (headers reply column).
func (s *procState) handleHeadersResponse(r *extprocv3.HeadersResponse) error {
	if s.callback != cbHeaders {
		return spurious("spurious message")
	}
	cr := r.GetResponse()
	if cr.GetHeaderMutation() != nil {
		if err := s.processHeaderMutation(cr); err != nil {
			return err
		}
	}
	s.onFinishProcessorCall(s.callbackAfterHeaderResp(cr))
	if cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE {
		return s.handleContinueAndReplace(cr)
	}
	return s.handleContinue()
}

func (s *procState) callbackAfterHeaderResp(cr *extprocv3.CommonResponse) cbState {
	if cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE {
		return cbIdle
	}
	// envoy-extproc.md §2.10: chunks sent while the headers reply was pending
	// now await their own replies.
	if s.bodyMode == modeStreamed && s.f.cfg.sendBodyWithoutWaiting && !s.queue.empty() {
		return cbStreamedBody
	}
	return cbIdle
}

// handleContinueAndReplace: envoy-extproc.md §2.2. Only a body_mutation
// replaces the body (and removes content-length); either way the body mode
// becomes NONE and trailers are no longer sent for this direction.
func (s *procState) handleContinueAndReplace(cr *extprocv3.CommonResponse) error {
	if bm := cr.GetBodyMutation(); bm != nil {
		s.headers.del("content-length")
		s.bodyReplaced = true
		fd := s.fm()
		fd.hasBuf = true
		fd.buf = applyBodyMutation(bm, fd.buf)
	}
	s.queue.clear()
	s.bodyMode = modeNone
	s.sendTrailers = false
	return s.finalizeResponse()
}

func (s *procState) handleContinue() error {
	if s.noBody {
		return s.finalizeContinueResponse()
	}
	// envoy-extproc.md §1.6: the whole body arrived while the headers reply was
	// pending; it goes as one chunk and is processed like BUFFERED.
	if s.completeBodyAvailable && s.bodyMode != modeNone {
		return s.handleCompleteBodyAvailable()
	}
	switch s.bodyMode {
	case modeBuffered:
		// Headers stay held so the body reply can still mutate them (§1.5).
		return nil
	case modeStreamed:
		// §1.6: data held during the headers reply goes as one coalesced chunk.
		s.sendBufferedDataInStreamedMode(false)
		s.continueIfNecessary()
		return nil
	case modePartial:
		return s.handleBufferedPartialMode()
	default:
		return s.finalizeContinueResponse()
	}
}

func (s *procState) handleCompleteBodyAvailable() error {
	fd := s.fm()
	if s.callback == cbIdle {
		if fd.hasBuf {
			req := s.f.setupBodyChunk(s, fd.buf, !s.trailersAvailable)
			s.f.sendBodyChunk(s, cbBufferedBody, req)
			return nil
		}
		// envoy-extproc.md §1.6 "known gap": trailers with no body bytes.
		// Envoy's behaviour is unspecified; the emulator continues.
		return s.finalizeContinueResponse()
	}
	s.sendBufferedDataInStreamedMode(!s.trailersAvailable)
	return nil
}

func (s *procState) sendBufferedDataInStreamedMode(eos bool) {
	fd := s.fm()
	if !fd.hasBuf || len(fd.buf) == 0 {
		return
	}
	chunk := fd.takeBuf()
	req := s.f.setupBodyChunk(s, chunk, eos)
	s.queue.push(chunk, eos)
	s.f.sendBodyChunk(s, cbStreamedBody, req)
}

func (s *procState) handleBufferedPartialMode() error {
	fd := s.fm()
	if fd.hasBuf && len(fd.buf) > 0 {
		s.queue.push(fd.takeBuf(), false)
	}
	if s.queueOverHighLimit() {
		all := s.queue.consolidate()
		req := s.f.setupBodyChunk(s, all.data, false)
		s.f.sendBodyChunk(s, cbBufferedPartialBody, req)
	}
	return nil
}

func (s *procState) finalizeContinueResponse() error {
	if s.sendTrailers && s.trailersAvailable {
		s.f.sendTrailers(s, s.trailers)
		return nil
	}
	return s.finalizeResponse()
}

func (s *procState) finalizeResponse() error {
	s.headers = nil
	s.continueIfNecessary()
	return nil
}

// handleBodyResponse: envoy-extproc.md §2.2 (body reply column).
func (s *procState) handleBodyResponse(r *extprocv3.BodyResponse) error {
	cr := r.GetResponse()
	shouldContinue := false
	switch s.callback {
	case cbBufferedBody:
		// Header mutations are honoured while headers are still held:
		// BUFFERED, BUFFERED_PARTIAL and the complete-body case (§2.2).
		if cr.GetHeaderMutation() != nil && s.headers != nil {
			if err := s.processHeaderMutation(cr); err != nil {
				return err
			}
		}
		if bm := cr.GetBodyMutation(); bm != nil {
			// envoy-extproc.md §2.4: a kept content-length must match the new body.
			if s.headers != nil {
				if cl, ok := s.headers.get("content-length"); ok {
					if n, err := strconv.ParseUint(cl, 10, 64); err == nil && n != uint64(len(bm.GetBody())) {
						return processingErr("mismatch between content length and the length of the mutated body")
					}
				}
			}
			fd := s.fm()
			fd.hasBuf = true
			fd.buf = applyBodyMutation(bm, fd.buf)
		}
		s.onFinishProcessorCall(cbIdle)
		shouldContinue = true
	case cbStreamedBody:
		if cr.GetBodyMutation().GetStreamedResponse() != nil {
			return spurious("spurious message: streamed_response is received while body_mode_ is not FULL_DUPLEX_STREAMED")
		}
		shouldContinue = s.handleStreamedBodyResponse(cr)
	case cbBufferedPartialBody:
		chunk := s.queue.pop()
		if chunk == nil {
			chunk = &queuedChunk{}
		}
		if cr.GetHeaderMutation() != nil && s.headers != nil {
			if err := s.processHeaderMutation(cr); err != nil {
				return err
			}
		}
		if bm := cr.GetBodyMutation(); bm != nil {
			chunk.data = applyBodyMutation(bm, chunk.data)
		}
		if len(chunk.data) > 0 {
			s.f.x.injectData(s.fm(), chunk.data, chunk.eos)
		}
		shouldContinue = true
		s.onFinishProcessorCall(cbIdle)
		s.partialBodyProcessed = true
		if !s.queue.empty() {
			all := s.queue.consolidate()
			s.queue.chunks = nil
			s.queue.bytes = 0
			if len(all.data) > 0 {
				s.f.x.injectData(s.fm(), all.data, all.eos)
			}
		}
	default:
		return spurious("spurious message")
	}
	s.headers = nil
	// §1.5: trailers go only after every outstanding body reply arrived.
	if s.sendTrailers && s.trailersAvailable && s.queue.empty() {
		s.f.sendTrailers(s, s.trailers)
		return nil
	}
	if shouldContinue || (s.trailersAvailable && s.queue.empty()) {
		s.continueIfNecessary()
	}
	return nil
}

// handleStreamedBodyResponse applies a reply to the oldest outstanding chunk
// and injects the result in order; header_mutation is ignored in STREAMED
// (envoy-extproc.md §2.2, §3 step 3).
func (s *procState) handleStreamedBodyResponse(cr *extprocv3.CommonResponse) bool {
	chunk := s.queue.pop()
	if chunk == nil {
		chunk = &queuedChunk{}
	}
	if bm := cr.GetBodyMutation(); bm != nil {
		chunk.data = applyBodyMutation(bm, chunk.data)
	}
	if len(chunk.data) > 0 {
		s.f.x.injectData(s.fm(), chunk.data, chunk.eos)
	}
	if s.queue.empty() {
		s.onFinishProcessorCall(cbIdle)
	} else {
		s.onFinishProcessorCall(s.callback)
	}
	return chunk.eos
}

func (s *procState) handleTrailersResponse(r *extprocv3.TrailersResponse) error {
	if s.callback != cbTrailers {
		return spurious("spurious message")
	}
	if hm := r.GetHeaderMutation(); hm != nil && s.trailers != nil {
		if err := applyHeaderMutations(hm, s.trailers, false, s.f.cfg.checker, false, s.f.rejectedMutation); err != nil {
			return err
		}
	}
	s.trailers = nil
	s.onFinishProcessorCall(cbIdle)
	s.continueIfNecessary()
	return nil
}

// applyBodyMutation is MutationUtils::applyBodyMutations: body replaces,
// clear_body empties, anything else (streamed_response) is a no-op here.
func applyBodyMutation(bm *extprocv3.BodyMutation, data []byte) []byte {
	switch m := bm.GetMutation().(type) {
	case *extprocv3.BodyMutation_Body:
		return append([]byte{}, m.Body...)
	case *extprocv3.BodyMutation_ClearBody:
		if m.ClearBody {
			return []byte{}
		}
	}
	return data
}
