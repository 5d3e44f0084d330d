package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

// readCase reads a provider transcript from extproc/provider/testdata/cases.
func readCase(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "extproc", "provider", "testdata", "cases", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// readGoldenUsage returns the golden normalized usage of a case as the
// compact JSON the journal records.
func readGoldenUsage(t *testing.T, name string) string {
	t.Helper()
	u := gjson.GetBytes(readCase(t, name), "result.usage").Raw
	var buf bytes.Buffer
	if err := json.Compact(&buf, []byte(u)); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// Gemini has no official Go SDK in our e2e set; the wire calls are plain HTTP
// exactly as go-genai sends them (x-goog-api-key, :streamGenerateContent?alt=sse).
func TestGeminiStreamAndJSONCharged(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	body := `{"contents":[{"role":"user","parts":[{"text":"Say something short about credits."}]}],"generationConfig":{"maxOutputTokens":8}}`
	for i, path := range []string{
		"/v1beta/models/gemini-2.5-flash:generateContent",
		"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
		"/v1beta/models/gemini-2.5-flash:streamGenerateContent", // a streamed JSON array
	} {
		req, _ := http.NewRequestWithContext(h.ctx, http.MethodPost, h.base["gemini"]+path, strings.NewReader(body))
		req.Header.Set("content-type", "application/json")
		req.Header.Set("x-goog-api-key", demoKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Contains(out, []byte("usageMetadata")) {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, out)
		}
		if c := h.entries("capture"); len(c) != i+1 || c[i].Estimated || c[i].Provider != "gemini" ||
			gjson.Get(c[i].Usage, "output_tokens").Int() != 8 {
			t.Fatalf("%s: captures %+v", path, c)
		}
	}
	if b := h.balance(); b.Held != 0 || b.Balance >= 1_000_000 {
		t.Fatalf("balance %+v", b)
	}
	h.audit()
}

func TestInsufficientCreditIs402InGeminiShape(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "0.000100")
	body := `{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":60000}}`
	req, _ := http.NewRequestWithContext(h.ctx, http.MethodPost, h.base["gemini"]+"/v1beta/models/gemini-2.5-pro:generateContent", strings.NewReader(body))
	req.Header.Set("x-goog-api-key", demoKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 402 || gjson.GetBytes(out, "error.code").Int() != 402 || gjson.GetBytes(out, "error.status").Str == "" ||
		!strings.Contains(gjson.GetBytes(out, "error.message").Str, "insufficient credit") {
		t.Fatalf("gemini 402: %d %s", resp.StatusCode, out)
	}
}

// Gemini clients may send the key as ?key=; it identifies the payer too.
func TestGeminiQueryKey(t *testing.T) {
	h := newHarness(t)
	h.topUp("pay-1", "1")
	body := `{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"maxOutputTokens":4}}`
	resp, err := http.Post(h.base["gemini"]+"/v1beta/models/gemini-2.5-flash:generateContent?key="+demoKey, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	if c := h.entries("capture"); len(c) != 1 || c[0].Provider != "gemini" {
		t.Fatalf("captures %+v", c)
	}
}
