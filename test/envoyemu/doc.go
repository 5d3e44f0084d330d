// Package envoyemu is a test client for ExternalProcessor servers that
// behaves like Envoy's envoy.filters.http.ext_proc HTTP filter. A Proxy is an
// http.Handler reverse proxy: it builds the request header map like Envoy's
// connection manager, drives one lazily opened gRPC Process stream per HTTP
// request through the same state machine as ext_proc.cc and
// processor_state.cc, and forwards to an upstream URL.
//
// The behaviour follows /work/shared/envoy-extproc.md (Envoy 1.37–1.40);
// comments cite its sections. Not emulated: FULL_DUPLEX_STREAMED and GRPC body
// modes, observability_mode, http_service, StreamedImmediateResponse,
// processing_request_modifier, typed metadata, watermark back-pressure and
// route cache clearing (there is one route).
//
// The package depends on no creditgate package so it can be reused.
package envoyemu
