package envoyemu

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// ServeHTTP runs one HTTP stream through the emulated filter chain
// (ext_proc, then the router). Every state change happens on this goroutine,
// driven by events from the body readers, the upstream round trip, the gRPC
// stream and the message timers, so the model stays single-threaded like an
// Envoy worker.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x := &exchange{
		p:      p,
		w:      w,
		r:      r,
		rc:     http.NewResponseController(w),
		events: make(chan event, 256),
		done:   make(chan struct{}),
		trace:  &Trace{},
		dec:    fmDir{dir: Request},
		enc:    fmDir{dir: Response},
	}
	x.upCtx, x.upCancel = context.WithCancel(context.Background())
	x.run()
}

func (p *Proxy) bufferLimit() int {
	if p.cfg.BufferLimit > 0 {
		return p.cfg.BufferLimit
	}
	return defaultBufferLimit
}

type evKind int

const (
	evSrcData evKind = iota
	evSrcTrailers
	evClientBodyError
	evUpstreamResponse
	evUpstreamBodyError
	evGRPCReply
	evGRPCEnd
	evTimer
)

type event struct {
	kind     evKind
	dir      Direction
	data     []byte
	eos      bool
	trailers *headerMap
	resp     *http.Response
	err      error
	stream   *procStream
	reply    *extprocv3.ProcessingResponse
	gen      uint64
}

// fmDir is the filter manager's view of one direction: held headers,
// buffered data and trailers waiting for the filter to continue.
type fmDir struct {
	dir            Direction
	headers        *headerMap
	headersPassed  bool
	buf            []byte
	hasBuf         bool
	buffering      bool // StopIterationAndBuffer (not watermark): overflow is an error
	remoteComplete bool
	trailers       *headerMap
	trailersPassed bool
	endPassed      bool
	stopped        bool
}

func (d *fmDir) appendBuf(b []byte) {
	d.hasBuf = true
	d.buf = append(d.buf, b...)
}

func (d *fmDir) takeBuf() []byte {
	b := d.buf
	d.buf, d.hasBuf = nil, false
	return b
}

type localReply struct {
	code    int
	body    []byte
	mutate  func(*headerMap)
	details string
}

type exchange struct {
	p  *Proxy
	w  http.ResponseWriter
	r  *http.Request
	rc *http.ResponseController
	f  *filter

	events chan event
	done   chan struct{}

	trace   *Trace
	seq     int
	dynMeta map[string]*structpb.Struct

	dec fmDir
	enc fmDir

	// router
	upCtx     context.Context
	upCancel  context.CancelFunc
	upGen     uint64
	upBody    *bodyPipe
	upReq     *http.Request
	upStart   time.Time
	upRespBdy io.Closer

	reqTrailerKeys []string
	decDead        bool // the request path ended (local reply)
	pendingLocal   *localReply
	localReplied   bool
	downHeadersOut bool
	finished       bool
	resetDown      bool
	clientGone     bool
}

func (x *exchange) post(ev event) {
	select {
	case x.events <- ev:
	case <-x.done:
	}
}

func (x *exchange) record(e Event) {
	x.seq++
	e.Seq = x.seq
	e.RequestID = x.trace.RequestID
	x.trace.Events = append(x.trace.Events, e)
	if x.p.cfg.OnEvent != nil {
		x.p.cfg.OnEvent(e)
	}
}

func (x *exchange) fmDir(d Direction) *fmDir {
	if d == Request {
		return &x.dec
	}
	return &x.enc
}

func (x *exchange) run() {
	x.begin()
	for !x.finished {
		if x.pendingLocal != nil {
			lr := x.pendingLocal
			x.pendingLocal = nil
			x.deliverLocalReply(lr)
			continue
		}
		select {
		case ev := <-x.events:
			x.handle(ev)
		case <-x.r.Context().Done():
			x.clientAbort("client disconnected")
		}
	}
	x.cleanup()
	if x.resetDown {
		// envoy-extproc.md §2.5: after response headers went downstream a
		// local reply turns into a stream reset.
		panic(http.ErrAbortHandler)
	}
}

// begin plays the HTTP connection manager: it builds the request header map
// as the codec and HCM would (§1.3) and starts decoding.
func (x *exchange) begin() {
	_ = x.rc.EnableFullDuplex()
	h := x.requestHeaderMap()
	x.trace.RequestID = h.value("x-request-id")
	x.dynMeta = map[string]*structpb.Struct{}
	if x.p.cfg.DynamicMetadata != nil {
		for ns, v := range x.p.cfg.DynamicMetadata(x.r) {
			x.dynMeta[ns] = proto.Clone(v).(*structpb.Struct)
		}
	}
	x.f = newFilter(x)
	// Trailer keys announced by the client are read now: the body reader
	// goroutine fills in their values later.
	for k := range x.r.Trailer {
		x.reqTrailerKeys = append(x.reqTrailerKeys, k)
	}
	hasBody := x.r.Body != nil && x.r.Body != http.NoBody && x.r.ContentLength != 0
	if hasBody {
		// An HTTP/1 downstream codec ends the body with an empty eos callback.
		go x.readSource(Request, x.r.Body, x.r.ProtoMajor == 1, func() http.Header { return x.r.Trailer }, 0)
	}
	x.dec.headers = h
	if !hasBody {
		x.dec.remoteComplete = true
	}
	st := x.f.decodeHeaders(h, !hasBody)
	x.afterHeaders(&x.dec, st, !hasBody)
}

var hopByHop = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true,
	"transfer-encoding": true, "upgrade": true, "te": true, "trailer": true,
}

func (x *exchange) requestHeaderMap() *headerMap {
	r := x.r
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	path := r.RequestURI
	if path == "" || strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		path = r.URL.RequestURI()
	}
	h := &headerMap{}
	// envoy-extproc.md §1.3: an HTTP/1 Host becomes :authority, no host entry.
	h.add(":authority", r.Host)
	h.add(":path", path)
	h.add(":method", r.Method)
	h.add(":scheme", scheme)
	for _, k := range sortedKeys(r.Header) {
		lk := strings.ToLower(k)
		if hopByHop[lk] || lk == "host" {
			continue
		}
		for _, v := range r.Header[k] {
			h.add(lk, v)
		}
	}
	if r.ContentLength > 0 && !h.has("content-length") {
		h.add("content-length", strconv.FormatInt(r.ContentLength, 10))
	}
	// §1.3: headers the connection manager adds before filters run.
	if !h.has("x-forwarded-proto") {
		h.add("x-forwarded-proto", scheme)
	}
	if !h.has("x-request-id") {
		h.add("x-request-id", newUUID())
	}
	return h
}

func sortedKeys(h http.Header) []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// readSource turns a body into data callbacks. Each Read is one callback
// (one socket read for HTTP/1). With http1 the end is always an empty
// end_stream callback; otherwise end_stream rides on the last data if the
// reader returned it with io.EOF (envoy-extproc.md §1.6). Trailers replace
// the final empty callback.
func (x *exchange) readSource(dir Direction, body io.Reader, http1 bool, trailers func() http.Header, gen uint64) {
	buf := make([]byte, 64*1024)
	for {
		n, err := body.Read(buf)
		if errors.Is(err, io.EOF) {
			t := trailers()
			if n > 0 {
				x.post(event{kind: evSrcData, dir: dir, data: append([]byte(nil), buf[:n]...), eos: !http1 && len(t) == 0, gen: gen})
			}
			switch {
			case len(t) > 0:
				x.post(event{kind: evSrcTrailers, dir: dir, trailers: trailerMap(t), gen: gen})
			case http1 || n == 0:
				x.post(event{kind: evSrcData, dir: dir, eos: true, gen: gen})
			}
			return
		}
		if n > 0 {
			x.post(event{kind: evSrcData, dir: dir, data: append([]byte(nil), buf[:n]...), gen: gen})
		}
		if err != nil {
			kind := evClientBodyError
			if dir == Response {
				kind = evUpstreamBodyError
			}
			x.post(event{kind: kind, dir: dir, err: err, gen: gen})
			return
		}
	}
}

func trailerMap(t http.Header) *headerMap {
	h := &headerMap{}
	for _, k := range sortedKeys(t) {
		for _, v := range t[k] {
			h.add(strings.ToLower(k), v)
		}
	}
	return h
}

func (x *exchange) handle(ev event) {
	switch ev.kind {
	case evSrcData:
		if ev.dir == Request {
			if x.decDead {
				return
			}
			x.record(Event{Kind: EventSourceData, Dir: Request, Bytes: len(ev.data), EOS: ev.eos})
			x.onData(&x.dec, ev.data, ev.eos)
			return
		}
		if ev.gen != x.upGen {
			return
		}
		x.record(Event{Kind: EventSourceData, Dir: Response, Bytes: len(ev.data), EOS: ev.eos})
		x.onData(&x.enc, ev.data, ev.eos)
	case evSrcTrailers:
		if (ev.dir == Request && x.decDead) || (ev.dir == Response && ev.gen != x.upGen) {
			return
		}
		x.record(Event{Kind: EventSourceTrailers, Dir: ev.dir})
		x.onTrailers(x.fmDir(ev.dir), ev.trailers)
	case evClientBodyError:
		x.clientAbort("request body: " + ev.err.Error())
	case evUpstreamResponse:
		x.onUpstreamResponse(ev)
	case evUpstreamBodyError:
		if ev.gen != x.upGen {
			return
		}
		// The router resets the downstream stream when the upstream resets
		// after its headers were received.
		x.resetDownstream("upstream_reset_after_response_started{" + ev.err.Error() + "}")
	case evGRPCReply:
		if ev.stream != x.f.stream {
			x.record(Event{Kind: EventRecvIgnored, Response: ev.reply})
			return
		}
		x.f.onReceiveMessage(ev.reply)
	case evGRPCEnd:
		if ev.stream != x.f.stream {
			return
		}
		if errors.Is(ev.err, io.EOF) {
			x.f.onGrpcClose()
			return
		}
		st := status.Convert(ev.err)
		x.f.onGrpcError(st.Code(), st.Message())
	case evTimer:
		s := x.f.state(ev.dir)
		if ev.gen == s.timerGen && s.timerEnabled {
			s.timerEnabled = false
			x.f.onMessageTimeout()
		}
	}
}

// dirDead reports whether events for d no longer reach the filter chain.
func (x *exchange) dirDead(d *fmDir) bool {
	if x.finished || x.pendingLocal != nil {
		return true
	}
	return d.dir == Request && x.decDead
}

func (x *exchange) afterHeaders(d *fmDir, st filterStatus, eos bool) {
	if x.dirDead(d) {
		return
	}
	if st == fsContinue {
		x.passHeaders(d, eos)
		return
	}
	d.stopped = true
}

// onData is the filter manager's decodeData/encodeData around the filter.
func (x *exchange) onData(d *fmDir, data []byte, eos bool) {
	if eos {
		d.remoteComplete = true
	}
	st := x.f.onData(x.f.state(d.dir), &data, eos)
	if x.dirDead(d) {
		return
	}
	switch st {
	case fsContinue:
		if d.stopped {
			// Continue after a stop resumes iteration: held headers go first.
			d.appendBuf(data)
			x.continueProcessing(d)
			return
		}
		x.passData(d, data, eos)
	case fsStopAndBuffer, fsStopAndWatermark:
		d.stopped = true
		d.buffering = st == fsStopAndBuffer
		d.appendBuf(data)
		if d.buffering {
			x.checkBufferLimit(d)
		}
	default:
		d.stopped = true
	}
}

func (x *exchange) onTrailers(d *fmDir, t *headerMap) {
	d.remoteComplete = true
	d.trailers = t
	st := x.f.onTrailers(x.f.state(d.dir), t)
	if x.dirDead(d) {
		return
	}
	if st != fsContinue {
		d.stopped = true
		return
	}
	if d.stopped {
		x.continueProcessing(d)
		return
	}
	x.passTrailers(d)
}

// checkBufferLimit: BUFFERED over the buffer limit fails with 413 on requests
// and 500 on responses, from the filter manager (envoy-extproc.md §1.6).
func (x *exchange) checkBufferLimit(d *fmDir) bool {
	if len(d.buf) <= x.p.bufferLimit() {
		return false
	}
	if d.dir == Request {
		x.sendLocalReply(413, []byte("Payload Too Large"), nil, "request_payload_too_large")
	} else {
		x.sendLocalReply(500, []byte("Internal Server Error"), nil, "response_payload_too_large")
	}
	return true
}

// continueProcessing is commonContinue: release held headers, then buffered
// data (or the zero-byte end of stream), then held trailers.
func (x *exchange) continueProcessing(d *fmDir) {
	if x.dirDead(d) {
		return
	}
	d.stopped = false
	if !d.headersPassed {
		x.passHeaders(d, d.remoteComplete && !d.hasBuf && d.trailers == nil)
	}
	if x.dirDead(d) {
		return
	}
	if d.hasBuf {
		x.passData(d, d.takeBuf(), d.remoteComplete && d.trailers == nil)
	} else if d.remoteComplete && d.trailers == nil && !d.endPassed {
		x.passData(d, nil, true)
	}
	if d.trailers != nil && !d.trailersPassed && !x.dirDead(d) {
		x.passTrailers(d)
	}
}

// injectData is inject{De,En}codedDataToFilterChain.
func (x *exchange) injectData(d *fmDir, data []byte, eos bool) {
	if x.dirDead(d) {
		return
	}
	if !d.headersPassed {
		d.appendBuf(data)
		return
	}
	x.passData(d, data, eos)
}

func (x *exchange) passHeaders(d *fmDir, eos bool) {
	d.headersPassed = true
	if eos {
		d.endPassed = true
	}
	if d.dir == Request {
		x.routerHeaders(d.headers, eos)
	} else {
		x.downstreamHeaders(d.headers, eos)
	}
}

func (x *exchange) passData(d *fmDir, data []byte, eos bool) {
	if !d.headersPassed {
		d.appendBuf(data)
		return
	}
	if d.endPassed || (len(data) == 0 && !eos) {
		return
	}
	if eos {
		d.endPassed = true
	}
	if d.dir == Request {
		x.routerData(data, eos)
	} else {
		x.downstreamData(data, eos)
	}
}

func (x *exchange) passTrailers(d *fmDir) {
	if d.endPassed {
		return
	}
	d.trailersPassed = true
	d.endPassed = true
	if d.dir == Request {
		x.routerTrailers(d.trailers)
	} else {
		x.downstreamTrailers(d.trailers)
	}
}

// routerHeaders starts the upstream request with the (possibly mutated)
// request headers.
func (x *exchange) routerHeaders(h *headerMap, eos bool) {
	x.record(Event{Kind: EventUpstreamRequest, Detail: h.value(":method") + " " + h.value(":path")})
	u := *x.p.cfg.Upstream
	path := h.value(":path")
	rawQuery := ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, rawQuery = path[:i], path[i+1:]
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	u.RawPath = ""
	u.RawQuery = rawQuery
	var body io.ReadCloser = http.NoBody
	if !eos {
		x.upBody = newBodyPipe()
		body = x.upBody
	}
	req, err := http.NewRequestWithContext(x.upCtx, h.value(":method"), u.String(), body)
	if err != nil {
		x.sendLocalReply(400, []byte("Bad Request"), nil, "router_invalid_request{"+err.Error()+"}")
		return
	}
	req.Host = h.value(":authority")
	req.ContentLength = 0
	if !eos {
		req.ContentLength = -1
	}
	for _, e := range h.entries {
		switch {
		case strings.HasPrefix(e.key, ":"), hopByHop[e.key], e.key == "host":
		case e.key == "content-length":
			if n, err := strconv.ParseInt(e.value, 10, 64); err == nil && !eos {
				req.ContentLength = n
			}
		default:
			req.Header.Add(e.key, e.value)
		}
	}
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header["User-Agent"] = []string{""} // no Go default User-Agent
	}
	if len(x.reqTrailerKeys) > 0 && x.upBody != nil {
		// Go sends only trailers announced when the request starts; their
		// values are filled in by the body pipe when it reaches EOF.
		req.Trailer = http.Header{}
		for _, k := range x.reqTrailerKeys {
			req.Trailer[k] = nil
		}
		x.upBody.trailer = req.Trailer
	}
	x.upReq = req
	x.upStart = time.Now()
	x.upGen++
	gen := x.upGen
	go func() {
		resp, err := x.p.transport.RoundTrip(req)
		x.post(event{kind: evUpstreamResponse, resp: resp, err: err, gen: gen})
	}()
}

func (x *exchange) routerData(data []byte, eos bool) {
	if x.upBody == nil {
		return
	}
	x.record(Event{Kind: EventUpstreamData, Dir: Request, Bytes: len(data), EOS: eos})
	x.upBody.write(data)
	if eos {
		x.upBody.closeWrite()
	}
}

func (x *exchange) routerTrailers(t *headerMap) {
	if x.upBody == nil {
		return
	}
	x.record(Event{Kind: EventUpstreamData, Dir: Request, EOS: true, Detail: "trailers"})
	x.upBody.closeWithTrailers(t)
}

func (x *exchange) onUpstreamResponse(ev event) {
	if ev.gen != x.upGen || x.finished {
		if ev.resp != nil {
			_ = ev.resp.Body.Close()
		}
		return
	}
	if ev.err != nil {
		x.sendLocalReply(503, []byte("upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
			nil, "upstream_reset_before_response_started{connection_failure}")
		return
	}
	resp := ev.resp
	x.record(Event{Kind: EventUpstreamResponse, Status: resp.StatusCode})
	h := &headerMap{}
	h.add(":status", strconv.Itoa(resp.StatusCode))
	for _, k := range sortedKeys(resp.Header) {
		lk := strings.ToLower(k)
		if hopByHop[lk] {
			continue
		}
		for _, v := range resp.Header[k] {
			h.add(lk, v)
		}
	}
	// envoy-extproc.md §1.3: the router adds x-envoy-upstream-service-time.
	h.add("x-envoy-upstream-service-time", strconv.FormatInt(time.Since(x.upStart).Milliseconds(), 10))
	eos := !responseHasBody(resp, x.upReq.Method)
	if eos {
		_ = resp.Body.Close()
	} else {
		x.upRespBdy = resp.Body
		go x.readSource(Response, resp.Body, x.p.cfg.UpstreamHTTP1, func() http.Header { return resp.Trailer }, ev.gen)
	}
	x.encodeHeaders(h, eos)
}

func responseHasBody(resp *http.Response, method string) bool {
	switch {
	case method == http.MethodHead, resp.StatusCode == 204, resp.StatusCode == 304, resp.StatusCode < 200:
		return false
	}
	return resp.ContentLength != 0
}

func (x *exchange) encodeHeaders(h *headerMap, eos bool) {
	d := &x.enc
	d.headers = h
	if eos {
		d.remoteComplete = true
	}
	st := x.f.encodeHeaders(h, eos)
	x.afterHeaders(d, st, eos)
}

func (x *exchange) downstreamHeaders(h *headerMap, eos bool) {
	code, err := strconv.Atoi(h.value(":status"))
	if err != nil || code < 100 {
		code = 502
	}
	hdr := x.w.Header()
	for _, e := range h.entries {
		if strings.HasPrefix(e.key, ":") {
			continue
		}
		ck := http.CanonicalHeaderKey(e.key)
		hdr[ck] = append(hdr[ck], e.value)
	}
	x.record(Event{Kind: EventDownstreamHeader, Status: code, EOS: eos})
	x.w.WriteHeader(code)
	x.downHeadersOut = true
	if err := x.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		x.clientAbort("flush: " + err.Error())
		return
	}
	if eos {
		x.finished = true
	}
}

// downstreamData writes and flushes every processed chunk at once, so SSE
// clients see tokens as their replies arrive.
func (x *exchange) downstreamData(data []byte, eos bool) {
	x.record(Event{Kind: EventDownstreamData, Bytes: len(data), EOS: eos})
	if len(data) > 0 {
		if _, err := x.w.Write(data); err != nil {
			x.clientAbort("write: " + err.Error())
			return
		}
		if err := x.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			x.clientAbort("flush: " + err.Error())
			return
		}
	}
	if eos {
		x.finished = true
	}
}

func (x *exchange) downstreamTrailers(t *headerMap) {
	for _, e := range t.entries {
		x.w.Header().Add(http.TrailerPrefix+e.key, e.value)
	}
	x.record(Event{Kind: EventDownstreamData, EOS: true, Detail: "trailers"})
	x.finished = true
}

// sendLocalReply queues a local reply; it is delivered by the event loop once
// the current callback returns. The first one wins.
func (x *exchange) sendLocalReply(code int, body []byte, mutate func(*headerMap), details string) {
	if x.pendingLocal != nil || x.localReplied || x.finished {
		return
	}
	x.pendingLocal = &localReply{code: code, body: body, mutate: mutate, details: details}
	x.decDead = true
}

// deliverLocalReply mirrors FilterManager::sendLocalReply: through the
// encoder filter chain if the response has not started, directly if the
// filters have it but the codec has not, and as a reset otherwise.
func (x *exchange) deliverLocalReply(lr *localReply) {
	x.localReplied = true
	x.p.stats.localReplies.Add(1)
	x.trace.ResponseCodeDetails = lr.details
	x.record(Event{Kind: EventLocalReply, Status: lr.code, Detail: lr.details})
	x.detachUpstream()
	h := &headerMap{}
	h.add(":status", strconv.Itoa(lr.code))
	if lr.mutate != nil {
		lr.mutate(h)
	}
	if len(lr.body) > 0 {
		h.set("content-length", strconv.Itoa(len(lr.body)))
		if !h.has("content-type") {
			h.add("content-type", "text/plain")
		}
	}
	eos := len(lr.body) == 0
	switch {
	case x.enc.headers == nil:
		x.enc = fmDir{dir: Response}
		x.encodeHeaders(h, eos)
		if !eos && !x.finished && x.pendingLocal == nil {
			x.onData(&x.enc, append([]byte(nil), lr.body...), true)
		}
	case !x.downHeadersOut:
		x.downstreamHeaders(h, eos)
		if !eos && !x.finished {
			x.downstreamData(lr.body, true)
		}
	default:
		x.resetDownstream(lr.details)
	}
}

func (x *exchange) detachUpstream() {
	x.upGen++
	x.upCancel()
	if x.upBody != nil {
		x.upBody.abort(context.Canceled)
	}
	if x.upRespBdy != nil {
		_ = x.upRespBdy.Close()
	}
}

func (x *exchange) resetDownstream(details string) {
	x.p.stats.downstreamResets.Add(1)
	x.record(Event{Kind: EventDownstreamReset, Detail: details})
	x.f.onDestroy()
	x.resetDown = true
	x.finished = true
}

// clientAbort: a downstream disconnect destroys the filter, which closes the
// gRPC stream (half-close, then reset).
func (x *exchange) clientAbort(why string) {
	if x.clientGone {
		return
	}
	x.clientGone = true
	x.record(Event{Kind: EventClientAbort, Detail: why})
	x.f.onDestroy()
	x.finished = true
}

func (x *exchange) cleanup() {
	x.f.onDestroy()
	x.detachUpstream()
	close(x.done)
	for _, s := range x.f.streams {
		// Safety net for a server that stopped reading: a sender blocked by
		// flow control would otherwise never reach its half-close and reset.
		// Far longer than any normal close so it never masks a missing reset.
		time.AfterFunc(time.Minute, s.cancel)
	}
	dm := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for ns, v := range x.dynMeta {
		dm.Fields[ns] = structpb.NewStructValue(proto.Clone(v).(*structpb.Struct))
	}
	x.trace.DynamicMetadata = dm
	// The trace is complete before it is published and before anyone hears
	// of EventDone.
	x.seq++
	done := Event{Kind: EventDone, Seq: x.seq, RequestID: x.trace.RequestID}
	x.trace.Events = append(x.trace.Events, done)
	x.p.addTrace(x.trace)
	if x.p.cfg.OnEvent != nil {
		x.p.cfg.OnEvent(done)
	}
	if x.p.cfg.OnDynamicMetadata != nil {
		x.p.cfg.OnDynamicMetadata(proto.Clone(dm).(*structpb.Struct))
	}
	if x.p.cfg.OnTrace != nil {
		x.p.cfg.OnTrace(x.trace)
	}
}

// mergeDynamicMetadata is StreamInfo::setDynamicMetadata: fields merge into
// the namespace's existing struct.
func (x *exchange) mergeDynamicMetadata(ns string, v *structpb.Struct) {
	cur, ok := x.dynMeta[ns]
	if !ok {
		cur = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		x.dynMeta[ns] = cur
	}
	if cur.Fields == nil {
		cur.Fields = map[string]*structpb.Value{}
	}
	for k, fv := range v.GetFields() {
		cur.Fields[k] = proto.Clone(fv).(*structpb.Value)
	}
}

func httpStatus(code int) *typev3.HttpStatus {
	return &typev3.HttpStatus{Code: typev3.StatusCode(code)}
}

// bodyPipe is the upstream request body: writes never block (the emulator
// does not model watermarks), reads block until data or the end.
type bodyPipe struct {
	mu     sync.Mutex
	cond   *sync.Cond
	chunks [][]byte
	closed bool
	err    error
	// trailer is the request's Trailer map. It is written only by Read, on
	// the transport's goroutine, just before EOF: that is when Go allows
	// trailer values to change without racing the transport.
	trailer  http.Header
	trailers *headerMap
}

func newBodyPipe() *bodyPipe {
	b := &bodyPipe{}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *bodyPipe) write(p []byte) {
	if len(p) == 0 {
		return
	}
	b.mu.Lock()
	if !b.closed && b.err == nil {
		b.chunks = append(b.chunks, append([]byte(nil), p...))
	}
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *bodyPipe) closeWrite() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *bodyPipe) closeWithTrailers(t *headerMap) {
	b.mu.Lock()
	b.closed = true
	b.trailers = t
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *bodyPipe) abort(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *bodyPipe) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.chunks) == 0 && !b.closed && b.err == nil {
		b.cond.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	if len(b.chunks) == 0 {
		if b.trailers != nil && b.trailer != nil {
			for _, e := range b.trailers.entries {
				b.trailer.Add(e.key, e.value)
			}
			b.trailers = nil
		}
		return 0, io.EOF
	}
	n := copy(p, b.chunks[0])
	if n == len(b.chunks[0]) {
		b.chunks = b.chunks[1:]
	} else {
		b.chunks[0] = b.chunks[0][n:]
	}
	return n, nil
}

func (b *bodyPipe) Close() error {
	b.abort(io.ErrClosedPipe)
	return nil
}
