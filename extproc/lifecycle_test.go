package extproc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// TestDrainWaitsForInFlightSettlement: the sidecar shuts down while a stream
// is inside its reserve (Redis slow). grpc.Server.Stop cancels the stream
// but does not wait for the handler; the reserve still lands, and the
// stream, now ended, must capture the prompt estimate. Drain must not return
// before that capture is in the ledger, or shutdown loses the debit.
func TestDrainWaitsForInFlightSettlement(t *testing.T) {
	e := newEnv(t, envConfig{})
	block := make(chan struct{})
	e.faults.mu.Lock()
	e.faults.blockReserve = block
	e.faults.mu.Unlock()

	ctx, cancel := context.WithTimeout(e.ctx, guard)
	defer cancel()
	cs, err := e.client.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, "openai_chat_request.json")
	hdr := func(kv ...string) *corev3.HeaderMap {
		m := &corev3.HeaderMap{}
		for i := 0; i < len(kv); i += 2 {
			m.Headers = append(m.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
		}
		return m
	}
	if err := cs.Send(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: hdr(
			":authority", "api.openai.com", ":path", "/v1/chat/completions", ":method", "POST", ":scheme", "http",
			"authorization", "Bearer "+virtualKey, "content-type", "application/json", "x-request-id", "drain-1")}},
		MetadataContext: &corev3.Metadata{},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := cs.Send(&extprocv3.ProcessingRequest{
		Request:         &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}},
		MetadataContext: &corev3.Metadata{},
	}); err != nil {
		t.Fatal(err)
	}
	// Wait until the server is inside Reserve (a bound against hangs only).
	for deadline := time.Now().Add(guard); e.faults.count("reserve") == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the reserve never started")
		}
	}
	e.gs.Stop()
	drained := make(chan error, 1)
	go func() {
		dctx, dcancel := context.WithTimeout(e.ctx, guard)
		defer dcancel()
		drained <- e.srv.Drain(dctx)
	}()
	close(block)
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
	// Drain has returned: the settlement must already be in the ledger.
	es := e.requestEntries()
	// The request-body reply never reached Envoy, so the request never went
	// upstream: the hold is released, not charged.
	if got := strings.Join(entryTypes(es), ","); got != "reserve,release" {
		t.Fatalf("journal when Drain returned: %s %+v, want the reserve and its release", got, es)
	}
	if b := e.balance(); b.Held != 0 {
		t.Fatalf("held %s after Drain", b.Held)
	}
	e.audit()
}
