package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

// cliResult is one Run of the creditgate command line.
type cliResult struct {
	stdout, stderr string
	err            error
}

// runCLI runs creditgate with args; the admin URL and token come from the
// environment, as an operator's shell would give them.
func runCLI(t *testing.T, envVars map[string]string, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	err := Run(context.Background(), args, &out, &errb, mapEnv(envVars))
	return cliResult{out.String(), errb.String(), err}
}

func TestHelpOnEverySubcommand(t *testing.T) {
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			r := runCLI(t, nil, c.name, "--help")
			if r.err != nil {
				t.Fatalf("creditgate %s --help: %v (exit %d)", c.name, r.err, exitCode(r.err))
			}
			if !strings.Contains(r.stdout, "usage: creditgate "+c.name) {
				t.Fatalf("--help printed no usage of %s on stdout:\n%s", c.name, r.stdout)
			}
			if r.stderr != "" {
				t.Errorf("--help wrote to stderr: %q", r.stderr)
			}
		})
	}
	for _, h := range []string{"help", "--help", "-h"} {
		if r := runCLI(t, nil, h); r.err != nil || !strings.Contains(r.stdout, "usage: creditgate <command>") {
			t.Errorf("creditgate %s: %v\n%s", h, r.err, r.stdout)
		}
	}
}

// cliServer starts serve and returns the environment the CLI needs to
// reach its admin API.
func cliServer(t *testing.T) (*testServer, map[string]string) {
	t.Helper()
	ts := startServe(t, testConfig(t), nil)
	return ts, map[string]string{"CG_ADMIN_URL": ts.adminURL(), "CG_ADMIN_TOKEN": testAdminToken}
}

// TestAdminCommands runs each admin-API subcommand against a real serve,
// in order (each step builds on the previous ones), in both output modes.
func TestAdminCommands(t *testing.T) {
	ts, envVars := cliServer(t)
	const acct = "cli-acct"
	var keyHash string
	steps := []struct {
		name  string
		args  []string
		human *regexp.Regexp
		// json decodes --json output and checks it.
		json func(t *testing.T, out []byte)
	}{
		{
			name:  "accounts create",
			args:  []string{"accounts", "create", acct},
			human: regexp.MustCompile(`^created account cli-acct\n$`),
			json: func(t *testing.T, out []byte) {
				var r admin.AccountCreated
				mustJSON(t, out, &r)
				// The human run created it, so the JSON run finds it.
				if r.Account != acct || r.Created {
					t.Errorf("%+v", r)
				}
			},
		},
		{
			name:  "accounts list",
			args:  []string{"accounts", "list"},
			human: regexp.MustCompile(`^cli-acct\n$`),
			json: func(t *testing.T, out []byte) {
				var ids []string
				mustJSON(t, out, &ids)
				if len(ids) != 1 || ids[0] != acct {
					t.Errorf("%q", ids)
				}
			},
		},
		{
			// Flags after the positional arguments work too.
			name:  "topup",
			args:  []string{"topup", acct, "$10", "--payment-id", "pay-1"},
			human: regexp.MustCompile(`(?s)credited\s+\$10\.000000\n.*fee\s+\$0\.800000\n.*total charged\s+\$10\.800000\n.*balance after\s+\$10\.000000\n`),
			json: func(t *testing.T, out []byte) {
				var r admin.Receipt
				mustJSON(t, out, &r)
				// Same payment id: replayed, nothing credited twice.
				if r.Amount != 10_000_000 || r.Fee != 800_000 || r.TotalCharged != 10_800_000 || r.BalanceAfter != 10_000_000 || !r.Replayed {
					t.Errorf("%+v", r)
				}
			},
		},
		{
			// A negative amount is an argument, not a flag.
			name:  "adjust debit",
			args:  []string{"adjust", acct, "-1.5", "--id", "adj-1", "--reason", "refund of a duplicate charge"},
			human: regexp.MustCompile(`^adjusted cli-acct by \$-1\.500000; balance \$8\.500000\n$`),
			json: func(t *testing.T, out []byte) {
				var r admin.Adjustment
				mustJSON(t, out, &r)
				if r.Amount != -1_500_000 || r.BalanceAfter != 8_500_000 || !r.Replayed {
					t.Errorf("%+v", r)
				}
			},
		},
		{
			name:  "balance",
			args:  []string{"balance", acct},
			human: regexp.MustCompile(`^cli-acct: balance \$8\.500000, held \$0\.000000, available \$8\.500000\n$`),
			json: func(t *testing.T, out []byte) {
				var b admin.Balance
				mustJSON(t, out, &b)
				if b.Account != acct || b.Balance != 8_500_000 || b.Held != 0 || b.Available != 8_500_000 {
					t.Errorf("%+v", b)
				}
			},
		},
		{
			name:  "journal",
			args:  []string{"journal", acct, "--limit", "2"},
			human: regexp.MustCompile(`^SEQ\s+TIME\s+TYPE\s+AMOUNT\s+BALANCE\s+HELD\s+REF\s+DETAIL\n1\s+\S+Z\s+open\s.*\n2\s+\S+Z\s+topup\s+10\.000000\s+10\.000000\s+0\.000000\s+pay-1\s*\nmore: --after \S+\n$`),
			json: func(t *testing.T, out []byte) {
				var p admin.JournalPage
				mustJSON(t, out, &p)
				// Four entries (open, topup, fee, adjust): a second page follows.
				if len(p.Entries) != 2 || p.Entries[1].Type != "topup" || p.Entries[1].Amount != 10_000_000 || p.Next == "" {
					t.Errorf("%+v", p)
				}
			},
		},
		{
			name:  "audit",
			args:  []string{"audit"},
			human: regexp.MustCompile(`(?s)^ok\s+cli-acct: 4 entries, balance \$8\.500000 \(journal \$8\.500000\).*\naudit: 1 accounts, ok=true\n$`),
			json: func(t *testing.T, out []byte) {
				var r admin.AuditReport
				mustJSON(t, out, &r)
				if !r.OK || len(r.Accounts) != 1 || r.Accounts[0].Entries != 4 {
					t.Errorf("%+v", r)
				}
			},
		},
		{
			name:  "keys create",
			args:  []string{"keys", "create", acct},
			human: regexp.MustCompile(`^key for cli-acct \(shown once, store it now\): \S{32,}\nhash: [0-9a-f]{64}\n$`),
			json: func(t *testing.T, out []byte) {
				var k admin.KeyCreated
				mustJSON(t, out, &k)
				if k.Account != acct || len(k.Key) < 32 || ledger.HashKey(k.Key) != k.KeyHash {
					t.Errorf("%+v", k)
				}
				keyHash = k.KeyHash
			},
		},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			r := runCLI(t, envVars, s.args...)
			if r.err != nil {
				t.Fatalf("creditgate %s: %v\n%s", strings.Join(s.args, " "), r.err, r.stderr)
			}
			if !s.human.MatchString(r.stdout) {
				t.Fatalf("human output does not match %s:\n%s", s.human, r.stdout)
			}
			r = runCLI(t, envVars, append(append([]string{}, s.args...), "--json")...)
			if r.err != nil {
				t.Fatalf("creditgate %s --json: %v\n%s", strings.Join(s.args, " "), r.err, r.stderr)
			}
			s.json(t, []byte(r.stdout))
		})
	}

	// Revoking by hash, then the key no longer resolves.
	if keyHash == "" {
		t.Fatal("no key was created")
	}
	r := runCLI(t, envVars, "keys", "revoke", keyHash, "--json")
	if r.err != nil {
		t.Fatal(r.err)
	}
	var rev map[string]string
	mustJSON(t, []byte(r.stdout), &rev)
	if rev["revoked"] != keyHash {
		t.Fatalf("revoke output %q", r.stdout)
	}
	if _, err := ts.client().LookupKey(context.Background(), keyHash); !admin.IsCode(err, "no_key") {
		t.Fatalf("revoked key still resolves: %v", err)
	}
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("--json output is not %T: %v\n%s", v, err, b)
	}
}

// TestCLIErrors: bad input is refused before anything is sent, with exit
// status 2 and a message that names the problem.
func TestCLIErrors(t *testing.T) {
	ts, envVars := cliServer(t)
	if _, err := ts.client().CreateAccount(context.Background(), "err-acct"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		env      map[string]string // nil: the server's
		wantCode int
		wantMsg  string
	}{
		{"no command", nil, nil, 2, "no command"},
		{"unknown command", []string{"frobnicate"}, nil, 2, `unknown command "frobnicate"`},
		{"seventh decimal", []string{"topup", "err-acct", "1.0000001", "--payment-id", "p1"}, nil, 2, "at most 6"},
		{"not a number", []string{"topup", "err-acct", "ten", "--payment-id", "p1"}, nil, 2, "not a decimal number"},
		{"missing payment id", []string{"topup", "err-acct", "1"}, nil, 2, "--payment-id is required"},
		{"missing amount", []string{"topup", "err-acct", "--payment-id", "p1"}, nil, 2, "want 2 argument(s)"},
		{"adjust without reason", []string{"adjust", "err-acct", "1", "--id", "a1"}, nil, 2, "--reason"},
		{"unknown flag", []string{"balance", "err-acct", "--colour"}, nil, 2, "flag provided but not defined: -colour"},
		{"bad flag value", []string{"journal", "err-acct", "--limit", "many"}, nil, 2, "invalid value"},
		{"accounts without verb", []string{"accounts"}, nil, 2, "want 'create ID' or 'list'"},
		{"keys bad verb", []string{"keys", "rotate", "x"}, nil, 2, "want create or revoke"},
		{"serve stray argument", []string{"serve", "config.yaml"}, nil, 2, `unexpected argument "config.yaml"`},
		{"serve bad flag", []string{"serve", "--grpc-port", "1"}, nil, 2, "flag provided but not defined"},
		{"serve invalid config", []string{"serve", "--log-level", "loud"}, map[string]string{}, 1, `log.level "loud"`},
		{"unknown account", []string{"balance", "nobody"}, nil, 1, "no_account"},
		{"wrong token", []string{"balance", "err-acct"}, map[string]string{"CG_ADMIN_URL": ts.adminURL(), "CG_ADMIN_TOKEN": "wrong"}, 1, "401"},
		{"prices without verb", []string{"prices"}, nil, 2, "want import, check or show"},
		{"prices check without file", []string{"prices", "check"}, nil, 2, "want FILE"},
		{"prices import other format", []string{"prices", "import", "--from", "openrouter", "x.json"}, nil, 2, "--from litellm"},
		{"prices check broken catalog", []string{"prices", "check", filepath.Join("testdata", "catalog-broken.yaml")}, nil, 1, "cached_imput"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := envVars
			if tc.env != nil {
				e = tc.env
			}
			r := runCLI(t, e, tc.args...)
			if r.err == nil {
				t.Fatalf("creditgate %q succeeded:\n%s", tc.args, r.stdout)
			}
			if got := exitCode(r.err); got != tc.wantCode {
				t.Errorf("exit code %d, want %d (%v)", got, tc.wantCode, r.err)
			}
			if !strings.Contains(r.err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", r.err, tc.wantMsg)
			}
		})
	}
	// Nothing above moved money.
	b, err := ts.client().Balance(context.Background(), "err-acct")
	if err != nil || b.Balance != 0 {
		t.Fatalf("balance after refused commands: %+v %v", b, err)
	}
}

// TestAuditExitStatus: audit exits 0 on a clean ledger and 1 after a
// balance is edited behind the ledger's back, through the admin API and
// directly against Redis.
func TestAuditExitStatus(t *testing.T) {
	ts, envVars := cliServer(t)
	ctx := context.Background()
	const acct = "audit-acct"
	c := ts.client()
	if _, err := c.CreateAccount(ctx, acct); err != nil {
		t.Fatal(err)
	}
	if _, err := c.TopUp(ctx, acct, "pay-1", money.Micros(3_000_000)); err != nil {
		t.Fatal(err)
	}
	direct := []string{"--redis-url", ts.cfg.Redis.URL, "--prefix", ts.cfg.Redis.Prefix}
	modes := []struct {
		name string
		args []string
	}{
		{"admin api", nil},
		{"redis", direct},
	}
	check := func(t *testing.T, wantOK bool) {
		for _, m := range modes {
			r := runCLI(t, envVars, append([]string{"audit"}, m.args...)...)
			want := 0
			if !wantOK {
				want = 1
			}
			got := 0
			if r.err != nil {
				var ee *exitError
				if !errors.As(r.err, &ee) {
					t.Fatalf("%s: audit failed to run: %v", m.name, r.err)
				}
				got = ee.code
			}
			if got != want {
				t.Errorf("%s: audit exit %d, want %d (%v)\n%s", m.name, got, want, r.err, r.stdout)
			}
			if !strings.Contains(r.stdout, "audit: 1 accounts, ok="+map[bool]string{true: "true", false: "false"}[wantOK]) {
				t.Errorf("%s: audit output:\n%s", m.name, r.stdout)
			}
			if !wantOK && !strings.Contains(r.stdout, "MISMATCH audit-acct") {
				t.Errorf("%s: audit does not name the account:\n%s", m.name, r.stdout)
			}
			rj := runCLI(t, envVars, append([]string{"audit", "--json"}, m.args...)...)
			var rep admin.AuditReport
			mustJSON(t, []byte(rj.stdout), &rep)
			if rep.OK != wantOK || len(rep.Accounts) != 1 || (len(rep.Accounts[0].Problems) == 0) != wantOK {
				t.Errorf("%s: --json report %+v, want ok=%v", m.name, rep, wantOK)
			}
		}
	}
	t.Run("clean", func(t *testing.T) { check(t, true) })

	rdb := redistest.Client(t)
	l, err := ledger.New(rdb, ledger.Options{Prefix: ts.cfg.Redis.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.HIncrBy(ctx, l.AccountKeys(acct)[0], "bal", 1).Err(); err != nil {
		t.Fatal(err)
	}
	t.Run("tampered", func(t *testing.T) { check(t, false) })

	if r := runCLI(t, envVars, "audit", "--redis-url", "http://not-redis"); r.err == nil || exitCode(r.err) != 1 {
		t.Errorf("audit with a bad --redis-url: %v", r.err)
	}
}

// litellmData is the LiteLLM price map snapshot in the shared data
// directory next to the repository.
func litellmData(t *testing.T) string {
	t.Helper()
	p := filepath.Join(repoRoot, "..", "shared", "data", "litellm-model-prices.json")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("LiteLLM snapshot not available: %v", err)
	}
	return p
}

func TestPricesImportCheckShow(t *testing.T) {
	src := litellmData(t)
	out := filepath.Join(t.TempDir(), "catalog.yaml")
	r := runCLI(t, nil, "prices", "import", "--from", "litellm", "--effective-from", "2026-01-01", "--out", out, src)
	if r.err != nil {
		t.Fatalf("import: %v\n%s", r.err, r.stderr)
	}
	m := regexp.MustCompile(`imported (\d+) models, skipped (\d+)\n$`).FindStringSubmatch(r.stderr)
	if m == nil || m[1] == "0" {
		t.Fatalf("import summary missing or empty:\n%s", r.stderr)
	}
	if r.stdout != "" {
		t.Errorf("import with --out wrote to stdout")
	}

	r = runCLI(t, nil, "prices", "check", out)
	if r.err != nil {
		t.Fatalf("check of the imported catalog: %v", r.err)
	}
	cm := regexp.MustCompile(`^ok: catalog .+, (\d+) rows\n$`).FindStringSubmatch(r.stdout)
	if cm == nil || cm[1] != m[1] {
		t.Fatalf("check output %q, want ok with %s rows", r.stdout, m[1])
	}

	r = runCLI(t, nil, "prices", "show", out)
	if r.err != nil {
		t.Fatal(r.err)
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if !strings.HasPrefix(lines[0], "ROW") || len(lines)-1 != atoi(t, m[1]) {
		t.Fatalf("show printed %d rows, want %s:\n%s", len(lines)-1, m[1], firstLines(r.stdout, 5))
	}
	if !strings.Contains(r.stdout, "openai/gpt-4o-mini@2026-01-01") {
		t.Errorf("show lacks openai/gpt-4o-mini:\n%s", firstLines(r.stdout, 5))
	}

	// Without --out the catalog goes to stdout, and it is the same file.
	r2 := runCLI(t, nil, "prices", "import", "--from", "litellm", "--effective-from", "2026-01-01", src)
	want, _ := os.ReadFile(out)
	if r2.err != nil || r2.stdout != string(want) {
		t.Errorf("import to stdout differs from --out (%v)", r2.err)
	}

	// The embedded default catalog.
	r = runCLI(t, nil, "prices", "show")
	if r.err != nil || !strings.HasPrefix(r.stdout, "ROW") || strings.Count(r.stdout, "\n") < 10 {
		t.Fatalf("prices show (default): %v\n%s", r.err, firstLines(r.stdout, 5))
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func firstLines(s string, n int) string {
	ls := strings.SplitN(s, "\n", n+1)
	if len(ls) > n {
		ls = ls[:n]
	}
	return strings.Join(ls, "\n")
}
