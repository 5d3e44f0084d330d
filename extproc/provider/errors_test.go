package provider

import (
	"testing"
)

func TestErrorBody(t *testing.T) {
	tests := []struct {
		dialect string
		status  int
		errType string
		want    string
	}{
		{DialectOpenAI, 402, "insufficient_quota",
			`{"error":{"message":"m","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`},
		{"", 429, "rate_limit_exceeded",
			`{"error":{"message":"m","type":"rate_limit_exceeded","param":null,"code":"rate_limit_exceeded"}}`},
		{DialectAnthropic, 402, "insufficient_quota", `{"type":"error","error":{"type":"billing_error","message":"m"}}`},
		{DialectAnthropic, 429, "insufficient_quota", `{"type":"error","error":{"type":"rate_limit_error","message":"m"}}`},
		{DialectAnthropic, 503, "", `{"type":"error","error":{"type":"overloaded_error","message":"m"}}`},
		{DialectAnthropic, 418, "permission_error", `{"type":"error","error":{"type":"permission_error","message":"m"}}`},
		{DialectAnthropic, 500, "", `{"type":"error","error":{"type":"api_error","message":"m"}}`},
		{DialectGemini, 402, "insufficient_quota", `{"error":{"code":402,"message":"m","status":"FAILED_PRECONDITION"}}`},
		{DialectGemini, 429, "", `{"error":{"code":429,"message":"m","status":"RESOURCE_EXHAUSTED"}}`},
		{DialectGemini, 402, "RESOURCE_EXHAUSTED", `{"error":{"code":402,"message":"m","status":"RESOURCE_EXHAUSTED"}}`},
		{DialectGemini, 502, "", `{"error":{"code":502,"message":"m","status":"INTERNAL"}}`},
		{DialectGemini, 418, "", `{"error":{"code":418,"message":"m","status":"UNKNOWN"}}`},
	}
	for _, tc := range tests {
		ct, body := ErrorBody(tc.dialect, tc.status, tc.errType, "m")
		if ct != "application/json" || string(body) != tc.want {
			t.Errorf("ErrorBody(%q, %d, %q) = %s %s\nwant %s", tc.dialect, tc.status, tc.errType, ct, body, tc.want)
		}
	}
	// Messages are JSON-escaped.
	_, body := ErrorBody(DialectOpenAI, 402, "insufficient_quota", "a \"quoted\" <b>\n")
	if want := `{"error":{"message":"a \"quoted\" \u003cb\u003e\n","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}`; string(body) != want {
		t.Errorf("escaping: %s", body)
	}
}

// Each mid-stream error event is read back by this package's own parser as
// an error of the same route.
func TestErrorEventRoundTrip(t *testing.T) {
	tests := []struct {
		route    Route
		wantWire string
		wantErr  ProviderError
	}{
		{Route{Provider: ProviderOpenAI, Kind: KindOpenAIChat},
			`data: {"error":{"message":"m","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}` + "\n\n",
			ProviderError{Type: "insufficient_quota", Code: "insufficient_quota", Message: "m"}},
		{Route{Provider: ProviderOpenAI, Kind: KindOpenAIResponses},
			"event: error\n" + `data: {"type":"error","code":"insufficient_quota","message":"m","param":null}` + "\n\n",
			ProviderError{Type: "error", Code: "insufficient_quota", Message: "m"}},
		{Route{Provider: ProviderAnthropic, Kind: KindAnthropicMessages},
			"event: error\n" + `data: {"type":"error","error":{"type":"billing_error","message":"m"}}` + "\n\n",
			ProviderError{Type: "billing_error", Message: "m"}},
		{Route{Provider: ProviderGemini, Kind: KindGeminiStream},
			`data: {"error":{"code":402,"message":"m","status":"FAILED_PRECONDITION"}}` + "\n\n",
			ProviderError{Type: "FAILED_PRECONDITION", Code: "402", Message: "m"}},
	}
	for _, tc := range tests {
		ev := ErrorEvent(tc.route, 402, "insufficient_quota", "m")
		if string(ev) != tc.wantWire {
			t.Errorf("%s: ErrorEvent = %q\nwant %q", tc.route.Kind, ev, tc.wantWire)
		}
		p := NewStreamParser(tc.route, Request{Model: "x"})
		p.Feed(ev)
		res := p.Finish()
		if res.Err == nil || *res.Err != tc.wantErr {
			t.Errorf("%s: parsed %+v, want %+v", tc.route.Kind, res.Err, tc.wantErr)
		}
	}
}

func TestProviderErrorString(t *testing.T) {
	tests := []struct {
		e    ProviderError
		want string
	}{
		{ProviderError{Type: "overloaded_error", Message: "Overloaded"}, "provider error overloaded_error: Overloaded"},
		{ProviderError{Type: "UNAVAILABLE", Code: "503", Message: "busy"}, "provider error UNAVAILABLE (503): busy"},
		{ProviderError{Type: "insufficient_quota", Code: "insufficient_quota"}, "provider error insufficient_quota"},
		{ProviderError{}, "provider error"},
	}
	for _, tc := range tests {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.e, got, tc.want)
		}
	}
}
