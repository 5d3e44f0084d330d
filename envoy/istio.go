package envoy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// istioClusterName is the form of every cluster Istio generates (direction|port|subset|host); an EnvoyFilter
// pointing at any other name points at nothing.
var istioClusterName = regexp.MustCompile(`^(outbound|inbound)\|[0-9]+\|[^|]*\|[^|]+$`)

// istioBuiltinCluster reports Istio's fixed clusters, the only others an EnvoyFilter may name.
func istioBuiltinCluster(name string) bool {
	switch name {
	case "BlackHoleCluster", "PassthroughCluster", "InboundPassthroughCluster", "InboundPassthroughClusterIpv4", "InboundPassthroughClusterIpv6":
		return true
	}
	return false
}

// istioPatchValue returns an empty message of the Envoy type that an EnvoyFilter configPatch of this applyTo
// carries in patch.value.
func istioPatchValue(applyTo string) (proto.Message, bool) {
	switch applyTo {
	case "LISTENER":
		return &listenerv3.Listener{}, true
	case "FILTER_CHAIN":
		return &listenerv3.FilterChain{}, true
	case "NETWORK_FILTER":
		return &listenerv3.Filter{}, true
	case "LISTENER_FILTER":
		return &listenerv3.ListenerFilter{}, true
	case "HTTP_FILTER":
		return &hcmv3.HttpFilter{}, true
	case "ROUTE_CONFIGURATION":
		return &routev3.RouteConfiguration{}, true
	case "VIRTUAL_HOST":
		return &routev3.VirtualHost{}, true
	case "HTTP_ROUTE":
		return &routev3.Route{}, true
	case "CLUSTER":
		return &clusterv3.Cluster{}, true
	}
	return nil, false
}

// ValidateEnvoyFilters checks every EnvoyFilter in a multi-document YAML file. Each configPatch value must
// decode strictly as the Envoy message its applyTo names; values of INSERT_*, ADD and REPLACE patches must pass
// ValidateAll, while MERGE values are partial, so only what they carry inside Any (typed_config,
// typed_per_filter_config) is validated. Cluster names must be Istio-generated ones. It returns the ext_proc
// filter configs found in the patches.
func ValidateEnvoyFilters(stream []byte) ([]*extprocfilterv3.ExternalProcessor, error) {
	objs, err := ParseObjects(stream)
	if err != nil {
		return nil, err
	}
	c := &checker{}
	for _, o := range objs {
		if o.Kind != "EnvoyFilter" {
			continue
		}
		if !strings.HasPrefix(o.APIVersion, "networking.istio.io/") {
			c.add(o.Ref(), fmt.Errorf("%w: apiVersion %q is not networking.istio.io", ErrSchema, o.APIVersion))
			continue
		}
		if err := strictDecode(o.Doc["spec"], &envoyFilterSpec{}); err != nil {
			c.add(o.Ref()+" spec", err)
			continue
		}
		spec, _ := o.Doc["spec"].(map[string]any)
		patches, _ := spec["configPatches"].([]any)
		if len(patches) == 0 {
			c.add(o.Ref(), fmt.Errorf("%w: no configPatches", ErrSchema))
		}
		for i, p := range patches {
			c.envoyFilterPatch(fmt.Sprintf("%s configPatches[%d]", o.Ref(), i), p)
		}
	}
	for _, r := range c.refs {
		if !istioClusterName.MatchString(r.cluster) && !istioBuiltinCluster(r.cluster) {
			c.add(r.path, fmt.Errorf("%w: %q is not an Istio cluster name (outbound|PORT||HOST)", ErrUnknownCluster, r.cluster))
		}
	}
	return c.extProcs, c.result()
}

func (c *checker) envoyFilterPatch(path string, raw any) {
	p, _ := raw.(map[string]any)
	applyTo, _ := p["applyTo"].(string)
	patch, _ := p["patch"].(map[string]any)
	op, _ := patch["operation"].(string)
	if op == "REMOVE" {
		return
	}
	msg, ok := istioPatchValue(applyTo)
	if !ok {
		c.add(path+".applyTo", fmt.Errorf("%w: applyTo %q has no Envoy message this validator knows", ErrSchema, applyTo))
		return
	}
	value, ok := patch["value"]
	if !ok {
		c.add(path+".patch.value", fmt.Errorf("%w: %s needs a value", ErrSchema, op))
		return
	}
	j, err := json.Marshal(value)
	if err != nil {
		c.add(path+".patch.value", fmt.Errorf("%w: %w", ErrDecode, err))
		return
	}
	if err := protojson.Unmarshal(j, msg); err != nil {
		c.add(path+".patch.value", fmt.Errorf("%w as %s: %w", ErrDecode, msg.ProtoReflect().Descriptor().FullName(), err))
		return
	}
	vpath := fmt.Sprintf("%s.patch.value<%s>", path, msg.ProtoReflect().Descriptor().Name())
	if op == "MERGE" {
		c.walk(vpath, msg.ProtoReflect())
		return
	}
	c.root(vpath, msg)
}

// envoyFilterSpec mirrors istio.io/api networking/v1alpha3 EnvoyFilter, down to the match fields, so that a
// misspelt key (which Istio would reject, or worse, treat as "match anything") fails here. patch.value is
// checked separately against the Envoy protos.
type envoyFilterSpec struct {
	WorkloadSelector *struct {
		Labels map[string]string `json:"labels"`
	} `json:"workloadSelector,omitempty"`
	TargetRefs    []json.RawMessage `json:"targetRefs,omitempty"`
	Priority      int32             `json:"priority,omitempty"`
	ConfigPatches []struct {
		ApplyTo string `json:"applyTo"`
		Match   *struct {
			Context string `json:"context,omitempty"`
			Proxy   *struct {
				ProxyVersion string            `json:"proxyVersion,omitempty"`
				Metadata     map[string]string `json:"metadata,omitempty"`
			} `json:"proxy,omitempty"`
			Listener *struct {
				PortNumber  uint32 `json:"portNumber,omitempty"`
				Name        string `json:"name,omitempty"`
				FilterChain *struct {
					Name                 string `json:"name,omitempty"`
					Sni                  string `json:"sni,omitempty"`
					TransportProtocol    string `json:"transportProtocol,omitempty"`
					ApplicationProtocols string `json:"applicationProtocols,omitempty"`
					DestinationPort      uint32 `json:"destinationPort,omitempty"`
					Filter               *struct {
						Name      string `json:"name,omitempty"`
						SubFilter *struct {
							Name string `json:"name,omitempty"`
						} `json:"subFilter,omitempty"`
					} `json:"filter,omitempty"`
				} `json:"filterChain,omitempty"`
				ListenerFilter string `json:"listenerFilter,omitempty"`
			} `json:"listener,omitempty"`
			RouteConfiguration *struct {
				PortNumber uint32 `json:"portNumber,omitempty"`
				PortName   string `json:"portName,omitempty"`
				Gateway    string `json:"gateway,omitempty"`
				Name       string `json:"name,omitempty"`
				Vhost      *struct {
					Name       string `json:"name,omitempty"`
					DomainName string `json:"domainName,omitempty"`
					Route      *struct {
						Name   string `json:"name,omitempty"`
						Action string `json:"action,omitempty"`
					} `json:"route,omitempty"`
				} `json:"vhost,omitempty"`
			} `json:"routeConfiguration,omitempty"`
			Cluster *struct {
				PortNumber uint32 `json:"portNumber,omitempty"`
				Service    string `json:"service,omitempty"`
				Subset     string `json:"subset,omitempty"`
				Name       string `json:"name,omitempty"`
			} `json:"cluster,omitempty"`
		} `json:"match,omitempty"`
		Patch struct {
			Operation   string          `json:"operation"`
			Value       json.RawMessage `json:"value,omitempty"`
			FilterClass string          `json:"filterClass,omitempty"`
		} `json:"patch"`
	} `json:"configPatches"`
}

// strictDecode re-encodes a decoded JSON value into dst, failing on any field dst does not declare, matched
// case-sensitively as the Kubernetes API server does (encoding/json alone would accept "subfilter" for
// "subFilter").
func strictDecode(v any, dst any) error {
	if err := exactKeys("", v, reflect.TypeOf(dst)); err != nil {
		return fmt.Errorf("%w: %w", ErrSchema, err)
	}
	j, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDecode, err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("%w: %w", ErrSchema, err)
	}
	return nil
}

// exactKeys checks that every key of the decoded value v names a json field of type t exactly.
func exactKeys(path string, v any, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil // a type mismatch; json.Decode reports it
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			fields[name] = t.Field(i).Type
		}
		for _, k := range sortedKeys(m) {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("%s: unknown field %q", strings.TrimPrefix(path+"."+k, "."), k)
			}
			if err := exactKeys(path+"."+k, m[k], ft); err != nil {
				return err
			}
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok || t.Elem().Kind() == reflect.Uint8 { // json.RawMessage is opaque
			return nil
		}
		for i, el := range l {
			if err := exactKeys(fmt.Sprintf("%s[%d]", path, i), el, t.Elem()); err != nil {
				return err
			}
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		for _, k := range sortedKeys(m) {
			if err := exactKeys(fmt.Sprintf("%s[%q]", path, k), m[k], t.Elem()); err != nil {
				return err
			}
		}
	}
	return nil
}
