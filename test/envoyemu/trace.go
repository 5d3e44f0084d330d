package envoyemu

import (
	"sync/atomic"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// EventKind names what happened in one request's life.
type EventKind string

// Event kinds. Send/Recv carry the proto; the others carry Dir, Bytes, EOS,
// Status and Detail as relevant.
const (
	EventSourceData       EventKind = "source_data"     // body bytes arrived from the client (request) or upstream (response)
	EventSourceTrailers   EventKind = "source_trailers" // trailers arrived from the client or upstream
	EventStreamOpen       EventKind = "stream_open"     // gRPC Process stream opened
	EventStreamOpenFailed EventKind = "stream_open_failed"
	EventSend             EventKind = "send"             // ProcessingRequest sent
	EventRecv             EventKind = "recv"             // ProcessingResponse received and handled
	EventRecvIgnored      EventKind = "recv_ignored"     // received after processing completed
	EventHalfClose        EventKind = "half_close"       // client half-closed the gRPC stream
	EventReset            EventKind = "reset"            // client cancelled the gRPC stream
	EventServerClose      EventKind = "server_close"     // server ended the stream with OK
	EventGRPCError        EventKind = "grpc_error"       // stream failed with a non-OK status
	EventTimeout          EventKind = "message_timeout"  // message_timeout expired
	EventSpurious         EventKind = "spurious"         // reply did not fit the callback state
	EventProcessingError  EventKind = "processing_error" // mutation or content-length error
	EventModeOverride     EventKind = "mode_override"
	EventDynamicMetadata  EventKind = "dynamic_metadata" // accepted namespace, Detail = namespace
	EventLocalReply       EventKind = "local_reply"      // Status and Detail (response code details)
	EventUpstreamRequest  EventKind = "upstream_request" // request headers released to the router
	EventUpstreamData     EventKind = "upstream_data"    // request body bytes released to the router
	EventUpstreamResponse EventKind = "upstream_response"
	EventDownstreamHeader EventKind = "downstream_headers"
	EventDownstreamData   EventKind = "downstream_data"
	EventDownstreamReset  EventKind = "downstream_reset"
	EventClientAbort      EventKind = "client_abort"
	EventDone             EventKind = "done"
)

// Direction is the HTTP direction a message belongs to.
type Direction int

// Directions: decoding (request) and encoding (response).
const (
	Request Direction = iota
	Response
)

func (d Direction) String() string {
	if d == Request {
		return "request"
	}
	return "response"
}

// Event is one entry of a request trace.
type Event struct {
	RequestID string
	Seq       int
	Kind      EventKind
	Dir       Direction
	Request   *extprocv3.ProcessingRequest
	Response  *extprocv3.ProcessingResponse
	Bytes     int
	EOS       bool
	Status    int
	Detail    string
}

// Trace is everything recorded for one HTTP request.
type Trace struct {
	RequestID string
	Events    []Event
	// ResponseCodeDetails is %RESPONSE_CODE_DETAILS% of a local reply.
	ResponseCodeDetails string
	// DynamicMetadata is what OnDynamicMetadata received.
	DynamicMetadata *structpb.Struct
}

// Sent returns the ProcessingRequests in send order.
func (t *Trace) Sent() []*extprocv3.ProcessingRequest {
	var out []*extprocv3.ProcessingRequest
	for _, e := range t.Events {
		if e.Kind == EventSend {
			out = append(out, e.Request)
		}
	}
	return out
}

// Received returns the ProcessingResponses the filter handled, in order.
func (t *Trace) Received() []*extprocv3.ProcessingResponse {
	var out []*extprocv3.ProcessingResponse
	for _, e := range t.Events {
		if e.Kind == EventRecv {
			out = append(out, e.Response)
		}
	}
	return out
}

// Has reports whether an event of kind k was recorded.
func (t *Trace) Has(k EventKind) bool {
	return t.Count(k) > 0
}

// Count returns how many events of kind k were recorded.
func (t *Trace) Count(k EventKind) int {
	n := 0
	for _, e := range t.Events {
		if e.Kind == k {
			n++
		}
	}
	return n
}

// Stats mirrors the ext_proc filter's stats (ext_proc.<prefix>.*) plus the
// emulator's own counters.
type Stats struct {
	StreamsStarted                 int64
	StreamsMsgsSent                int64
	StreamsMsgsReceived            int64
	SpuriousMsgsReceived           int64
	StreamsClosed                  int64
	StreamsFailed                  int64
	FailureModeAllowed             int64
	MessageTimeouts                int64
	RejectedHeaderMutations        int64
	OverrideMessageTimeoutReceived int64
	OverrideMessageTimeoutIgnored  int64
	LocalReplies                   int64
	DownstreamResets               int64
}

type statsCounters struct {
	streamsStarted, msgsSent, msgsReceived, spurious, streamsClosed, streamsFailed atomic.Int64
	failureModeAllowed, messageTimeouts, rejectedMutations                         atomic.Int64
	overrideReceived, overrideIgnored, localReplies, downstreamResets              atomic.Int64
}

// Stats returns a snapshot of the counters over all requests so far.
func (p *Proxy) Stats() Stats {
	s := &p.stats
	return Stats{
		StreamsStarted:                 s.streamsStarted.Load(),
		StreamsMsgsSent:                s.msgsSent.Load(),
		StreamsMsgsReceived:            s.msgsReceived.Load(),
		SpuriousMsgsReceived:           s.spurious.Load(),
		StreamsClosed:                  s.streamsClosed.Load(),
		StreamsFailed:                  s.streamsFailed.Load(),
		FailureModeAllowed:             s.failureModeAllowed.Load(),
		MessageTimeouts:                s.messageTimeouts.Load(),
		RejectedHeaderMutations:        s.rejectedMutations.Load(),
		OverrideMessageTimeoutReceived: s.overrideReceived.Load(),
		OverrideMessageTimeoutIgnored:  s.overrideIgnored.Load(),
		LocalReplies:                   s.localReplies.Load(),
		DownstreamResets:               s.downstreamResets.Load(),
	}
}
