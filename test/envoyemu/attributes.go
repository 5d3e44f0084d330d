package envoyemu

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// evaluateAttributes builds the Struct sent under attributes
// ["envoy.filters.http.ext_proc"] (envoy-extproc.md §1.2). Values come from
// Config.Attributes first, then from the attributes Envoy computes from the
// request (live, mutated headers) and response. Names that evaluate to
// nothing are left out, as Envoy does for failed CEL evaluations.
func (x *exchange) evaluateAttributes(dir Direction, names []string) *structpb.Struct {
	var extra map[string]any
	if x.p.cfg.Attributes != nil {
		extra = x.p.cfg.Attributes(x.r)
	}
	out := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	for _, name := range names {
		v, ok := extra[name]
		if !ok {
			v, ok = x.builtinAttribute(name)
		}
		if !ok {
			continue
		}
		pv, err := structpb.NewValue(v)
		if err != nil {
			continue
		}
		out.Fields[name] = pv
	}
	return out
}

func (x *exchange) builtinAttribute(name string) (any, bool) {
	rh := x.dec.headers
	path := rh.value(":path")
	switch name {
	case "request.path":
		return path, true
	case "request.url_path":
		if i := strings.IndexByte(path, '?'); i >= 0 {
			return path[:i], true
		}
		return path, true
	case "request.query":
		if i := strings.IndexByte(path, '?'); i >= 0 {
			return path[i+1:], true
		}
		return "", true
	case "request.host":
		return rh.value(":authority"), true
	case "request.scheme":
		return rh.value(":scheme"), true
	case "request.method":
		return rh.value(":method"), true
	case "request.id":
		return rh.value("x-request-id"), true
	case "request.referer":
		return rh.value("referer"), true
	case "request.useragent":
		return rh.value("user-agent"), true
	case "request.protocol":
		return x.r.Proto, true
	case "request.headers":
		return headerAttr(rh), true
	case "request.size":
		if cl, ok := rh.get("content-length"); ok {
			if n, err := strconv.Atoi(cl); err == nil {
				return n, true
			}
		}
		return nil, false
	case "source.address":
		return x.r.RemoteAddr, true
	case "source.port":
		if _, port, err := net.SplitHostPort(x.r.RemoteAddr); err == nil {
			if n, err := strconv.Atoi(port); err == nil {
				return n, true
			}
		}
		return nil, false
	case "destination.address", "destination.port":
		addr, ok := x.r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		if !ok {
			return nil, false
		}
		if name == "destination.address" {
			return addr.String(), true
		}
		if _, port, err := net.SplitHostPort(addr.String()); err == nil {
			if n, err := strconv.Atoi(port); err == nil {
				return n, true
			}
		}
		return nil, false
	case "connection.mtls":
		return x.r.TLS != nil && len(x.r.TLS.PeerCertificates) > 0, true
	}
	eh := x.enc.headers
	if eh == nil {
		return nil, false
	}
	switch name {
	case "response.code":
		if n, err := strconv.Atoi(eh.value(":status")); err == nil {
			return n, true
		}
	case "response.headers":
		return headerAttr(eh), true
	case "response.code_details":
		return x.trace.ResponseCodeDetails, true
	}
	return nil, false
}

// headerAttr is the CEL map view of a header map: repeated values joined by
// ",".
func headerAttr(h *headerMap) map[string]any {
	m := map[string]any{}
	for _, e := range h.entries {
		if prev, ok := m[e.key]; ok {
			m[e.key] = prev.(string) + "," + e.value
			continue
		}
		m[e.key] = e.value
	}
	return m
}
