package e2e

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	"github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/tidwall/gjson"

	"github.com/creditgate/creditgate/test/fakeprovider"
)

// claude-haiku-4-5 list prices in µUSD per 1M tokens (providers.md §12.2).
const (
	haikuIn      = 1_000_000
	haikuWrite5m = 1_250_000
	haikuRead    = 100_000
	haikuOut     = 5_000_000
)

func (h *harness) anthropic() *anthropic.Client {
	c := anthropic.NewClient(option.WithBaseURL(h.base["anthropic"]), option.WithAPIKey(demoKey))
	return &c
}

func messageParams(maxTokens int64) anthropic.MessageNewParams {
	return anthropic.MessageNewParams{
		Model:     anthropic.ModelClaudeHaiku4_5,
		MaxTokens: maxTokens,
		Messages:  []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock("Say something short about credits."))},
	}
}

func TestAnthropicMessageChargedExactly(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	var raw *http.Response
	msg, err := h.anthropic().Messages.New(h.ctx, messageParams(12), option.WithResponseInto(&raw))
	if err != nil {
		t.Fatal(err)
	}
	u := msg.Usage
	if u.InputTokens == 0 || u.OutputTokens != 12 {
		t.Fatalf("usage %+v", u)
	}
	cost := pico(u.InputTokens, haikuIn) + pico(u.CacheCreationInputTokens, haikuWrite5m) +
		pico(u.CacheReadInputTokens, haikuRead) + pico(u.OutputTokens, haikuOut)
	debit, _ := cost.Split()
	if b := h.balance(); b.Balance != 1_000_000-debit || b.Held != 0 {
		t.Fatalf("balance %s, want %s debited", b.Balance, debit)
	}
	if got := raw.Header.Get("x-creditgate-cost"); got != debit.String() {
		t.Errorf("x-creditgate-cost = %q, want %q", got, debit)
	}
	if c := h.entries("capture"); len(c) != 1 || c[0].Cost != cost.String() || !strings.HasPrefix(c[0].PriceRow, "anthropic/claude-haiku-4-5@") {
		t.Fatalf("capture %+v, want %s", c, cost)
	}
	h.audit()
}

func TestAnthropicStreamChargedExactly(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	stream := h.anthropic().Messages.NewStreaming(h.ctx, messageParams(9))
	var acc anthropic.Message
	for stream.Next() {
		if err := acc.Accumulate(stream.Current()); err != nil {
			t.Fatal(err)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	h.settled(1)
	// message_start carries the input side, message_delta the cumulative
	// output: overlaid, never added (design-notes §5).
	u := acc.Usage
	cost := pico(u.InputTokens, haikuIn) + pico(u.OutputTokens, haikuOut)
	debit, _ := cost.Split()
	if u.OutputTokens != 9 {
		t.Fatalf("usage %+v", u)
	}
	if b := h.balance(); b.Balance != 1_000_000-debit || b.Held != 0 {
		t.Fatalf("balance %s, want %s debited", b.Balance, debit)
	}
	if c := h.entries("capture"); len(c) != 1 || c[0].Estimated || c[0].Cost != cost.String() {
		t.Fatalf("capture %+v, want exact %s", c, cost)
	}
}

// TestAnthropicCacheTokensNotDoubleCharged replays the providers.md §6 stream
// with 5-minute and 1-hour cache writes, split every 7 bytes (inside JSON
// numbers and lines), and checks the charge uses each class once (litellm
// #9812 charged cache tokens twice).
func TestAnthropicCacheTokensNotDoubleCharged(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "5")
	sse := readCase(t, "anthropic_stream.response.sse")
	h.fake.Add(fakeprovider.Route{Path: "/v1/messages", Transcript: fakeprovider.Transcript{
		Status: 200, Headers: map[string]string{"content-type": "text/event-stream"}, Chunks: fakeprovider.SplitEvery(sse, 7),
	}})
	stream := h.anthropic().Messages.NewStreaming(h.ctx, messageParams(4096))
	var acc anthropic.Message
	for stream.Next() {
		_ = acc.Accumulate(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	h.settled(1)
	golden := readGoldenUsage(t, "anthropic_stream.golden.json")
	c := h.entries("capture")
	if len(c) != 1 || c[0].Estimated {
		t.Fatalf("captures %+v", c)
	}
	if c[0].Usage != golden {
		t.Fatalf("journaled usage %s, want the golden normalization %s", c[0].Usage, golden)
	}
	// Priced on the model that answered (claude-sonnet-4), each class once:
	// input $3, cache read $0.30, 5m write $3.75, 1h write $6, output $15 per 1M,
	// web searches $0.01 each.
	g := func(k string) int64 { return gjson.Get(golden, k).Int() }
	want := pico(g("input_tokens"), 3_000_000) + pico(g("cache_read_tokens"), 300_000) +
		pico(g("cache_write_5m_tokens"), 3_750_000) + pico(g("cache_write_1h_tokens"), 6_000_000) +
		pico(g("output_tokens"), 15_000_000) + pico(g("tool_calls"), 10_000*1_000_000) // + $0.01 per web search
	if c[0].Cost != want.String() || !strings.HasPrefix(c[0].PriceRow, "anthropic/claude-sonnet-4@") {
		t.Fatalf("cost %s row %s, want %s on claude-sonnet-4", c[0].Cost, c[0].PriceRow, want)
	}
}

func TestInsufficientCreditIs402InAnthropicShape(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "0.01")
	_, err := h.anthropic().Messages.New(h.ctx, messageParams(20000))
	var apiErr *anthropic.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("want *anthropic.Error, got %T %v", err, err)
	}
	if apiErr.StatusCode != 402 || apiErr.Type() != "billing_error" || !strings.Contains(apiErr.Message, "insufficient credit") {
		t.Fatalf("402 = %d %q %q", apiErr.StatusCode, apiErr.Type(), apiErr.Message)
	}
	if n := len(h.fake.Requests()); n != 0 {
		t.Fatalf("refused call reached the provider %d times", n)
	}
}
