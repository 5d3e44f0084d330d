package provider

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The estimate must stay above real tokenizer counts (testdata/estimate,
// README there) without being absurd.
func TestEstimateInputTokensBound(t *testing.T) {
	files, err := filepath.Glob("testdata/estimate/*.request.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no estimate fixtures: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".request.json")
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(strings.TrimSuffix(f, ".request.json") + ".tokens.json")
		if err != nil {
			t.Fatal(err)
		}
		var counts map[string]int64
		if err := json.Unmarshal(raw, &counts); err != nil {
			t.Fatal(err)
		}
		var real int64
		for _, n := range counts {
			real = max(real, n)
		}
		est := EstimateInputTokens(body)
		if est < real {
			t.Errorf("%s: estimate %d < real %d (%v)", name, est, real, counts)
		}
		if est > 4*real {
			t.Errorf("%s: estimate %d > 4 × real %d", name, est, real)
		}
		t.Logf("%-16s est %6d real %6d ratio %.2f", name, est, real, float64(est)/float64(real))
	}
}

func TestTextTokens(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"", 0},
		{"hello", 3},                         // letters: ceil(5/2)
		{"hello world", 6},                   // 3 + free space + 3
		{"a  b", 3},                          // 1 + ceil(2/2) + 1
		{"12345", 5},                         // digits: 1 per byte
		{"abc123", 6},                        // mixed word: 1 per byte
		{`{"a":1}`, 7},                       // {" a ": 1 }: 2 + 1 + 2 + 1 + 1
		{"é", 1},                             // 2-byte rune
		{"中文", 4},                            // 3-byte runes: 2 each
		{"🙂", 4},                             // 4-byte rune
		{"\xff", 1},                          // invalid byte
		{" x", 1},                            // leading single space before a word is free
		{"x ", 2},                            // trailing space is not
		{" 1", 2},                            // a space before a digit is not folded
		{"\n\n\n", 2},                        // whitespace run: ceil(3/2)
		{"Hi,\r\nthere.", 1 + 1 + 1 + 3 + 1}, // Hi , \r\n there .
	}
	for _, tc := range tests {
		if got := textTokens([]byte(tc.in)); got != tc.want {
			t.Errorf("textTokens(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestEstimateMedia(t *testing.T) {
	b64 := strings.Repeat("iVBORw0KGgoAAAANSUhEUgAA", 400) // 9600 bytes of base64
	text := textTokens([]byte(`{"model":"m","messages":[]}`))
	tests := []struct {
		name          string
		body          string
		images, files int64
		// payloadCounts: the media bytes are counted like text (not images).
		payloadCounts bool
	}{
		{"openai data url", `{"type":"image_url","image_url":{"url":"data:image/png;base64,` + b64 + `"}}`, 1, 0, false},
		{"openai https url", `{"type":"image_url","image_url":{"url":"https://example.com/cat.png","detail":"high"}}`, 1, 0, true},
		{"responses input_image", `{"type":"input_image","image_url":"data:image/jpeg;base64,` + b64 + `"}`, 1, 0, false},
		{"anthropic image", `{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` + b64 + `"}}`, 1, 0, false},
		{"gemini inline image", `{"inline_data":{"mime_type":"image/png","data":"` + b64 + `"}}`, 1, 0, false},
		{"gemini camel image", `{"inlineData":{"mimeType":"image/webp","data":"` + b64 + `"}}`, 1, 0, false},
		{"bare data url", `{"whatever":"data:image/gif;base64,` + b64 + `"}`, 1, 0, false},
		{"anthropic pdf", `{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"` + b64 + `"}}`, 0, 1, true},
		{"gemini audio", `{"inline_data":{"mime_type":"audio/mp3","data":"` + b64 + `"}}`, 0, 1, true},
		{"openai audio", `{"type":"input_audio","input_audio":{"data":"` + b64 + `","format":"wav"}}`, 0, 1, true},
	}
	for _, tc := range tests {
		body := `{"model":"m","messages":[{"role":"user","content":[` + tc.body + `]}]}`
		got := EstimateInputTokens([]byte(body))
		min := text + tc.images*ImageTokens + tc.files*FileTokens
		if tc.payloadCounts {
			if strings.Contains(tc.body, b64) {
				min += textTokens([]byte(b64))
			}
			if got < min {
				t.Errorf("%s: estimate %d < %d: the payload bytes are not counted", tc.name, got, min)
			}
		} else if got < min || got > min+200 {
			t.Errorf("%s: estimate %d, want %d plus the part's JSON (< 200)", tc.name, got, min)
		}
	}
	// Two images are two images.
	two := `{"model":"m","messages":[{"role":"user","content":[` +
		`{"type":"image_url","image_url":{"url":"data:image/png;base64,` + b64 + `"}},` +
		`{"type":"image_url","image_url":{"url":"data:image/png;base64,` + b64 + `"}}]}]}`
	if got := EstimateInputTokens([]byte(two)); got < 2*ImageTokens || got > 2*ImageTokens+300 {
		t.Errorf("two images: %d", got)
	}
}

func TestEstimateTools(t *testing.T) {
	without := EstimateInputTokens([]byte(`{"model":"m","tools":[]}`))
	with := EstimateInputTokens([]byte(`{"model":"m","tools":[{}]}`))
	if with-without < ToolsOverheadTokens {
		t.Errorf("tools overhead not added: %d vs %d", with, without)
	}
}

func TestEstimateOutputTokens(t *testing.T) {
	for _, tc := range []struct{ in, want int64 }{{-5, 0}, {0, 0}, {1, 1}, {3, 1}, {4, 2}, {300, 100}, {301, 101}} {
		if got := EstimateOutputTokens(tc.in); got != tc.want {
			t.Errorf("EstimateOutputTokens(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
