package fakeprovider

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func body(s string) Transcript { return Transcript{Body: []byte(s)} }

func TestRouting(t *testing.T) {
	p := New()
	p.Add(Route{Transcript: body("catch-all")})
	p.Add(Route{Path: "/v1/chat/completions", Transcript: body("path")})
	p.Add(Route{Model: "gpt-4o", Transcript: body("model")})
	p.Add(Route{Path: "/v1/chat/completions", Model: "gpt-4o", Transcript: body("path+model")})
	p.Add(Route{Scenario: "quota", Transcript: body("scenario")})
	p.Add(Route{Path: "/v1/messages", Transcript: body("messages-old")})
	p.Add(Route{Path: "/v1/messages", Transcript: body("messages-new")})
	p.Add(Route{Path: "/v1beta/models/gemini-2.5-pro:generateContent", Model: "gemini-2.5-pro", Transcript: body("gemini-by-path-model")})
	srv := httptest.NewServer(p)
	defer srv.Close()

	tests := []struct {
		name, path, body, scenario, want string
	}{
		{"nothing specific", "/other", `{}`, "", "catch-all"},
		{"path", "/v1/chat/completions", `{"model":"gpt-4o-mini"}`, "", "path"},
		{"model anywhere", "/other", `{"model":"gpt-4o"}`, "", "model"},
		{"path and model beat path", "/v1/chat/completions", `{"model":"gpt-4o"}`, "", "path+model"},
		{"scenario beats everything", "/v1/chat/completions", `{"model":"gpt-4o"}`, "quota", "scenario"},
		{"latest of equals wins", "/v1/messages", `{}`, "", "messages-new"},
		{"model from the URL path", "/v1beta/models/gemini-2.5-pro:generateContent", `{"contents":[]}`, "", "gemini-by-path-model"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", srv.URL+tc.path, strings.NewReader(tc.body))
			if tc.scenario != "" {
				req.Header.Set(ScenarioHeader, tc.scenario)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if string(got) != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRouterFirstThenNotFound(t *testing.T) {
	p := New(WithRouter(func(r *http.Request, b []byte) (Transcript, bool) {
		if strings.Contains(string(b), "special") {
			return Transcript{Status: 418, Body: []byte("router")}, true
		}
		return Transcript{}, false
	}))
	p.Handle("/x", body("route"))
	srv := httptest.NewServer(p)
	defer srv.Close()
	tests := []struct {
		path, body string
		status     int
		want       string
	}{
		{"/x", `{"special":1}`, 418, "router"},
		{"/x", `{}`, 200, "route"},
		{"/y", `{}`, 404, `{"error":{"code":"not_found","message":"fakeprovider: no transcript for POST /y","param":null,"type":"invalid_request_error"}}` + "\n"},
	}
	for _, tc := range tests {
		resp, err := http.Post(srv.URL+tc.path, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || string(got) != tc.want {
			t.Errorf("%s %s: got %d %q, want %d %q", tc.path, tc.body, resp.StatusCode, got, tc.status, tc.want)
		}
	}
}

func TestRecordsRequests(t *testing.T) {
	p := New()
	p.Handle("/v1/messages", body("ok"))
	srv := httptest.NewServer(p)
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/v1/messages?beta=true", strings.NewReader(`{"model":"claude-haiku-4-5","max_tokens":5}`))
	req.Header.Set("X-Api-Key", "sk-test")
	req.Header.Set(ScenarioHeader, "s1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	reqs := p.Requests()
	if len(reqs) != 1 {
		t.Fatalf("recorded %d requests", len(reqs))
	}
	r := reqs[0]
	if r.Method != "POST" || r.Path != "/v1/messages" || r.RawQuery != "beta=true" ||
		r.Header.Get("X-Api-Key") != "sk-test" || string(r.Body) != `{"model":"claude-haiku-4-5","max_tokens":5}` ||
		r.Model != "claude-haiku-4-5" || r.Scenario != "s1" {
		t.Errorf("recorded %+v", r)
	}
	p.Reset()
	if len(p.Requests()) != 0 {
		t.Error("Reset kept requests")
	}
}

func TestModelOf(t *testing.T) {
	tests := []struct{ path, body, want string }{
		{"/v1/chat/completions", `{"model":"gpt-4o"}`, "gpt-4o"},
		{"/v1beta/models/gemini-2.5-flash:streamGenerateContent", `{}`, "gemini-2.5-flash"},
		{"/v1/projects/p/locations/global/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict", `{}`, "claude-sonnet-4@20250514"},
		{"/model/us.anthropic.claude-sonnet-4-20250514-v1:0/invoke", `{}`, "us.anthropic.claude-sonnet-4-20250514-v1:0"},
		{"/openai/deployments/prod-gpt4o/chat/completions", `{"messages":[]}`, "prod-gpt4o"},
		{"/v1/chat/completions", `not json`, ""},
	}
	for _, tc := range tests {
		if got := modelOf(tc.path, []byte(tc.body)); got != tc.want {
			t.Errorf("modelOf(%q, %q) = %q, want %q", tc.path, tc.body, got, tc.want)
		}
	}
}
