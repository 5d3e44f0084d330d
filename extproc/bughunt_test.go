package extproc_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/test/redistest"
)

// TestEmuFailOpenAfterUnindexedHoldIsCharged: the reserve's hold lands but
// its sweep-index entry cannot be written (on Redis Cluster the cross-account
// index key lives on another node, which may be the one that is down), so
// Ledger.Reserve releases the hold and fails. If that failure reads as an
// outage, a fail-open route lets the call reach the provider, and its charge
// then meets a released request id (CG_CLOSED): the call is never paid for.
// Whatever the sidecar does, a call that reached the provider must be debited.
func TestEmuFailOpenAfterUnindexedHoldIsCharged(t *testing.T) {
	reqBody := readBody(t, "openai_chat_request.json")
	m := newEmu(t, emuConfig{envConfig: envConfig{
		FailOpen: extproc.FailOpen{Routes: []string{"/v1/chat/completions"}, CreditLine: 10 * estimateOf(t, reqBody)}}})
	m.serve(jsonAnswer(readBody(t, "openai_chat_response.json")))
	funds := m.balance().Balance

	// Break only the sweep index (a key of the wrong type refuses ZADD), as a
	// down cluster node holding it would, while the account's keys answer.
	acctKey := m.led.AccountKeys(testAccount)[0]
	prefix, _, _ := strings.Cut(acctKey, ":{")
	rdb := redistest.Client(t)
	if err := rdb.Set(m.ctx, prefix+":sweep", "not a zset", 0).Err(); err != nil {
		t.Fatal(err)
	}

	resp, body := m.do(m.ctx, "POST", "api.openai.com", "/v1/chat/completions",
		http.Header{"Authorization": {"Bearer " + virtualKey}, "Content-Type": {"application/json"}}, reqBody)
	m.drain()
	reached := len(m.received())
	b := m.balance()
	if reached > 0 && b.Balance == funds {
		t.Fatalf("the provider answered %d (%s) but nothing was debited; journal %v",
			resp.StatusCode, body, entryTypes(m.requestEntries()))
	}
	if b.Held != 0 {
		t.Fatalf("held %s left behind", b.Held)
	}
	m.audit()
}
