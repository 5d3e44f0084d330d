package pricing

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files (review the diff before committing)")

// repoRoot walks up from the package directory to the directory with go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the package directory")
		}
		dir = parent
	}
}

// golden compares got with the file, or rewrites it under -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it, then review it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from output:\n--- want\n%s\n--- got\n%s", path, want, got)
	}
}

// leafErrors returns the individual problems inside a Parse error: the
// joined validation errors, or the single structural one.
func leafErrors(err error) []error {
	multi, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range multi.Unwrap() {
		if e == ErrInvalidCatalog {
			continue // the sentinel prefix, not a problem
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			out = append(out, j.Unwrap()...)
		} else {
			out = append(out, e)
		}
	}
	return out
}

// dumpRows renders compiled rows one per line for golden files.
func dumpRows(c *Catalog) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version %s\n", c.Version())
	for _, r := range c.Rows() {
		fmt.Fprintf(&b, "%s model=%s aliases=%v eff=%s %s per_request=%s per_tool_call=%s max_out=%d ctx=%d",
			r.ID, r.Model, r.Aliases, r.EffectiveFrom.Format(time.RFC3339), dumpRates(r.Rates),
			r.PerRequest, r.PerToolCall, r.MaxOutputTokens, r.ContextWindow)
		if r.LongContext != nil {
			fmt.Fprintf(&b, " tier(>%d: %s)", r.LongContext.ThresholdTokens, dumpRates(r.LongContext.Rates))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func dumpRates(rt Rates) string {
	reasoning := "as-output"
	if rt.HasReasoning {
		reasoning = fmt.Sprint(int64(rt.Reasoning))
	}
	return fmt.Sprintf("in=%d cached=%d w5m=%d w1h=%d out=%d reasoning=%s",
		rt.Input, rt.CachedInput, rt.CacheWrite5m, rt.CacheWrite1h, rt.Output, reasoning)
}

func mustParseFile(t *testing.T, path string) *Catalog {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}
