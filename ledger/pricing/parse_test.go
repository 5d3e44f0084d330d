package pricing

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Each testdata/parse/invalid file is one broken catalog whose "# want:"
// comment lines list every error Parse must report, no more and no fewer.
func TestParseInvalid(t *testing.T) {
	files, err := filepath.Glob("testdata/parse/invalid/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var wants []string
			for _, line := range strings.Split(string(data), "\n") {
				if w, ok := strings.CutPrefix(line, "# want: "); ok {
					wants = append(wants, w)
				}
			}
			if len(wants) == 0 {
				t.Fatal("case has no '# want:' line")
			}
			c, err := Parse(data)
			if err == nil {
				t.Fatalf("Parse accepted it: %s", dumpRows(c))
			}
			if !errors.Is(err, ErrInvalidCatalog) {
				t.Errorf("error does not wrap ErrInvalidCatalog: %v", err)
			}
			leaves := leafErrors(err)
			for _, w := range wants {
				found := false
				for _, e := range leaves {
					found = found || strings.Contains(e.Error(), w)
				}
				if !found {
					t.Errorf("missing error %q in:\n%v", w, err)
				}
			}
			if len(leaves) != len(wants) {
				t.Errorf("got %d errors, want %d:\n%v", len(leaves), len(wants), err)
			}
		})
	}
}

// Each testdata/parse/valid file parses, and its compiled rows (defaults
// applied) match the .golden file next to it.
func TestParseValid(t *testing.T) {
	files, err := filepath.Glob("testdata/parse/valid/*.*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, path := range files {
		if strings.HasSuffix(path, ".golden") {
			continue
		}
		n++
		t.Run(filepath.Base(path), func(t *testing.T) {
			c := mustParseFile(t, path)
			golden(t, strings.TrimSuffix(path, filepath.Ext(path))+".golden", dumpRows(c))
		})
	}
	if n == 0 {
		t.Fatal("no cases")
	}
}
