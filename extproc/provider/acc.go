package provider

import (
	"fmt"

	"github.com/tidwall/gjson"
)

// acc accumulates what a response reports, one JSON document at a time:
// stream events and whole bodies go through the same handlers, so the
// streamed and non-streamed paths cannot drift apart.
type acc struct {
	route Route
	model string

	// lastUsage is the raw JSON of the last usage object seen (OpenAI family,
	// Gemini); it is normalized once at the end, because only the last
	// snapshot counts (§1.2) and intermediate ones need not add up.
	lastUsage  string
	usagePaths openAIPaths
	toolCalls  int64 // Responses web_search_call items in the terminal response
	anthropic  anthropicUsage

	haveUsage, usageFinal, complete bool
	geminiFinish                    bool
	outputBytes                     int64
	err                             *ProviderError
	warnings                        []string
}

func newAcc(r Route) *acc { return &acc{route: r} }

func (a *acc) warn(format string, args ...any) {
	const maxWarnings = 16 // a broken stream must not grow without bound
	if len(a.warnings) < maxWarnings {
		a.warnings = append(a.warnings, fmt.Sprintf(format, args...))
	}
}

func (a *acc) setModel(m gjson.Result) {
	if s := text(m); s != "" {
		a.model = s
	}
}

func (a *acc) setErr(e *ProviderError) {
	// Keep the first error: later ones are usually consequences.
	if a.err == nil {
		a.err = e
	}
}

// openAIErrorFrom reads an OpenAI-style top-level error (object or string).
func openAIErrorFrom(e gjson.Result) *ProviderError {
	if e.Type == gjson.String {
		return &ProviderError{Message: e.Str}
	}
	return &ProviderError{
		Type:    text(e.Get("type")),
		Code:    scalar(e.Get("code")),
		Message: text(e.Get("message")),
	}
}

// googleErrorFrom reads the Google envelope {"error":{code,message,status}}.
func googleErrorFrom(e gjson.Result) *ProviderError {
	return &ProviderError{
		Type:    text(e.Get("status")),
		Code:    scalar(e.Get("code")),
		Message: text(e.Get("message")),
	}
}

// chatChunk handles one OpenAI-family chat completion chunk (or whole
// body, with message instead of delta). It reports whether the chunk is a
// usage-only chunk (empty choices, usage set, no error): the one the
// gateway hides when it injected include_usage.
func (a *acc) chatChunk(d gjson.Result) (usageOnly bool) {
	if e := d.Get("error"); present(e) {
		a.setErr(openAIErrorFrom(e))
		return false
	}
	a.setModel(d.Get("model"))
	choices := d.Get("choices")
	choices.ForEach(func(_, c gjson.Result) bool {
		a.outputBytes += choiceTextBytes(c)
		return true
	})
	u := d.Get("usage")
	if u.IsObject() {
		a.setOpenAIUsage(u, chatUsagePaths)
	}
	// Groq reports stream usage in x_groq.usage (same numbers as a top-level
	// usage when both are present, §9.3); last one wins either way.
	if xu := d.Get("x_groq.usage"); xu.IsObject() {
		a.setOpenAIUsage(xu, chatUsagePaths)
	}
	if xe := d.Get("x_groq.error"); present(xe) {
		a.setErr(&ProviderError{Type: "x_groq.error", Message: scalar(xe)})
	}
	return choices.IsArray() && len(choices.Array()) == 0 && u.IsObject()
}

func (a *acc) setOpenAIUsage(u gjson.Result, p openAIPaths) {
	a.lastUsage, a.usagePaths = u.Raw, p
	a.haveUsage, a.usageFinal = true, true
}

// choiceTextBytes counts generated text of one choice: delta (stream) or
// message (body) content, refusal, reasoning text and tool-call arguments;
// the legacy top-level "text" only when there is no delta (Together sends
// both with the same text).
func choiceTextBytes(c gjson.Result) int64 {
	m := c.Get("delta")
	if !m.Exists() {
		m = c.Get("message")
	}
	if !m.Exists() {
		return int64(len(text(c.Get("text"))))
	}
	n := len(text(m.Get("content"))) + len(text(m.Get("refusal"))) +
		len(text(m.Get("reasoning_content"))) + len(text(m.Get("reasoning")))
	m.Get("tool_calls").ForEach(func(_, tc gjson.Result) bool {
		n += len(text(tc.Get("function.arguments")))
		return true
	})
	return int64(n)
}

// responsesEvent handles one Responses API stream event (§3). typ is the
// data's "type", falling back to the SSE event name.
func (a *acc) responsesEvent(event string, d gjson.Result) {
	typ := text(d.Get("type"))
	if typ == "" {
		typ = event
	}
	switch typ {
	case "response.created", "response.in_progress", "response.queued":
		a.setModel(d.Get("response.model"))
	case "response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta",
		"response.reasoning_text.delta", "response.reasoning_summary_text.delta":
		a.outputBytes += int64(len(text(d.Get("delta"))))
	case "response.completed", "response.incomplete", "response.failed":
		a.responseObject(d.Get("response"))
		a.complete = true
	case "error":
		a.setErr(&ProviderError{Type: "error", Code: scalar(d.Get("code")), Message: text(d.Get("message"))})
	default:
		if e := d.Get("error"); e.IsObject() && typ == "" {
			a.setErr(openAIErrorFrom(e))
		}
	}
}

// responseObject handles a Response object: the terminal event's
// "response" or a whole non-streamed body.
func (a *acc) responseObject(r gjson.Result) {
	a.setModel(r.Get("model"))
	if u := r.Get("usage"); u.IsObject() {
		a.setOpenAIUsage(u, responsesUsagePaths)
		a.toolCalls = countWebSearchCalls(r.Get("output"))
	}
	if e := r.Get("error"); e.IsObject() {
		a.setErr(openAIErrorFrom(e))
	}
	if s := text(r.Get("status")); s == "queued" || s == "in_progress" {
		a.warn("responses: status %q (background mode): usage not available yet", s)
	}
}

// responsesBodyBytes counts generated text in a non-streamed Response.
func responsesBodyBytes(r gjson.Result) int64 {
	var n int
	r.Get("output").ForEach(func(_, item gjson.Result) bool {
		item.Get("content").ForEach(func(_, c gjson.Result) bool {
			n += len(text(c.Get("text"))) + len(text(c.Get("refusal")))
			return true
		})
		item.Get("summary").ForEach(func(_, s gjson.Result) bool {
			n += len(text(s.Get("text")))
			return true
		})
		n += len(text(item.Get("arguments")))
		return true
	})
	return int64(n)
}

// anthropicEvent handles one Anthropic Messages stream event (§6).
func (a *acc) anthropicEvent(event string, d gjson.Result) {
	typ := text(d.Get("type"))
	if typ == "" {
		typ = event
	}
	switch typ {
	case "message_start":
		m := d.Get("message")
		a.setModel(m.Get("model"))
		if u := m.Get("usage"); u.IsObject() {
			a.anthropic.overlay(u)
			a.haveUsage = true
		}
	case "message_delta":
		if u := d.Get("usage"); u.IsObject() {
			a.anthropic.overlay(u)
			a.haveUsage, a.usageFinal = true, true
		}
	case "content_block_delta":
		dl := d.Get("delta")
		a.outputBytes += int64(len(text(dl.Get("text"))) + len(text(dl.Get("thinking"))) + len(text(dl.Get("partial_json"))))
	case "message_stop":
		a.complete = true
	case "error":
		e := d.Get("error")
		a.setErr(&ProviderError{Type: text(e.Get("type")), Message: text(e.Get("message"))})
	}
}

// anthropicBody handles a non-streamed Message (or error envelope).
func (a *acc) anthropicBody(d gjson.Result) {
	if text(d.Get("type")) == "error" {
		a.anthropicEvent("error", d)
		return
	}
	a.setModel(d.Get("model"))
	if u := d.Get("usage"); u.IsObject() {
		a.anthropic.overlay(u)
		a.haveUsage, a.usageFinal = true, true
	}
	d.Get("content").ForEach(func(_, c gjson.Result) bool {
		a.outputBytes += int64(len(text(c.Get("text"))) + len(text(c.Get("thinking"))))
		if c.Get("type").String() == "tool_use" {
			a.outputBytes += int64(len(c.Get("input").Raw))
		}
		return true
	})
}

// geminiChunk handles one GenerateContentResponse: a stream chunk or the
// whole body (§7). usageMetadata is a cumulative snapshot: the last wins.
func (a *acc) geminiChunk(d gjson.Result) {
	if e := d.Get("error"); e.IsObject() {
		a.setErr(googleErrorFrom(e))
		return
	}
	if m := text(d.Get("modelVersion")); m != "" {
		a.model = geminiModel(m)
	}
	d.Get("candidates").ForEach(func(_, c gjson.Result) bool {
		c.Get("content.parts").ForEach(func(_, p gjson.Result) bool {
			a.outputBytes += int64(len(text(p.Get("text"))))
			if fc := p.Get("functionCall"); fc.Exists() {
				a.outputBytes += int64(len(fc.Raw))
			}
			return true
		})
		if text(c.Get("finishReason")) != "" {
			a.geminiFinish = true
		}
		return true
	})
	if u := d.Get("usageMetadata"); u.IsObject() {
		a.lastUsage = u.Raw
		a.haveUsage = true
	}
	if a.geminiFinish {
		a.complete = true
	}
}

// result normalizes what was accumulated. fallbackModel is the requested
// model, used when the response named none.
func (a *acc) result(fallbackModel string) Result {
	r := Result{
		Model:       a.model,
		HaveUsage:   a.haveUsage,
		UsageFinal:  a.usageFinal,
		Complete:    a.complete,
		OutputBytes: a.outputBytes,
		Err:         a.err,
	}
	if r.Model == "" {
		r.Model = fallbackModel
	}
	var warn []string
	switch {
	case a.route.Kind == KindAnthropicMessages:
		if a.haveUsage {
			r.Usage, warn = a.anthropic.normalize()
		}
	case a.route.IsGemini():
		if a.lastUsage != "" {
			r.Usage, warn = normalizeGemini(gjson.Parse(a.lastUsage))
			r.UsageFinal = a.geminiFinish
		}
	default:
		if a.lastUsage != "" {
			r.Usage, warn = normalizeOpenAI(gjson.Parse(a.lastUsage), a.usagePaths)
			r.Usage.ToolCalls = a.toolCalls
		}
	}
	r.Warnings = append(append([]string(nil), a.warnings...), warn...)
	if len(r.Warnings) == 0 {
		r.Warnings = nil
	}
	return r
}
