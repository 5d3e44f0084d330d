package provider

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

var injectedReq = Request{Model: "gpt-4o-mini", Stream: true, InjectedUsage: true}

const (
	contentEv   = `data: {"id":"c","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"Hi"}}]}` + "\n\n"
	usageOnlyEv = `data: {"id":"c","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}` + "\n\n"
	doneEv      = "data: [DONE]\n\n"
)

func TestHideOnlyUsageOnlyEvents(t *testing.T) {
	tests := []struct {
		name string
		ev   string
		hide bool
	}{
		{"usage only", usageOnlyEv, true},
		{"usage only, comment and id in the block", ": c\nid: 7\n" + usageOnlyEv, true},
		{"usage only, CRLF", strings.ReplaceAll(usageOnlyEv, "\n", "\r\n"), true},
		{"usage with choices (Mistral style)", `data: {"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}` + "\n\n", false},
		{"azure filter chunk: empty choices, no usage", `data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[]}` + "\n\n", false},
		{"usage null", `data: {"choices":[],"usage":null}` + "\n\n", false},
		{"error", `data: {"choices":[],"usage":{"prompt_tokens":1},"error":{"message":"x"}}` + "\n\n", false},
		{"done", doneEv, false},
		{"not json", "data: {oops\n\n", false},
	}
	for _, tc := range tests {
		in := contentEv + tc.ev + doneEv
		want := in
		if tc.hide {
			want = contentEv + doneEv
		}
		fwd, _ := feedParts(routeOpenAIChat, injectedReq, [][]byte{[]byte(in)})
		if string(fwd) != want {
			t.Errorf("%s: forwarded %q\nwant %q", tc.name, fwd, want)
		}
		// The client asked for usage itself: nothing is hidden.
		asked := injectedReq
		asked.ClientAskedUsage = true
		if fwd, _ := feedParts(routeOpenAIChat, asked, [][]byte{[]byte(in)}); string(fwd) != in {
			t.Errorf("%s: client asked for usage but got %q", tc.name, fwd)
		}
	}
}

func TestHideHoldsIncompleteEvents(t *testing.T) {
	p := NewStreamParser(routeOpenAIChat, injectedReq)
	half := len(contentEv) / 2
	if out := p.Feed([]byte(contentEv[:half])); len(out) != 0 {
		t.Fatalf("forwarded %q before the event was complete", out)
	}
	if out := p.Feed([]byte(contentEv[half:] + usageOnlyEv[:10])); string(out) != contentEv {
		t.Fatalf("forwarded %q, want the content event", out)
	}
	if out := p.Feed([]byte(usageOnlyEv[10:])); len(out) != 0 {
		t.Fatalf("forwarded %q, want nothing (usage chunk hidden)", out)
	}
	if out := p.Feed([]byte("data: [DO")); len(out) != 0 {
		t.Fatalf("forwarded %q", out)
	}
	res := p.Finish()
	if string(res.Tail) != "data: [DO" {
		t.Errorf("Tail = %q, want the held partial event as received", res.Tail)
	}
	if !res.HaveUsage || res.Usage.InputTokens != 3 {
		t.Errorf("usage = %+v", res)
	}
	// Passthrough mode forwards each chunk as is and has no tail.
	p = NewStreamParser(routeOpenAIChat, Request{Model: "m"})
	chunk := []byte(contentEv[:half])
	if out := p.Feed(chunk); &out[0] != &chunk[0] || len(out) != len(chunk) {
		t.Error("passthrough must return the chunk itself")
	}
	if res := p.Finish(); res.Tail != nil {
		t.Errorf("passthrough Tail = %q", res.Tail)
	}
}

func TestHideOverflowForwardsUnfiltered(t *testing.T) {
	p := NewStreamParser(routeOpenAIChat, injectedReq)
	big := []byte("data: {\"x\":\"" + strings.Repeat("a", maxHeldBytes+2<<20) + "\"}\n\n")
	var fwd []byte
	for i := 0; i < len(big); i += 1 << 20 {
		fwd = append(fwd, p.Feed(big[i:min(i+1<<20, len(big))])...)
	}
	fwd = append(fwd, p.Feed([]byte(usageOnlyEv))...)
	res := p.Finish()
	fwd = append(fwd, res.Tail...)
	if !bytes.Equal(fwd, append(big, usageOnlyEv...)) {
		t.Errorf("forwarded %d bytes, want all %d unfiltered", len(fwd), len(big)+len(usageOnlyEv))
	}
	if len(res.Warnings) == 0 || !strings.Contains(res.Warnings[0], "forwarded unfiltered") {
		t.Errorf("warnings = %q", res.Warnings)
	}
	if !res.HaveUsage {
		t.Error("usage after the overflow was not read")
	}
}

func TestOverlongLineSkipped(t *testing.T) {
	p := NewStreamParser(routeOpenAIChat, Request{Model: "m"})
	line := []byte("data: " + strings.Repeat("x", maxLineBytes+10))
	for i := 0; i < len(line); i += 1 << 20 {
		p.Feed(line[i:min(i+1<<20, len(line))])
	}
	p.Feed([]byte("\r"))
	p.Feed([]byte("\n\r\n" + usageOnlyEv))
	res := p.Finish()
	if !res.HaveUsage || res.Usage.InputTokens != 3 {
		t.Errorf("event after the over-long line not parsed: %+v", res)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "line over") {
		t.Errorf("warnings = %q", res.Warnings)
	}
}

func TestFinish(t *testing.T) {
	p := NewStreamParser(routeOpenAIChat, injectedReq)
	p.Feed([]byte(contentEv))
	r1 := p.Finish()
	r2 := p.Finish()
	if r1.Model != r2.Model || r2.Tail != nil {
		t.Errorf("second Finish: %+v vs %+v", r2, r1)
	}
	defer func() {
		if recover() == nil {
			t.Error("Feed after Finish did not panic")
		}
	}()
	p.Feed([]byte(contentEv))
}

func TestStreamEdges(t *testing.T) {
	tests := []struct {
		name  string
		route Route
		in    string
		check func(Result) bool
	}{
		{"last event without blank line is read", routeGeminiSSE,
			`data: {"candidates":[{"content":{"parts":[{"text":"ok"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"totalTokenCount":4}}`,
			func(r Result) bool { return r.HaveUsage && r.UsageFinal && r.Usage.OutputTokens == 1 && r.Complete }},
		{"last event ending in a bare CR", routeGeminiSSE,
			`data: {"candidates":[],"usageMetadata":{"promptTokenCount":3,"totalTokenCount":3}}` + "\r",
			func(r Result) bool { return r.HaveUsage && !r.UsageFinal && r.Usage.InputTokens == 3 }},
		{"CR-only framing", routeOpenAIChat, strings.ReplaceAll(contentEv+usageOnlyEv+doneEv, "\n", "\r"),
			func(r Result) bool { return r.HaveUsage && r.Complete && r.OutputBytes == 2 }},
		{"data without space, split data lines", routeOpenAIChat,
			"data:{\"choices\":[],\ndata:\"usage\":{\"prompt_tokens\":9}}\n\n",
			func(r Result) bool { return r.HaveUsage && r.Usage.InputTokens == 9 }},
		{"DONE tolerated on Anthropic", routeAnthropic, doneEv, func(r Result) bool { return r.Complete && len(r.Warnings) == 0 }},
		{"event name used when data has no type", routeAnthropic,
			"event: message_delta\ndata: {\"usage\":{\"output_tokens\":7}}\n\n",
			func(r Result) bool { return r.HaveUsage && r.UsageFinal && r.Usage.OutputTokens == 7 }},
		{"garbage data warns", routeResponses, "data: not json\n\n",
			func(r Result) bool { return len(r.Warnings) == 1 && !r.HaveUsage }},
		{"empty stream", routeOpenAIChat, "", func(r Result) bool { return !r.HaveUsage && !r.Complete && r.Model == "req-model" }},
		{"groq x_groq.error", Route{Provider: ProviderGroq, Kind: KindOpenAIChat},
			`data: {"choices":[],"x_groq":{"error":"stream stopped: capacity"}}` + "\n\n",
			func(r Result) bool { return r.Err != nil && r.Err.Message == "stream stopped: capacity" }},
		{"responses incomplete carries usage", routeResponses,
			"event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"model\":\"gpt-5\",\"status\":\"incomplete\",\"usage\":{\"input_tokens\":5,\"output_tokens\":100,\"total_tokens\":105}}}\n\n",
			func(r Result) bool { return r.UsageFinal && r.Usage.OutputTokens == 100 && r.Err == nil && r.Complete }},
		{"embeddings route never hides", routeEmbeddings, usageOnlyEv, func(r Result) bool { return r.HaveUsage }},
	}
	for _, tc := range tests {
		_, res := feedParts(tc.route, Request{Model: "req-model"}, [][]byte{[]byte(tc.in)})
		if !tc.check(res) {
			t.Errorf("%s: %+v", tc.name, res)
		}
	}
}

func TestGeminiArrayStream(t *testing.T) {
	route := routeGeminiSSE
	route.ArrayStream = true
	in := "[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a } ] \\\" { [\"}]}}],\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4}}\r\n," +
		"{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\\\\\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":4,\"candidatesTokenCount\":2,\"totalTokenCount\":6},\"modelVersion\":\"gemini-2.5-flash\"}]"
	for i := 0; i <= len(in); i++ {
		fwd, res := feedParts(route, Request{Model: "m"}, [][]byte{[]byte(in[:i]), []byte(in[i:])})
		if string(fwd) != in {
			t.Fatalf("split %d: forwarded bytes differ", i)
		}
		if !res.HaveUsage || !res.UsageFinal || res.Usage.OutputTokens != 2 || res.OutputBytes != int64(len("a } ] \" { [")+1) ||
			res.Model != "gemini-2.5-flash" || len(res.Warnings) != 0 {
			t.Fatalf("split %d: %+v", i, res)
		}
	}
	// An error body that is a bare object.
	_, res := feedParts(route, Request{Model: "m"}, [][]byte{[]byte(` {"error":{"code":429,"message":"slow down","status":"RESOURCE_EXHAUSTED"}}`)})
	if res.Err == nil || res.Err.Type != "RESOURCE_EXHAUSTED" || res.Err.Code != "429" {
		t.Errorf("bare error object: %+v", res)
	}
	// Truncated inside an element.
	_, res = feedParts(route, Request{Model: "m"}, [][]byte{[]byte(in[:40])})
	if res.HaveUsage || len(res.Warnings) != 1 {
		t.Errorf("truncated: %+v", res)
	}
}

func TestParseBodyEdges(t *testing.T) {
	req := Request{Model: "req-model"}
	tests := []struct {
		name  string
		route Route
		body  string
		check func(Result) bool
	}{
		{"openai error envelope", routeOpenAIChat, `{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`,
			func(r Result) bool {
				return r.Err != nil && r.Err.Code == "insufficient_quota" && !r.HaveUsage && r.Model == "req-model"
			}},
		{"anthropic error envelope", routeAnthropic, `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
			func(r Result) bool { return r.Err != nil && r.Err.Type == "overloaded_error" && !r.HaveUsage }},
		{"responses error envelope", routeResponses, `{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}`,
			func(r Result) bool { return r.Err != nil && r.Err.Type == "invalid_request_error" }},
		{"responses failed object", routeResponses, `{"object":"response","status":"failed","model":"gpt-5","error":{"code":"server_error","message":"x"},"usage":null}`,
			func(r Result) bool {
				return r.Err != nil && r.Err.Code == "server_error" && r.Model == "gpt-5" && !r.HaveUsage
			}},
		{"responses background", routeResponses, `{"object":"response","status":"queued","model":"gpt-5","usage":null}`,
			func(r Result) bool { return !r.HaveUsage && len(r.Warnings) == 1 }},
		{"gemini buffered array", routeGeminiSSE, `[{"usageMetadata":{"promptTokenCount":2,"totalTokenCount":2}},{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":3,"totalTokenCount":5}}]`,
			func(r Result) bool { return r.UsageFinal && r.Usage.OutputTokens == 3 && r.Complete }},
		{"gemini body without finishReason", routeGemini, `{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9}}`,
			func(r Result) bool { return r.HaveUsage && r.UsageFinal && r.Usage.InputTokens == 9 }},
		{"buffered SSE", routeOpenAIChat, contentEv + usageOnlyEv + doneEv,
			func(r Result) bool { return r.HaveUsage && r.Complete && r.OutputBytes == 2 }},
		{"chat without usage", routeOpenAIChat, `{"model":"x","choices":[{"message":{"content":"abc","tool_calls":[{"function":{"arguments":"{}"}}]}}]}`,
			func(r Result) bool { return !r.HaveUsage && r.OutputBytes == 5 && r.Model == "x" }},
		{"anthropic tool use bytes", routeAnthropic, `{"model":"c","content":[{"type":"tool_use","input":{"a":1}},{"type":"thinking","thinking":"hmm"}],"usage":{"input_tokens":1,"output_tokens":2}}`,
			func(r Result) bool { return r.OutputBytes == int64(len(`{"a":1}`)+3) && r.UsageFinal }},
	}
	for _, tc := range tests {
		res, err := ParseBody(tc.route, req, []byte(tc.body))
		if err != nil || !tc.check(res) {
			t.Errorf("%s: %+v, %v", tc.name, res, err)
		}
	}
	if _, err := ParseBody(routeOpenAIChat, req, []byte("<html>502 Bad Gateway</html>")); !errors.Is(err, ErrBadResponse) {
		t.Errorf("html body: err = %v, want ErrBadResponse", err)
	}
}
