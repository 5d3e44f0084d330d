package ledger

import (
	"errors"
	"fmt"
	"time"

	"github.com/creditgate/creditgate/ledger/money"
)

// Typed errors at the ledger boundary. Callers use errors.Is / errors.As.
var (
	// ErrNoAccount: the account was never created.
	ErrNoAccount = errors.New("ledger: no such account")
	// ErrAccountExists: CreateAccount on an existing id.
	ErrAccountExists = errors.New("ledger: account already exists")
	// ErrIDConflict: an idempotency id was reused with different arguments
	// (same payment id, different amount…). A replay with identical
	// arguments is not an error; it returns the first result.
	ErrIDConflict = errors.New("ledger: id reused with different arguments")
	// ErrHoldClosed: release or capture of a hold that already ended in a
	// different way (captured vs released vs expired-then-released).
	ErrHoldClosed = errors.New("ledger: hold already closed")
	// ErrNoHold: capture/release of a request id that was never reserved.
	ErrNoHold = errors.New("ledger: no hold for request id")
	// ErrInvalid: arguments rejected before touching Redis.
	ErrInvalid = errors.New("ledger: invalid argument")
	// ErrUnavailable wraps Redis transport failures (timeouts, refused
	// connections): the operation's outcome is unknown and it is safe to
	// retry with the same id.
	ErrUnavailable = errors.New("ledger: redis unavailable")
)

// InsufficientFundsError is returned by Reserve when balance − held < estimate.
type InsufficientFundsError struct {
	Balance   money.Micros
	Held      money.Micros
	Available money.Micros // balance − held, may be negative
	Requested money.Micros
}

func (e *InsufficientFundsError) Error() string {
	return fmt.Sprintf("ledger: insufficient funds: requested %s, available %s (balance %s, held %s)",
		e.Requested, e.Available, e.Balance, e.Held)
}

// Balance is an account's state as seen by one atomic read.
type Balance struct {
	Account   string       `json:"account"`
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Available money.Micros `json:"available"`
	// CarryPico is the sub-µUSD remainder of costs not yet debited (0..999999).
	CarryPico int64 `json:"carry_pico"`
}

// TopUpRequest credits Amount (100% of the purchase) and charges the fee on top.
type TopUpRequest struct {
	Account   string
	PaymentID string
	Amount    money.Micros
	Time      time.Time
}

// Receipt is the result of a top-up; a replay returns the same receipt.
type Receipt struct {
	Account      string       `json:"account"`
	PaymentID    string       `json:"payment_id"`
	Amount       money.Micros `json:"amount"`
	Fee          money.Micros `json:"fee"`
	TotalCharged money.Micros `json:"total_charged"`
	BalanceAfter money.Micros `json:"balance_after"`
	Replayed     bool         `json:"replayed"`
}

// ReserveRequest holds Estimate for RequestID until Time+TTL.
type ReserveRequest struct {
	Account   string
	RequestID string
	Estimate  money.Micros
	TTL       time.Duration
	Provider  string
	Model     string
	Time      time.Time
}

// Hold is the result of a successful reserve.
type Hold struct {
	Account   string       `json:"account"`
	RequestID string       `json:"request_id"`
	Amount    money.Micros `json:"amount"`
	Deadline  time.Time    `json:"deadline"`
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Replayed  bool         `json:"replayed"`
}

// CaptureRequest debits the exact cost of RequestID's call.
type CaptureRequest struct {
	Account   string
	RequestID string
	Cost      money.Pico
	Provider  string
	Model     string
	PriceRow  string
	// Usage is the normalized usage as JSON, journaled verbatim.
	Usage string
	// Estimated marks a settlement made without provider-reported usage
	// (client abort, reset, shutdown).
	Estimated bool
	Time      time.Time
}

// CaptureResult reports what a capture debited.
type CaptureResult struct {
	Account   string       `json:"account"`
	RequestID string       `json:"request_id"`
	Debited   money.Micros `json:"debited"`
	CarryPico int64        `json:"carry_pico"`
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Late      bool         `json:"late"` // the hold had already expired
	Replayed  bool         `json:"replayed"`
}

// ReleaseResult reports a release.
type ReleaseResult struct {
	Account   string       `json:"account"`
	RequestID string       `json:"request_id"`
	Released  money.Micros `json:"released"`
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Replayed  bool         `json:"replayed"`
}

// AdjustRequest is an operator credit (positive) or debit (negative).
type AdjustRequest struct {
	Account      string
	AdjustmentID string
	Amount       money.Micros
	Reason       string
	Time         time.Time
}

// AdjustResult reports an adjustment.
type AdjustResult struct {
	Account      string       `json:"account"`
	AdjustmentID string       `json:"adjustment_id"`
	Amount       money.Micros `json:"amount"`
	Balance      money.Micros `json:"balance"`
	Replayed     bool         `json:"replayed"`
}

// Entry is one journal line (design-notes §3).
type Entry struct {
	ID        string       `json:"id"` // stream id
	Seq       int64        `json:"seq"`
	Type      string       `json:"type"` // open, topup, fee, reserve, capture, release, expire, adjust
	Amount    money.Micros `json:"amount"`
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Ref       string       `json:"ref,omitempty"` // request, payment, hold or adjustment id
	Provider  string       `json:"provider,omitempty"`
	Model     string       `json:"model,omitempty"`
	Usage     string       `json:"usage,omitempty"`
	PriceRow  string       `json:"price_row,omitempty"`
	CostPico  int64        `json:"cost_pico,omitempty"`
	Carry     int64        `json:"carry_pico,omitempty"`
	Estimated bool         `json:"estimated,omitempty"`
	Late      bool         `json:"late,omitempty"`
	Reason    string       `json:"reason,omitempty"`
	TimeMs    int64        `json:"time_ms"`
	// HoldAmount is, on a capture, the hold it ended (0 on a late capture
	// whose hold had already expired).
	HoldAmount money.Micros `json:"hold,omitempty"`
	// Unreserved marks a capture made by Charge for a request admitted
	// without a hold (fail open); it ends no hold.
	Unreserved bool `json:"unreserved,omitempty"`
}
