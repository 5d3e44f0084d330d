package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
)

// Error codes, stable for scripts; the message is for humans.
const (
	CodeInvalidJSON       = "invalid_json"       // 400: malformed body, unknown field, wrong JSON type
	CodeInvalidArgument   = "invalid_argument"   // 400: a missing or malformed id, reason, key, query parameter
	CodeInvalidAmount     = "invalid_amount"     // 400: not a decimal string, > 6 decimals, wrong sign, out of range
	CodeUnauthorized      = "unauthorized"       // 401: missing or wrong bearer token
	CodeInsufficientFunds = "insufficient_funds" // 402: a debit would take the balance below what is held
	CodeNoAccount         = "no_account"         // 404: the account does not exist
	CodeNoKey             = "no_key"             // 404: no API key with that hash
	CodeNotFound          = "not_found"          // 404: no such endpoint
	CodeMethodNotAllowed  = "method_not_allowed" // 405
	CodeIDConflict        = "id_conflict"        // 409: an id reused with different arguments
	CodeBodyTooLarge      = "body_too_large"     // 413
	CodeInternal          = "internal"           // 500: logged server-side, details withheld
	CodeUnavailable       = "unavailable"        // 503: Redis unreachable; retry with the same id
)

// ErrUnauthorized is what an *Error with code "unauthorized" unwraps to.
var ErrUnauthorized = errors.New("admin: unauthorized")

// Error is the API's error object; the client returns it too, so callers
// keep the server's status, code and message, and errors.Is/As work against
// the ledger's own errors (see Unwrap).
type Error struct {
	Status  int           `json:"-"`
	Code    string        `json:"code"`
	Message string        `json:"message"`
	Details *FundsDetails `json:"details,omitempty"`
}

// FundsDetails explains an insufficient_funds error.
type FundsDetails struct {
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Available money.Micros `json:"available"`
	Requested money.Micros `json:"requested"`
}

type errorBody struct {
	Error *Error `json:"error"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("admin api: %d %s: %s", e.Status, e.Code, e.Message)
}

// Unwrap maps the code back to the typed error it came from, so a client
// can write errors.Is(err, ledger.ErrNoAccount) or
// errors.As(err, new(*ledger.InsufficientFundsError)) across the wire.
func (e *Error) Unwrap() error {
	switch e.Code {
	case CodeInvalidJSON, CodeInvalidArgument:
		return ledger.ErrInvalid
	case CodeInvalidAmount:
		return money.ErrInvalidAmount
	case CodeUnauthorized:
		return ErrUnauthorized
	case CodeNoAccount:
		return ledger.ErrNoAccount
	case CodeNoKey:
		return ledger.ErrNoKey
	case CodeIDConflict:
		return ledger.ErrIDConflict
	case CodeUnavailable:
		return ledger.ErrUnavailable
	case CodeInsufficientFunds:
		if e.Details != nil {
			d := e.Details
			return &ledger.InsufficientFundsError{Balance: d.Balance, Held: d.Held, Available: d.Available, Requested: d.Requested}
		}
	}
	return nil
}

func apiErr(status int, code, msg string) *Error {
	return &Error{Status: status, Code: code, Message: msg}
}

// toError maps any handler error to the wire error. Unknown errors become a
// bare 500: their text may describe internals and is only logged.
func (s *server) toError(err error) *Error {
	var (
		e   *Error
		ins *ledger.InsufficientFundsError
		big *http.MaxBytesError
	)
	switch {
	case errors.As(err, &e):
		return e
	case errors.As(err, &big):
		return apiErr(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, fmt.Sprintf("request body exceeds %d bytes", big.Limit))
	case errors.As(err, &ins):
		return &Error{Status: http.StatusPaymentRequired, Code: CodeInsufficientFunds,
			Message: fmt.Sprintf("insufficient funds: debit of %s would leave the balance below the %s held (available %s)",
				ins.Requested, ins.Held, ins.Available),
			Details: &FundsDetails{Balance: ins.Balance, Held: ins.Held, Available: ins.Available, Requested: ins.Requested}}
	case errors.Is(err, ledger.ErrUnavailable):
		return apiErr(http.StatusServiceUnavailable, CodeUnavailable, "the ledger's Redis is unavailable; the outcome is unknown, retry with the same id")
	case errors.Is(err, money.ErrInvalidAmount):
		return apiErr(http.StatusBadRequest, CodeInvalidAmount, err.Error())
	case errors.Is(err, ledger.ErrInvalid):
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, err.Error())
	case errors.Is(err, ledger.ErrNoAccount):
		return apiErr(http.StatusNotFound, CodeNoAccount, err.Error())
	case errors.Is(err, ledger.ErrNoKey):
		return apiErr(http.StatusNotFound, CodeNoKey, err.Error())
	case errors.Is(err, ledger.ErrIDConflict):
		return apiErr(http.StatusConflict, CodeIDConflict, err.Error())
	}
	return apiErr(http.StatusInternalServerError, CodeInternal, "internal error (logged on the server)")
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	// Responses can carry a freshly minted API key; nothing may cache them.
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	// An encoding error here means the client went away; the status is
	// already sent and there is nothing left to tell anyone.
	_ = json.NewEncoder(w).Encode(body)
}
