package e2e

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tidwall/gjson"

	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/fakeprovider"
)

// gpt-4o-mini list prices in µUSD per 1M tokens (default catalog, providers.md §12.1).
const (
	miniIn  = 150_000
	miniOut = 600_000
)

func (h *harness) openai() *openai.Client {
	// Unchanged SDK: only the base URL (the mesh's Envoy) and the API key (a
	// creditgate virtual key) differ from calling OpenAI directly.
	c := openai.NewClient(option.WithBaseURL(h.base["openai"]+"/v1"), option.WithAPIKey(demoKey))
	return &c
}

func chatParams(model string, maxTokens int64) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:     model,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say something short about credits.")},
		MaxTokens: openai.Int(maxTokens),
	}
}

func TestOpenAIChatChargedExactly(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	var raw *http.Response
	resp, err := h.openai().Chat.Completions.New(h.ctx, chatParams("gpt-4o-mini", 50), option.WithResponseInto(&raw))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Usage.PromptTokens == 0 || resp.Usage.CompletionTokens == 0 || len(resp.Choices) != 1 {
		t.Fatalf("unexpected response: %+v", resp)
	}
	cost := pico(resp.Usage.PromptTokens, miniIn) + pico(resp.Usage.CompletionTokens, miniOut)
	debit, carry := cost.Split()
	b := h.balance()
	if b.Balance != 1_000_000-debit || b.Held != 0 {
		t.Fatalf("balance %s held %s, want %s debited (exact cost %s)", b.Balance, b.Held, debit, cost)
	}
	// The cost and balance headers ride on the response (headers are still
	// held in BUFFERED mode).
	if got := raw.Header.Get("x-creditgate-cost"); got != debit.String() {
		t.Errorf("x-creditgate-cost = %q, want %q", got, debit.String())
	}
	if got := raw.Header.Get("x-creditgate-balance"); got != b.Balance.String() {
		t.Errorf("x-creditgate-balance = %q, want %q", got, b.Balance.String())
	}
	caps := h.entries("capture")
	if len(caps) != 1 {
		t.Fatalf("%d captures", len(caps))
	}
	c := caps[0]
	if c.Cost != cost.String() || c.Carry != money.Pico(carry).String() || c.Estimated || c.Provider != "openai" ||
		!strings.HasPrefix(c.PriceRow, "openai/gpt-4o-mini@") || gjson.Get(c.Usage, "input_tokens").Int() != resp.Usage.PromptTokens {
		t.Fatalf("capture entry %+v, want exact cost %s", c, cost)
	}
	// Envoy's access log sees the cost as dynamic metadata. The emulator may
	// record it just after the client got its response, so wait for it.
	h.waitFor("dynamic metadata with the cost", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, m := range h.metadata {
			cg := m.GetFields()["creditgate"].GetStructValue().GetFields()
			if cg["cost_usd"].GetStringValue() == debit.String() && cg["account"].GetStringValue() == account {
				return true
			}
		}
		return false
	})
	h.audit()
}

func TestOpenAIStreamInjectsAndHidesUsage(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	stream := h.openai().Chat.Completions.NewStreaming(h.ctx, chatParams("gpt-4o-mini", 7))
	var text strings.Builder
	chunks := 0
	for stream.Next() {
		c := stream.Current()
		chunks++
		if len(c.Choices) == 0 {
			t.Errorf("client received the usage-only chunk it never asked for: %s", c.RawJSON())
			continue
		}
		text.WriteString(c.Choices[0].Delta.Content)
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	h.settled(1)
	if chunks < 3 || text.Len() == 0 {
		t.Fatalf("stream too short: %d chunks, %q", chunks, text.String())
	}
	reqs := h.fake.Requests()
	if len(reqs) != 1 || !gjson.GetBytes(reqs[0].Body, "stream_options.include_usage").Bool() {
		t.Fatalf("upstream did not get stream_options.include_usage: %s", reqs[0].Body)
	}
	in := int64(fakeprovider.DemoInputTokens(reqs[0].Body))
	out := int64(fakeprovider.DemoOutputTokens(7))
	cost := pico(in, miniIn) + pico(out, miniOut)
	debit, _ := cost.Split()
	if b := h.balance(); b.Balance != 1_000_000-debit || b.Held != 0 {
		t.Fatalf("balance %s held %s, want exactly %s debited for a streamed call", b.Balance, b.Held, debit)
	}
	if c := h.entries("capture"); len(c) != 1 || c[0].Estimated || c[0].Cost != cost.String() {
		t.Fatalf("capture %+v, want exact %s", c, cost)
	}
	h.audit()
}

func TestOpenAIStreamClientAskedUsageKeepsIt(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	p := chatParams("gpt-4o-mini", 5)
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := h.openai().Chat.Completions.NewStreaming(h.ctx, p)
	var usage int64
	for stream.Next() {
		if c := stream.Current(); len(c.Choices) == 0 {
			usage = c.Usage.TotalTokens
		}
	}
	if err := stream.Err(); err != nil || usage == 0 {
		t.Fatalf("client that asked for usage did not get it: %v", err)
	}
}

func TestInsufficientCreditIs402InOpenAIShape(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "0.01")
	// gpt-4o output is $10/1M: 100,000 max tokens needs a $1 hold.
	_, err := h.openai().Chat.Completions.New(h.ctx, chatParams("gpt-4o", 100_000))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("want *openai.Error, got %T %v", err, err)
	}
	if apiErr.StatusCode != 402 || apiErr.Type != "insufficient_quota" ||
		!strings.Contains(apiErr.Message, "$0.010000 is available") || !strings.Contains(apiErr.Message, "largest max_tokens") {
		t.Fatalf("402 = status %d type %q message %q", apiErr.StatusCode, apiErr.Type, apiErr.Message)
	}
	if got := apiErr.Response.Header.Get("x-should-retry"); got != "false" {
		t.Errorf("x-should-retry = %q", got)
	}
	if n := len(h.fake.Requests()); n != 0 {
		t.Fatalf("a refused call reached the provider %d times", n)
	}
	if r := h.entries("reserve"); len(r) != 0 {
		t.Fatalf("refused call left a hold: %+v", r)
	}
	// The affordable max_tokens in the message really is affordable.
	i := strings.Index(apiErr.Message, "largest max_tokens affordable for this prompt is ")
	var n int64
	for _, c := range apiErr.Message[i+len("largest max_tokens affordable for this prompt is "):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	if n <= 0 {
		t.Fatalf("no affordable max_tokens in %q", apiErr.Message)
	}
	if _, err := h.openai().Chat.Completions.New(h.ctx, chatParams("gpt-4o", n)); err != nil {
		t.Fatalf("max_tokens=%d was said to be affordable but: %v", n, err)
	}
	if b := h.balance(); b.Balance < 0 || b.Held != 0 {
		t.Fatalf("balance after affordable call: %+v", b)
	}
}

func TestUnknownKeyAndUnpricedModel(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	stranger := openai.NewClient(option.WithBaseURL(h.base["openai"]+"/v1"), option.WithAPIKey("sk-not-a-creditgate-key-000000000000"))
	_, err := (&stranger).Chat.Completions.New(h.ctx, chatParams("gpt-4o-mini", 5))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Fatalf("unknown key: %v", err)
	}
	_, err = h.openai().Chat.Completions.New(h.ctx, chatParams("gpt-nonexistent-9", 5))
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "no price") {
		t.Fatalf("unpriced model: %v", err)
	}
	if n := len(h.fake.Requests()); n != 0 {
		t.Fatalf("refused calls reached the provider %d times", n)
	}
	if b := h.balance(); b.Balance != 1_000_000 || b.Held != 0 {
		t.Fatalf("refusals moved money: %+v", b)
	}
}

func TestUpstreamErrorIsReleasedNotCharged(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	h.fake.Add(fakeprovider.Route{Model: "gpt-4.1", Transcript: fakeprovider.Transcript{
		Status:  500,
		Headers: map[string]string{"content-type": "application/json"},
		Body:    []byte(`{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}`),
	}})
	_, err := h.openai().Chat.Completions.New(h.ctx, chatParams("gpt-4.1", 10), option.WithMaxRetries(0))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 500 {
		t.Fatalf("want the provider's 500 passed through, got %v", err)
	}
	b := h.balance()
	if b.Balance != 1_000_000 || b.Held != 0 {
		t.Fatalf("an upstream error was charged: %+v", b)
	}
	if r := h.entries("release"); len(r) != 1 || !strings.Contains(r[0].Reason, "500") {
		t.Fatalf("release entries %+v", r)
	}
	h.audit()
}

func TestClientAbortMidStreamIsSettledEstimated(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	var chunks [][]byte
	for i := 0; i < 50; i++ {
		chunks = append(chunks, []byte(`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}],"usage":null}`+"\n\n"))
	}
	h.fake.Add(fakeprovider.Route{Model: "gpt-4o-mini", Transcript: fakeprovider.Transcript{
		Status: 200, Headers: map[string]string{"content-type": "text/event-stream"}, Chunks: chunks, Delay: 50e6,
	}})
	ctx, cancel := context.WithCancel(h.ctx)
	stream := h.openai().Chat.Completions.NewStreaming(ctx, chatParams("gpt-4o-mini", 1000))
	got := 0
	for stream.Next() {
		got++
		if got == 3 {
			cancel() // the user closed the tab
		}
	}
	cancel()
	h.waitFor("the aborted stream's capture", func() bool { return len(h.entries("capture")) == 1 })
	c := h.entries("capture")[0]
	if !c.Estimated || c.Amount <= 0 {
		t.Fatalf("aborted stream capture %+v: want a non-zero estimated charge", c)
	}
	// The estimate covers the prompt and the output streamed so far, far
	// below the hold for 1000 output tokens.
	if c.Amount >= c.Hold {
		t.Fatalf("estimate %s not below the hold %s", c.Amount, c.Hold)
	}
	if b := h.balance(); b.Held != 0 {
		t.Fatalf("hold left after abort: %+v", b)
	}
	h.audit()
}

func TestUpstreamCutMidStreamIsSettled(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	body := `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hello there, "},"finish_reason":null}],"usage":null}` + "\n\n" +
		`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"friend"},"finish_reason":null}],"usage":null}` + "\n\n"
	chunks, _ := fakeprovider.SplitAt([]byte(body), 20, 90, 200)
	h.fake.Add(fakeprovider.Route{Model: "gpt-4o-mini", Transcript: fakeprovider.Transcript{
		Status: 200, Headers: map[string]string{"content-type": "text/event-stream"}, Chunks: chunks, CutAfter: len(chunks),
	}})
	// No SDK retry: each retry would be a new, separately charged call.
	stream := h.openai().Chat.Completions.NewStreaming(h.ctx, chatParams("gpt-4o-mini", 500), option.WithMaxRetries(0))
	for stream.Next() {
	}
	h.waitFor("the cut stream's capture", func() bool { return len(h.entries("capture")) == 1 })
	if c := h.entries("capture")[0]; !c.Estimated || c.Amount <= 0 {
		t.Fatalf("cut stream capture %+v: want a non-zero estimated charge", c)
	}
	if b := h.balance(); b.Held != 0 {
		t.Fatalf("hold left after a cut stream: %+v", b)
	}
}

func TestGzipResponseChargedExactly(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	h.fake.Add(fakeprovider.Route{Model: "gpt-4o", Transcript: fakeprovider.Transcript{
		Status: 200, Gzip: true, Headers: map[string]string{"content-type": "application/json"},
		Body: []byte(`{"id":"chatcmpl-B9","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"A boardwalk."},"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":0}}}`),
	}})
	resp, err := h.openai().Chat.Completions.New(h.ctx, chatParams("gpt-4o", 100))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Usage.PromptTokens != 1117 {
		t.Fatalf("client did not get the decompressed body: %+v", resp.Usage)
	}
	// providers.md §2: $0.0032525 at gpt-4o list price.
	if c := h.entries("capture"); len(c) != 1 || c[0].Cost != "0.003252500000" || c[0].Amount != 3252 {
		t.Fatalf("gzip capture %+v, want exactly $0.0032525", c)
	}
}
