package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
	"github.com/tidwall/sjson"
)

var update = flag.Bool("update", false, "rewrite testdata/cases/*.golden.json from the current code (review the diff by hand)")

// A case is a file set in testdata/cases sharing one name:
//
//	<case>.route            "authority path" of the request
//	<case>.request.json     the client's request body
//	<case>.response.json    a whole response body (ParseBody), or
//	<case>.response.sse     an SSE stream, or
//	<case>.response.stream  Gemini's streamed JSON array
//	<case>.forwarded.sse    optional: what the client must receive, when it
//	                        differs from the response (hidden usage chunk)
//	<case>.golden.json      the expected route, request summary, result,
//	                        settlement and its exact cost
type goldenCase struct {
	Route   Route         `json:"route"`
	Request goldenRequest `json:"request"`
	Result  Result        `json:"result"`
	Settle  goldenSettle  `json:"settle"`
	Cost    goldenCost    `json:"cost"`
}

type goldenRequest struct {
	Model            string `json:"model"`
	Stream           bool   `json:"stream"`
	MaxOutputTokens  int64  `json:"max_output_tokens"`
	EstInputTokens   int64  `json:"est_input_tokens"`
	ClientAskedUsage bool   `json:"client_asked_usage"`
	InjectedUsage    bool   `json:"injected_usage"`
	UpstreamBody     string `json:"upstream_body,omitempty"`
}

type goldenSettle struct {
	Usage     pricing.Usage `json:"usage"`
	Estimated bool          `json:"estimated"`
}

// goldenCost is the exact price of the settled usage in the embedded default
// catalog at pricedAt. Either a row priced it (PriceRow, CostPico, CostUSD)
// or Unpriced says why not, as one of the unpriced* reasons.
type goldenCost struct {
	PricedModel string `json:"priced_model,omitempty"`
	PriceRow    string `json:"price_row,omitempty"`
	CostPico    *int64 `json:"cost_pico,omitempty"`
	CostUSD     string `json:"cost_usd,omitempty"`
	Unpriced    string `json:"unpriced,omitempty"`
}

// pricedAt is fixed so that goldens do not change when a catalog row with a
// later effective_from is added; it is after every row the fixtures use.
var pricedAt = time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)

// Reasons a golden records instead of a cost.
const (
	// unpricedNoUsage: the response reported no usage and produced no
	// output, so the settlement would be the request-side guess alone
	// (error bodies, failed streams); the gateway releases such holds.
	unpricedNoUsage = "no_usage"
	// unpricedUnknownModel: neither the answering nor the requested model
	// has a row (pricing.ErrUnknownModel).
	unpricedUnknownModel = "unknown_model"
	// unpricedInvalidUsage: the row refused the usage (pricing.ErrInvalidUsage
	// or pricing.ErrOverflow), a normalization bug.
	unpricedInvalidUsage = "invalid_usage"
)

// priceSettled prices u the way extproc settles a call: on the model that
// answered, falling back to the requested model's row when the answering
// model is not in the catalog (extproc reserved on that row).
func priceSettled(cat *pricing.Catalog, route Route, req Request, res Result, u pricing.Usage) goldenCost {
	if !res.HaveUsage && res.OutputBytes == 0 {
		return goldenCost{Unpriced: unpricedNoUsage}
	}
	var row *pricing.Row
	var model string
	var err error
	for _, m := range []string{res.Model, req.Model} {
		if m == "" {
			continue
		}
		if row, err = cat.Lookup(route.Provider, m, pricedAt); err == nil {
			model = m
			break
		}
	}
	if row == nil {
		if err == nil || errors.Is(err, pricing.ErrUnknownModel) {
			return goldenCost{Unpriced: unpricedUnknownModel}
		}
		return goldenCost{Unpriced: "lookup: " + err.Error()}
	}
	cost, err := row.Cost(u)
	if err != nil {
		if errors.Is(err, pricing.ErrInvalidUsage) || errors.Is(err, pricing.ErrOverflow) {
			return goldenCost{PricedModel: model, PriceRow: row.ID, Unpriced: unpricedInvalidUsage}
		}
		return goldenCost{PricedModel: model, PriceRow: row.ID, Unpriced: "cost: " + err.Error()}
	}
	pico := int64(cost)
	return goldenCost{PricedModel: model, PriceRow: row.ID, CostPico: &pico, CostUSD: cost.String()}
}

const casesDir = "testdata/cases"

func caseNames(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(casesDir, "*.route"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".route"))
	}
	sort.Strings(names)
	if len(names) == 0 {
		t.Fatal("no cases in " + casesDir)
	}
	return names
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(casesDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fileExists(name string) bool {
	_, err := os.Stat(filepath.Join(casesDir, name))
	return err == nil
}

// evalCase runs one case through request parsing, response parsing,
// settlement and pricing. With splits, a stream is also fed at every split
// (checkStreamSplits); sawMultiByte reports a fixture with multi-byte runes.
func evalCase(t *testing.T, cat *pricing.Catalog, name string, splits bool) (got goldenCase, sawMultiByte bool) {
	t.Helper()
	authority, path, ok := strings.Cut(strings.TrimSpace(string(readFile(t, name+".route"))), " ")
	if !ok {
		t.Fatalf("%s.route: want \"authority path\"", name)
	}
	route, err := (&Detector{}).Detect(authority, path)
	if err != nil {
		t.Fatalf("Detect: %v", err)
	}
	reqBody := readFile(t, name+".request.json")
	req, err := ParseRequest(route, reqBody)
	if err != nil {
		t.Fatalf("ParseRequest: %v", err)
	}
	checkUpstreamBody(t, reqBody, req)

	var res Result
	switch {
	case fileExists(name + ".response.json"):
		res, err = ParseBody(route, req, readFile(t, name+".response.json"))
		if err != nil {
			t.Fatalf("ParseBody: %v", err)
		}
		if fileExists(name + ".forwarded.sse") {
			t.Fatal("forwarded.sse makes no sense for a JSON response")
		}
	default:
		ext := ".response.sse"
		if fileExists(name + ".response.stream") {
			ext = ".response.stream"
		}
		in := readFile(t, name+ext)
		want := in
		if fileExists(name + ".forwarded.sse") {
			want = readFile(t, name+".forwarded.sse")
		}
		if !utf8.Valid(in) {
			t.Fatal("fixture is not UTF-8")
		}
		sawMultiByte = len(in) != utf8.RuneCount(in)
		if splits {
			res = checkStreamSplits(t, route, req, in, want)
		} else {
			var fwd []byte
			fwd, res = feedParts(route, req, [][]byte{in})
			if !bytes.Equal(fwd, want) {
				t.Fatalf("forwarded bytes differ\n--- got\n%q\n--- want\n%q", fwd, want)
			}
		}
	}

	got = goldenCase{
		Route: route,
		Request: goldenRequest{
			Model: req.Model, Stream: req.Stream, MaxOutputTokens: req.MaxOutputTokens,
			EstInputTokens: req.EstInputTokens, ClientAskedUsage: req.ClientAskedUsage,
			InjectedUsage: req.InjectedUsage, UpstreamBody: string(req.Body),
		},
		Result: res,
	}
	got.Settle.Usage, got.Settle.Estimated = res.Settle(req)
	got.Cost = priceSettled(cat, route, req, res, got.Settle.Usage)
	return got, sawMultiByte
}

func TestGolden(t *testing.T) {
	cat := pricing.Default()
	sawMultiByte := false
	for _, name := range caseNames(t) {
		t.Run(name, func(t *testing.T) {
			got, mb := evalCase(t, cat, name, true)
			sawMultiByte = sawMultiByte || mb
			gotJSON, err := json.MarshalIndent(got, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			gotJSON = append(gotJSON, '\n')
			goldenPath := filepath.Join(casesDir, name+".golden.json")
			if *update {
				if err := os.WriteFile(goldenPath, gotJSON, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(goldenPath)
			if err != nil {
				t.Fatalf("%v (run go test -run TestGolden -update to create it, then review it)", err)
			}
			if !bytes.Equal(gotJSON, want) {
				t.Errorf("golden mismatch for %s\n--- got\n%s\n--- want\n%s", name, gotJSON, want)
			}
		})
	}
	if !sawMultiByte {
		t.Error("no stream fixture contains multi-byte runes: splits inside a rune are not exercised")
	}
}

// checkUpstreamBody: an injected body differs from the client's only in
// stream_options.include_usage.
func checkUpstreamBody(t *testing.T, orig []byte, req Request) {
	t.Helper()
	if req.Body == nil {
		if req.InjectedUsage {
			t.Fatal("InjectedUsage without a mutated body")
		}
		return
	}
	if !req.InjectedUsage {
		t.Fatal("body mutated without InjectedUsage")
	}
	a, err1 := sjson.DeleteBytes(orig, "stream_options")
	b, err2 := sjson.DeleteBytes(req.Body, "stream_options")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	var ca, cb bytes.Buffer
	if err := json.Compact(&ca, a); err != nil {
		t.Fatal(err)
	}
	if err := json.Compact(&cb, b); err != nil {
		t.Fatalf("mutated body is not JSON: %v", err)
	}
	if ca.String() != cb.String() {
		t.Fatalf("mutation changed more than stream_options:\n%s\n%s", ca.String(), cb.String())
	}
}

// feedParts runs one parser over parts. Each part is a fresh copy that is
// scribbled over right after Feed, so a parser that kept a reference to a
// caller's chunk is caught.
func feedParts(route Route, req Request, parts [][]byte) ([]byte, Result) {
	p := NewStreamParser(route, req)
	var fwd []byte
	for _, part := range parts {
		c := append([]byte(nil), part...)
		fwd = append(fwd, p.Feed(c)...)
		for i := range c {
			c[i] = 0xff
		}
	}
	res := p.Finish()
	fwd = append(fwd, res.Tail...)
	res.Tail = nil
	return fwd, res
}

// checkStreamSplits feeds the stream whole, split at every byte offset, one
// byte at a time and in seeded random multi-way splits; every run must give
// the same Result and forward exactly want.
func checkStreamSplits(t *testing.T, route Route, req Request, in, want []byte) Result {
	t.Helper()
	check := func(desc string, parts [][]byte, ref *Result) Result {
		fwd, res := feedParts(route, req, parts)
		if !bytes.Equal(fwd, want) {
			t.Fatalf("%s: forwarded bytes differ\n--- got\n%q\n--- want\n%q", desc, fwd, want)
		}
		if ref != nil && !reflect.DeepEqual(res, *ref) {
			t.Fatalf("%s: result differs\n got %+v\nwant %+v", desc, res, *ref)
		}
		return res
	}
	ref := check("whole", [][]byte{in}, nil)
	for i := 0; i <= len(in); i++ {
		check("split at "+itoa(i), [][]byte{in[:i], in[i:]}, &ref)
	}
	bytewise := make([][]byte, len(in))
	for i := range in {
		bytewise[i] = in[i : i+1]
	}
	check("byte by byte", bytewise, &ref)

	h := fnv.New64a()
	h.Write(in)
	rng := rand.New(rand.NewPCG(h.Sum64(), 20260901))
	for iter := 0; iter < 200; iter++ {
		k := 1 + rng.IntN(min(24, len(in)+1))
		cuts := make([]int, k)
		for j := range cuts {
			cuts[j] = rng.IntN(len(in) + 1)
		}
		sort.Ints(cuts)
		var parts [][]byte
		prev := 0
		for _, c := range cuts {
			parts = append(parts, in[prev:c])
			prev = c
		}
		parts = append(parts, in[prev:])
		check("random split "+itoa(iter), parts, &ref)
	}
	return ref
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// TestGoldenStatedCosts pins the dollar figures providers.md states for its
// fixtures, computed afresh from the fixture files, so that a pricing or
// normalization regression cannot be accepted by regenerating the goldens
// with -update. Each want is copied from providers.md, not from a golden.
func TestGoldenStatedCosts(t *testing.T) {
	cat := pricing.Default()
	for _, tc := range []struct {
		name string
		at   time.Time // zero: pricedAt
		want string    // USD, exactly as providers.md states it
		src  string
	}{
		{name: "openai_chat", want: "0.0032525", src: "§2 gpt-4o fixture"},
		{name: "openai_chat_reasoning", want: "0.00792", src: "§2 o4-mini fixture"},
		{name: "openai_chat_stream_cached", want: "0.0001119", src: "§2 gpt-4o-mini stream"},
		{name: "openai_chat_stream_injected", want: "0.0001119", src: "§2 gpt-4o-mini stream, include_usage injected"},
		{name: "openai_responses", want: "0.0196055", src: "§3 gpt-5: tokens $0.0096055 + 1 web search $0.01"},
		{name: "openai_responses_stream_websearch", want: "0.0196055", src: "§3 gpt-5 fixture, streamed"},
		{name: "openai_responses_stream", want: "0.000162", src: "§3 gpt-4.1 stream"},
		{name: "openai_embeddings", want: "0.00000016", src: "§4 text-embedding-3-small"},
		{name: "anthropic_messages", want: "0.037775", src: "§6 Sonnet 4: tokens $0.017775 + 2 searches $0.02"},
		{name: "anthropic_stream", want: "0.037775", src: "§6 Sonnet 4 stream, same final usage"},
		{name: "gemini_generate", want: "0.023", src: "§7 gemini-2.5-pro, cache $0.125"},
		{name: "gemini_stream", want: "0.0005765", src: "§7 gemini-2.5-flash stream"},
		{name: "gemini_stream_crlf", want: "0.0005765", src: "§7 same stream, CRLF"},
		{name: "gemini_stream_array", want: "0.0005765", src: "§7 same stream, JSON array"},
		{name: "deepseek_chat", want: "0.000170464", src: "§9.1 at the V3.2 list (§12.6)"},
		{name: "deepseek_chat", at: time.Date(2025, 9, 10, 0, 0, 0, 0, time.UTC), want: "0.00051968", src: "§9.1 at the 2025-09-05 list"},
		{name: "deepseek_stream", want: "0.000170464", src: "§9.1 usage, streamed"},
		{name: "xai_chat", want: "0.0001971", src: "§9.6 grok-3-mini, reasoning additive"},
	} {
		t.Run(tc.name+"@"+tc.want, func(t *testing.T) {
			want, err := parseUSDPico(tc.want)
			if err != nil {
				t.Fatal(err)
			}
			at := pricedAt
			if !tc.at.IsZero() {
				at = tc.at
			}
			got, _ := evalCase(t, cat, tc.name, false)
			if got.Settle.Estimated {
				t.Fatalf("%s: settled usage is an estimate", tc.src)
			}
			model := got.Result.Model
			row, err := cat.Lookup(got.Route.Provider, model, at)
			if err != nil {
				t.Fatalf("%s: %v", tc.src, err)
			}
			cost, err := row.Cost(got.Settle.Usage)
			if err != nil {
				t.Fatalf("%s: %v", tc.src, err)
			}
			if cost != want {
				t.Errorf("%s: cost %s (row %s, usage %+v), providers.md says $%s", tc.src, cost, row.ID, got.Settle.Usage, tc.want)
			}
			if tc.at.IsZero() && (got.Cost.CostPico == nil || *got.Cost.CostPico != int64(want)) {
				t.Errorf("%s: golden pricing gives %+v, want %d pico", tc.src, got.Cost, want)
			}
		})
	}
}

// parseUSDPico reads a decimal dollar string with at most 12 fractional
// digits as exact pico-USD.
func parseUSDPico(s string) (money.Pico, error) {
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" || len(frac) > 12 || strings.Trim(whole+frac, "0123456789") != "" {
		return 0, errors.New("not a dollar amount with at most 12 decimals: " + s)
	}
	var v int64
	for _, c := range whole + frac + strings.Repeat("0", 12-len(frac)) {
		v = v*10 + int64(c-'0')
	}
	return money.Pico(v), nil
}
