// Package envoy ships creditgate's proxy configuration — a plain Envoy bootstrap, a demo bootstrap, Istio and
// Envoy Gateway manifests — and validates it against the go-control-plane (envoy/v1.40.0) protos, so that a
// misspelt field, an unknown extension, a broken value inside a typed_config or a route to a missing cluster
// fails `go test` instead of an Envoy start or an xDS push.
package envoy

import (
	"embed"
	"fmt"
	"io/fs"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// Paths of the shipped files, relative to this directory (and to FS()).
const (
	BootstrapFile       = "envoy.yaml"
	DemoBootstrapFile   = "envoy-demo.yaml"
	IstioEnvoyFilter    = "istio/envoyfilter.yaml"
	IstioServiceEntries = "istio/serviceentries.yaml"
	IstioCreditgate     = "istio/creditgate.yaml"
	GatewayPolicy       = "gateway/extensionpolicy.yaml"
	GatewayExample      = "gateway/gateway.yaml"
)

//go:embed envoy.yaml envoy-demo.yaml istio/*.yaml gateway/*.yaml
var shipped embed.FS

// FS returns the shipped configuration files, read-only.
func FS() fs.FS { return shipped }

// ReadFile returns one shipped file by its path constant.
func ReadFile(name string) ([]byte, error) {
	b, err := shipped.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("envoy: shipped file %q: %w", name, err)
	}
	return b, nil
}

// ShippedExtProcFilter returns the ext_proc filter configuration of
// envoy.yaml, the one every creditgate deployment runs, as a fresh copy the
// caller may change. The demo proxy and the end-to-end tests drive the
// sidecar through exactly this configuration.
func ShippedExtProcFilter() (*extprocfilterv3.ExternalProcessor, error) {
	doc, err := ReadFile(BootstrapFile)
	if err != nil {
		return nil, err
	}
	b, err := ParseBootstrap(doc)
	if err != nil {
		return nil, err
	}
	fs, err := ExtProcFilters(b)
	if err != nil {
		return nil, err
	}
	if len(fs) != 1 {
		return nil, fmt.Errorf("envoy: want one ext_proc filter in %s, found %d", BootstrapFile, len(fs))
	}
	return proto.Clone(fs[0]).(*extprocfilterv3.ExternalProcessor), nil
}
