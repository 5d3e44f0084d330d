package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tidwall/gjson"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

// demoBuffer is an io.Writer the demo goroutine writes while the test reads.
type demoBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (d *demoBuffer) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.Write(p)
}

func (d *demoBuffer) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.String()
}

// demoFreeAddr returns a loopback address no one listens on right now.
func demoFreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// demoArgs runs the demo on free ports; REDIS_URL is empty, so the ledger
// is the embedded miniredis.
func demoArgs(t *testing.T, extra ...string) (args []string, proxy, provider, adminAddr string) {
	proxy, provider, adminAddr = demoFreeAddr(t), demoFreeAddr(t), demoFreeAddr(t)
	args = append([]string{"demo", "--proxy-addr", proxy, "--provider-addr", provider, "--admin-addr", adminAddr}, extra...)
	return args, proxy, provider, adminAddr
}

func demoGetenv(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func usd(t *testing.T, s string) money.Micros {
	t.Helper()
	m, err := money.ParseUSD(s)
	if err != nil {
		t.Fatalf("not a USD amount %q: %v", s, err)
	}
	return m
}

// seedAmount is the demo's top-up, $0.50.
const seedAmount money.Micros = 500_000

func checkBanner(t *testing.T, out string) {
	t.Helper()
	for _, want := range []string{"DEMO MODE", "IN-MEMORY LEDGER", "LOST when this process exits", "Production needs Redis"} {
		if !strings.Contains(out, want) {
			t.Errorf("banner: output lacks %q", want)
		}
	}
}

func TestDemoWalkthrough(t *testing.T) {
	args, proxy, _, adminAddr := demoArgs(t, "--walkthrough")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut demoBuffer
	err := Run(ctx, args, &out, &errOut, demoGetenv(map[string]string{"REDIS_URL": ""}))
	o := out.String()
	t.Logf("demo output:\n%s", o)
	if err != nil {
		t.Fatalf("walkthrough failed: %v\nstderr:\n%s", err, errOut.String())
	}
	checkBanner(t, o)
	for _, want := range []string{"http://" + proxy + "/v1/chat/completions", "http://" + adminAddr + "/v1/accounts/demo/balance",
		"walkthrough: all 3 steps behaved as described"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// Step 1: a 200 with a non-zero cost header.
	m := regexp.MustCompile(`HTTP (\d+), x-creditgate-cost: ([0-9.]+),`).FindStringSubmatch(o)
	if m == nil {
		t.Fatal("no charged call in the output")
	}
	cost := usd(t, m[2])
	if m[1] != "200" || cost <= 0 {
		t.Errorf("charged call: status %s cost %s, want 200 and a non-zero cost", m[1], cost)
	}
	// Step 2: the admin API's balance is the seed minus that cost.
	m = regexp.MustCompile(`HTTP 200 (\{"account":"demo".*\})`).FindStringSubmatch(o)
	if m == nil {
		t.Fatal("no balance answer in the output")
	}
	bal := usd(t, gjson.Get(m[1], "balance").String())
	if bal >= seedAmount || bal != seedAmount-cost {
		t.Errorf("balance $%s, want $%s - $%s", bal, seedAmount, cost)
	}
	if !strings.Contains(o, fmt.Sprintf("demo: balance $%s, held $0.000000", bal)) {
		t.Error("the balance CLI's line is missing")
	}
	// Step 3: a 402 with OpenAI's error shape.
	m = regexp.MustCompile(`HTTP 402\n\s+(\{.*\})`).FindStringSubmatch(o)
	if m == nil {
		t.Fatal("no 402 in the output")
	}
	if typ := gjson.Get(m[1], "error.type").String(); typ != "insufficient_quota" {
		t.Errorf("402 error.type %q, want insufficient_quota (body %s)", typ, m[1])
	}
	if msg := gjson.Get(m[1], "error.message").String(); !strings.Contains(msg, "insufficient credit") {
		t.Errorf("402 error.message %q", msg)
	}
}

// curlCheck says what one printed curl command must answer.
type curlCheck struct {
	name    string
	match   func(cmd string) bool
	status  string // first line of curl -i output, or "" for no headers
	body    []string
	charged bool // x-creditgate-cost > 0
	balance bool // the body is a balance below the seed
}

var curlChecks = []curlCheck{
	{name: "402", match: func(c string) bool { return strings.Contains(c, `"max_tokens":1000000`) },
		status: "HTTP/1.1 402", body: []string{`"type":"insufficient_quota"`, "insufficient credit"}},
	{name: "balance", match: func(c string) bool { return strings.Contains(c, "/balance") },
		body: []string{`"account":"demo"`}, balance: true},
	{name: "anthropic", match: func(c string) bool { return strings.Contains(c, "/v1/messages") },
		status: "HTTP/1.1 200", body: []string{`"type":"message"`}, charged: true},
	{name: "charged", match: func(c string) bool { return strings.Contains(c, "/v1/chat/completions") },
		status: "HTTP/1.1 200", body: []string{`"object":"chat.completion"`}, charged: true},
}

// TestDemoPrintedCommands starts `make run`'s demo, runs every curl command
// it printed, the balance CLI line too, and stops it with the context as
// Ctrl-C does.
func TestDemoPrintedCommands(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not on PATH")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not on PATH")
	}
	args, proxy, provider, adminAddr := demoArgs(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut demoBuffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, args, &out, &errOut, demoGetenv(map[string]string{"REDIS_URL": ""})) }()
	select {
	case err := <-done:
		t.Fatalf("demo ended before it was ready: %v\n%s\n%s", err, out.String(), errOut.String())
	case <-demoWait(t, func() bool { return strings.Contains(out.String(), demoReadyLine) }):
	}
	o := out.String()
	t.Logf("demo output:\n%s", o)
	checkBanner(t, o)

	seen := map[string]int{}
	var cliLine string
	for _, line := range strings.Split(o, "\n") {
		if strings.HasPrefix(line, "CG_ADMIN_TOKEN=") {
			cliLine = line
		}
		if !strings.HasPrefix(line, "curl ") {
			continue
		}
		// Through the proxy or to the admin API, on the ports actually bound.
		if !strings.HasPrefix(line, "curl -sS -i http://"+proxy+"/") && !strings.HasPrefix(line, "curl -sS http://"+adminAddr+"/") {
			t.Errorf("command does not target the demo's proxy %s or admin API %s: %s", proxy, adminAddr, line)
		}
		var ck *curlCheck
		for i := range curlChecks {
			if curlChecks[i].match(line) {
				ck = &curlChecks[i]
				break
			}
		}
		if ck == nil {
			t.Errorf("unexpected command: %s", line)
			continue
		}
		seen[ck.name]++
		t.Run(ck.name, func(t *testing.T) { runCurl(t, ctx, line, *ck) })
	}
	for _, ck := range curlChecks {
		if seen[ck.name] == 0 {
			t.Errorf("the demo printed no %s command", ck.name)
		}
	}

	// The printed `go run ./cmd/creditgate balance demo ...`, run in-process.
	cliArgs, ok := strings.CutPrefix(cliLine, "CG_ADMIN_TOKEN="+demoAdminToken+" go run ./cmd/creditgate ")
	if !ok {
		t.Fatalf("no balance CLI command printed (got %q)", cliLine)
	}
	var cliOut, cliErr bytes.Buffer
	if err := Run(ctx, strings.Fields(cliArgs), &cliOut, &cliErr, demoGetenv(map[string]string{"CG_ADMIN_TOKEN": demoAdminToken})); err != nil {
		t.Fatalf("%s: %v %s", cliLine, err, cliErr.String())
	}
	if m := regexp.MustCompile(`^demo: balance \$([0-9.]+),`).FindStringSubmatch(cliOut.String()); m == nil || usd(t, m[1]) >= seedAmount {
		t.Errorf("%s printed %q, want a balance below $0.50", cliLine, cliOut.String())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo did not stop cleanly: %v\n%s", err, errOut.String())
		}
	case <-time.After(60 * time.Second): // only stops a hang
		t.Fatal("demo did not stop after its context ended")
	}
	if !strings.Contains(out.String(), "stopping the demo") {
		t.Error("no stop message")
	}
	for _, a := range []string{proxy, provider, adminAddr} {
		if c, err := net.Dial("tcp", a); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after the demo stopped", a)
		}
	}
}

func runCurl(t *testing.T, ctx context.Context, line string, ck curlCheck) {
	cmd := exec.CommandContext(ctx, "bash", "-c", line)
	// The commands target loopback; a proxy from the environment must not interfere.
	for _, kv := range os.Environ() {
		if !strings.Contains(strings.ToLower(strings.SplitN(kv, "=", 2)[0]), "proxy") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	b, err := cmd.CombinedOutput()
	got := string(b)
	if err != nil {
		t.Fatalf("%s\nexit: %v\n%s", line, err, got)
	}
	if ck.status != "" && !strings.HasPrefix(got, ck.status) {
		t.Errorf("status: want %q, got:\n%s", ck.status, got)
	}
	for _, want := range ck.body {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if ck.charged {
		m := regexp.MustCompile(`(?im)^x-creditgate-cost: ([0-9.]+)\r?$`).FindStringSubmatch(got)
		if m == nil || usd(t, m[1]) <= 0 {
			t.Errorf("want a non-zero x-creditgate-cost header:\n%s", got)
		}
	}
	if ck.balance {
		if b := usd(t, gjson.Get(got, "balance").String()); b >= seedAmount {
			t.Errorf("balance $%s, want below $0.50 after a charged call", b)
		}
	}
}

// demoWait closes its channel once cond holds. The bound only keeps a
// broken run from hanging.
func demoWait(t *testing.T, cond func() bool) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if cond() {
				close(ch)
				return
			}
		}
	}()
	return ch
}

func TestDemoFlags(t *testing.T) {
	cases := []struct {
		name     string
		args     []string
		help     bool // succeeds (or returns flag.ErrHelp) after printing usage
		wantCode int
		stdout   []string
	}{
		{name: "help", args: []string{"demo", "--help"}, help: true,
			stdout: []string{"-walkthrough", "-proxy-addr", "-provider-addr", "-admin-addr", "-redis-prefix"}},
		{name: "bad redis prefix", args: []string{"demo", "--redis-prefix", "cg{x}"}, wantCode: 2},
		{name: "dev-provider help", args: []string{"dev-provider", "--help"}, help: true, stdout: []string{"-addr"}},
		{name: "public admin address", args: []string{"demo", "--admin-addr", "0.0.0.0:8081"}, wantCode: 2},
		{name: "public proxy address", args: []string{"demo", "--proxy-addr", ":10000"}, wantCode: 2},
		{name: "stray argument", args: []string{"demo", "now"}, wantCode: 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := Run(context.Background(), tc.args, &out, &errOut, demoGetenv(nil))
			switch {
			case tc.help && err != nil && !errors.Is(err, flag.ErrHelp):
				t.Fatalf("err %v, want help", err)
			case tc.wantCode != 0 && (err == nil || exitCode(err) != tc.wantCode):
				t.Fatalf("err %v (exit %d), want exit %d", err, exitCode(err), tc.wantCode)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(out.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

// TestDemoRedisUnreachable: with REDIS_URL set the demo uses that Redis and
// says so; an unreachable one is an error, not a silent fallback.
func TestDemoRedisUnreachable(t *testing.T) {
	args, _, _, _ := demoArgs(t)
	dead := demoFreeAddr(t)
	var out, errOut bytes.Buffer
	err := Run(context.Background(), args, &out, &errOut, demoGetenv(map[string]string{"REDIS_URL": "redis://:secret@" + dead + "/0"}))
	if err == nil || !strings.Contains(err.Error(), "REDIS_URL") {
		t.Fatalf("err %v, want a REDIS_URL error", err)
	}
	if strings.Contains(err.Error()+out.String(), "secret") {
		t.Error("the Redis password was printed")
	}
}

// TestDemoWithRedisURL runs the walkthrough twice against a real Redis
// under a private key prefix: the ledger lives in Redis, not in memory, and
// the second run's seed replays its payment instead of crediting it again.
func TestDemoWithRedisURL(t *testing.T) {
	prefix := redistest.Prefix(t)
	vars := map[string]string{"REDIS_URL": "redis://" + redistest.Addr(t) + "/0"}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	costRE := regexp.MustCompile(`HTTP 200, x-creditgate-cost: ([0-9.]+),`)
	var costs money.Micros
	seedLine := func(replayed bool) string {
		if replayed { // the second run must not credit the seed again
			return fmt.Sprintf("seeded account demo: payment %s was already applied; balance now $", demoPaymentID)
		}
		return fmt.Sprintf("seeded account demo: balance $%s (payment %s)", seedAmount, demoPaymentID)
	}
	for run, replayed := range []bool{false, true} {
		args, _, _, _ := demoArgs(t, "--walkthrough", "--redis-prefix", prefix)
		var out, errOut demoBuffer
		err := Run(ctx, args, &out, &errOut, demoGetenv(vars))
		o := out.String()
		if err != nil {
			t.Fatalf("run %d: walkthrough failed: %v\n%s\nstderr:\n%s", run+1, err, o, errOut.String())
		}
		for _, want := range []string{"DEMO MODE -- ledger in Redis from REDIS_URL", fmt.Sprintf("key prefix %q", prefix),
			seedLine(replayed),
			"walkthrough: all 3 steps behaved as described"} {
			if !strings.Contains(o, want) {
				t.Errorf("run %d: output lacks %q:\n%s", run+1, want, o)
			}
		}
		if strings.Contains(o, "IN-MEMORY") {
			t.Errorf("run %d: banner claims an in-memory ledger with REDIS_URL set:\n%s", run+1, o)
		}
		m := costRE.FindStringSubmatch(o)
		if m == nil {
			t.Fatalf("run %d: no charged call in the output:\n%s", run+1, o)
		}
		costs += usd(t, m[1])
	}

	// Read the ledger straight from Redis: the demo left it there.
	led, err := ledger.New(redistest.Client(t), ledger.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	bal, err := led.Balance(ctx, demoAccount)
	if err != nil {
		t.Fatalf("the demo account is not in Redis under prefix %s: %v", prefix, err)
	}
	if bal.Balance != seedAmount-costs || bal.Held != 0 {
		t.Errorf("balance in Redis %+v, want $%s (one $%s seed minus both charges) and nothing held", bal, seedAmount-costs, seedAmount)
	}
	entries, _, err := led.Journal(ctx, demoAccount, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var topups, captures int
	for _, e := range entries {
		switch e.Type {
		case "topup":
			topups++
		case "capture":
			captures++
		}
	}
	if topups != 1 || captures != 2 {
		t.Errorf("journal has %d top-ups and %d captures, want 1 and 2:\n%+v", topups, captures, entries)
	}
}

func TestDemoDevProvider(t *testing.T) {
	addr := demoFreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut demoBuffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, []string{"dev-provider", "--addr", addr}, &out, &errOut, demoGetenv(nil)) }()
	<-demoWait(t, func() bool { return strings.Contains(out.String(), "listening on") })

	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != "ok" {
		t.Errorf("/healthz: %d %q", resp.StatusCode, b)
	}
	resp, err = http.Post("http://"+addr+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || gjson.GetBytes(b, "usage.completion_tokens").Int() != 5 {
		t.Errorf("chat completion: %d %s", resp.StatusCode, b)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("dev-provider did not stop cleanly: %v", err)
	}
}
