package admin_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/cases/*.golden from the current output")

// A case file is a sequence of requests separated by "---" lines, each:
//
//	# comments
//	METHOD /path?query
//	Header: value          ($TOKEN is replaced by the test token)
//	                       (blank line)
//	body                   (optional)
//
// run against a fresh seeded ledger (see newEnv). The .golden file next to
// it holds every response: status, the headers that carry meaning, and the
// indented JSON body.
type caseRequest struct {
	method, target string
	header         http.Header
	body           string
}

func parseCase(t *testing.T, src string) []caseRequest {
	t.Helper()
	var out []caseRequest
	for _, block := range strings.Split(src, "\n---\n") {
		var lines []string
		for _, ln := range strings.Split(block, "\n") {
			if !strings.HasPrefix(ln, "#") {
				lines = append(lines, ln)
			}
		}
		for len(lines) > 0 && strings.TrimSpace(lines[0]) == "" {
			lines = lines[1:]
		}
		if len(lines) == 0 {
			t.Fatalf("empty request block in %q", block)
		}
		method, target, ok := strings.Cut(lines[0], " ")
		if !ok {
			t.Fatalf("bad request line %q", lines[0])
		}
		r := caseRequest{method: method, target: target, header: http.Header{}}
		i := 1
		for ; i < len(lines) && lines[i] != ""; i++ {
			k, v, ok := strings.Cut(lines[i], ":")
			if !ok {
				t.Fatalf("bad header line %q", lines[i])
			}
			r.header.Set(k, strings.ReplaceAll(strings.TrimSpace(v), "$TOKEN", testToken))
		}
		if i < len(lines) {
			r.body = strings.TrimSpace(strings.Join(lines[i+1:], "\n"))
		}
		out = append(out, r)
	}
	return out
}

// secretsOf lists what a case's requests hold that must never come back:
// every supplied API key, and anything in a key path that is not a hash.
var keyPathRE = regexp.MustCompile(`^/v1/keys/(.+)$`)
var hashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func secretsOf(reqs []caseRequest) []string {
	var out []string
	for _, r := range reqs {
		var b struct{ Key string }
		if json.Unmarshal([]byte(r.body), &b) == nil && b.Key != "" {
			out = append(out, b.Key)
		}
		if m := keyPathRE.FindStringSubmatch(r.target); m != nil && !hashRE.MatchString(m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

func TestCases(t *testing.T) {
	files, err := filepath.Glob("testdata/cases/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no case files: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".txt")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			reqs := parseCase(t, string(src))
			e := newEnv(t)
			e.secrets = append(e.secrets, secretsOf(reqs)...)
			var got strings.Builder
			for i, r := range reqs {
				if i > 0 {
					got.WriteString("\n")
				}
				got.WriteString(e.roundTrip(t, r))
			}
			golden := strings.TrimSuffix(f, ".txt") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it, then review it)", err)
			}
			if got.String() != string(want) {
				t.Errorf("responses differ from %s\n--- got ---\n%s\n--- want ---\n%s", golden, got.String(), want)
			}
		})
	}
}

// roundTrip sends one case request and renders the response for the
// golden file, checking the invariants every response must meet.
func (e *env) roundTrip(t *testing.T, r caseRequest) string {
	t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req, err := http.NewRequest(r.method, e.srv.URL+r.target, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = r.header
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", r.method, r.target, ct)
	}
	for _, s := range e.secrets {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("%s %s: response contains secret %q: %s", r.method, r.target, s, raw)
		}
	}
	if resp.StatusCode >= 400 && resp.StatusCode != http.StatusConflict || bytes.Contains(raw, []byte(`"error"`)) {
		var eb struct {
			Error *struct{ Code, Message string }
		}
		if err := json.Unmarshal(raw, &eb); err != nil || eb.Error == nil || eb.Error.Code == "" || eb.Error.Message == "" {
			t.Errorf("%s %s: status %d without a proper error object: %s", r.method, r.target, resp.StatusCode, raw)
		}
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, bytes.TrimSpace(raw), "", "  "); err != nil {
		t.Fatalf("%s %s: response is not JSON: %v: %s", r.method, r.target, err, raw)
	}
	var out strings.Builder
	fmt.Fprintf(&out, "=== %s %s\n%d %s\n", r.method, r.target, resp.StatusCode, http.StatusText(resp.StatusCode))
	for _, h := range []string{"Allow", "WWW-Authenticate", "Retry-After"} {
		if v := resp.Header.Get(h); v != "" {
			fmt.Fprintf(&out, "%s: %s\n", h, v)
		}
	}
	out.WriteString(pretty.String())
	out.WriteString("\n")
	return out.String()
}
