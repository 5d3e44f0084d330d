package ledger_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/creditgate/creditgate/ledger"
)

func TestHashKey(t *testing.T) {
	for _, tc := range []struct{ key, want string }{
		// FIPS 180-2 test vectors: the ext_proc side and the admin API must
		// agree with any other SHA-256 implementation, not just with each other.
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
	} {
		if got := ledger.HashKey(tc.key); got != tc.want {
			t.Errorf("HashKey(%q) = %s, want %s", tc.key, got, tc.want)
		}
	}
}

func TestAPIKeys(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	e.account(t, "a", "")
	e.account(t, "b", "")
	ha, hb := ledger.HashKey("cgk_key-of-a"), ledger.HashKey("cgk_key-of-b")

	steps := []struct {
		name    string
		op      func() (string, error)
		want    string
		wantErr error
	}{
		{"lookup before create", func() (string, error) { return e.l.AccountForKey(e.ctx, ha) }, "", ledger.ErrNoKey},
		{"create", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "a", ha) }, "", nil},
		{"create again is a no-op", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "a", ha) }, "", nil},
		{"same hash for another account", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "b", ha) }, "", ledger.ErrIDConflict},
		{"lookup", func() (string, error) { return e.l.AccountForKey(e.ctx, ha) }, "a", nil},
		{"second key", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "b", hb) }, "", nil},
		{"lookup second", func() (string, error) { return e.l.AccountForKey(e.ctx, hb) }, "b", nil},
		{"no account", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "ghost", ledger.HashKey("x")) }, "", ledger.ErrNoAccount},
		{"invalid account id", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "{a}", ledger.HashKey("x")) }, "", ledger.ErrInvalid},
		{"raw key instead of hash", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "a", "cgk_key-of-a") }, "", ledger.ErrInvalid},
		{"uppercase hash", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "a", strings.ToUpper(ha)) }, "", ledger.ErrInvalid},
		{"revoke", func() (string, error) { return "", e.l.RevokeAPIKey(e.ctx, ha) }, "", nil},
		{"lookup revoked", func() (string, error) { return e.l.AccountForKey(e.ctx, ha) }, "", ledger.ErrNoKey},
		{"revoke twice", func() (string, error) { return "", e.l.RevokeAPIKey(e.ctx, ha) }, "", ledger.ErrNoKey},
		{"revoke invalid hash", func() (string, error) { return "", e.l.RevokeAPIKey(e.ctx, "nothex") }, "", ledger.ErrInvalid},
		{"lookup invalid hash", func() (string, error) { return e.l.AccountForKey(e.ctx, "") }, "", ledger.ErrInvalid},
		{"revoked hash can be reissued elsewhere", func() (string, error) { return "", e.l.CreateAPIKey(e.ctx, "b", ha) }, "", nil},
		{"lookup reissued", func() (string, error) { return e.l.AccountForKey(e.ctx, ha) }, "b", nil},
		{"other key untouched", func() (string, error) { return e.l.AccountForKey(e.ctx, hb) }, "b", nil},
	}
	for _, s := range steps {
		got, err := s.op()
		if !errors.Is(err, s.wantErr) || got != s.want {
			t.Fatalf("%s: got (%q, %v), want (%q, %v)", s.name, got, err, s.want, s.wantErr)
		}
	}
	// Only the hash is stored: the raw key appears in no Redis key or value.
	prefix, _, _ := strings.Cut(e.l.AccountKeys("a")[0], ":{")
	keys, err := e.rdb.Keys(e.ctx, prefix+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) == 0 {
		t.Fatalf("no keys under prefix %q", prefix)
	}
	for _, k := range keys {
		if strings.Contains(k, "cgk_key-of") {
			t.Fatalf("raw key in Redis key name %q", k)
		}
		if typ, _ := e.rdb.Type(e.ctx, k).Result(); typ == "string" {
			if v, _ := e.rdb.Get(e.ctx, k).Result(); strings.Contains(v, "cgk_key-of") {
				t.Fatalf("raw key in Redis value of %q", k)
			}
		}
	}
	// Money-moving scripts are untouched by keys: the audit stays clean.
	e.auditClean(t)
}

// Concurrent creates of one hash for different accounts: exactly one wins,
// every other caller is told of the conflict, and the winner's mapping stays.
func TestAPIKeyCreateRace(t *testing.T) {
	e := newEnv(t, ledger.FeePolicy{})
	const n = 8
	for i := range n {
		e.account(t, fmt.Sprintf("acct-%d", i), "")
	}
	h := ledger.HashKey("cgk_contended")
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.l.CreateAPIKey(e.ctx, fmt.Sprintf("acct-%d", i), h)
		}()
	}
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil:
			if winner != "" {
				t.Fatalf("two winners: %s and acct-%d", winner, i)
			}
			winner = fmt.Sprintf("acct-%d", i)
		case !errors.Is(err, ledger.ErrIDConflict):
			t.Fatalf("acct-%d: %v", i, err)
		}
	}
	got, err := e.l.AccountForKey(e.ctx, h)
	if err != nil || got != winner || winner == "" {
		t.Fatalf("lookup = %q, %v; winner %q", got, err, winner)
	}
}
