package pricing

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Rate
		wantErr bool
	}{
		{"2.1875", 2_187_500, false},
		{"2.50", 2_500_000, false},
		{"0.075", 75_000, false},
		{"0.000001", 1, false},
		{"0", 0, false},
		{"1000", MaxRate, false},
		{".5", 500_000, false},
		{"1000.000001", 0, true}, // just above the unit-mistake bound
		{"0.0000001", 0, true},   // 7 decimals: below one µUSD per 1M
		{"-0.5", 0, true},
		{"-0", 0, true},
		{"", 0, true},
		{"1e-6", 0, true},
		{"1,5", 0, true},
		{"2.", 0, true},
		{" 2", 0, true},
	} {
		got, err := ParseRate(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseRate(%q) error = %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if err != nil && !errors.Is(err, ErrInvalidPrice) {
			t.Errorf("ParseRate(%q) error %v does not wrap ErrInvalidPrice", tc.in, err)
		}
		if got != tc.want {
			t.Errorf("ParseRate(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestRateString(t *testing.T) {
	for _, tc := range []struct {
		r    Rate
		want string
	}{
		{2_187_500, "2.1875"}, {15_000_000, "15"}, {0, "0"}, {1, "0.000001"}, {75_000, "0.075"}, {-1_500_000, "-1.5"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("Rate(%d).String() = %q, want %q", tc.r, got, tc.want)
		}
		if tc.r >= 0 {
			back, err := ParseRate(tc.r.String())
			if err != nil || back != tc.r {
				t.Errorf("round trip of %d: %d, %v", tc.r, back, err)
			}
		}
	}
}

func TestDecimalJSON(t *testing.T) {
	for _, tc := range []struct {
		json     string
		text     string
		isNumber bool
		zero     bool
	}{
		{`"2.50"`, "2.50", false, false},
		{`2.5`, "2.5", true, false},
		{`null`, "", false, true},
		{`""`, "", false, true},
	} {
		var d Decimal
		if err := json.Unmarshal([]byte(tc.json), &d); err != nil {
			t.Fatalf("%s: %v", tc.json, err)
		}
		if d.String() != tc.text || d.number != tc.isNumber || d.IsZero() != tc.zero {
			t.Errorf("%s → %+v", tc.json, d)
		}
		if _, err := d.rate(); tc.isNumber && err == nil {
			t.Errorf("%s: a bare number must not become a rate", tc.json)
		}
	}
	out, err := json.Marshal(NewDecimal("0.125"))
	if err != nil || string(out) != `"0.125"` {
		t.Errorf("Marshal = %s, %v", out, err)
	}
	if err := json.Unmarshal([]byte(`{}`), new(Decimal)); err == nil {
		t.Error("an object must not unmarshal into a Decimal")
	}
}
