package envoy

import (
	"fmt"
	"slices"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
)

// MetadataNamespace is the dynamic-metadata namespace the sidecar writes (cost, account, ...); Envoy drops
// metadata from ext_proc for any namespace not listed in metadata_options.receiving_namespaces.
const MetadataNamespace = "creditgate"

// MinMessageTimeout is the least per-message timeout creditgate accepts: the request_body reply waits for a Redis
// reserve script and the last response_body reply for a capture script, each possibly retried during a
// failover. Envoy's default of 200 ms would turn a slow Redis into 504s for paying users.
const MinMessageTimeout = time.Second

// RequiredRequestAttributes returns the Envoy attributes the sidecar reads: the mesh identity of the caller and
// Envoy's request id for log correlation.
func RequiredRequestAttributes() []string { return []string{"source.principal", "request.id"} }

// CheckCreditgatePolicy reports where an ext_proc filter config departs from what creditgate's protocol
// needs; each problem says why the setting matters.
func CheckCreditgatePolicy(ep *extprocfilterv3.ExternalProcessor) error {
	c := &checker{}
	bad := func(field, why string) {
		c.add(field, fmt.Errorf("%w: %s", ErrPolicy, why))
	}
	if ep.GetGrpcService() == nil {
		bad("grpc_service", "creditgate is a gRPC ext_proc server and needs bodies, which http_service cannot carry")
	}
	if ep.GetFailureModeAllow() {
		bad("failure_mode_allow", "must be false: with the sidecar down, requests would reach providers unmetered")
	}
	if ep.GetObservabilityMode() {
		bad("observability_mode", "must be false: the sidecar must be able to refuse a request before it goes upstream")
	}
	if !ep.GetAllowModeOverride() {
		bad("allow_mode_override", "must be true: the sidecar switches SSE responses to STREAMED with mode_override")
	}
	if ep.GetSendBodyWithoutWaitingForHeaderResponse() {
		bad("send_body_without_waiting_for_header_response", "must be false: Envoy ignores mode_override when it is set")
	}
	if n := len(ep.GetAllowedOverrideModes()); n > 0 {
		bad("allowed_override_modes", "must be empty: a list that misses one of the sidecar's overrides makes Envoy ignore it")
	}

	pm := ep.GetProcessingMode()
	sendsHeaders := func(m extprocfilterv3.ProcessingMode_HeaderSendMode) bool {
		return m == extprocfilterv3.ProcessingMode_SEND || m == extprocfilterv3.ProcessingMode_DEFAULT
	}
	skipsTrailers := func(m extprocfilterv3.ProcessingMode_HeaderSendMode) bool {
		return m == extprocfilterv3.ProcessingMode_SKIP || m == extprocfilterv3.ProcessingMode_DEFAULT
	}
	if pm == nil {
		bad("processing_mode", "must be set: the defaults send no bodies, so nothing could be priced")
	} else {
		if !sendsHeaders(pm.GetRequestHeaderMode()) {
			bad("processing_mode.request_header_mode", "must be SEND: the account and provider come from the request headers")
		}
		if !sendsHeaders(pm.GetResponseHeaderMode()) {
			bad("processing_mode.response_header_mode", "must be SEND: the sidecar releases holds on non-2xx and overrides the mode for SSE there")
		}
		if pm.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED {
			bad("processing_mode.request_body_mode", "must be BUFFERED: the worst case is reserved from the whole request body before it goes upstream")
		}
		if pm.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_BUFFERED {
			bad("processing_mode.response_body_mode", "must be BUFFERED (the sidecar overrides SSE to STREAMED): usage is read from the whole body")
		}
		if !skipsTrailers(pm.GetRequestTrailerMode()) || !skipsTrailers(pm.GetResponseTrailerMode()) {
			bad("processing_mode", "trailers must be SKIP: the sidecar neither needs nor answers trailer messages")
		}
	}

	mt := ep.GetMessageTimeout()
	switch {
	case mt == nil:
		bad("message_timeout", "must be set: Envoy's 200 ms default is shorter than a Redis round trip with retries")
	case mt.AsDuration() < MinMessageTimeout:
		bad("message_timeout", fmt.Sprintf("%s is below %s, too short for a Redis round trip with retries", mt.AsDuration(), MinMessageTimeout))
	}
	if mmt := ep.GetMaxMessageTimeout(); mmt != nil && mt != nil && mmt.AsDuration() < mt.AsDuration() {
		bad("max_message_timeout", "must not be below message_timeout, or the sidecar could only shorten a wait")
	}
	if code := ep.GetStatusOnError().GetCode(); code != 0 && (code < 500 || code > 599) {
		bad("status_on_error", "must be a 5xx: the request was fine, the metering failed")
	}
	if !slices.Contains(ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(), MetadataNamespace) {
		bad("metadata_options.receiving_namespaces.untyped", fmt.Sprintf("must contain %q, or Envoy drops the cost the sidecar reports", MetadataNamespace))
	}
	for _, a := range RequiredRequestAttributes() {
		if !slices.Contains(ep.GetRequestAttributes(), a) {
			bad("request_attributes", fmt.Sprintf("must contain %q", a))
		}
	}
	return c.result()
}

// CheckBootstrapPolicy requires at least one ext_proc filter in b and applies CheckCreditgatePolicy to each.
func CheckBootstrapPolicy(b *bootstrapv3.Bootstrap) error {
	eps, err := ExtProcFilters(b)
	if err != nil {
		return err
	}
	if len(eps) == 0 {
		return &ValidationError{Problems: []Problem{{Err: fmt.Errorf("%w: no ext_proc filter: traffic would be unmetered", ErrPolicy)}}}
	}
	c := &checker{}
	for i, ep := range eps {
		if err := CheckCreditgatePolicy(ep); err != nil {
			c.add(fmt.Sprintf("ext_proc filter %d", i), err)
		}
	}
	return c.result()
}
