package envoyemu

import (
	"errors"
	"fmt"
)

// ErrUnsupported marks configuration the emulator deliberately does not model
// (FULL_DUPLEX_STREAMED, observability mode, http_service, ...). New wraps it.
var ErrUnsupported = errors.New("envoyemu: not emulated")

func errUnsupported(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrUnsupported}, args...)...)
}

// spuriousError is Envoy's absl::FailedPreconditionError: a reply that does
// not fit the outstanding callback state (envoy-extproc.md §2.1).
type spuriousError struct{ msg string }

func (e *spuriousError) Error() string { return e.msg }

func spurious(msg string) error { return &spuriousError{msg: msg} }

func isSpurious(err error) bool {
	var s *spuriousError
	return errors.As(err, &s)
}

// processingError is any other non-OK absl::Status from reply handling (a
// rejected header mutation, a content-length mismatch). It always ends in a
// local reply with status_on_error whose details are exactly the message
// (envoy-extproc.md §2.3, §2.4).
type processingError struct{ msg string }

func (e *processingError) Error() string { return e.msg }

func processingErr(format string, args ...any) error {
	return &processingError{msg: fmt.Sprintf(format, args...)}
}
