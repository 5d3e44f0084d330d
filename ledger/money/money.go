// Package money holds creditgate's integer money types. Nothing in the money
// path is ever a float: the ledger counts micro-dollars (µUSD) and exact call
// costs are computed in pico-dollars (10^-12 USD) so that µUSD-per-1M-token
// prices multiply by token counts without rounding.
package money

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Micros is an amount of US dollars in millionths (µUSD).
type Micros int64

// Pico is an amount of US dollars in 10^-12 units; the exact cost of a call.
type Pico int64

const (
	// MicrosPerDollar is the number of µUSD in one dollar.
	MicrosPerDollar = 1_000_000
	// PicoPerMicro is the number of pico-dollars in one µUSD.
	PicoPerMicro = 1_000_000
	// MaxExactLua is the largest integer a Redis Lua number (an IEEE double)
	// represents exactly; every amount that crosses into a script must stay
	// below it in magnitude (≈ $9 billion).
	MaxExactLua = 1<<53 - 1
)

// ErrInvalidAmount is returned (wrapped) for every malformed money string.
var ErrInvalidAmount = errors.New("invalid amount")

// ParseUSD parses a decimal dollar string such as "12.345678", "-0.5" or "3".
// At most 6 fractional digits are accepted: a seventh digit would be a unit
// the ledger cannot hold, and silently rounding someone's money is worse
// than refusing it.
func ParseUSD(s string) (Micros, error) {
	orig := s
	if s == "" {
		return 0, fmt.Errorf("%w: empty string", ErrInvalidAmount)
	}
	neg := false
	switch s[0] {
	case '-':
		neg = true
		s = s[1:]
	case '+':
		s = s[1:]
	}
	whole, frac, hasDot := strings.Cut(s, ".")
	if whole == "" && (!hasDot || frac == "") {
		return 0, fmt.Errorf("%w: %q has no digits", ErrInvalidAmount, orig)
	}
	if hasDot && frac == "" {
		return 0, fmt.Errorf("%w: %q ends with a decimal point", ErrInvalidAmount, orig)
	}
	if !allDigits(whole) || !allDigits(frac) {
		return 0, fmt.Errorf("%w: %q is not a decimal number (digits, one optional '.', optional sign)", ErrInvalidAmount, orig)
	}
	if len(frac) > 6 {
		return 0, fmt.Errorf("%w: %q has %d decimal places; at most 6 (one micro-dollar) are allowed", ErrInvalidAmount, orig, len(frac))
	}
	var w uint64
	if whole != "" {
		var err error
		w, err = strconv.ParseUint(whole, 10, 64)
		if err != nil || w > math.MaxInt64/MicrosPerDollar {
			return 0, fmt.Errorf("%w: %q is out of range", ErrInvalidAmount, orig)
		}
	}
	f := uint64(0)
	if frac != "" {
		padded := frac + strings.Repeat("0", 6-len(frac))
		f, _ = strconv.ParseUint(padded, 10, 64)
	}
	total := w*MicrosPerDollar + f
	if total > math.MaxInt64 {
		return 0, fmt.Errorf("%w: %q is out of range", ErrInvalidAmount, orig)
	}
	v := int64(total)
	if neg {
		v = -v
	}
	return Micros(v), nil
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// String prints the amount as a decimal dollar string with exactly six
// fractional digits, e.g. "12.345678" or "-0.000001".
func (m Micros) String() string {
	sign := ""
	u := uint64(m)
	if m < 0 {
		sign = "-"
		u = uint64(-(m + 1)) + 1 // safe for MinInt64
	}
	return fmt.Sprintf("%s%d.%06d", sign, u/MicrosPerDollar, u%MicrosPerDollar)
}

// MarshalText makes Micros print as a decimal string in JSON and YAML.
func (m Micros) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText accepts the decimal dollar strings that MarshalText writes.
func (m *Micros) UnmarshalText(b []byte) error {
	v, err := ParseUSD(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Split returns the whole µUSD in p and the sub-µUSD remainder in pico-USD,
// with 0 ≤ rem < PicoPerMicro for non-negative p. Capture sends both parts to
// Lua so that no number there ever exceeds 2^53.
func (p Pico) Split() (micros Micros, rem int64) {
	return Micros(int64(p) / PicoPerMicro), int64(p) % PicoPerMicro
}

// CeilMicros rounds p up to whole µUSD: used for holds, which must never be
// smaller than the cost they guard.
func (p Pico) CeilMicros() Micros {
	m, r := p.Split()
	if r > 0 {
		m++
	}
	return m
}

// String prints a pico amount as dollars with 12 fractional digits.
func (p Pico) String() string {
	sign := ""
	u := uint64(p)
	if p < 0 {
		sign = "-"
		u = uint64(-(p + 1)) + 1
	}
	return fmt.Sprintf("%s%d.%012d", sign, u/1e12, u%1e12)
}
