package provider

import (
	"bytes"
	"encoding/json"
	"flag"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"unicode/utf8"

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
//	<case>.golden.json      the expected route, request summary, result and settlement
type goldenCase struct {
	Route   Route         `json:"route"`
	Request goldenRequest `json:"request"`
	Result  Result        `json:"result"`
	Settle  goldenSettle  `json:"settle"`
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

func TestGolden(t *testing.T) {
	sawMultiByte := false
	for _, name := range caseNames(t) {
		t.Run(name, func(t *testing.T) {
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
				if len(in) != utf8.RuneCount(in) {
					sawMultiByte = true
				}
				res = checkStreamSplits(t, route, req, in, want)
			}

			got := goldenCase{
				Route: route,
				Request: goldenRequest{
					Model: req.Model, Stream: req.Stream, MaxOutputTokens: req.MaxOutputTokens,
					EstInputTokens: req.EstInputTokens, ClientAskedUsage: req.ClientAskedUsage,
					InjectedUsage: req.InjectedUsage, UpstreamBody: string(req.Body),
				},
				Result: res,
			}
			got.Settle.Usage, got.Settle.Estimated = res.Settle(req)
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
