package extproc

import "time"

// Observer receives what the processor does, for metrics. Labels are
// provider, model, outcome and reason: never account ids.
type Observer interface {
	// Request counts one finished metered request by outcome: charged,
	// released, refused, estimated, error.
	Request(provider, model, outcome string)
	// Charged adds a capture's debit in µUSD.
	Charged(provider, model string, micros int64)
	// Refused counts a refusal: insufficient_funds, unknown_payer,
	// unknown_route, unpriced_model, bad_request, ledger_unavailable.
	Refused(reason string)
	// Holding adds (reserve) or removes (settle) µUSD held by this sidecar.
	Holding(micros int64)
	// Unpriced counts a model missing from the catalog.
	Unpriced(provider, model string)
	// ReserveLatency / CaptureLatency time each ledger round trip.
	ReserveLatency(d time.Duration)
	CaptureLatency(d time.Duration)
	// LedgerError counts failed ledger calls (Redis errors).
	LedgerError(op string)
}

// NopObserver ignores everything.
type NopObserver struct{}

func (NopObserver) Request(string, string, string) {}
func (NopObserver) Charged(string, string, int64)  {}
func (NopObserver) Holding(int64)                  {}
func (NopObserver) Refused(string)                 {}
func (NopObserver) Unpriced(string, string)        {}
func (NopObserver) ReserveLatency(time.Duration)   {}
func (NopObserver) CaptureLatency(time.Duration)   {}
func (NopObserver) LedgerError(string)             {}
