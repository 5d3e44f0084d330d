package fakeprovider

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"
)

// Demo usage rules: every answer reports usage derived from the request so a
// metering demo shows plausible, checkable numbers.
const (
	// DemoBytesPerInputToken: input tokens = max(1, len(request body)/8).
	DemoBytesPerInputToken = 8
	// DemoMaxOutputTokens: output tokens = min(max_tokens, 20); 20 when the
	// request sets no limit.
	DemoMaxOutputTokens = 20
)

// demoWords are the output tokens, one word each.
var demoWords = []string{
	"This", " is", " a", " simulated", " reply", " from", " the", " fake", " provider",
	" so", " that", " demos", " run", " without", " any", " real", " model", " behind", " it", ".",
}

// DemoInputTokens is the input token count the demo reports for a body.
func DemoInputTokens(body []byte) int {
	return max(1, len(body)/DemoBytesPerInputToken)
}

// DemoOutputTokens is the output token count for a request limit (<= 0 means
// none).
func DemoOutputTokens(maxTokens int64) int {
	if maxTokens > 0 && maxTokens < DemoMaxOutputTokens {
		return int(maxTokens)
	}
	return DemoMaxOutputTokens
}

type demo struct {
	now   func() time.Time
	delay time.Duration
	seq   atomic.Int64
}

func newDemo() *demo { return &demo{now: time.Now} }

// exchange is one demo request being answered.
type exchange struct {
	d      *demo
	w      http.ResponseWriter
	r      *http.Request
	rc     *http.ResponseController
	body   []byte
	model  string
	id     int64
	in     int
	out    int
	capped bool // the output stopped at the request's limit
}

func (x *exchange) text() string { return strings.Join(demoWords[:x.out], "") }

// serve answers r if its path is a supported endpoint.
func (d *demo) serve(w http.ResponseWriter, r *http.Request, body []byte, model string) bool {
	path := r.URL.Path
	x := &exchange{d: d, w: w, r: r, rc: http.NewResponseController(w), body: body, model: model, id: d.seq.Add(1)}
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		x.openAIChat()
	case strings.HasSuffix(path, "/responses"):
		x.openAIResponses()
	case strings.HasSuffix(path, "/embeddings"):
		x.openAIEmbeddings()
	case strings.HasSuffix(path, "/messages"), strings.Contains(path, "/publishers/anthropic/models/"):
		x.anthropic(strings.HasSuffix(path, ":streamRawPredict"))
	case strings.HasSuffix(path, ":generateContent"):
		x.gemini(false)
	case strings.HasSuffix(path, ":streamGenerateContent"):
		x.gemini(true)
	default:
		return false
	}
	return true
}

// obj is a JSON object that keeps its field order, so generated bodies read
// like the providers' own.
type obj []field

type field struct {
	k string
	v any
}

func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(f.v)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only fixed shapes are marshalled
	}
	return b
}

// prepare parses the body and fixes the token counts; it answers 400 itself
// when the body is not JSON.
func (x *exchange) prepare(maxPath string, errBody func(string) any) bool {
	if !json.Valid(x.body) {
		x.writeJSON(http.StatusBadRequest, errBody("request body is not valid JSON"))
		return false
	}
	maxTokens := gjson.GetBytes(x.body, maxPath).Int()
	x.in = DemoInputTokens(x.body)
	x.out = DemoOutputTokens(maxTokens)
	x.capped = maxTokens > 0 && maxTokens < DemoMaxOutputTokens
	return true
}

func (x *exchange) writeJSON(status int, v any) {
	x.w.Header().Set("Content-Type", "application/json")
	x.w.Header().Set("X-Request-Id", fmt.Sprintf("req_fake_%d", x.id))
	x.w.WriteHeader(status)
	_, _ = x.w.Write(mustJSON(v))
}

func (x *exchange) startStream() {
	x.w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	x.w.Header().Set("Cache-Control", "no-cache")
	x.w.Header().Set("X-Request-Id", fmt.Sprintf("req_fake_%d", x.id))
	x.w.WriteHeader(http.StatusOK)
	_ = x.rc.Flush()
}

// emit writes and flushes one stream piece, then paces the stream.
func (x *exchange) emit(s string) bool {
	if _, err := x.w.Write([]byte(s)); err != nil {
		return false
	}
	if err := x.rc.Flush(); err != nil {
		return false
	}
	return sleep(x.r.Context(), x.d.delay)
}

func sseData(v any) string { return "data: " + string(mustJSON(v)) + "\n\n" }

func sseEvent(name string, v any) string {
	return "event: " + name + "\n" + sseData(v)
}

func openAIError(msg string) any {
	return obj{{"error", obj{{"message", msg}, {"type", "invalid_request_error"}, {"param", nil}, {"code", nil}}}}
}

// openAIChat: providers.md §2. Usage rides on an extra "choices":[] chunk only
// with stream_options.include_usage.
func (x *exchange) openAIChat() {
	maxPath := "max_completion_tokens"
	if !gjson.GetBytes(x.body, maxPath).Exists() {
		maxPath = "max_tokens"
	}
	if !x.prepare(maxPath, openAIError) {
		return
	}
	id := fmt.Sprintf("chatcmpl-fake%d", x.id)
	created := x.d.now().Unix()
	finish := "stop"
	if x.capped {
		finish = "length"
	}
	usage := obj{
		{"prompt_tokens", x.in}, {"completion_tokens", x.out}, {"total_tokens", x.in + x.out},
		{"prompt_tokens_details", obj{{"cached_tokens", 0}, {"audio_tokens", 0}}},
		{"completion_tokens_details", obj{{"reasoning_tokens", 0}, {"audio_tokens", 0}, {"accepted_prediction_tokens", 0}, {"rejected_prediction_tokens", 0}}},
	}
	if !gjson.GetBytes(x.body, "stream").Bool() {
		x.writeJSON(http.StatusOK, obj{
			{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", x.model},
			{"choices", []any{obj{
				{"index", 0},
				{"message", obj{{"role", "assistant"}, {"content", x.text()}, {"refusal", nil}, {"annotations", []any{}}}},
				{"logprobs", nil}, {"finish_reason", finish},
			}}},
			{"usage", usage}, {"service_tier", "default"}, {"system_fingerprint", "fp_fake"},
		})
		return
	}
	includeUsage := gjson.GetBytes(x.body, "stream_options.include_usage").Bool()
	chunk := func(delta obj, finish any) obj {
		c := obj{
			{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", x.model},
			{"service_tier", "default"}, {"system_fingerprint", "fp_fake"},
			{"choices", []any{obj{{"index", 0}, {"delta", delta}, {"logprobs", nil}, {"finish_reason", finish}}}},
		}
		if includeUsage {
			c = append(c, field{"usage", nil})
		}
		return c
	}
	x.startStream()
	if !x.emit(sseData(chunk(obj{{"role", "assistant"}, {"content", ""}, {"refusal", nil}}, nil))) {
		return
	}
	for _, w := range demoWords[:x.out] {
		if !x.emit(sseData(chunk(obj{{"content", w}}, nil))) {
			return
		}
	}
	if !x.emit(sseData(chunk(obj{}, finish))) {
		return
	}
	if includeUsage {
		if !x.emit(sseData(obj{
			{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", x.model},
			{"service_tier", "default"}, {"system_fingerprint", "fp_fake"},
			{"choices", []any{}}, {"usage", usage},
		})) {
			return
		}
	}
	x.emit("data: [DONE]\n\n")
}

// openAIResponses: providers.md §3. Usage is always in response.completed.
func (x *exchange) openAIResponses() {
	if !x.prepare("max_output_tokens", openAIError) {
		return
	}
	respID := fmt.Sprintf("resp_fake%d", x.id)
	msgID := fmt.Sprintf("msg_fake%d", x.id)
	created := x.d.now().Unix()
	status := "completed"
	var incomplete any
	if x.capped {
		status = "incomplete"
		incomplete = obj{{"reason", "max_output_tokens"}}
	}
	part := func(text string) obj { return obj{{"type", "output_text"}, {"text", text}, {"annotations", []any{}}} }
	message := func(st string, content []any) obj {
		return obj{{"id", msgID}, {"type", "message"}, {"status", st}, {"role", "assistant"}, {"content", content}}
	}
	response := func(st string, output []any, usage any, inc any) obj {
		return obj{
			{"id", respID}, {"object", "response"}, {"created_at", created}, {"status", st},
			{"error", nil}, {"incomplete_details", inc}, {"instructions", nil},
			{"max_output_tokens", nullableInt(gjson.GetBytes(x.body, "max_output_tokens"))},
			{"model", x.model}, {"output", output}, {"parallel_tool_calls", true},
			{"previous_response_id", nil}, {"service_tier", "default"}, {"store", true},
			{"temperature", 1.0}, {"text", obj{{"format", obj{{"type", "text"}}}}},
			{"tool_choice", "auto"}, {"tools", []any{}}, {"top_p", 1.0}, {"truncation", "disabled"},
			{"usage", usage}, {"user", nil}, {"metadata", obj{}},
		}
	}
	usage := obj{
		{"input_tokens", x.in}, {"input_tokens_details", obj{{"cached_tokens", 0}}},
		{"output_tokens", x.out}, {"output_tokens_details", obj{{"reasoning_tokens", 0}}},
		{"total_tokens", x.in + x.out},
	}
	final := response(status, []any{message("completed", []any{part(x.text())})}, usage, incomplete)
	if !gjson.GetBytes(x.body, "stream").Bool() {
		x.writeJSON(http.StatusOK, final)
		return
	}
	x.startStream()
	seq := 0
	ev := func(name string, fields ...field) bool {
		o := obj{{"type", name}, {"sequence_number", seq}}
		seq++
		return x.emit(sseEvent(name, append(o, fields...)))
	}
	ok := ev("response.created", field{"response", response("in_progress", []any{}, nil, nil)}) &&
		ev("response.in_progress", field{"response", response("in_progress", []any{}, nil, nil)}) &&
		ev("response.output_item.added", field{"output_index", 0}, field{"item", message("in_progress", []any{})}) &&
		ev("response.content_part.added", field{"item_id", msgID}, field{"output_index", 0}, field{"content_index", 0}, field{"part", part("")})
	for _, w := range demoWords[:x.out] {
		ok = ok && ev("response.output_text.delta", field{"item_id", msgID}, field{"output_index", 0}, field{"content_index", 0}, field{"delta", w})
	}
	terminal := "response.completed"
	if x.capped {
		terminal = "response.incomplete"
	}
	_ = ok &&
		ev("response.output_text.done", field{"item_id", msgID}, field{"output_index", 0}, field{"content_index", 0}, field{"text", x.text()}) &&
		ev("response.content_part.done", field{"item_id", msgID}, field{"output_index", 0}, field{"content_index", 0}, field{"part", part(x.text())}) &&
		ev("response.output_item.done", field{"output_index", 0}, field{"item", message("completed", []any{part(x.text())})}) &&
		ev(terminal, field{"response", final})
}

func nullableInt(r gjson.Result) any {
	if !r.Exists() || r.Type == gjson.Null {
		return nil
	}
	return r.Int()
}

// openAIEmbeddings: providers.md §4; usage.prompt_tokens == total_tokens.
func (x *exchange) openAIEmbeddings() {
	if !x.prepare("", openAIError) {
		return
	}
	input := gjson.GetBytes(x.body, "input")
	n := 1
	if input.IsArray() {
		n = max(1, len(input.Array()))
	}
	base64Enc := gjson.GetBytes(x.body, "encoding_format").String() == "base64"
	data := make([]any, n)
	for i := range n {
		vec := make([]float32, 8)
		for j := range vec {
			vec[j] = float32(math.Sin(float64(x.id*31+int64(i)*7+int64(j)))) / 10
		}
		var emb any = vec
		if base64Enc {
			buf := make([]byte, 4*len(vec))
			for j, f := range vec {
				binary.LittleEndian.PutUint32(buf[4*j:], math.Float32bits(f))
			}
			emb = base64.StdEncoding.EncodeToString(buf)
		}
		data[i] = obj{{"object", "embedding"}, {"embedding", emb}, {"index", i}}
	}
	x.writeJSON(http.StatusOK, obj{
		{"object", "list"}, {"data", data}, {"model", x.model},
		{"usage", obj{{"prompt_tokens", x.in}, {"total_tokens", x.in}}},
	})
}

func anthropicError(msg string) any {
	return obj{{"type", "error"}, {"error", obj{{"type", "invalid_request_error"}, {"message", msg}}}}
}

// anthropic: providers.md §6, first-party and Vertex rawPredict (model in the
// path). message_delta.usage is cumulative and repeats the input side.
func (x *exchange) anthropic(vertexStream bool) {
	if !x.prepare("max_tokens", anthropicError) {
		return
	}
	id := fmt.Sprintf("msg_fake%d", x.id)
	stop := "end_turn"
	if x.capped {
		stop = "max_tokens"
	}
	usage := func(out int) obj {
		return obj{
			{"input_tokens", x.in}, {"cache_creation_input_tokens", 0}, {"cache_read_input_tokens", 0},
			{"cache_creation", obj{{"ephemeral_5m_input_tokens", 0}, {"ephemeral_1h_input_tokens", 0}}},
			{"output_tokens", out}, {"service_tier", "standard"},
		}
	}
	message := func(content []any, stopReason any, u obj) obj {
		return obj{
			{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", x.model},
			{"content", content}, {"stop_reason", stopReason}, {"stop_sequence", nil}, {"usage", u},
		}
	}
	if !vertexStream && !gjson.GetBytes(x.body, "stream").Bool() {
		x.w.Header().Set("Request-Id", fmt.Sprintf("req_fake_%d", x.id))
		x.writeJSON(http.StatusOK, message([]any{obj{{"type", "text"}, {"text", x.text()}}}, stop, usage(x.out)))
		return
	}
	x.startStream()
	ok := x.emit(sseEvent("message_start", obj{{"type", "message_start"}, {"message", message([]any{}, nil, usage(1))}})) &&
		x.emit(sseEvent("content_block_start", obj{{"type", "content_block_start"}, {"index", 0}, {"content_block", obj{{"type", "text"}, {"text", ""}}}})) &&
		x.emit(sseEvent("ping", obj{{"type", "ping"}}))
	for _, w := range demoWords[:x.out] {
		ok = ok && x.emit(sseEvent("content_block_delta", obj{{"type", "content_block_delta"}, {"index", 0}, {"delta", obj{{"type", "text_delta"}, {"text", w}}}}))
	}
	deltaUsage := obj{{"input_tokens", x.in}, {"cache_creation_input_tokens", 0}, {"cache_read_input_tokens", 0}, {"output_tokens", x.out}}
	_ = ok &&
		x.emit(sseEvent("content_block_stop", obj{{"type", "content_block_stop"}, {"index", 0}})) &&
		x.emit(sseEvent("message_delta", obj{{"type", "message_delta"}, {"delta", obj{{"stop_reason", stop}, {"stop_sequence", nil}}}, {"usage", deltaUsage}})) &&
		x.emit(sseEvent("message_stop", obj{{"type", "message_stop"}}))
}

func geminiError(msg string) any {
	return obj{{"error", obj{{"code", 400}, {"message", msg}, {"status", "INVALID_ARGUMENT"}}}}
}

// gemini: providers.md §7. Stream chunks carry cumulative usageMetadata
// snapshots; SSE events end with CRLF pairs as Google endpoints send them,
// and without alt=sse the stream is one JSON array written piece by piece.
func (x *exchange) gemini(stream bool) {
	if !x.prepare("generationConfig.maxOutputTokens", geminiError) {
		return
	}
	respID := fmt.Sprintf("fakeResp%d", x.id)
	finish := "STOP"
	if x.capped {
		finish = "MAX_TOKENS"
	}
	chunk := func(text string, outSoFar int, last bool) obj {
		cand := obj{{"content", obj{{"parts", []any{obj{{"text", text}}}}, {"role", "model"}}}}
		if last {
			cand = append(cand, field{"finishReason", finish})
		}
		cand = append(cand, field{"index", 0})
		return obj{
			{"candidates", []any{cand}},
			{"usageMetadata", obj{
				{"promptTokenCount", x.in}, {"candidatesTokenCount", outSoFar}, {"totalTokenCount", x.in + outSoFar},
				{"promptTokensDetails", []any{obj{{"modality", "TEXT"}, {"tokenCount", x.in}}}},
			}},
			{"modelVersion", x.model}, {"responseId", respID},
		}
	}
	if !stream {
		x.writeJSON(http.StatusOK, chunk(x.text(), x.out, true))
		return
	}
	const perChunk = 5
	var pieces []obj
	for i := 0; i < x.out; i += perChunk {
		end := min(i+perChunk, x.out)
		pieces = append(pieces, chunk(strings.Join(demoWords[i:end], ""), end, end == x.out))
	}
	if x.r.URL.Query().Get("alt") == "sse" {
		x.startStream()
		for _, p := range pieces {
			if !x.emit("data: " + string(mustJSON(p)) + "\r\n\r\n") {
				return
			}
		}
		return
	}
	x.w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	x.w.WriteHeader(http.StatusOK)
	_ = x.rc.Flush()
	for i, p := range pieces {
		sep := ",\r\n"
		if i == 0 {
			sep = "["
		}
		if !x.emit(sep + string(mustJSON(p))) {
			return
		}
	}
	x.emit("]")
}
