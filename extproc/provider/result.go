package provider

import (
	"github.com/creditgate/creditgate/ledger/pricing"
)

// Result is what one response reported.
type Result struct {
	// Usage is the normalized usage seen. When HaveUsage is false it is
	// zero; when UsageFinal is false it is partial (Anthropic message_start
	// only, or a Gemini snapshot before the last chunk): prompt side real,
	// output side a lower bound.
	Usage pricing.Usage `json:"usage"`
	// Model is the answering model (response model, Gemini modelVersion),
	// falling back to the requested model.
	Model string `json:"model"`
	// HaveUsage: the provider reported usage at least once.
	HaveUsage bool `json:"have_usage"`
	// UsageFinal: the usage came from the provider's end-of-response report
	// (OpenAI usage chunk, Responses terminal event, Anthropic
	// message_delta, Gemini chunk with finishReason, any JSON body).
	UsageFinal bool `json:"usage_final"`
	// Complete: the response reached its normal end ([DONE], message_stop,
	// response.completed/incomplete/failed, Gemini finishReason, a JSON body).
	Complete bool `json:"complete"`
	// OutputBytes counts the bytes of generated text (content, reasoning
	// text, tool-call arguments) for EstimateOutputTokens.
	OutputBytes int64 `json:"output_bytes"`
	// Err is an error the provider reported in the body or stream.
	Err *ProviderError `json:"error,omitempty"`
	// Warnings note inconsistencies worth logging (totals that do not add
	// up, unparseable events). They never change Usage.
	Warnings []string `json:"warnings,omitempty"`
	// Tail holds stream bytes that were held back (only while hiding an
	// injected usage chunk) and that the caller must still forward to the
	// client at end of stream. Always nil for ParseBody.
	Tail []byte `json:"-"`
}

// Settle returns the usage to charge and whether it is an estimate (design
// notes §4.5: an early end is charged on the best knowledge, flagged). Final
// usage is returned as is. Otherwise the prompt side is the reported one or,
// if none was reported, the request's EstInputTokens; the output side is the
// larger of what was reported and EstimateOutputTokens(OutputBytes). Whether
// an error response is charged at all is the caller's policy.
func (r Result) Settle(req Request) (u pricing.Usage, estimated bool) {
	if r.HaveUsage && r.UsageFinal {
		return r.Usage, false
	}
	u = r.Usage
	if !r.HaveUsage || u.PromptTokens() == 0 {
		u.InputTokens = req.EstInputTokens
	}
	u.OutputTokens = max(u.OutputTokens, EstimateOutputTokens(r.OutputBytes))
	return u, true
}
