package money_test

import (
	"errors"
	"math"
	"testing"

	"pgregory.net/rapid"

	"github.com/creditgate/creditgate/ledger/money"
)

func TestParseUSD(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want money.Micros
		err  bool
	}{
		{"12.345678", 12_345_678, false},
		{"0.000001", 1, false},
		{"-0.5", -500_000, false},
		{"+3", 3_000_000, false},
		{"3.", 0, true},
		{".5", 500_000, false},
		{"1.0000001", 0, true}, // 7 decimals
		{"", 0, true},
		{"-", 0, true},
		{"1e3", 0, true},
		{"1,5", 0, true},
		{" 1", 0, true},
		{"0x10", 0, true},
		{"9223372036854.775807", math.MaxInt64, false},
		{"9223372036854.775808", 0, true},
		{"99999999999999999999", 0, true},
		{"NaN", 0, true},
	} {
		got, err := money.ParseUSD(tc.in)
		if tc.err {
			if !errors.Is(err, money.ErrInvalidAmount) {
				t.Errorf("ParseUSD(%q) = %v, %v; want ErrInvalidAmount", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseUSD(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestStringRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		m    money.Micros
		want string
	}{{0, "0.000000"}, {1, "0.000001"}, {-1, "-0.000001"}, {12_345_678, "12.345678"}, {math.MinInt64, "-9223372036854.775808"}} {
		if got := tc.m.String(); got != tc.want {
			t.Errorf("%d.String() = %q, want %q", int64(tc.m), got, tc.want)
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		m := money.Micros(rapid.Int64Range(-math.MaxInt64, math.MaxInt64).Draw(t, "m"))
		back, err := money.ParseUSD(m.String())
		if err != nil || back != m {
			t.Fatalf("round trip %d -> %q -> %d, %v", int64(m), m.String(), int64(back), err)
		}
	})
}

func TestPicoSplit(t *testing.T) {
	p := money.Pico(3_252_500_000) // $0.0032525
	m, r := p.Split()
	if m != 3252 || r != 500_000 || p.CeilMicros() != 3253 || money.Pico(3_252_000_000).CeilMicros() != 3252 {
		t.Fatalf("split %d %d ceil %d", m, r, p.CeilMicros())
	}
	if p.String() != "0.003252500000" {
		t.Fatalf("pico string %q", p.String())
	}
}
