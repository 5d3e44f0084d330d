package extproc_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLongStreamKeepsItsHold: a stream that lasts several hold TTLs, with a
// sweeper running, must end in an ordinary capture — not an expiry followed
// by a late capture that could overdraw the account.
func TestLongStreamKeepsItsHold(t *testing.T) {
	const ttl = 400 * time.Millisecond
	m := newEmu(t, emuConfig{envConfig: envConfig{HoldTTL: ttl, SweepLease: 50 * time.Millisecond}})
	m.serve(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "text/event-stream")
		fl := w.(http.Flusher)
		for i := 0; i < 20; i++ { // ~2s: five hold TTLs
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"w%d \"}}]}\n\n", i)
			fl.Flush()
			time.Sleep(100 * time.Millisecond)
		}
		fmt.Fprint(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20,\"total_tokens\":30}}\n\ndata: [DONE]\n\n")
	})
	ctx, cancel := context.WithCancel(m.ctx)
	defer cancel()
	go func() { // a sidecar's sweeper
		for ctx.Err() == nil {
			_, _ = m.led.Sweep(ctx)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	body := []byte(`{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`)
	resp, out := m.do(m.ctx, "POST", "api.openai.com", "/v1/chat/completions",
		http.Header{"Authorization": {"Bearer " + virtualKey}, "Content-Type": {"application/json"}}, body)
	if resp.StatusCode != 200 || !strings.Contains(string(out), "[DONE]") {
		t.Fatalf("stream: %d %s", resp.StatusCode, out)
	}
	es := m.requestEntries()
	if got := strings.Join(entryTypes(es), ","); got != "reserve,capture" {
		t.Fatalf("journal %s: the long stream's hold expired under it", got)
	}
	if es[1].Late || es[1].Estimated {
		t.Fatalf("capture %+v", es[1])
	}
	m.audit()
}

// TestLongBufferedCallKeepsItsHold: a non-streamed call whose answer takes
// several hold TTLs (Envoy sends nothing while it waits) must still end in an
// ordinary capture.
func TestLongBufferedCallKeepsItsHold(t *testing.T) {
	const ttl = 400 * time.Millisecond
	m := newEmu(t, emuConfig{envConfig: envConfig{HoldTTL: ttl, SweepLease: 50 * time.Millisecond}})
	m.serve(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * ttl) // five hold TTLs before the first byte
		w.Header().Set("content-type", "application/json")
		fmt.Fprint(w, `{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"ok"}}],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}`)
	})
	ctx, cancel := context.WithCancel(m.ctx)
	defer cancel()
	go func() { // a sidecar's sweeper
		for ctx.Err() == nil {
			_, _ = m.led.Sweep(ctx)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	body := []byte(`{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}`)
	resp, out := m.do(m.ctx, "POST", "api.openai.com", "/v1/chat/completions",
		http.Header{"Authorization": {"Bearer " + virtualKey}, "Content-Type": {"application/json"}}, body)
	if resp.StatusCode != 200 {
		t.Fatalf("call: %d %s", resp.StatusCode, out)
	}
	es := m.requestEntries()
	if got := strings.Join(entryTypes(es), ","); got != "reserve,capture" {
		t.Fatalf("journal %s: the hold expired while the answer was awaited", got)
	}
	if es[1].Late || es[1].Estimated {
		t.Fatalf("capture %+v", es[1])
	}
	m.audit()
}
