package extproc

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// headers is a request's or response's header map, keys lower-case.
type headers map[string][]string

// headersFrom reads an Envoy HeaderMap. envoy-extproc.md §1.3: Envoy sends
// raw_value only (value stays empty) since 1.32; value is read as a fallback
// for older Envoys. Repeated headers arrive as separate entries.
func headersFrom(m *corev3.HeaderMap) headers {
	h := headers{}
	if m == nil {
		return h
	}
	for _, hv := range m.GetHeaders() {
		v := string(hv.GetRawValue())
		if v == "" {
			v = hv.GetValue()
		}
		k := strings.ToLower(hv.GetKey())
		h[k] = append(h[k], v)
	}
	return h
}

func (h headers) get(k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// attributesFrom flattens the attributes Envoy sends once per direction
// under the filter's fixed name (envoy-extproc.md §1.2).
func attributesFrom(req *extprocv3.ProcessingRequest) map[string]string {
	out := map[string]string{}
	s := req.GetAttributes()["envoy.filters.http.ext_proc"]
	for k, v := range s.GetFields() {
		if sv, ok := v.GetKind().(*structpb.Value_StringValue); ok {
			out[k] = sv.StringValue
		}
	}
	return out
}

// mutation collects header changes for one reply.
type mutation struct {
	set    [][2]string
	remove []string
}

func (m *mutation) setHeader(k, v string) { m.set = append(m.set, [2]string{k, v}) }
func (m *mutation) removeHeader(k string) { m.remove = append(m.remove, k) }

// proto builds the HeaderMutation. envoy-extproc.md §2.3: values go in
// raw_value only (setting both value and raw_value is an error, value alone
// sets an empty header); append is left unset, which means overwrite.
func (m *mutation) proto() *extprocv3.HeaderMutation {
	if m == nil || (len(m.set) == 0 && len(m.remove) == 0) {
		return nil
	}
	hm := &extprocv3.HeaderMutation{RemoveHeaders: m.remove}
	for _, kv := range m.set {
		hm.SetHeaders = append(hm.SetHeaders, &corev3.HeaderValueOption{
			Header: &corev3.HeaderValue{Key: kv[0], RawValue: []byte(kv[1])},
		})
	}
	return hm
}

func common(m *mutation, body []byte, clear bool) *extprocv3.CommonResponse {
	c := &extprocv3.CommonResponse{HeaderMutation: m.proto()}
	switch {
	case clear:
		c.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{ClearBody: true}}
	case body != nil:
		c.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}}
	}
	if c.HeaderMutation == nil && c.BodyMutation == nil {
		return nil
	}
	return c
}

func requestHeadersReply(m *mutation, mode *extprocfilterv3.ProcessingMode) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response:     &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: common(m, nil, false)}},
		ModeOverride: mode,
	}
}

func responseHeadersReply(m *mutation, mode *extprocfilterv3.ProcessingMode, md *structpb.Struct) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response:        &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: common(m, nil, false)}},
		ModeOverride:    mode,
		DynamicMetadata: md,
	}
}

func requestBodyReply(m *mutation, body []byte) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: common(m, body, false)}},
	}
}

func responseBodyReply(m *mutation, body []byte, clear bool, md *structpb.Struct) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{
		Response:        &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: common(m, body, clear)}},
		DynamicMetadata: md,
	}
}

// immediate builds a local reply. envoy-extproc.md §2.5: Envoy sends it as
// is (the body's content type comes from our header), closes the stream,
// and its headers do not pass through ext_proc again.
func immediate(code int, contentType string, body []byte, details string, extra *mutation) *extprocv3.ProcessingResponse {
	m := &mutation{}
	if extra != nil {
		*m = *extra
	}
	m.setHeader("content-type", contentType)
	return &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(code)},
			Headers: m.proto(),
			Body:    body,
			Details: details,
		}},
	}
}

// modeOverride switches the response body mode. envoy-extproc.md §2.6: it
// is honoured only in a headers reply, applies to both directions, leaves
// header/trailer modes unchanged when DEFAULT, and takes body modes
// literally — so the request body mode is restated.
func modeOverride(reqBody, respBody extprocfilterv3.ProcessingMode_BodySendMode) *extprocfilterv3.ProcessingMode {
	return &extprocfilterv3.ProcessingMode{RequestBodyMode: reqBody, ResponseBodyMode: respBody}
}

// metadata is the dynamic metadata for access logs, under the namespace the
// filter lists in metadata_options.receiving_namespaces (envoy-extproc.md §2.2).
const metadataNamespace = "creditgate"

func metadata(fields map[string]any) *structpb.Struct {
	inner, err := structpb.NewStruct(fields)
	if err != nil {
		return nil
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{metadataNamespace: structpb.NewStructValue(inner)}}
}
