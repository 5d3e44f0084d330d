package envoy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The rules below mirror Envoy Gateway's CRD (api/v1alpha1/ext_proc_types.go, envoyproxy/gateway main of
// 2026-08) and its translation (internal/gatewayapi/envoyextensionpolicy.go, internal/xds/translator/extproc.go).
var (
	// egAttribute is the CRD's pattern for processingMode.{request,response}.attributes items.
	egAttribute = regexp.MustCompile(`^(connection\.|source\.|destination\.|request\.|response\.|upstream\.|xds\.route_)[a-z_1-9]*$`)
	// gwDuration is Gateway API's Duration pattern (messageTimeout).
	gwDuration = regexp.MustCompile(`^([0-9]{1,5}(h|m|s|ms)){1,4}$`)
)

// egGRPCTimeout is the grpc_service timeout Envoy Gateway always sets (defaultExtServiceRequestTimeout).
const egGRPCTimeout = 10 * time.Second

func egBodyMode(s string) (extprocfilterv3.ProcessingMode_BodySendMode, bool) {
	switch s {
	case "Streamed":
		return extprocfilterv3.ProcessingMode_STREAMED, true
	case "Buffered":
		return extprocfilterv3.ProcessingMode_BUFFERED, true
	case "BufferedPartial":
		return extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL, true
	case "FullDuplexStreamed":
		return extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED, true
	}
	return extprocfilterv3.ProcessingMode_NONE, false
}

// egStatusOnError is the CRD's enum for statusOnError.
func egStatusOnError(code int32) bool {
	switch code {
	case 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423,
		424, 426, 428, 429, 431, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511:
		return true
	}
	return false
}

type egPolicy struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   any    `json:"metadata"`
	Status     any    `json:"status,omitempty"`
	Spec       struct {
		TargetRef       any         `json:"targetRef,omitempty"`
		TargetRefs      any         `json:"targetRefs,omitempty"`
		TargetSelectors any         `json:"targetSelectors,omitempty"`
		MergeType       any         `json:"mergeType,omitempty"`
		Wasm            any         `json:"wasm,omitempty"`
		Lua             any         `json:"lua,omitempty"`
		DynamicModule   any         `json:"dynamicModule,omitempty"`
		ExtProc         []egExtProc `json:"extProc,omitempty"`
	} `json:"spec"`
}

type egExtProc struct {
	BackendRef  any `json:"backendRef,omitempty"`
	BackendRefs []struct {
		Group     *string `json:"group,omitempty"`
		Kind      *string `json:"kind,omitempty"`
		Name      string  `json:"name"`
		Namespace *string `json:"namespace,omitempty"`
		Port      *int32  `json:"port,omitempty"`
		Weight    *uint32 `json:"weight,omitempty"`
		Fallback  *bool   `json:"fallback,omitempty"`
	} `json:"backendRefs,omitempty"`
	BackendSettings any     `json:"backendSettings,omitempty"`
	MessageTimeout  *string `json:"messageTimeout,omitempty"`
	FailOpen        *bool   `json:"failOpen,omitempty"`
	ProcessingMode  *struct {
		Request           *egModeOptions `json:"request,omitempty"`
		Response          *egModeOptions `json:"response,omitempty"`
		AllowModeOverride bool           `json:"allowModeOverride,omitempty"`
	} `json:"processingMode,omitempty"`
	ShadowMode *bool `json:"shadowMode,omitempty"`
	Metadata   *struct {
		AccessibleNamespaces []string `json:"accessibleNamespaces,omitempty"`
		WritableNamespaces   []string `json:"writableNamespaces,omitempty"`
	} `json:"metadata,omitempty"`
	StatusOnError *int32 `json:"statusOnError,omitempty"`
}

type egModeOptions struct {
	Body       *string  `json:"body,omitempty"`
	Attributes []string `json:"attributes,omitempty"`
}

// ExtProcFromExtensionPolicies returns, for every extProc entry of every EnvoyExtensionPolicy in a
// multi-document YAML file, the ext_proc filter config that Envoy Gateway generates from it. Each entry is
// first checked against the CRD's schema and validation rules (unknown fields included), and each result with
// ValidateMessage. Note Envoy Gateway's mapping: a direction missing from processingMode gets header mode SKIP.
func ExtProcFromExtensionPolicies(stream []byte) ([]*extprocfilterv3.ExternalProcessor, error) {
	objs, err := ParseObjects(stream)
	if err != nil {
		return nil, err
	}
	c := &checker{}
	var eps []*extprocfilterv3.ExternalProcessor
	for _, o := range objs {
		if o.Kind != "EnvoyExtensionPolicy" {
			continue
		}
		if o.APIVersion != "gateway.envoyproxy.io/v1alpha1" {
			c.add(o.Ref(), fmt.Errorf("%w: apiVersion %q, want gateway.envoyproxy.io/v1alpha1", ErrSchema, o.APIVersion))
			continue
		}
		var p egPolicy
		if err := strictDecode(o.Doc, &p); err != nil {
			c.add(o.Ref(), err)
			continue
		}
		for i, e := range p.Spec.ExtProc {
			path := fmt.Sprintf("%s spec.extProc[%d]", o.Ref(), i)
			// The cluster name Envoy Gateway generates for this entry (irConfigName + "/extproc/<index>").
			cluster := fmt.Sprintf("envoyextensionpolicy/%s/%s/extproc/%d", o.Namespace, o.Name, i)
			ep := c.egExtProc(path, cluster, e)
			c.root(path+"<ExternalProcessor>", ep)
			eps = append(eps, ep)
		}
	}
	return eps, c.result()
}

// egExtProc checks one extProc entry against the CRD rules and translates it as Envoy Gateway does.
func (c *checker) egExtProc(path, cluster string, e egExtProc) *extprocfilterv3.ExternalProcessor {
	crd := func(field, format string, args ...any) {
		c.add(path+"."+field, fmt.Errorf("%w: %s", ErrSchema, fmt.Sprintf(format, args...)))
	}
	if e.BackendRef != nil {
		crd("backendRef", "not supported, use backendRefs")
	}
	if n := len(e.BackendRefs); n == 0 || n > 16 {
		crd("backendRefs", "needs 1 to 16 entries, has %d", n)
	}
	for i, r := range e.BackendRefs {
		group, kind := "", "Service" // Gateway API defaults
		if r.Group != nil {
			group = *r.Group
		}
		if r.Kind != nil {
			kind = *r.Kind
		}
		if !slices.Contains([]string{"", "multicluster.x-k8s.io", "gateway.envoyproxy.io"}, group) {
			crd(fmt.Sprintf("backendRefs[%d].group", i), "group %q is not supported", group)
		}
		if !slices.Contains([]string{"Service", "ServiceImport", "Backend"}, kind) {
			crd(fmt.Sprintf("backendRefs[%d].kind", i), "kind %q is not supported", kind)
		}
		if r.Name == "" {
			crd(fmt.Sprintf("backendRefs[%d].name", i), "required")
		}
		if kind == "Service" && r.Port == nil {
			crd(fmt.Sprintf("backendRefs[%d].port", i), "required for a Service")
		}
	}

	pm := &extprocfilterv3.ProcessingMode{
		RequestHeaderMode:   extprocfilterv3.ProcessingMode_SKIP,
		ResponseHeaderMode:  extprocfilterv3.ProcessingMode_SKIP,
		RequestBodyMode:     extprocfilterv3.ProcessingMode_NONE,
		ResponseBodyMode:    extprocfilterv3.ProcessingMode_NONE,
		RequestTrailerMode:  extprocfilterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: extprocfilterv3.ProcessingMode_SKIP,
	}
	ep := &extprocfilterv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{
			TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster}},
			Timeout:         durationpb.New(egGRPCTimeout),
		},
		ProcessingMode: pm,
	}
	// direction applies one of processingMode.request / .response; it reports whether the body is full duplex.
	direction := func(field string, o *egModeOptions, headers *extprocfilterv3.ProcessingMode_HeaderSendMode,
		body *extprocfilterv3.ProcessingMode_BodySendMode, trailers *extprocfilterv3.ProcessingMode_HeaderSendMode,
		attrs *[]string) bool {
		if o == nil {
			return false
		}
		*headers = extprocfilterv3.ProcessingMode_SEND
		for i, a := range o.Attributes {
			if !egAttribute.MatchString(a) {
				crd(fmt.Sprintf("%s.attributes[%d]", field, i), "%q does not match %s", a, egAttribute)
			}
		}
		*attrs = append(*attrs, o.Attributes...)
		if o.Body == nil {
			return false
		}
		mode, ok := egBodyMode(*o.Body)
		if !ok {
			crd(field+".body", "%q is not one of Streamed, Buffered, BufferedPartial, FullDuplexStreamed", *o.Body)
			return false
		}
		if e.ShadowMode != nil && *e.ShadowMode && mode != extprocfilterv3.ProcessingMode_STREAMED {
			crd(field+".body", "shadowMode allows only Streamed")
		}
		*body = mode
		if mode == extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
			*trailers = extprocfilterv3.ProcessingMode_SEND
			return true
		}
		return false
	}
	fullDuplex := false
	if m := e.ProcessingMode; m != nil {
		fullDuplex = direction("processingMode.request", m.Request, &pm.RequestHeaderMode, &pm.RequestBodyMode, &pm.RequestTrailerMode, &ep.RequestAttributes)
		fullDuplex = direction("processingMode.response", m.Response, &pm.ResponseHeaderMode, &pm.ResponseBodyMode, &pm.ResponseTrailerMode, &ep.ResponseAttributes) || fullDuplex
		ep.AllowModeOverride = m.AllowModeOverride
	}
	if e.FailOpen != nil {
		ep.FailureModeAllow = *e.FailOpen
		if *e.FailOpen && fullDuplex {
			crd("failOpen", "must be false with FullDuplexStreamed")
		}
	}
	if e.ShadowMode != nil {
		ep.ObservabilityMode = *e.ShadowMode
	}
	if e.MessageTimeout != nil {
		d, err := time.ParseDuration(*e.MessageTimeout)
		if !gwDuration.MatchString(*e.MessageTimeout) || err != nil {
			crd("messageTimeout", "%q is not a Gateway API duration", *e.MessageTimeout)
		} else {
			ep.MessageTimeout = durationpb.New(d)
		}
	}
	if md := e.Metadata; md != nil {
		if len(md.WritableNamespaces) > 8 {
			crd("metadata.writableNamespaces", "at most 8 entries")
		}
		for i, ns := range md.WritableNamespaces {
			if strings.HasPrefix(ns, "envoy.filters.http") {
				crd(fmt.Sprintf("metadata.writableNamespaces[%d]", i), "cannot be a well-known Envoy HTTP filter namespace")
			}
		}
		if md.AccessibleNamespaces != nil || md.WritableNamespaces != nil {
			ep.MetadataOptions = &extprocfilterv3.MetadataOptions{}
			if md.AccessibleNamespaces != nil {
				ep.MetadataOptions.ForwardingNamespaces = &extprocfilterv3.MetadataOptions_MetadataNamespaces{Untyped: md.AccessibleNamespaces}
			}
			if md.WritableNamespaces != nil {
				ep.MetadataOptions.ReceivingNamespaces = &extprocfilterv3.MetadataOptions_MetadataNamespaces{Untyped: md.WritableNamespaces}
			}
		}
	}
	if e.StatusOnError != nil {
		if !egStatusOnError(*e.StatusOnError) {
			crd("statusOnError", "%d is not an allowed 4xx/5xx code", *e.StatusOnError)
		}
		ep.StatusOnError = &typev3.HttpStatus{Code: typev3.StatusCode(*e.StatusOnError)}
	}
	return ep
}
