package fakeprovider

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go/v2"
	anthropicoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/tidwall/gjson"
)

var fixedClock = func() time.Time { return time.Unix(1760000000, 0) }

type demoCase struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Query   string            `json:"query"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
	RawBody string            `json:"raw_body"`
}

func loadDemoCase(t *testing.T, path string) (demoCase, []byte) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c demoCase
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	body := []byte(c.RawBody)
	if len(c.Body) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, c.Body); err != nil {
			t.Fatal(err)
		}
		body = buf.Bytes()
	}
	return c, body
}

// TestDemoGolden answers every testdata/demo/*.json request and compares
// status, content type and body with its .golden file.
func TestDemoGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/demo/*.json")
	if len(files) == 0 {
		t.Fatal("no demo cases")
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		t.Run(name, func(t *testing.T) {
			c, body := loadDemoCase(t, f)
			p := NewDemo(WithClock(fixedClock))
			req := httptest.NewRequest(c.Method, c.Path+"?"+c.Query, bytes.NewReader(body))
			for k, v := range c.Headers {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			p.ServeHTTP(rec, req)
			got := "status: " + http.StatusText(rec.Code) + "\ncontent-type: " + rec.Header().Get("Content-Type") + "\n\n" + rec.Body.String()
			checkGolden(t, filepath.Join("testdata/demo", name+".golden"), got)
		})
	}
}

// usageOf extracts (input, output) tokens from a demo response the way a
// metering parser would, per providers.md §1.5.
func usageOf(t *testing.T, path, contentType string, body []byte) (int64, int64) {
	t.Helper()
	var last gjson.Result
	switch {
	case strings.HasPrefix(contentType, "text/event-stream"):
		for _, ev := range SplitEvents(body) {
			for _, line := range strings.Split(strings.TrimSpace(string(ev)), "\n") {
				data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: ")
				if !ok || data == "[DONE]" {
					continue
				}
				j := gjson.Parse(data)
				switch {
				case j.Get("usage.prompt_tokens").Exists(): // OpenAI chat usage chunk
					last = gjson.Parse(`{"in":` + j.Get("usage.prompt_tokens").Raw + `,"out":` + j.Get("usage.completion_tokens").Raw + `}`)
				case j.Get("type").Str == "response.completed" || j.Get("type").Str == "response.incomplete":
					last = gjson.Parse(`{"in":` + j.Get("response.usage.input_tokens").Raw + `,"out":` + j.Get("response.usage.output_tokens").Raw + `}`)
				case j.Get("type").Str == "message_start":
					last = gjson.Parse(`{"in":` + j.Get("message.usage.input_tokens").Raw + `,"out":` + j.Get("message.usage.output_tokens").Raw + `}`)
				case j.Get("type").Str == "message_delta": // cumulative: overlay
					last = gjson.Parse(`{"in":` + last.Get("in").Raw + `,"out":` + j.Get("usage.output_tokens").Raw + `}`)
				case j.Get("usageMetadata").Exists(): // cumulative snapshots: keep the last
					last = gjson.Parse(`{"in":` + j.Get("usageMetadata.promptTokenCount").Raw + `,"out":` + j.Get("usageMetadata.candidatesTokenCount").Raw + `}`)
				}
			}
		}
		return last.Get("in").Int(), last.Get("out").Int()
	case strings.Contains(path, ":streamGenerateContent"):
		arr := gjson.ParseBytes(body).Array()
		u := arr[len(arr)-1].Get("usageMetadata")
		return u.Get("promptTokenCount").Int(), u.Get("candidatesTokenCount").Int()
	}
	j := gjson.ParseBytes(body)
	for _, p := range [][2]string{
		{"usage.prompt_tokens", "usage.completion_tokens"},
		{"usage.input_tokens", "usage.output_tokens"},
		{"usageMetadata.promptTokenCount", "usageMetadata.candidatesTokenCount"},
	} {
		if j.Get(p[0]).Exists() {
			return j.Get(p[0]).Int(), j.Get(p[1]).Int()
		}
	}
	t.Fatalf("no usage in %s", body)
	return 0, 0
}

// TestDemoUsageFollowsRequest checks the usage rule on every endpoint:
// input = max(1, len(body)/8), output = min(limit, 20).
func TestDemoUsageFollowsRequest(t *testing.T) {
	tests := []struct {
		name, path, query string
		body              string
		wantOut           int64
	}{
		{"chat default limit", "/v1/chat/completions", "", `{"model":"m","messages":[{"role":"user","content":"hello there, how are you today?"}]}`, 20},
		{"chat max_tokens", "/v1/chat/completions", "", `{"model":"m","max_tokens":7,"messages":[]}`, 7},
		{"chat max_completion_tokens wins", "/v1/chat/completions", "", `{"model":"m","max_tokens":9,"max_completion_tokens":2,"messages":[]}`, 2},
		{"chat stream usage", "/v1/chat/completions", "", `{"model":"m","stream":true,"stream_options":{"include_usage":true},"max_tokens":100}`, 20},
		{"responses", "/v1/responses", "", `{"model":"m","input":"x","max_output_tokens":3}`, 3},
		{"responses stream", "/v1/responses", "", `{"model":"m","input":"a longer input text here","stream":true}`, 20},
		{"anthropic", "/v1/messages", "", `{"model":"m","max_tokens":4096,"messages":[]}`, 20},
		{"anthropic stream capped", "/v1/messages", "", `{"model":"m","max_tokens":5,"stream":true,"messages":[]}`, 5},
		{"gemini", "/v1beta/models/g:generateContent", "", `{"contents":[],"generationConfig":{"maxOutputTokens":11}}`, 11},
		{"gemini sse", "/v1beta/models/g:streamGenerateContent", "alt=sse", `{"contents":[{"parts":[{"text":"hi"}]}]}`, 20},
		{"gemini array", "/v1beta/models/g:streamGenerateContent", "", `{"contents":[]}`, 20},
		{"tiny body still 1 input token", "/v1/messages", "", `{"a":1}`, 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewDemo()
			rec := httptest.NewRecorder()
			p.ServeHTTP(rec, httptest.NewRequest("POST", tc.path+"?"+tc.query, strings.NewReader(tc.body)))
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			in, out := usageOf(t, tc.path, rec.Header().Get("Content-Type"), rec.Body.Bytes())
			if wantIn := int64(max(1, len(tc.body)/8)); in != wantIn {
				t.Errorf("input tokens %d, want %d", in, wantIn)
			}
			if out != tc.wantOut {
				t.Errorf("output tokens %d, want %d", out, tc.wantOut)
			}
		})
	}
}

// TestDemoEmbeddingsUsage: prompt_tokens == total_tokens, one vector per input.
func TestDemoEmbeddingsUsage(t *testing.T) {
	for _, tc := range []struct {
		body    string
		vectors int
		b64     bool
	}{
		{`{"model":"text-embedding-3-small","input":"one text"}`, 1, false},
		{`{"model":"text-embedding-3-small","input":["a","b","c"],"encoding_format":"base64"}`, 3, true},
	} {
		rec := httptest.NewRecorder()
		NewDemo().ServeHTTP(rec, httptest.NewRequest("POST", "/v1/embeddings", strings.NewReader(tc.body)))
		j := gjson.Parse(rec.Body.String())
		want := int64(max(1, len(tc.body)/8))
		if j.Get("usage.prompt_tokens").Int() != want || j.Get("usage.total_tokens").Int() != want {
			t.Errorf("usage %s, want %d", j.Get("usage").Raw, want)
		}
		if n := len(j.Get("data").Array()); n != tc.vectors {
			t.Errorf("%d vectors, want %d", n, tc.vectors)
		}
		if got := j.Get("data.0.embedding").Type == gjson.String; got != tc.b64 {
			t.Errorf("base64 embedding = %t, want %t", got, tc.b64)
		}
	}
}

func recordedBody(t *testing.T, p *Provider) []byte {
	t.Helper()
	reqs := p.Requests()
	if len(reqs) == 0 {
		t.Fatal("no request recorded")
	}
	return reqs[len(reqs)-1].Body
}

// TestDemoWithOpenAISDK: the official SDK parses the demo's chat, streaming,
// responses and embeddings answers, and the usage matches the rule.
func TestDemoWithOpenAISDK(t *testing.T) {
	p := NewDemo()
	srv := httptest.NewServer(p)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := openai.NewClient(option.WithBaseURL(srv.URL+"/v1"), option.WithAPIKey("sk-test"), option.WithMaxRetries(0))

	chat, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:     "gpt-4o-mini",
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello")},
		MaxTokens: openai.Int(6),
	})
	if err != nil {
		t.Fatal(err)
	}
	in := int64(DemoInputTokens(recordedBody(t, p)))
	if chat.Usage.PromptTokens != in || chat.Usage.CompletionTokens != 6 || chat.Usage.TotalTokens != in+6 ||
		chat.Model != "gpt-4o-mini" || chat.Choices[0].FinishReason != "length" || chat.Choices[0].Message.Content != "This is a simulated reply from" {
		t.Errorf("chat %+v", chat)
	}

	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:         "gpt-4o-mini",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Stream please")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	acc := openai.ChatCompletionAccumulator{}
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	in = int64(DemoInputTokens(recordedBody(t, p)))
	if acc.Usage.PromptTokens != in || acc.Usage.CompletionTokens != 20 || acc.Choices[0].Message.Content != strings.Join(demoWords, "") {
		t.Errorf("stream usage %+v content %q", acc.Usage, acc.Choices[0].Message.Content)
	}

	rs := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{
		Model: "gpt-4.1",
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Hi")},
	})
	var completed responses.Response
	deltas := ""
	for rs.Next() {
		ev := rs.Current()
		switch ev.Type {
		case "response.output_text.delta":
			deltas += ev.Delta
		case "response.completed":
			completed = ev.Response
		}
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	in = int64(DemoInputTokens(recordedBody(t, p)))
	if completed.Usage.InputTokens != in || completed.Usage.OutputTokens != 20 || completed.OutputText() != deltas {
		t.Errorf("responses usage %+v text %q deltas %q", completed.Usage, completed.OutputText(), deltas)
	}

	emb, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
		Model: "text-embedding-3-small",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	in = int64(DemoInputTokens(recordedBody(t, p)))
	if emb.Usage.PromptTokens != in || emb.Usage.TotalTokens != in || len(emb.Data) != 2 || len(emb.Data[0].Embedding) != 8 {
		t.Errorf("embeddings usage %+v, %d vectors", emb.Usage, len(emb.Data))
	}
}

// TestDemoWithAnthropicSDK: the official SDK parses messages and the stream;
// the accumulated message carries the cumulative usage.
func TestDemoWithAnthropicSDK(t *testing.T) {
	p := NewDemo()
	srv := httptest.NewServer(p)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := anthropic.NewClient(anthropicoption.WithBaseURL(srv.URL), anthropicoption.WithAPIKey("sk-ant-test"), anthropicoption.WithMaxRetries(0))
	params := anthropic.MessageNewParams{
		Model:     "claude-sonnet-4-20250514",
		MaxTokens: 1024,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Hello, Claude"))},
	}
	msg, err := client.Messages.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	in := int64(DemoInputTokens(recordedBody(t, p)))
	if msg.Usage.InputTokens != in || msg.Usage.OutputTokens != 20 || msg.StopReason != "end_turn" || string(msg.Model) != "claude-sonnet-4-20250514" {
		t.Errorf("message %+v", msg)
	}

	params.MaxTokens = 3
	stream := client.Messages.NewStreaming(ctx, params)
	acc := anthropic.Message{}
	for stream.Next() {
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	in = int64(DemoInputTokens(recordedBody(t, p)))
	if acc.Usage.InputTokens != in || acc.Usage.OutputTokens != 3 || acc.StopReason != "max_tokens" || acc.Content[0].Text != "This is a" {
		t.Errorf("accumulated %+v", acc)
	}
}

// TestDemoStreamsAreFlushedPerEvent: a real client receives the first event
// before the server writes the next one (paced with a token delay, the
// client reads the first event while the rest is still pending).
func TestDemoStreamsAreFlushedPerEvent(t *testing.T) {
	p := NewDemo(WithTokenDelay(time.Hour))
	srv := httptest.NewServer(p)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/messages", strings.NewReader(`{"model":"m","stream":true,"max_tokens":5}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	n, err := resp.Body.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if first := string(buf[:n]); !strings.HasPrefix(first, "event: message_start\n") {
		t.Errorf("first read %q", first)
	}
	cancel() // the handler is sleeping before the next event; cancelling ends it
	_, _ = io.Copy(io.Discard, resp.Body)
}
