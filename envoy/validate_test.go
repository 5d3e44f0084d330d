package envoy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// providerHosts are the hosts every deployment must meter; Azure is a wildcard (one host per resource).
var providerHosts = []string{
	"api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com", "api.deepseek.com",
	"api.groq.com", "api.mistral.ai", "api.x.ai", "api.together.xyz",
}

const azureDomain = "*.openai.azure.com"

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// validateShipped runs the validator and the creditgate policy that apply to one shipped file.
func validateShipped(file string, stream []byte) error {
	var eps []*extprocfilterv3.ExternalProcessor
	switch file {
	case BootstrapFile, DemoBootstrapFile:
		b, err := ParseBootstrap(stream)
		if err != nil {
			return err
		}
		if err := CheckBootstrap(b); err != nil {
			return err
		}
		return CheckBootstrapPolicy(b)
	case IstioEnvoyFilter:
		var err error
		if eps, err = ValidateEnvoyFilters(stream); err != nil {
			return err
		}
	case GatewayPolicy:
		var err error
		if eps, err = ExtProcFromExtensionPolicies(stream); err != nil {
			return err
		}
	default:
		return fmt.Errorf("no validator for %s", file)
	}
	if len(eps) == 0 {
		return errors.New("no ext_proc filter found")
	}
	var errs []error
	for _, ep := range eps {
		errs = append(errs, CheckCreditgatePolicy(ep))
	}
	return errors.Join(errs...)
}

// plainValidateAll is what protoc-gen-validate alone reports: ValidateAll on the top-level messages, which does
// not look inside google.protobuf.Any.
func plainValidateAll(t *testing.T, file string, stream []byte) error {
	t.Helper()
	switch file {
	case BootstrapFile, DemoBootstrapFile:
		b, err := ParseBootstrap(stream)
		if err != nil {
			t.Fatal(err)
		}
		return b.ValidateAll()
	case IstioEnvoyFilter:
		objs, err := ParseObjects(stream)
		if err != nil {
			t.Fatal(err)
		}
		var errs []error
		for _, o := range objs {
			for _, p := range dig(t, o.Doc, "spec", "configPatches").([]any) {
				msg, _ := istioPatchValue(dig(t, p, "applyTo").(string))
				j, _ := json.Marshal(dig(t, p, "patch", "value"))
				if err := protojson.Unmarshal(j, msg); err != nil {
					t.Fatal(err)
				}
				if dig(t, p, "patch", "operation") != "MERGE" {
					errs = append(errs, validateAll(msg))
				}
			}
		}
		return errors.Join(errs...)
	}
	t.Fatalf("plain_validate_all_passes is not defined for %s", file)
	return nil
}

func TestShippedConfigValidates(t *testing.T) {
	for _, file := range []string{BootstrapFile, DemoBootstrapFile, IstioEnvoyFilter, GatewayPolicy} {
		t.Run(file, func(t *testing.T) {
			if err := validateShipped(file, mustRead(t, file)); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, file := range []string{IstioServiceEntries, IstioCreditgate, GatewayExample} {
		t.Run(file, func(t *testing.T) {
			objs, err := ParseObjects(mustRead(t, file))
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if o.APIVersion == "" || o.Kind == "" || o.Name == "" {
					t.Errorf("document %d lacks apiVersion, kind or metadata.name: %v", o.Index, o.Doc)
				}
			}
		})
	}
}

// mutation is one case file in testdata/mutations: edits to a shipped file and the problems they must cause.
type mutation struct {
	File string `json:"file"`
	Doc  int    `json:"doc"`
	Ops  []struct {
		Path   []any           `json:"path"`
		Set    json.RawMessage `json:"set"`
		Delete bool            `json:"delete"`
	} `json:"ops"`
	// PlainValidateAllPasses asserts that ValidateAll alone misses the defect: the Any walk is what finds it.
	PlainValidateAllPasses bool     `json:"plain_validate_all_passes"`
	Is                     string   `json:"is"`
	Want                   []string `json:"want"`
}

var sentinels = map[string]error{
	"decode":          ErrDecode,
	"schema":          ErrSchema,
	"unknown_cluster": ErrUnknownCluster,
	"duplicate_name":  ErrDuplicateName,
	"deprecated":      ErrDeprecated,
	"envoy_rule":      ErrEnvoyRule,
	"policy":          ErrPolicy,
}

func TestMutationsOfShippedConfig(t *testing.T) {
	files, err := filepath.Glob("testdata/mutations/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no mutation cases: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var m mutation
			if err := yaml.UnmarshalStrict(raw, &m); err != nil {
				t.Fatal(err)
			}
			if len(m.Ops) == 0 || len(m.Want) == 0 {
				t.Fatal("a case needs ops and want")
			}
			orig := mustRead(t, m.File)
			if err := validateShipped(m.File, orig); err != nil {
				t.Fatalf("the unmutated file must pass: %v", err)
			}
			mutated := mutate(t, orig, m)
			err = validateShipped(m.File, mutated)
			if err == nil {
				t.Fatalf("mutated %s passed validation:\n%s", m.File, mutated)
			}
			t.Log(err)
			for _, w := range m.Want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if m.Is != "" {
				sentinel, ok := sentinels[m.Is]
				if !ok {
					t.Fatalf("unknown is: %q", m.Is)
				}
				if !errors.Is(err, sentinel) {
					t.Errorf("error is not %v:\n%v", sentinel, err)
				}
			}
			if m.PlainValidateAllPasses {
				if perr := plainValidateAll(t, m.File, mutated); perr != nil {
					t.Errorf("plain ValidateAll already catches this, so the case proves nothing about the Any walk: %v", perr)
				}
			}
		})
	}
}

// mutate applies the case's ops to one document of the file and re-encodes the file (as JSON documents).
func mutate(t *testing.T, stream []byte, m mutation) []byte {
	t.Helper()
	objs, err := ParseObjects(stream)
	if err != nil {
		t.Fatal(err)
	}
	if m.Doc >= len(objs) {
		t.Fatalf("doc %d: the file has %d documents", m.Doc, len(objs))
	}
	var doc any = objs[m.Doc].Doc
	for i, op := range m.Ops {
		var value any
		if !op.Delete {
			if len(op.Set) == 0 {
				t.Fatalf("op %d: neither set nor delete", i)
			}
			dec := json.NewDecoder(bytes.NewReader(op.Set))
			dec.UseNumber()
			if err := dec.Decode(&value); err != nil {
				t.Fatal(err)
			}
		}
		if doc, err = applyOp(doc, op.Path, op.Delete, value); err != nil {
			t.Fatalf("op %d %v: %v", i, op.Path, err)
		}
	}
	var out bytes.Buffer
	for i, o := range objs {
		var d any = o.Doc
		if i == m.Doc {
			d = doc
		}
		j, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString("---\n")
		out.Write(j)
		out.WriteString("\n")
	}
	return out.Bytes()
}

// applyOp sets or deletes the node at path. A path segment is a map key (string), a list index (number) or a
// selector {field: value} picking the one list element with that field. Deleting something absent, or walking
// through something absent, is an error, so that a case cannot silently test nothing.
func applyOp(node any, path []any, del bool, value any) (any, error) {
	if len(path) == 0 {
		return value, nil
	}
	seg, rest := path[0], path[1:]
	switch n := node.(type) {
	case map[string]any:
		key, ok := seg.(string)
		if !ok {
			return nil, fmt.Errorf("segment %v: a mapping needs a string key", seg)
		}
		child, exists := n[key]
		if len(rest) == 0 {
			if del {
				if !exists {
					return nil, fmt.Errorf("delete %q: no such key", key)
				}
				delete(n, key)
				return n, nil
			}
			n[key] = value
			return n, nil
		}
		if !exists {
			return nil, fmt.Errorf("no key %q", key)
		}
		nc, err := applyOp(child, rest, del, value)
		if err != nil {
			return nil, fmt.Errorf("%s.%w", key, err)
		}
		n[key] = nc
		return n, nil
	case []any:
		idx, err := listIndex(n, seg)
		if err != nil {
			return nil, err
		}
		if len(rest) == 0 {
			if del {
				return slices.Delete(n, idx, idx+1), nil
			}
			n[idx] = value
			return n, nil
		}
		nc, err := applyOp(n[idx], rest, del, value)
		if err != nil {
			return nil, fmt.Errorf("[%d].%w", idx, err)
		}
		n[idx] = nc
		return n, nil
	}
	return nil, fmt.Errorf("segment %v: %T is neither a mapping nor a list", seg, node)
}

func listIndex(l []any, seg any) (int, error) {
	switch s := seg.(type) {
	case float64:
		if i := int(s); float64(i) == s && i >= 0 && i < len(l) {
			return i, nil
		}
		return 0, fmt.Errorf("index %v out of range (len %d)", s, len(l))
	case map[string]any:
		if len(s) != 1 {
			return 0, fmt.Errorf("selector %v needs exactly one field", s)
		}
		found := -1
		for field, want := range s {
			for i, el := range l {
				if m, ok := el.(map[string]any); ok && m[field] == want {
					if found >= 0 {
						return 0, fmt.Errorf("selector %v matches more than one element", s)
					}
					found = i
				}
			}
		}
		if found < 0 {
			return 0, fmt.Errorf("selector %v matches nothing", s)
		}
		return found, nil
	}
	return 0, fmt.Errorf("segment %v (%T) cannot index a list", seg, seg)
}

// dig walks decoded JSON by map keys and list indexes and fails the test when the path does not exist.
func dig(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("dig %v: %q: not a mapping", path, k)
			}
			if v, ok = m[k]; !ok {
				t.Fatalf("dig %v: no key %q", path, k)
			}
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("dig %v: no index %d", path, k)
			}
			v = l[k]
		}
	}
	return v
}

func TestParseExtProcFilter(t *testing.T) {
	tests := []struct {
		file string
		want string // substring of the error; "" means valid
	}{
		{"bare.yaml", ""},
		{"typed.json", ""},
		{"wrong-type.yaml", "Router"},
		{"duplicate-key.yaml", "failure_mode_allow"},
		{"empty-cluster.yaml", "ClusterName"},
		{"both-services.yaml", "only one of grpc_service and http_service"},
		{"no-service.yaml", "one of grpc_service and http_service is required"},
		{"full-duplex-without-trailers.yaml", "response_trailer_mode SEND"},
		{"http-service-with-body.yaml", "http_service carries headers only"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata/extproc", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			err = ValidateExtProcFilter(b)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("want an error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("error lacks %q: %v", tt.want, err)
			}
		})
	}
}

func TestSplitDocuments(t *testing.T) {
	tests := []struct {
		name, in string
		kinds    []string
	}{
		{"single", "kind: A\n", []string{"A"}},
		{"leading separator and comment-only docs", "# c\n---\nkind: A\n---\n# only a comment\n---\nkind: B\n", []string{"A", "B"}},
		{"separator with trailing comment", "kind: A\n--- # next\nkind: B\n", []string{"A", "B"}},
		{"document end marker", "kind: A\n...\n---\nkind: B\n", []string{"A", "B"}},
		{"dashes inside a block scalar are content", "kind: A\ndata: |\n  ---x\n", []string{"A"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := ParseObjects([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, o := range objs {
				kinds = append(kinds, o.Kind)
			}
			if !slices.Equal(kinds, tt.kinds) {
				t.Fatalf("kinds %v, want %v", kinds, tt.kinds)
			}
		})
	}
}

func unpackAs[T proto.Message](t *testing.T, a *anypb.Any) T {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	v, ok := m.(T)
	if !ok {
		t.Fatalf("%s is not the expected type", a.GetTypeUrl())
	}
	return v
}

func parseShippedBootstrap(t *testing.T, file string) (*bootstrapv3.Bootstrap, *hcmv3.HttpConnectionManager) {
	t.Helper()
	b, err := ParseBootstrap(mustRead(t, file))
	if err != nil {
		t.Fatal(err)
	}
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || len(ls[0].GetFilterChains()) != 1 || len(ls[0].GetFilterChains()[0].GetFilters()) != 1 {
		t.Fatal("want one listener with one filter chain holding the HTTP connection manager")
	}
	return b, unpackAs[*hcmv3.HttpConnectionManager](t, ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig())
}

func clusterByName(b *bootstrapv3.Bootstrap, name string) *clusterv3.Cluster {
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == name {
			return c
		}
	}
	return nil
}

func vhostFor(hcm *hcmv3.HttpConnectionManager, domain string) *routev3.VirtualHost {
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		if slices.Contains(vh.GetDomains(), domain) {
			return vh
		}
	}
	return nil
}

func extProcDisabled(t *testing.T, cfgs map[string]*anypb.Any) bool {
	a, ok := cfgs["envoy.filters.http.ext_proc"]
	return ok && unpackAs[*extprocfilterv3.ExtProcPerRoute](t, a).GetDisabled()
}

func TestBootstrapRequiredShape(t *testing.T) {
	b, hcm := parseShippedBootstrap(t, BootstrapFile)

	if sa := b.GetAdmin().GetAddress().GetSocketAddress(); sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 9901 {
		t.Errorf("admin on %s:%d, want 127.0.0.1:9901", sa.GetAddress(), sa.GetPortValue())
	}
	if sa := b.GetStaticResources().GetListeners()[0].GetAddress().GetSocketAddress(); sa.GetAddress() != "0.0.0.0" || sa.GetPortValue() != 10000 {
		t.Errorf("listener on %s:%d, want 0.0.0.0:10000", sa.GetAddress(), sa.GetPortValue())
	}

	for _, host := range append(slices.Clone(providerHosts), azureDomain) {
		t.Run(host, func(t *testing.T) {
			vh := vhostFor(hcm, host)
			if vh == nil {
				t.Fatal("no virtual host")
			}
			if extProcDisabled(t, vh.GetTypedPerFilterConfig()) {
				t.Fatal("ext_proc disabled on a provider")
			}
			if len(vh.GetRoutes()) == 0 {
				t.Fatal("no routes")
			}
			for _, r := range vh.GetRoutes() {
				ra := r.GetRoute()
				if ra.GetTimeout() == nil || ra.GetTimeout().AsDuration() != 0 {
					t.Errorf("route timeout %v, want 0s (streams)", ra.GetTimeout())
				}
				if ra.GetIdleTimeout().AsDuration() <= 0 {
					t.Error("route without idle_timeout")
				}
				if extProcDisabled(t, r.GetTypedPerFilterConfig()) {
					t.Error("ext_proc disabled on a provider route")
				}
				cl := clusterByName(b, ra.GetCluster())
				if cl == nil {
					t.Fatalf("no cluster %q", ra.GetCluster())
				}
				tls := unpackAs[*tlsv3.UpstreamTlsContext](t, cl.GetTransportSocket().GetTypedConfig())
				if ca := tls.GetCommonTlsContext().GetValidationContext().GetTrustedCa().GetFilename(); ca != "/etc/ssl/certs/ca-certificates.crt" {
					t.Errorf("trusted CA %q", ca)
				}
				opts := unpackAs[*upstreamhttpv3.HttpProtocolOptions](t, cl.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"])
				if !opts.GetUpstreamHttpProtocolOptions().GetAutoSni() || !opts.GetUpstreamHttpProtocolOptions().GetAutoSanValidation() {
					t.Error("auto_sni and auto_san_validation must be on")
				}
				if host == azureDomain {
					if cl.GetClusterType().GetName() != dfpClusterType {
						t.Errorf("Azure cluster type %q, want a dynamic forward proxy", cl.GetClusterType().GetName())
					}
					continue
				}
				if cl.GetType() != clusterv3.Cluster_LOGICAL_DNS {
					t.Errorf("cluster type %v, want LOGICAL_DNS", cl.GetType())
				}
				sa := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
				if sa.GetAddress() != host || sa.GetPortValue() != 443 {
					t.Errorf("endpoint %s:%d, want %s:443", sa.GetAddress(), sa.GetPortValue(), host)
				}
				if tls.GetSni() != host {
					t.Errorf("sni %q, want %q", tls.GetSni(), host)
				}
				if ra.GetHostRewriteLiteral() != host {
					t.Errorf("host_rewrite_literal %q, want %q", ra.GetHostRewriteLiteral(), host)
				}
			}
		})
	}

	t.Run("healthz without ext_proc", func(t *testing.T) {
		for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if r.GetMatch().GetPath() == "/healthz" {
					if !extProcDisabled(t, vh.GetTypedPerFilterConfig()) && !extProcDisabled(t, r.GetTypedPerFilterConfig()) {
						t.Error("/healthz would call the sidecar")
					}
					if r.GetDirectResponse().GetStatus() != 200 {
						t.Error("/healthz must answer 200 itself")
					}
					return
				}
			}
		}
		t.Error("no /healthz route")
	})

	t.Run("access log carries the sidecar's metadata", func(t *testing.T) {
		if len(hcm.GetAccessLog()) == 0 {
			t.Fatal("no access log")
		}
		stdout := unpackAs[*streamv3.StdoutAccessLog](t, hcm.GetAccessLog()[0].GetTypedConfig())
		fields := stdout.GetLogFormat().GetJsonFormat().GetFields()
		var values []string
		for _, v := range fields {
			values = append(values, v.GetStringValue())
		}
		for _, want := range []string{"%DYNAMIC_METADATA(creditgate:cost_usd)%", "%DYNAMIC_METADATA(creditgate:account)%"} {
			if !slices.Contains(values, want) {
				t.Errorf("JSON access log lacks %s", want)
			}
		}
		for _, v := range values {
			if strings.Contains(v, "(:PATH)") && !strings.Contains(v, "REQ_WITHOUT_QUERY") {
				t.Errorf("%s logs the query string, where Gemini API keys travel", v)
			}
		}
	})

	t.Run("creditgate cluster", func(t *testing.T) {
		cl := clusterByName(b, "creditgate")
		if cl == nil || cl.GetType() != clusterv3.Cluster_STRICT_DNS {
			t.Fatal("want a STRICT_DNS cluster named creditgate")
		}
		opts := unpackAs[*upstreamhttpv3.HttpProtocolOptions](t, cl.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"])
		if opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			t.Error("gRPC needs HTTP/2")
		}
		sa := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		if sa.GetAddress() != "creditgate" || sa.GetPortValue() != 9000 {
			t.Errorf("creditgate at %s:%d, want creditgate:9000", sa.GetAddress(), sa.GetPortValue())
		}
	})
}

func TestDemoBootstrapMatchesProduction(t *testing.T) {
	prod, prodHCM := parseShippedBootstrap(t, BootstrapFile)
	demo, demoHCM := parseShippedBootstrap(t, DemoBootstrapFile)

	prodEP, err := ExtProcFilters(prodHCM)
	if err != nil {
		t.Fatal(err)
	}
	demoEP, err := ExtProcFilters(demoHCM)
	if err != nil {
		t.Fatal(err)
	}
	if len(prodEP) != 1 || len(demoEP) != 1 || !proto.Equal(prodEP[0], demoEP[0]) {
		t.Errorf("ext_proc differs between %s and %s", BootstrapFile, DemoBootstrapFile)
	}
	if !proto.Equal(clusterByName(prod, "creditgate"), clusterByName(demo, "creditgate")) {
		t.Error("creditgate cluster differs")
	}
	if !proto.Equal(prodHCM.GetAccessLog()[0], demoHCM.GetAccessLog()[0]) {
		t.Error("access log differs")
	}
	pv, dv := prodHCM.GetRouteConfig().GetVirtualHosts(), demoHCM.GetRouteConfig().GetVirtualHosts()
	if len(pv) != len(dv) {
		t.Fatalf("%d virtual hosts in production, %d in the demo", len(pv), len(dv))
	}
	for i := range pv {
		if pv[i].GetName() != dv[i].GetName() || !slices.Equal(pv[i].GetDomains(), dv[i].GetDomains()) {
			t.Errorf("virtual host %d: %s %v vs %s %v", i, pv[i].GetName(), pv[i].GetDomains(), dv[i].GetName(), dv[i].GetDomains())
		}
		if !proto.Equal(&routev3.VirtualHost{TypedPerFilterConfig: pv[i].GetTypedPerFilterConfig()},
			&routev3.VirtualHost{TypedPerFilterConfig: dv[i].GetTypedPerFilterConfig()}) {
			t.Errorf("virtual host %s: per-filter config differs", pv[i].GetName())
		}
		for _, r := range dv[i].GetRoutes() {
			if c := r.GetRoute().GetCluster(); c != "" && c != "fakeprovider" {
				t.Errorf("demo route to %q, want fakeprovider", c)
			}
		}
	}
	fake := clusterByName(demo, "fakeprovider")
	if fake == nil || fake.GetTransportSocket() != nil {
		t.Fatal("want a plain-HTTP fakeprovider cluster")
	}
	if sa := fake.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); sa.GetAddress() != "fakeprovider" || sa.GetPortValue() != 8080 {
		t.Errorf("fakeprovider at %s:%d", sa.GetAddress(), sa.GetPortValue())
	}
}

func objectsOf(t *testing.T, file string) []Object {
	t.Helper()
	objs, err := ParseObjects(mustRead(t, file))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func mustFind(t *testing.T, objs []Object, kind, ns, name string) Object {
	t.Helper()
	o, ok := FindObject(objs, kind, ns, name)
	if !ok {
		t.Fatalf("no %s %s/%s", kind, ns, name)
	}
	return o
}

// servicePort returns the port of the named port of a Service.
func servicePort(t *testing.T, svc Object, portName string) string {
	t.Helper()
	for _, p := range dig(t, svc.Doc, "spec", "ports").([]any) {
		if dig(t, p, "name") == portName {
			return fmt.Sprint(dig(t, p, "port"))
		}
	}
	t.Fatalf("%s has no port named %q", svc.Ref(), portName)
	return ""
}

func TestIstioManifestsAgree(t *testing.T) {
	cg := objectsOf(t, IstioCreditgate)
	svc := mustFind(t, cg, "Service", "creditgate", "creditgate")
	wantCluster := fmt.Sprintf("outbound|%s||creditgate.creditgate.svc.cluster.local", servicePort(t, svc, "grpc"))

	ef := objectsOf(t, IstioEnvoyFilter)
	if len(ef) != 1 || ef[0].Kind != "EnvoyFilter" || ef[0].Namespace != "istio-system" {
		t.Fatal("want one EnvoyFilter in istio-system")
	}
	patches := dig(t, ef[0].Doc, "spec", "configPatches").([]any)
	filter := dig(t, patches[0], "patch", "value")
	if dig(t, patches[0], "applyTo") != "HTTP_FILTER" || dig(t, patches[0], "match", "context") != "SIDECAR_OUTBOUND" ||
		dig(t, patches[0], "patch", "operation") != "INSERT_BEFORE" ||
		dig(t, patches[0], "match", "listener", "filterChain", "filter", "subFilter", "name") != "envoy.filters.http.router" {
		t.Error("the ext_proc filter must be inserted before the router on SIDECAR_OUTBOUND")
	}
	if dig(t, filter, "disabled") != true {
		t.Error("the filter must be off by default so that other mesh traffic never reaches the sidecar")
	}
	if got := dig(t, filter, "typed_config", "grpc_service", "envoy_grpc", "cluster_name"); got != wantCluster {
		t.Errorf("ext_proc cluster %q, want %q (from the creditgate Service)", got, wantCluster)
	}
	filterName := dig(t, filter, "name").(string)

	enabled := map[string]bool{}
	for _, p := range patches[1:] {
		if dig(t, p, "applyTo") != "VIRTUAL_HOST" {
			continue
		}
		vh := dig(t, p, "match", "routeConfiguration", "vhost", "name").(string)
		host, ok := strings.CutSuffix(vh, ":80")
		if !ok {
			t.Errorf("virtual host %q is not on port 80", vh)
		}
		perRoute := dig(t, p, "patch", "value", "typed_per_filter_config", filterName)
		if dig(t, perRoute, "@type") != "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute" {
			t.Errorf("%s: not enabled by an ExtProcPerRoute", vh)
		}
		enabled[host] = true
	}

	se := objectsOf(t, IstioServiceEntries)
	hosts := map[string]bool{}
	for _, o := range se {
		if o.Kind != "ServiceEntry" {
			continue
		}
		for _, h := range dig(t, o.Doc, "spec", "hosts").([]any) {
			host := h.(string)
			hosts[host] = true
			if !enabled[host] {
				t.Errorf("%s: ServiceEntry host without an ext_proc-enabling VIRTUAL_HOST patch: it would be unmetered", host)
			}
			dr := mustFind(t, se, "DestinationRule", o.Namespace, o.Name)
			if dig(t, dr.Doc, "spec", "host") != host {
				t.Errorf("%s: DestinationRule for another host", o.Ref())
			}
			pl := dig(t, dr.Doc, "spec", "trafficPolicy", "portLevelSettings", 0)
			if fmt.Sprint(dig(t, pl, "port", "number")) != "80" || dig(t, pl, "tls", "mode") != "SIMPLE" || dig(t, pl, "tls", "sni") != host {
				t.Errorf("%s: port 80 must originate TLS (SIMPLE) with SNI %s", dr.Ref(), host)
			}
		}
		for _, p := range dig(t, o.Doc, "spec", "ports").([]any) {
			if fmt.Sprint(dig(t, p, "number")) != "80" || dig(t, p, "protocol") != "HTTP" || fmt.Sprint(dig(t, p, "targetPort")) != "443" {
				t.Errorf("%s: only port 80 HTTP -> 443 may be declared (a TLS port is an unmetered path)", o.Ref())
			}
		}
	}
	for host := range enabled {
		if !hosts[host] {
			t.Errorf("VIRTUAL_HOST patch for %s, which no ServiceEntry declares", host)
		}
	}
	for _, host := range providerHosts {
		if !hosts[host] {
			t.Errorf("no ServiceEntry for %s", host)
		}
	}
}

func TestCreditgateManifest(t *testing.T) {
	objs := objectsOf(t, IstioCreditgate)
	ns := mustFind(t, objs, "Namespace", "", "creditgate")
	if dig(t, ns.Doc, "metadata", "labels", "istio-injection") != "disabled" {
		t.Error("the creditgate namespace must not get sidecars")
	}
	dep := mustFind(t, objs, "Deployment", "creditgate", "creditgate")
	if dig(t, dep.Doc, "spec", "template", "metadata", "annotations", "sidecar.istio.io/inject") != "false" {
		t.Error("the sidecar's pod must not get an Istio sidecar (its gRPC would pass through ext_proc)")
	}
	svc := mustFind(t, objs, "Service", "creditgate", "creditgate")
	if servicePort(t, svc, "grpc") != "9000" || servicePort(t, svc, "http-admin") != "8081" {
		t.Error("want ports grpc 9000 and http-admin 8081")
	}
	cm := mustFind(t, objs, "ConfigMap", "creditgate", "creditgate")
	var cfg struct {
		ShutdownTimeout string `json:"shutdown_timeout"`
	}
	if err := yaml.Unmarshal([]byte(dig(t, cm.Doc, "data", "config.yaml").(string)), &cfg); err != nil {
		t.Fatal(err)
	}
	shutdown, err := time.ParseDuration(cfg.ShutdownTimeout)
	if err != nil {
		t.Fatalf("shutdown_timeout: %v", err)
	}
	grace, err := strconv.Atoi(fmt.Sprint(dig(t, dep.Doc, "spec", "template", "spec", "terminationGracePeriodSeconds")))
	if err != nil {
		t.Fatal(err)
	}
	// serve waits shutdown_timeout for streams, then again for settlements.
	if 2*shutdown >= time.Duration(grace)*time.Second {
		t.Errorf("2 x shutdown_timeout (%s) does not fit in terminationGracePeriodSeconds (%ds)", shutdown, grace)
	}

	redis := mustFind(t, objs, "Deployment", "creditgate", "redis")
	c := dig(t, redis.Doc, "spec", "template", "spec", "containers", 0)
	var args []string
	for _, a := range dig(t, c, "args").([]any) {
		args = append(args, a.(string))
	}
	if i := slices.Index(args, "--appendonly"); i < 0 || i+1 >= len(args) || args[i+1] != "yes" {
		t.Errorf("redis args %v lack --appendonly yes", args)
	}
	pvc := mustFind(t, objs, "PersistentVolumeClaim", "creditgate", "redis-data")
	if dig(t, redis.Doc, "spec", "template", "spec", "volumes", 0, "persistentVolumeClaim", "claimName") != pvc.Name {
		t.Error("redis does not mount its PVC")
	}
	mustFind(t, objs, "Service", "creditgate", "redis")
}

func TestGatewayManifestsAgree(t *testing.T) {
	cg := objectsOf(t, IstioCreditgate)
	pol := objectsOf(t, GatewayPolicy)
	gw := objectsOf(t, GatewayExample)

	eep := mustFind(t, pol, "EnvoyExtensionPolicy", "llm-egress", "creditgate")
	target := dig(t, eep.Doc, "spec", "targetRefs", 0)
	gateway := mustFind(t, gw, "Gateway", eep.Namespace, dig(t, target, "name").(string))

	ref := dig(t, eep.Doc, "spec", "extProc", 0, "backendRefs", 0)
	svc := mustFind(t, cg, "Service", dig(t, ref, "namespace").(string), dig(t, ref, "name").(string))
	if fmt.Sprint(dig(t, ref, "port")) != servicePort(t, svc, "grpc") {
		t.Error("the policy points at a port other than the sidecar's grpc port")
	}
	grant := mustFind(t, pol, "ReferenceGrant", svc.Namespace, "creditgate-from-llm-egress")
	if dig(t, grant.Doc, "spec", "from", 0, "namespace") != eep.Namespace || dig(t, grant.Doc, "spec", "to", 0, "name") != svc.Name {
		t.Error("the ReferenceGrant does not admit the policy's reference")
	}
	ctp := mustFind(t, pol, "ClientTrafficPolicy", gateway.Namespace, "creditgate-buffers")
	if dig(t, ctp.Doc, "spec", "targetRefs", 0, "name") != gateway.Name || dig(t, ctp.Doc, "spec", "connection", "bufferLimit") != "32Mi" {
		t.Error("the Gateway needs a 32Mi buffer limit for Buffered bodies")
	}

	routes := 0
	for _, o := range gw {
		if o.Kind != "HTTPRoute" {
			continue
		}
		routes++
		host := dig(t, o.Doc, "spec", "hostnames", 0).(string)
		rule := dig(t, o.Doc, "spec", "rules", 0)
		if dig(t, rule, "timeouts", "request") != "0s" {
			t.Errorf("%s: want request timeout 0s for streams", o.Ref())
		}
		be := mustFind(t, gw, "Backend", o.Namespace, dig(t, rule, "backendRefs", 0, "name").(string))
		if dig(t, be.Doc, "spec", "endpoints", 0, "fqdn", "hostname") != host || dig(t, be.Doc, "spec", "tls", "sni") != host ||
			fmt.Sprint(dig(t, be.Doc, "spec", "endpoints", 0, "fqdn", "port")) != "443" {
			t.Errorf("%s: must reach %s:443 over TLS with SNI %s", be.Ref(), host, host)
		}
	}
	if routes == 0 {
		t.Error("no HTTPRoute in the example")
	}
}
