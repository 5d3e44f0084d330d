package provider

// These tests answer real SDK clients (openai-go, anthropic-sdk-go) from a
// loopback httptest server, to prove that what this package writes or
// forwards is what those SDKs parse: typed 402 errors, stream error events,
// and a chat stream with the injected usage chunk hidden.

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// serve answers every request with status, content type and body, and
// counts requests (to see retries).
func serve(t *testing.T, status int, contentType string, body []byte) (url string, hits *atomic.Int32) {
	t.Helper()
	hits = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("x-should-retry", "false")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, hits
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // only against hangs
	t.Cleanup(cancel)
	return ctx
}

func openAIClient(url string) *openai.Client {
	c := openai.NewClient(option.WithBaseURL(url), option.WithAPIKey("sk-test"))
	return &c
}

func anthropicClient(url string) *anthropic.Client {
	c := anthropic.NewClient(aoption.WithBaseURL(url), aoption.WithAPIKey("sk-ant-test"))
	return &c
}

var chatParams = openai.ChatCompletionNewParams{
	Model:    "gpt-4o-mini",
	Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
}

var messageParams = anthropic.MessageNewParams{
	Model:     "claude-sonnet-4-5",
	MaxTokens: 16,
	Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("hi"))},
}

func TestErrorBodyOpenAISDK(t *testing.T) {
	ct, body := ErrorBody(DialectOpenAI, 402, "insufficient_quota", "balance $0.12 covers at most 80 output tokens")
	url, hits := serve(t, 402, ct, body)
	_, err := openAIClient(url).Chat.Completions.New(testCtx(t), chatParams)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("err = %v, want *openai.Error", err)
	}
	if apiErr.StatusCode != 402 || apiErr.Type != "insufficient_quota" || apiErr.Code != "insufficient_quota" ||
		apiErr.Message != "balance $0.12 covers at most 80 output tokens" {
		t.Errorf("parsed %d type=%q code=%q message=%q", apiErr.StatusCode, apiErr.Type, apiErr.Code, apiErr.Message)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("SDK sent %d requests, want 1 (402 must not be retried)", n)
	}
}

func TestErrorBodyAnthropicSDK(t *testing.T) {
	ct, body := ErrorBody(DialectAnthropic, 402, "insufficient_quota", "credit balance too low")
	url, hits := serve(t, 402, ct, body)
	_, err := anthropicClient(url).Messages.New(testCtx(t), messageParams)
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("err = %v, want *anthropic.Error", err)
	}
	if apiErr.StatusCode != 402 || string(apiErr.Type()) != "billing_error" || apiErr.Message != "credit balance too low" {
		t.Errorf("parsed %d type=%q message=%q", apiErr.StatusCode, apiErr.Type(), apiErr.Message)
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("SDK sent %d requests, want 1", n)
	}
}

func TestErrorEventOpenAIChatSDK(t *testing.T) {
	route := Route{Provider: ProviderOpenAI, Kind: KindOpenAIChat, Dialect: DialectOpenAI}
	stream := `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}` + "\n\n" +
		string(ErrorEvent(route, 402, "insufficient_quota", "credit exhausted mid-stream"))
	url, _ := serve(t, 200, "text/event-stream", []byte(stream))
	s := openAIClient(url).Chat.Completions.NewStreaming(testCtx(t), chatParams)
	var got strings.Builder
	for s.Next() {
		for _, c := range s.Current().Choices {
			got.WriteString(c.Delta.Content)
		}
	}
	if got.String() != "Hel" {
		t.Errorf("content before the error = %q", got.String())
	}
	if s.Err() == nil || !strings.Contains(s.Err().Error(), "credit exhausted mid-stream") {
		t.Errorf("stream error = %v, want the gateway's message", s.Err())
	}

	// And our own parser reports it the same way.
	p := NewStreamParser(route, Request{Model: "gpt-4o-mini"})
	p.Feed([]byte(stream))
	if res := p.Finish(); res.Err == nil || res.Err.Type != "insufficient_quota" || res.Err.Message != "credit exhausted mid-stream" {
		t.Errorf("parser Err = %+v", res.Err)
	}
}

func TestErrorEventAnthropicSDK(t *testing.T) {
	route := Route{Provider: ProviderAnthropic, Kind: KindAnthropicMessages, Dialect: DialectAnthropic}
	stream := "event: message_start\n" +
		`data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}` + "\n\n" +
		string(ErrorEvent(route, 402, "", "credit exhausted mid-stream"))
	url, _ := serve(t, 200, "text/event-stream", []byte(stream))
	s := anthropicClient(url).Messages.NewStreaming(testCtx(t), messageParams)
	for s.Next() {
	}
	if s.Err() == nil || !strings.Contains(s.Err().Error(), "credit exhausted mid-stream") {
		t.Errorf("stream error = %v, want the gateway's message", s.Err())
	}
	var apiErr *anthropic.Error
	if !errors.As(s.Err(), &apiErr) || string(apiErr.Type()) != "billing_error" {
		t.Errorf("stream error = %#v, want *anthropic.Error of type billing_error", s.Err())
	}
	p := NewStreamParser(route, Request{Model: "claude-sonnet-4-5"})
	p.Feed([]byte(stream))
	res := p.Finish()
	if res.Err == nil || res.Err.Type != "billing_error" || !res.HaveUsage || res.Usage.InputTokens != 5 {
		t.Errorf("parser result = %+v", res)
	}
}

// A client that never asked for usage reads the stream the gateway
// forwards after injecting include_usage: it must see every content chunk
// and no chunk with empty choices.
func TestHiddenUsageChunkOpenAISDK(t *testing.T) {
	route := Route{Provider: ProviderOpenAI, Kind: KindOpenAIChat, Dialect: DialectOpenAI}
	req, err := ParseRequest(route, []byte(`{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}`))
	if err != nil || !req.InjectedUsage {
		t.Fatalf("ParseRequest: %+v, %v", req, err)
	}
	upstream := readFile(t, "openai_chat_stream_injected.response.sse")
	p := NewStreamParser(route, req)
	var fwd []byte
	for i := 0; i < len(upstream); i += 7 {
		fwd = append(fwd, p.Feed(upstream[i:min(i+7, len(upstream))])...)
	}
	res := p.Finish()
	fwd = append(fwd, res.Tail...)
	if !res.HaveUsage || res.Usage.CacheReadTokens != 1024 {
		t.Fatalf("usage not read: %+v", res)
	}

	url, _ := serve(t, 200, "text/event-stream", fwd)
	s := openAIClient(url).Chat.Completions.NewStreaming(testCtx(t), chatParams)
	var content strings.Builder
	chunks := 0
	for s.Next() {
		chunks++
		c := s.Current()
		if len(c.Choices) == 0 {
			t.Errorf("client saw a chunk without choices: %s", c.RawJSON())
		}
		for _, ch := range c.Choices {
			content.WriteString(ch.Delta.Content)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if chunks != 4 || content.String() != "Hello!" {
		t.Errorf("client saw %d chunks, content %q; want 4 chunks, \"Hello!\"", chunks, content.String())
	}
}
