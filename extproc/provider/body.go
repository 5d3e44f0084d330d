package provider

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/tidwall/gjson"
)

// ErrBadResponse marks a response body that is neither JSON nor SSE.
var ErrBadResponse = errors.New("provider: unparseable response body")

// ParseBody reads a whole (non-streamed) response body of route r to
// request req. A Gemini body may be the JSON array of a buffered
// :streamGenerateContent; a body that turns out to be SSE (a stream the
// caller buffered) is parsed as one. An error envelope is not an error of
// ParseBody: it lands in Result.Err.
func ParseBody(r Route, req Request, body []byte) (Result, error) {
	trimmed := bytes.TrimSpace(body)
	if !gjson.ValidBytes(trimmed) {
		if looksLikeSSE(trimmed) {
			p := NewStreamParser(r, Request{Model: req.Model})
			p.Feed(body)
			return p.Finish(), nil
		}
		return Result{Model: req.Model}, fmt.Errorf("%w: %d bytes, not JSON", ErrBadResponse, len(body))
	}
	d := gjson.ParseBytes(trimmed)
	a := newAcc(r)
	a.complete = true
	switch {
	case r.IsGemini():
		if d.IsArray() {
			a.complete = false // set again by a finishReason
			d.ForEach(func(_, el gjson.Result) bool {
				a.geminiChunk(el)
				return true
			})
		} else {
			a.geminiChunk(d)
			a.geminiFinish = a.geminiFinish || a.haveUsage // a whole body is final
		}
	case r.Kind == KindAnthropicMessages:
		a.anthropicBody(d)
	case r.IsResponses():
		if e := d.Get("error"); e.IsObject() && !d.Get("object").Exists() {
			a.setErr(openAIErrorFrom(e)) // an error envelope, not a Response
			break
		}
		a.responseObject(d)
		a.outputBytes = responsesBodyBytes(d)
	default: // chat and embeddings
		a.chatChunk(d)
	}
	return a.result(req.Model), nil
}

func looksLikeSSE(b []byte) bool {
	for _, p := range [...]string{"data:", "event:", ":", "id:", "retry:"} {
		if bytes.HasPrefix(b, []byte(p)) {
			return true
		}
	}
	return false
}
