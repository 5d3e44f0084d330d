package extproc_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestUnreadableBodyChargedWithinTheHold: a 2xx whose body cannot be parsed
// (here cut off mid-JSON) was billed by the provider, so its bytes count as
// output for the estimate — more than the prompt alone — and the estimate
// never exceeds the hold.
func TestUnreadableBodyChargedWithinTheHold(t *testing.T) {
	m := newEmu(t, emuConfig{})
	long := strings.Repeat("token ", 400) // ~2400 bytes of output, then the body breaks off
	m.serve(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		w.Write([]byte(`{"id":"c","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"` + long))
	})
	for _, maxTokens := range []string{"2000", "50"} {
		body := []byte(`{"model":"gpt-4o-mini","max_tokens":` + maxTokens + `,"messages":[{"role":"user","content":"hi"}]}`)
		resp, out := m.do(m.ctx, "POST", "api.openai.com", "/v1/chat/completions",
			http.Header{"Authorization": {"Bearer " + virtualKey}, "Content-Type": {"application/json"}}, body)
		if resp.StatusCode != 200 {
			t.Fatalf("max_tokens %s: %d %s", maxTokens, resp.StatusCode, out)
		}
	}
	es := m.requestEntries()
	var caps []int64
	var holds []int64
	for _, e := range es {
		switch e.Type {
		case "capture":
			if !e.Estimated {
				t.Fatalf("unreadable body captured as exact: %+v", e)
			}
			caps = append(caps, int64(e.Amount))
			holds = append(holds, int64(e.HoldAmount))
		}
	}
	if len(caps) != 2 {
		t.Fatalf("journal %v", entryTypes(es))
	}
	// With room in the hold, the ~800 output tokens the bytes stand for are
	// charged: far more than a prompt of a few tokens.
	if caps[0] < 100 || caps[0] > holds[0] {
		t.Fatalf("first capture %d µUSD (hold %d): want the output bytes counted, within the hold", caps[0], holds[0])
	}
	// With max_tokens 50 the same bytes would cost more than the hold: capped.
	if caps[1] != holds[1] {
		t.Fatalf("second capture %d µUSD, want capped at the hold %d", caps[1], holds[1])
	}
	m.audit()
}
