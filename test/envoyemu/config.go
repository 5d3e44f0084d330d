package envoyemu

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Config describes one emulated Envoy listener: a single route to Upstream
// with the envoy.filters.http.ext_proc filter in front of the router.
type Config struct {
	// Upstream is the cluster every request is routed to. Its path, if any,
	// is prefixed to the request path.
	Upstream *url.URL
	// Processor is the gRPC channel to the ExternalProcessor server. If nil,
	// ProcessorTarget is dialled without TLS and closed by Proxy.Close.
	Processor       grpc.ClientConnInterface
	ProcessorTarget string
	// Filter is the real filter proto. grpc_service only contributes
	// initial_metadata; the channel comes from Processor.
	Filter *extprocfilterv3.ExternalProcessor
	// PerRoute returns the ExtProcPerRoute for a request (disabled,
	// overrides.processing_mode, failure_mode_allow, metadata_options,
	// grpc_initial_metadata), or nil.
	PerRoute func(r *http.Request) *extprocfilterv3.ExtProcPerRoute
	// Attributes supplies attribute values Envoy would compute from the
	// connection or other filters, e.g. "source.principal". Only names listed
	// in request_attributes/response_attributes are sent.
	Attributes func(r *http.Request) map[string]any
	// DynamicMetadata is the request's dynamic metadata written by earlier
	// filters (e.g. envoy.filters.http.jwt_authn); forwarding_namespaces
	// selects from it.
	DynamicMetadata func(r *http.Request) map[string]*structpb.Struct
	// UpstreamHTTP1 selects HTTP/1 codec framing for response bodies: every
	// read is one data callback with end_stream=false and the end is an empty
	// end_stream=true callback (envoy-extproc.md §1.6). Otherwise HTTP/2
	// framing: end_stream rides on the last data when the reader reports it.
	// The request side follows the downstream protocol (r.ProtoMajor).
	UpstreamHTTP1 bool
	// BufferLimit is per_connection_buffer_limit_bytes (default 1 MiB).
	BufferLimit int
	// Transport reaches Upstream. The default disables transparent
	// decompression so bodies pass byte for byte.
	Transport http.RoundTripper
	// OnDynamicMetadata receives, when a request ends, the dynamic metadata
	// that would reach the access log: namespace -> struct, including what
	// ext_proc replies wrote into receiving_namespaces.untyped.
	OnDynamicMetadata func(*structpb.Struct)
	// OnEvent is called synchronously from the request's event loop for
	// every recorded event. It must not block.
	OnEvent func(Event)
	// OnTrace is called with the complete trace when a request ends.
	OnTrace func(*Trace)
}

// Proxy is an http.Handler that behaves like Envoy's HTTP connection manager
// with the ext_proc filter and a router.
type Proxy struct {
	cfg       Config
	fc        *filterConfig
	client    extprocv3.ExternalProcessorClient
	ownedConn *grpc.ClientConn
	transport http.RoundTripper
	stats     statsCounters

	mu     sync.Mutex
	traces []*Trace
}

// New validates cfg the way the filter factory would and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Upstream == nil {
		return nil, errors.New("envoyemu: Config.Upstream is required")
	}
	fc, err := newFilterConfig(cfg.Filter)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, fc: fc, transport: cfg.Transport}
	conn := cfg.Processor
	if conn == nil {
		if cfg.ProcessorTarget == "" {
			return nil, errors.New("envoyemu: Config.Processor or Config.ProcessorTarget is required")
		}
		cc, err := grpc.NewClient(cfg.ProcessorTarget, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("envoyemu: dial %s: %w", cfg.ProcessorTarget, err)
		}
		p.ownedConn = cc
		conn = cc
	}
	p.client = extprocv3.NewExternalProcessorClient(conn)
	if p.transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DisableCompression = true
		t.Proxy = nil
		p.transport = t
	}
	return p, nil
}

// Close releases the gRPC connection New dialled, if any.
func (p *Proxy) Close() error {
	if p.ownedConn != nil {
		return p.ownedConn.Close()
	}
	return nil
}

// Traces returns the traces of finished requests, oldest first.
func (p *Proxy) Traces() []*Trace {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*Trace(nil), p.traces...)
}

func (p *Proxy) addTrace(t *Trace) {
	p.mu.Lock()
	p.traces = append(p.traces, t)
	p.mu.Unlock()
}

const (
	defaultMessageTimeout = 200 * time.Millisecond // envoy-extproc.md §1.4
	defaultBufferLimit    = 1 << 20                // §1.6 per_connection_buffer_limit_bytes
	filterName            = "envoy.filters.http.ext_proc"
)

// filterConfig is the immutable, validated form of the filter proto
// (Envoy's FilterConfig).
type filterConfig struct {
	failureModeAllow         bool
	mode                     *extprocfilterv3.ProcessingMode
	messageTimeout           time.Duration
	maxMessageTimeout        time.Duration
	statusOnError            int
	allowModeOverride        bool
	allowedOverrideModes     []*extprocfilterv3.ProcessingMode
	sendBodyWithoutWaiting   bool
	disableImmediateResponse bool
	checker                  *mutationChecker
	forward                  *forwardRules
	requestAttributes        []string
	responseAttributes       []string
	forwardingUntyped        []string
	forwardingTyped          []string
	receivingUntyped         []string
	initialMetadata          metadata.MD
}

func newFilterConfig(pb *extprocfilterv3.ExternalProcessor) (*filterConfig, error) {
	if pb == nil {
		pb = &extprocfilterv3.ExternalProcessor{}
	}
	if err := pb.Validate(); err != nil {
		return nil, fmt.Errorf("envoyemu: invalid ExternalProcessor: %w", err)
	}
	switch {
	case pb.GetObservabilityMode():
		return nil, errUnsupported("observability_mode")
	case pb.GetHttpService() != nil:
		return nil, errUnsupported("http_service")
	case pb.GetProcessingRequestModifier() != nil:
		return nil, errUnsupported("processing_request_modifier")
	case pb.GetOnProcessingResponse() != nil:
		return nil, errUnsupported("on_processing_response")
	}
	mode := proto.Clone(pb.GetProcessingMode()).(*extprocfilterv3.ProcessingMode)
	if mode == nil {
		mode = &extprocfilterv3.ProcessingMode{}
	}
	if err := checkBodyModes(mode); err != nil {
		return nil, err
	}
	if pb.GetDisableClearRouteCache() && pb.GetRouteCacheAction() != extprocfilterv3.ExternalProcessor_DEFAULT {
		return nil, errors.New("envoyemu: disable_clear_route_cache and route_cache_action can not be set to none-default at the same time")
	}
	fc := &filterConfig{
		failureModeAllow:         pb.GetFailureModeAllow(),
		mode:                     mode,
		messageTimeout:           defaultMessageTimeout,
		statusOnError:            500,
		allowModeOverride:        pb.GetAllowModeOverride(),
		allowedOverrideModes:     pb.GetAllowedOverrideModes(),
		sendBodyWithoutWaiting:   pb.GetSendBodyWithoutWaitingForHeaderResponse(),
		disableImmediateResponse: pb.GetDisableImmediateResponse(),
		requestAttributes:        pb.GetRequestAttributes(),
		responseAttributes:       pb.GetResponseAttributes(),
		forwardingUntyped:        pb.GetMetadataOptions().GetForwardingNamespaces().GetUntyped(),
		forwardingTyped:          pb.GetMetadataOptions().GetForwardingNamespaces().GetTyped(),
		receivingUntyped:         pb.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(),
	}
	if pb.GetMessageTimeout() != nil {
		fc.messageTimeout = pb.GetMessageTimeout().AsDuration()
	}
	if pb.GetMaxMessageTimeout() != nil {
		fc.maxMessageTimeout = pb.GetMaxMessageTimeout().AsDuration()
	}
	if c := int(pb.GetStatusOnError().GetCode()); c != 0 {
		fc.statusOnError = c
	}
	var err error
	if fc.checker, err = newMutationChecker(pb.GetMutationRules()); err != nil {
		return nil, err
	}
	if fc.forward, err = newForwardRules(pb.GetForwardRules()); err != nil {
		return nil, err
	}
	fc.initialMetadata = metadata.MD{}
	for _, hv := range pb.GetGrpcService().GetInitialMetadata() {
		fc.initialMetadata.Append(hv.GetKey(), initialMetadataValue(hv.GetValue(), hv.GetRawValue()))
	}
	return fc, nil
}

func initialMetadataValue(value string, raw []byte) string {
	if len(raw) > 0 {
		return string(raw)
	}
	return value
}

func checkBodyModes(m *extprocfilterv3.ProcessingMode) error {
	for _, bm := range []extprocfilterv3.ProcessingMode_BodySendMode{m.GetRequestBodyMode(), m.GetResponseBodyMode()} {
		switch bm {
		case extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
			return errUnsupported("FULL_DUPLEX_STREAMED body mode")
		case extprocfilterv3.ProcessingMode_GRPC:
			// envoy-extproc.md §1.5: defined in the API, not implemented by Envoy.
			return errUnsupported("GRPC body mode")
		}
	}
	return nil
}
