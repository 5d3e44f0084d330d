package pricing

import (
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// costCase is one testdata/cost file.
type costCase struct {
	Catalog  string `json:"catalog"` // "default" or "test" (testdata/catalogs/test.yaml)
	Provider string `json:"provider"`
	Model    string `json:"model"`
	At       string `json:"at"`
	Usage    Usage  `json:"usage"`
	// WantUSD is the dollar figure as providers.md states it; it must equal
	// WantPico, so a mistyped golden number cannot pass.
	WantUSD   string `json:"want_usd"`
	WantPico  int64  `json:"want_pico"`
	WantError string `json:"want_error"` // "invalid usage" or "overflow"
}

func TestCostGolden(t *testing.T) {
	catalogs := map[string]*Catalog{
		"default": Default(),
		"test":    mustParseFile(t, "testdata/catalogs/test.yaml"),
	}
	files, err := filepath.Glob("testdata/cost/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var tc costCase
			if err := yaml.UnmarshalStrict(data, &tc); err != nil {
				t.Fatal(err)
			}
			cat := catalogs[tc.Catalog]
			if cat == nil {
				t.Fatalf("unknown catalog %q", tc.Catalog)
			}
			row, err := cat.Lookup(tc.Provider, tc.Model, mustTime(t, tc.At))
			if err != nil {
				t.Fatal(err)
			}
			got, err := row.Cost(tc.Usage)
			if tc.WantError != "" {
				sentinel := map[string]error{"invalid usage": ErrInvalidUsage, "overflow": ErrOverflow}[tc.WantError]
				if sentinel == nil {
					t.Fatalf("unknown want_error %q", tc.WantError)
				}
				if !errors.Is(err, sentinel) {
					t.Fatalf("Cost = %d, %v; want error %v", got, err, sentinel)
				}
				return
			}
			if err != nil {
				t.Fatalf("Cost: %v", err)
			}
			usd, ok := new(big.Rat).SetString(tc.WantUSD)
			if !ok {
				t.Fatalf("want_usd %q is not a decimal", tc.WantUSD)
			}
			if pico := new(big.Rat).Mul(usd, big.NewRat(1_000_000_000_000, 1)); !pico.IsInt() || pico.Num().Int64() != tc.WantPico {
				t.Fatalf("golden file disagrees with itself: want_usd %s is %s pico, want_pico %d", tc.WantUSD, pico.FloatString(1), tc.WantPico)
			}
			if int64(got) != tc.WantPico {
				t.Errorf("Cost = %d pico ($%s), want %d ($%s) [row %s]", got, got, tc.WantPico, tc.WantUSD, row.ID)
			}
		})
	}
}
