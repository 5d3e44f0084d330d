package provider

import (
	"encoding/json"
	"strings"
)

// ProviderError is an error the provider reported inside a 200 response: a
// stream error event or an error envelope (§1.1, §11).
type ProviderError struct {
	// Type is error.type (OpenAI, Anthropic), the Google status
	// ("RESOURCE_EXHAUSTED") or the Responses event type.
	Type string `json:"type,omitempty"`
	// Code is error.code as a string (OpenAI codes may be strings or numbers).
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

func (e *ProviderError) Error() string {
	var b strings.Builder
	b.WriteString("provider error")
	if e.Type != "" {
		b.WriteString(" " + e.Type)
	}
	if e.Code != "" && e.Code != e.Type {
		b.WriteString(" (" + e.Code + ")")
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	return b.String()
}

// anthropicErrorTypes is Anthropic's error type enum (§11).
var anthropicErrorTypes = map[string]bool{
	"invalid_request_error": true, "authentication_error": true, "billing_error": true,
	"permission_error": true, "not_found_error": true, "request_too_large": true,
	"rate_limit_error": true, "api_error": true, "timeout_error": true, "overloaded_error": true,
}

// googleStatuses are the google.rpc.Code names Gemini clients know.
var googleStatuses = map[string]bool{
	"CANCELLED": true, "UNKNOWN": true, "INVALID_ARGUMENT": true, "DEADLINE_EXCEEDED": true,
	"NOT_FOUND": true, "ALREADY_EXISTS": true, "PERMISSION_DENIED": true, "RESOURCE_EXHAUSTED": true,
	"FAILED_PRECONDITION": true, "ABORTED": true, "OUT_OF_RANGE": true, "UNIMPLEMENTED": true,
	"INTERNAL": true, "UNAVAILABLE": true, "DATA_LOSS": true, "UNAUTHENTICATED": true,
}

func anthropicTypeFor(status int, errType string) string {
	if anthropicErrorTypes[errType] {
		return errType
	}
	switch status {
	case 400:
		return "invalid_request_error"
	case 401:
		return "authentication_error"
	case 402:
		return "billing_error"
	case 403:
		return "permission_error"
	case 404:
		return "not_found_error"
	case 413:
		return "request_too_large"
	case 429:
		return "rate_limit_error"
	case 503, 529:
		return "overloaded_error"
	case 504:
		return "timeout_error"
	}
	return "api_error"
}

func googleStatusFor(status int, errType string) string {
	if googleStatuses[errType] {
		return errType
	}
	switch status {
	case 400:
		return "INVALID_ARGUMENT"
	case 401:
		return "UNAUTHENTICATED"
	case 402, 412:
		// §11: Google has no payment status; FAILED_PRECONDITION is what
		// billing-disabled projects get.
		return "FAILED_PRECONDITION"
	case 403:
		return "PERMISSION_DENIED"
	case 404:
		return "NOT_FOUND"
	case 429:
		return "RESOURCE_EXHAUSTED"
	case 501:
		return "UNIMPLEMENTED"
	case 503:
		return "UNAVAILABLE"
	case 504:
		return "DEADLINE_EXCEEDED"
	}
	if status >= 500 {
		return "INTERNAL"
	}
	return "UNKNOWN"
}

// ErrorBody renders an error in the client's native envelope (§11) so its
// SDK raises a typed error: OpenAI {"error":{message,type,param,code}},
// Anthropic {"type":"error","error":{type,message}}, Gemini
// {"error":{code,message,status}}. errType is the OpenAI-style type (e.g.
// "insufficient_quota"); for Anthropic and Gemini it is used when it is
// already one of their names, otherwise one is derived from status
// (402 → billing_error / FAILED_PRECONDITION). An unknown dialect gets the
// OpenAI envelope, the most widely parsed one.
func ErrorBody(dialect string, status int, errType, message string) (contentType string, body []byte) {
	var v any
	switch dialect {
	case DialectAnthropic:
		v = anthropicEnvelope(status, errType, message)
	case DialectGemini:
		v = googleEnvelope{Error: googleError{Code: status, Message: message, Status: googleStatusFor(status, errType)}}
	default:
		v = openAIEnvelope(errType, message)
	}
	b, err := json.Marshal(v)
	if err != nil {
		// Only strings and ints are marshalled; this cannot happen.
		panic(err)
	}
	return "application/json", b
}

// ErrorEvent renders a mid-stream error for a stream already answered 200,
// in the form each SDK treats as a stream error (§11 "Mid-stream"): an
// OpenAI chat data line with a top-level error, a Responses "error" event,
// an Anthropic "event: error", a Gemini data line with the Google envelope.
// status only selects the type names, as in ErrorBody.
func ErrorEvent(r Route, status int, errType, message string) []byte {
	var name string
	var v any
	switch {
	case r.Kind == KindAnthropicMessages:
		name, v = "error", anthropicEnvelope(status, errType, message)
	case r.IsGemini():
		v = googleEnvelope{Error: googleError{Code: status, Message: message, Status: googleStatusFor(status, errType)}}
	case r.IsResponses():
		name = "error"
		v = struct {
			Type    string  `json:"type"`
			Code    string  `json:"code"`
			Message string  `json:"message"`
			Param   *string `json:"param"`
		}{"error", errType, message, nil}
	default:
		v = openAIEnvelope(errType, message)
	}
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var b []byte
	if name != "" {
		b = append(b, "event: "+name+"\n"...)
	}
	b = append(b, "data: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}

type openAIError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    string  `json:"code"`
}

func openAIEnvelope(errType, message string) any {
	return struct {
		Error openAIError `json:"error"`
	}{openAIError{Message: message, Type: errType, Code: errType}}
}

func anthropicEnvelope(status int, errType, message string) any {
	type inner struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	return struct {
		Type  string `json:"type"`
		Error inner  `json:"error"`
	}{"error", inner{anthropicTypeFor(status, errType), message}}
}

type googleError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"`
}

type googleEnvelope struct {
	Error googleError `json:"error"`
}
