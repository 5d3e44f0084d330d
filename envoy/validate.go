package envoy

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	dfpclusterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/dynamic_forward_proxy/v3"
	dfpfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/dynamic_forward_proxy/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// Sentinel errors, for errors.Is on a Problem.
var (
	ErrDecode         = errors.New("cannot be decoded")
	ErrSchema         = errors.New("breaks the resource's schema")
	ErrUnknownCluster = errors.New("names a cluster that is not defined")
	ErrDuplicateName  = errors.New("duplicate name")
	ErrDeprecated     = errors.New("uses a deprecated field or value")
	ErrEnvoyRule      = errors.New("breaks a rule Envoy enforces when it loads the config")
	ErrPolicy         = errors.New("departs from creditgate's required setting")
)

// dfpClusterType is the cluster_type extension name of a dynamic forward proxy cluster.
const dfpClusterType = "envoy.clusters.dynamic_forward_proxy"

// Problem is one defect, at a path such as
// static_resources.clusters[2].transport_socket.typed_config<UpstreamTlsContext>.sni, where <T> marks the
// message unpacked from a google.protobuf.Any.
type Problem struct {
	Path string
	Err  error
}

func (p Problem) Error() string {
	if p.Path == "" {
		return p.Err.Error()
	}
	return p.Path + ": " + p.Err.Error()
}

func (p Problem) Unwrap() error { return p.Err }

// ValidationError lists every problem found, so that one run shows all of them.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.Error()
	}
	return fmt.Sprintf("%d problem(s):\n%s", len(e.Problems), strings.Join(lines, "\n"))
}

func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		errs[i] = p
	}
	return errs
}

// toJSON converts one YAML (or JSON) document; duplicate keys are an error because YAML would keep the last.
func toJSON(doc []byte) ([]byte, error) {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return j, nil
}

// ParseBootstrap decodes a YAML or JSON bootstrap strictly: an unknown field or an unregistered "@type" fails.
func ParseBootstrap(doc []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := toJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("envoy: bootstrap: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(j, b); err != nil {
		return nil, fmt.Errorf("envoy: bootstrap: %w: %w", ErrDecode, err)
	}
	return b, nil
}

// ValidateBootstrap parses a bootstrap and runs CheckBootstrap on it.
func ValidateBootstrap(doc []byte) error {
	b, err := ParseBootstrap(doc)
	if err != nil {
		return err
	}
	return CheckBootstrap(b)
}

// CheckBootstrap validates a parsed bootstrap: protoc-gen-validate rules on the bootstrap and, because
// ValidateAll stops at google.protobuf.Any, on every message unpacked from an Any at any depth; no deprecated
// fields; ext_proc load-time rules; and the cross-references Envoy would otherwise reject at startup — unique
// cluster and listener names, every cluster named by a route or gRPC service defined (unless clusters come
// from CDS), the router last in each HTTP filter chain, per-route filter configs keyed by a filter of that
// chain, and a dynamic forward proxy filter matching each dynamic forward proxy cluster that a route uses.
func CheckBootstrap(b *bootstrapv3.Bootstrap) error {
	c := &checker{}
	c.root("", b)
	c.bootstrapReferences(b)
	return c.result()
}

// ValidateMessage runs the protoc-gen-validate rules on m and on every message unpacked from an Any inside it,
// and reports deprecated fields and broken ext_proc load-time rules. It does not resolve cluster names.
func ValidateMessage(m proto.Message) error {
	c := &checker{}
	c.root("", m)
	return c.result()
}

// ParseExtProcFilter decodes an ext_proc filter config, YAML or JSON, either bare or as a typed_config with
// "@type" (which must then be the ExternalProcessor type).
func ParseExtProcFilter(doc []byte) (*extprocfilterv3.ExternalProcessor, error) {
	j, err := toJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("envoy: ext_proc: %w", err)
	}
	ep := &extprocfilterv3.ExternalProcessor{}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(j, &probe); err != nil {
		return nil, fmt.Errorf("envoy: ext_proc: %w: %w", ErrDecode, err)
	}
	if _, typed := probe["@type"]; !typed {
		if err := protojson.Unmarshal(j, ep); err != nil {
			return nil, fmt.Errorf("envoy: ext_proc: %w: %w", ErrDecode, err)
		}
		return ep, nil
	}
	a := &anypb.Any{}
	if err := protojson.Unmarshal(j, a); err != nil {
		return nil, fmt.Errorf("envoy: ext_proc: %w: %w", ErrDecode, err)
	}
	if err := a.UnmarshalTo(ep); err != nil {
		return nil, fmt.Errorf("envoy: ext_proc: %w: %w", ErrDecode, err)
	}
	return ep, nil
}

// ValidateExtProcFilter parses an ext_proc filter config (see ParseExtProcFilter) and runs ValidateMessage on it.
func ValidateExtProcFilter(doc []byte) error {
	ep, err := ParseExtProcFilter(doc)
	if err != nil {
		return err
	}
	return ValidateMessage(ep)
}

// ExtProcFilters returns every ext_proc filter config inside m, looking through Any at any depth, together with
// the problems ValidateMessage would report.
func ExtProcFilters(m proto.Message) ([]*extprocfilterv3.ExternalProcessor, error) {
	c := &checker{}
	c.root("", m)
	return c.extProcs, c.result()
}

type clusterRef struct {
	path, cluster string
}

type foundHCM struct {
	path string
	hcm  *hcmv3.HttpConnectionManager
}

// checker walks one configuration and accumulates problems and the facts the cross-checks need.
type checker struct {
	problems []Problem
	refs     []clusterRef
	hcms     []foundHCM
	extProcs []*extprocfilterv3.ExternalProcessor
}

func (c *checker) add(path string, err error) {
	c.problems = append(c.problems, Problem{Path: path, Err: err})
}

func (c *checker) result() error {
	if len(c.problems) == 0 {
		return nil
	}
	return &ValidationError{Problems: c.problems}
}

func validateAll(m proto.Message) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		return v.ValidateAll()
	}
	return nil
}

// root validates m itself (it may not come from an Any) and walks it.
func (c *checker) root(path string, m proto.Message) {
	if err := validateAll(m); err != nil {
		c.add(path, err)
	}
	c.walk(path, m.ProtoReflect())
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func deprecatedField(fd protoreflect.FieldDescriptor) bool {
	opts, ok := fd.Options().(*descriptorpb.FieldOptions)
	return ok && opts.GetDeprecated()
}

func (c *checker) checkEnum(path string, fd protoreflect.FieldDescriptor, v protoreflect.EnumNumber) {
	ev := fd.Enum().Values().ByNumber(v)
	if ev == nil {
		return
	}
	if opts, ok := ev.Options().(*descriptorpb.EnumValueOptions); ok && opts.GetDeprecated() {
		c.add(path, fmt.Errorf("%w: %s", ErrDeprecated, ev.Name()))
	}
}

// walk visits every set field below m, unpacking each Any, whose content ValidateAll of the enclosing
// message never looks at.
func (c *checker) walk(path string, m protoreflect.Message) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		c.unpack(path, a)
		return
	}
	c.inspect(path, m.Interface())
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		fpath := joinPath(path, string(fd.Name()))
		if deprecatedField(fd) {
			c.add(fpath, ErrDeprecated)
		}
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			var keys []protoreflect.MapKey
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return strings.Compare(a.String(), b.String()) })
			for _, k := range keys {
				c.walk(fmt.Sprintf("%s[%q]", fpath, k.String()), v.Map().Get(k).Message())
			}
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				ipath := fmt.Sprintf("%s[%d]", fpath, i)
				switch {
				case fd.Message() != nil:
					c.walk(ipath, l.Get(i).Message())
				case fd.Enum() != nil:
					c.checkEnum(ipath, fd, l.Get(i).Enum())
				}
			}
		case fd.Message() != nil:
			c.walk(fpath, v.Message())
		case fd.Enum() != nil:
			c.checkEnum(fpath, fd, v.Enum())
		}
		return true
	})
}

func (c *checker) unpack(path string, a *anypb.Any) {
	inner, err := a.UnmarshalNew()
	if err != nil {
		c.add(path, fmt.Errorf("cannot unpack %q: %w", a.GetTypeUrl(), err))
		return
	}
	ipath := fmt.Sprintf("%s<%s>", path, inner.ProtoReflect().Descriptor().Name())
	if err := validateAll(inner); err != nil {
		c.add(ipath, err)
	}
	c.walk(ipath, inner.ProtoReflect())
}

// inspect records the messages that the cross-checks need.
func (c *checker) inspect(path string, m proto.Message) {
	ref := func(field, name string) {
		if name != "" { // an empty name is already a ValidateAll error where it is required
			c.refs = append(c.refs, clusterRef{path: joinPath(path, field), cluster: name})
		}
	}
	switch x := m.(type) {
	case *corev3.GrpcService_EnvoyGrpc:
		ref("cluster_name", x.GetClusterName())
	case *corev3.HttpUri:
		ref("cluster", x.GetCluster())
	case *routev3.RouteAction:
		ref("cluster", x.GetCluster())
	case *routev3.RouteAction_RequestMirrorPolicy:
		ref("cluster", x.GetCluster())
	case *routev3.WeightedCluster_ClusterWeight:
		ref("name", x.GetName())
	case *hcmv3.HttpConnectionManager:
		c.hcms = append(c.hcms, foundHCM{path: path, hcm: x})
	case *extprocfilterv3.ExternalProcessor:
		c.extProcs = append(c.extProcs, x)
		c.extProcLoadRules(path, x)
	}
}

// extProcLoadRules are checks Envoy's ext_proc factory makes at load time that no proto annotation expresses.
func (c *checker) extProcLoadRules(path string, ep *extprocfilterv3.ExternalProcessor) {
	rule := func(field, format string, args ...any) {
		c.add(joinPath(path, field), fmt.Errorf("%w: %s", ErrEnvoyRule, fmt.Sprintf(format, args...)))
	}
	hasGRPC, hasHTTP := ep.GetGrpcService() != nil, ep.GetHttpService() != nil
	switch {
	case hasGRPC && hasHTTP:
		rule("grpc_service", "only one of grpc_service and http_service may be set")
	case !hasGRPC && !hasHTTP:
		rule("grpc_service", "one of grpc_service and http_service is required")
	}
	pm := ep.GetProcessingMode()
	if hasHTTP && (pm.GetRequestBodyMode() != extprocfilterv3.ProcessingMode_NONE ||
		pm.GetResponseBodyMode() != extprocfilterv3.ProcessingMode_NONE ||
		pm.GetRequestTrailerMode() == extprocfilterv3.ProcessingMode_SEND ||
		pm.GetResponseTrailerMode() == extprocfilterv3.ProcessingMode_SEND) {
		rule("processing_mode", "http_service carries headers only: body modes must be NONE and trailers SKIP")
	}
	if pm.GetRequestBodyMode() == extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED &&
		pm.GetRequestTrailerMode() != extprocfilterv3.ProcessingMode_SEND {
		rule("processing_mode.request_trailer_mode", "FULL_DUPLEX_STREAMED request body needs request_trailer_mode SEND")
	}
	if pm.GetResponseBodyMode() == extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED &&
		pm.GetResponseTrailerMode() != extprocfilterv3.ProcessingMode_SEND {
		rule("processing_mode.response_trailer_mode", "FULL_DUPLEX_STREAMED response body needs response_trailer_mode SEND")
	}
}

func (c *checker) bootstrapReferences(b *bootstrapv3.Bootstrap) {
	clusters := map[string]*clusterv3.Cluster{}
	for i, cl := range b.GetStaticResources().GetClusters() {
		if _, dup := clusters[cl.GetName()]; dup {
			c.add(fmt.Sprintf("static_resources.clusters[%d].name", i), fmt.Errorf("%w: cluster %q", ErrDuplicateName, cl.GetName()))
		}
		clusters[cl.GetName()] = cl
	}
	listeners := map[string]bool{}
	for i, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() != "" && listeners[l.GetName()] {
			c.add(fmt.Sprintf("static_resources.listeners[%d].name", i), fmt.Errorf("%w: listener %q", ErrDuplicateName, l.GetName()))
		}
		listeners[l.GetName()] = true
	}
	dyn := b.GetDynamicResources()
	if dyn.GetCdsConfig() == nil && dyn.GetCdsResourcesLocator() == "" {
		for _, r := range c.refs {
			if _, ok := clusters[r.cluster]; !ok {
				c.add(r.path, fmt.Errorf("%w: %q", ErrUnknownCluster, r.cluster))
			}
		}
	}
	for _, h := range c.hcms {
		c.checkHCM(h.path, h.hcm, clusters)
	}
}

// checkHCM applies the HTTP filter chain rules Envoy enforces when it builds the connection manager.
func (c *checker) checkHCM(path string, hcm *hcmv3.HttpConnectionManager, clusters map[string]*clusterv3.Cluster) {
	filters := hcm.GetHttpFilters()
	names := map[string]bool{}
	var dfpCaches []proto.Message
	for i, f := range filters {
		fpath := fmt.Sprintf("%s.http_filters[%d]", path, i)
		if names[f.GetName()] {
			c.add(fpath+".name", fmt.Errorf("%w: HTTP filter %q", ErrDuplicateName, f.GetName()))
		}
		names[f.GetName()] = true
		switch cfg := unpacked(f.GetTypedConfig()).(type) {
		case *routerv3.Router:
			if i != len(filters)-1 {
				c.add(fpath, fmt.Errorf("%w: the router is terminal and must be the last HTTP filter", ErrEnvoyRule))
			}
			if f.GetDisabled() {
				c.add(fpath+".disabled", fmt.Errorf("%w: a terminal filter cannot be disabled", ErrEnvoyRule))
			}
		case *dfpfilterv3.FilterConfig:
			dfpCaches = append(dfpCaches, cfg.GetDnsCacheConfig())
		}
	}
	if n := len(filters); n > 0 {
		if _, ok := unpacked(filters[n-1].GetTypedConfig()).(*routerv3.Router); !ok {
			c.add(fmt.Sprintf("%s.http_filters[%d]", path, n-1), fmt.Errorf("%w: the last HTTP filter must be the router", ErrEnvoyRule))
		}
	}

	rc := hcm.GetRouteConfig()
	if rc == nil {
		return // RDS: the routes are not in this file
	}
	perFilter := func(p string, cfgs map[string]*anypb.Any) {
		for _, key := range sortedKeys(cfgs) {
			if names[key] {
				continue
			}
			if fc, ok := unpacked(cfgs[key]).(*routev3.FilterConfig); ok && fc.GetIsOptional() {
				continue
			}
			c.add(fmt.Sprintf("%s.typed_per_filter_config[%q]", p, key),
				fmt.Errorf("%w: names no HTTP filter of this connection manager", ErrEnvoyRule))
		}
	}
	for vi, vh := range rc.GetVirtualHosts() {
		vpath := fmt.Sprintf("%s.route_config.virtual_hosts[%d]", path, vi)
		perFilter(vpath, vh.GetTypedPerFilterConfig())
		for ri, r := range vh.GetRoutes() {
			rpath := fmt.Sprintf("%s.routes[%d]", vpath, ri)
			perFilter(rpath, r.GetTypedPerFilterConfig())
			for wi, w := range r.GetRoute().GetWeightedClusters().GetClusters() {
				perFilter(fmt.Sprintf("%s.route.weighted_clusters.clusters[%d]", rpath, wi), w.GetTypedPerFilterConfig())
			}
			c.checkDFPRoute(rpath, r.GetRoute().GetCluster(), clusters, dfpCaches)
		}
	}
}

// checkDFPRoute: a dynamic forward proxy cluster only works behind the dynamic forward proxy HTTP filter, and
// both must describe the same DNS cache (Envoy rejects one cache name with two configs).
func (c *checker) checkDFPRoute(path, cluster string, clusters map[string]*clusterv3.Cluster, filterCaches []proto.Message) {
	cl, ok := clusters[cluster]
	if !ok || cl.GetClusterType().GetName() != dfpClusterType {
		return
	}
	cc, ok := unpacked(cl.GetClusterType().GetTypedConfig()).(*dfpclusterv3.ClusterConfig)
	if !ok {
		return // the walk has reported why it does not unpack
	}
	for _, fc := range filterCaches {
		if proto.Equal(fc, cc.GetDnsCacheConfig()) {
			return
		}
	}
	c.add(path+".route.cluster", fmt.Errorf("%w: cluster %q is a dynamic forward proxy, but no envoy.filters.http.dynamic_forward_proxy filter with the same dns_cache_config precedes the router", ErrEnvoyRule, cluster))
}

// unpacked returns the message inside a, or nil when a is nil or cannot be unpacked (the walk reports that).
func unpacked(a *anypb.Any) proto.Message {
	if a == nil {
		return nil
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		return nil
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
