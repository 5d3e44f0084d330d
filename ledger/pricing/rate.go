package pricing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/creditgate/creditgate/ledger/money"
)

// Rate is a token price in µUSD per 1M tokens. Numerically that is also
// pico-USD per token, so tokens × Rate is an exact cost in money.Pico.
type Rate int64

const (
	// MaxRate bounds every token price ($1000 per 1M tokens). The most
	// expensive list prices are a few hundred dollars; anything above is
	// almost certainly a per-token or per-1k price typed into a per-1M field.
	MaxRate Rate = 1000 * money.MicrosPerDollar
	// MaxFee bounds per_request and per_tool_call fees ($1). Real fees are
	// cents; a larger value is usually a "$ per 1,000 calls" figure.
	MaxFee money.Micros = 1 * money.MicrosPerDollar
)

var (
	// ErrInvalidPrice is wrapped by every price or fee that fails to parse
	// or is out of bounds.
	ErrInvalidPrice = errors.New("invalid price")
)

// ParseRate parses a decimal dollar string such as "2.1875" (USD per 1M
// tokens) into a Rate. At most 6 fractional digits are allowed (one µUSD per
// 1M tokens); negatives and values above MaxRate are refused.
func ParseRate(s string) (Rate, error) {
	m, err := parseNonNegativeUSD(s)
	if err != nil {
		return 0, err
	}
	if Rate(m) > MaxRate {
		return 0, fmt.Errorf("%w: %q USD per 1M tokens is above the $%s bound (is it a per-token or per-1k price?)",
			ErrInvalidPrice, s, MaxRate)
	}
	return Rate(m), nil
}

// parseFee parses a per-request or per-tool-call fee in USD.
func parseFee(s string) (money.Micros, error) {
	m, err := parseNonNegativeUSD(s)
	if err != nil {
		return 0, err
	}
	if m > MaxFee {
		return 0, fmt.Errorf("%w: fee %q USD is above the $%s bound (is it a per-1,000-calls price?)",
			ErrInvalidPrice, s, Rate(MaxFee))
	}
	return m, nil
}

func parseNonNegativeUSD(s string) (money.Micros, error) {
	if strings.HasPrefix(strings.TrimSpace(s), "-") {
		return 0, fmt.Errorf("%w: %q is negative", ErrInvalidPrice, s)
	}
	m, err := money.ParseUSD(s)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalidPrice, err)
	}
	return m, nil
}

// String prints the rate as dollars per 1M tokens with no trailing zeros,
// e.g. "2.1875", "15", "0.000001".
func (r Rate) String() string {
	sign := ""
	u := uint64(r)
	if r < 0 {
		sign = "-"
		u = uint64(-(r + 1)) + 1
	}
	whole, frac := u/money.MicrosPerDollar, u%money.MicrosPerDollar
	if frac == 0 {
		return sign + strconv.FormatUint(whole, 10)
	}
	f := strings.TrimRight(fmt.Sprintf("%06d", frac), "0")
	return sign + strconv.FormatUint(whole, 10) + "." + f
}

// Decimal is a dollar amount exactly as written in a catalog file. It keeps
// the text, not a number, so that nothing between the file and a Rate is
// ever a float. A value written as a bare YAML number is remembered as such
// and refused by validation with a clear message.
type Decimal struct {
	text   string
	number bool
}

// NewDecimal wraps a decimal string such as "2.50" for a catalog File.
func NewDecimal(s string) Decimal { return Decimal{text: s} }

// String returns the text as written.
func (d Decimal) String() string { return d.text }

// IsZero reports whether the field was absent (or an empty string), which
// is what `omitzero` and the "missing field" checks go by.
func (d Decimal) IsZero() bool { return d.text == "" && !d.number }

// MarshalJSON writes the decimal as a JSON string.
func (d Decimal) MarshalJSON() ([]byte, error) { return json.Marshal(d.text) }

// UnmarshalJSON accepts a JSON string, or a JSON number that validation
// later rejects: YAML has already turned such a number into a binary float by
// then, so its digits can no longer be trusted.
func (d *Decimal) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*d = Decimal{}
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*d = Decimal{text: s}
	default:
		var n json.Number
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("price must be a quoted decimal string: %w", err)
		}
		*d = Decimal{text: n.String(), number: true}
	}
	return nil
}

// rate parses the decimal as a Rate, refusing bare numbers.
func (d Decimal) rate() (Rate, error) {
	if d.number {
		return 0, d.numberErr()
	}
	return ParseRate(d.text)
}

func (d Decimal) fee() (money.Micros, error) {
	if d.number {
		return 0, d.numberErr()
	}
	return parseFee(d.text)
}

func (d Decimal) numberErr() error {
	return fmt.Errorf("%w: %s is a YAML number; write prices as quoted decimal strings (\"%s\") so they never pass through a float",
		ErrInvalidPrice, d.text, d.text)
}
