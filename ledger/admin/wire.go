package admin

import (
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
)

// The wire types are the API's contract, separate from the ledger's structs
// so that a field added to the ledger never appears on the wire by accident.
// money.Micros marshals as a decimal string with six fractional digits.

// AccountCreated answers POST /v1/accounts.
type AccountCreated struct {
	Account string `json:"account"`
	Created bool   `json:"created"` // false: it already existed (HTTP 200)
}

// AccountList answers GET /v1/accounts, sorted by id.
type AccountList struct {
	Accounts []string `json:"accounts"`
}

// Balance answers GET /v1/accounts/{id}/balance.
type Balance struct {
	Account   string       `json:"account"`
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Available money.Micros `json:"available"` // balance − held; negative after a late capture
}

// Receipt answers POST /v1/accounts/{id}/topups.
type Receipt struct {
	Account      string       `json:"account"`
	PaymentID    string       `json:"payment_id"`
	Amount       money.Micros `json:"amount"`        // credited in full
	Fee          money.Micros `json:"fee"`           // charged on top, never deducted
	TotalCharged money.Micros `json:"total_charged"` // amount + fee
	BalanceAfter money.Micros `json:"balance_after"` // as of the first application
	Replayed     bool         `json:"replayed"`
}

// Adjustment answers POST /v1/accounts/{id}/adjustments.
type Adjustment struct {
	Account      string       `json:"account"`
	AdjustmentID string       `json:"adjustment_id"`
	Amount       money.Micros `json:"amount"`
	BalanceAfter money.Micros `json:"balance_after"` // as of the first application
	Replayed     bool         `json:"replayed"`
}

// JournalPage answers GET /v1/accounts/{id}/journal. Next is the `after`
// value for the following page, "" on the last one.
type JournalPage struct {
	Entries []JournalEntry `json:"entries"`
	Next    string         `json:"next"`
}

// JournalEntry is one journal line. Cost and Carry are exact sub-µUSD
// amounts, so they are decimal USD strings with 12 fractional digits.
type JournalEntry struct {
	ID        string       `json:"id"`
	Seq       int64        `json:"seq"`
	Type      string       `json:"type"`
	Amount    money.Micros `json:"amount"`
	Balance   money.Micros `json:"balance"`
	Held      money.Micros `json:"held"`
	Hold      money.Micros `json:"hold,omitempty"`
	Ref       string       `json:"ref,omitempty"`
	Provider  string       `json:"provider,omitempty"`
	Model     string       `json:"model,omitempty"`
	Usage     string       `json:"usage,omitempty"`
	PriceRow  string       `json:"price_row,omitempty"`
	Cost      string       `json:"cost,omitempty"`
	Carry     string       `json:"carry,omitempty"`
	Estimated bool         `json:"estimated,omitempty"`
	Late      bool         `json:"late,omitempty"`
	Reason    string       `json:"reason,omitempty"`
	Time      time.Time    `json:"time"`
}

// AuditReport answers GET /v1/audit (HTTP 200 when OK, 409 when not).
type AuditReport struct {
	OK       bool           `json:"ok"`
	Accounts []AccountAudit `json:"accounts"`
}

// AccountAudit is one account's verdict: the hash's totals against the sums
// recomputed from the journal.
type AccountAudit struct {
	Account        string       `json:"account"`
	Entries        int          `json:"entries"`
	Balance        money.Micros `json:"balance"`
	Held           money.Micros `json:"held"`
	JournalBalance money.Micros `json:"journal_balance"`
	JournalHeld    money.Micros `json:"journal_held"`
	Problems       []string     `json:"problems,omitempty"`
}

// KeyCreated answers POST /v1/keys. Key is set only when the server
// generated it; this response is the only time it is ever shown.
type KeyCreated struct {
	Account string `json:"account"`
	KeyHash string `json:"key_hash"`
	Key     string `json:"key,omitempty"`
}

// KeyInfo answers GET /v1/keys/{hash}.
type KeyInfo struct {
	KeyHash string `json:"key_hash"`
	Account string `json:"account"`
}

// KeyRevoked answers DELETE /v1/keys/{hash}.
type KeyRevoked struct {
	KeyHash string `json:"key_hash"`
	Revoked bool   `json:"revoked"`
}

// Request bodies. Amounts are strings here, not money.Micros, so that the
// server parses them itself and can say precisely what is wrong.
type createAccountBody struct {
	Account string `json:"account"`
}

type topUpBody struct {
	PaymentID string `json:"payment_id"`
	Amount    string `json:"amount"`
}

type adjustBody struct {
	AdjustmentID string `json:"adjustment_id"`
	Amount       string `json:"amount"`
	Reason       string `json:"reason"`
}

type createKeyBody struct {
	Account string `json:"account"`
	Key     string `json:"key,omitempty"`
}

func entryWire(e ledger.Entry) JournalEntry {
	j := JournalEntry{ID: e.ID, Seq: e.Seq, Type: e.Type, Amount: e.Amount, Balance: e.Balance, Held: e.Held,
		Hold: e.HoldAmount, Ref: e.Ref, Provider: e.Provider, Model: e.Model, Usage: e.Usage, PriceRow: e.PriceRow,
		Estimated: e.Estimated, Late: e.Late, Reason: e.Reason, Time: time.UnixMilli(e.TimeMs).UTC()}
	if e.CostPico != 0 {
		j.Cost = money.Pico(e.CostPico).String()
	}
	if e.Carry != 0 {
		j.Carry = money.Pico(e.Carry).String()
	}
	return j
}
