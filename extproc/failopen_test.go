package extproc_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/spool"
)

// TestEmuFailOpen runs requests of one account through the emulated Envoy
// while Redis comes and goes, on a route that fails open with a credit line
// of two requests' estimates (design-notes §6): while the reserve cannot
// reach Redis, two requests reach the provider and are charged without a
// hold, the third gets a 503; a reserve that Redis answers resets the
// account's exposure, so the next outage admits two again. A charge that
// cannot reach Redis either is spooled and lands exactly on replay.
func TestEmuFailOpen(t *testing.T) {
	reqBody := readBody(t, "openai_chat_request.json")
	est := estimateOf(t, reqBody)
	m := newEmu(t, emuConfig{envConfig: envConfig{Spool: true,
		FailOpen: extproc.FailOpen{Routes: []string{"/v1/chat/completions"}, CreditLine: 2 * est}}})
	m.serve(jsonAnswer(readBody(t, "openai_chat_response.json")))
	const cost = money.Micros(20) // 10 input + 5 output tokens of the test catalog's gpt-4o-mini
	funds := m.balance().Balance

	call := func(want int) {
		t.Helper()
		resp, body := m.do(m.ctx, "POST", "api.openai.com", "/v1/chat/completions",
			http.Header{"Authorization": {"Bearer " + virtualKey}, "Content-Type": {"application/json"}}, reqBody)
		if resp.StatusCode != want {
			t.Fatalf("status %d, want %d: %s", resp.StatusCode, want, body)
		}
		if want == 503 && !strings.Contains(string(body), "credit ledger is unavailable") {
			t.Fatalf("503 without the ledger error: %s", body)
		}
		m.drain()
	}
	journal := func(want string) {
		t.Helper()
		es := m.requestEntries()
		var got []string
		for _, en := range es {
			s := en.Type
			if en.Unreserved {
				s += "(unreserved)"
			}
			if en.Type == "capture" && en.Amount != cost {
				t.Errorf("capture of %s, want %s", en.Amount, cost)
			}
			got = append(got, s)
		}
		if strings.Join(got, ",") != want {
			t.Fatalf("journal %s, want %s", strings.Join(got, ","), want)
		}
	}
	upstream := func(want int) {
		t.Helper()
		if n := len(m.received()); n != want {
			t.Fatalf("the provider got %d requests, want %d", n, want)
		}
	}

	// Redis down at the reserve, back by the capture.
	m.faults.inject(errInjected, nil, nil)
	call(200)
	call(200)
	upstream(2)
	journal("capture(unreserved),capture(unreserved)")
	call(503) // a third estimate would pass the credit line
	upstream(2)

	// Redis answers a reserve: the exposure resets.
	m.faults.inject(nil, nil, nil)
	call(200)
	journal("capture(unreserved),capture(unreserved),reserve,capture")

	// Down again, at the charge too: the charge is spooled.
	m.faults.inject(errInjected, errInjected, nil)
	call(200)
	m.faults.inject(errInjected, nil, nil)
	call(200)
	call(503)
	upstream(5)
	journal("capture(unreserved),capture(unreserved),reserve,capture,capture(unreserved)")
	if got, want := m.obs.refusals(), map[string]int{"ledger_unavailable": 2}; len(got) != 1 || got["ledger_unavailable"] != 2 {
		t.Errorf("refusals %v, want %v", got, want)
	}
	if got := m.obs.outcomes(); got["fail_open"] != 3 || got["charged"] != 1 || got["error"] != 1 || len(got) != 3 {
		t.Errorf("outcomes %v, want fail_open 3, charged 1, error 1", got)
	}
	var kinds []string
	for _, s := range m.spooled() {
		switch {
		case s.Charge != nil:
			kinds = append(kinds, "charge")
		case s.Release != nil:
			kinds = append(kinds, "release")
		default:
			kinds = append(kinds, "capture")
		}
	}
	// Each 503 spools a release (the reserve's outcome was unknown); the
	// fail-open admissions spool none. In the order they happened.
	if strings.Join(kinds, ",") != "release,charge,release" {
		t.Fatalf("spooled %v, want the charge and the two refusals' releases", kinds)
	}

	// Redis is back: the replay lands the charge, exactly once.
	m.faults.inject(nil, nil, nil)
	if n, err := m.spool.Replay(m.ctx, m.led, func(s spool.Settlement, err error) {
		t.Errorf("spooled settlement rejected: %+v: %v", s, err)
	}); err != nil || n != 3 {
		t.Fatalf("replay applied %d, err %v", n, err)
	}
	journal("capture(unreserved),capture(unreserved),reserve,capture,capture(unreserved),capture(unreserved)")
	if b := m.balance(); b.Balance != funds-5*cost || b.Held != 0 {
		t.Fatalf("balance %s held %s, want %s and nothing held", b.Balance, b.Held, funds-5*cost)
	}
	if got := m.obs.held(); got != 0 {
		t.Errorf("the sidecar's held gauge ended at %d µUSD", got)
	}
	m.audit()
}

// estimateOf is the reserve estimate of an OpenAI chat request body under
// the test catalog.
func estimateOf(t *testing.T, body []byte) money.Micros {
	t.Helper()
	d := &provider.Detector{}
	route, err := d.DetectRequest("POST", "api.openai.com", "/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	req, err := provider.ParseRequest(route, body)
	if err != nil {
		t.Fatal(err)
	}
	row, err := testCatalog(t).Lookup(route.Provider, req.Model, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	est := row.Estimate(req.EstInputTokens, req.MaxOutputTokens)
	if est <= 0 {
		t.Fatal("a zero estimate proves nothing")
	}
	return est
}

func TestNewServerChecksFailOpen(t *testing.T) {
	base := func() extproc.Options {
		return extproc.Options{Ledger: &faultLedger{}, Prices: testCatalog(t), Identity: extproc.Identity{Sources: []string{"apikey"}}}
	}
	tests := []struct {
		name    string
		fo      extproc.FailOpen
		wantErr string
	}{
		{"off", extproc.FailOpen{}, ""},
		{"routes and a line", extproc.FailOpen{Routes: []string{"/v1/chat/completions", "api.openai.com/v1/"}, CreditLine: 5_000_000}, ""},
		{"negative credit line", extproc.FailOpen{Routes: []string{"/v1/"}, CreditLine: -1}, "credit line"},
		{"empty route", extproc.FailOpen{Routes: []string{" "}, CreditLine: 1}, "route is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opt := base()
			opt.FailOpen = tc.fo
			_, err := extproc.NewServer(opt)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err %v, want %q", err, tc.wantErr)
			}
		})
	}
}
