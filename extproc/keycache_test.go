package extproc

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

type countingKeys struct {
	Ledger
	calls int
	keys  map[string]string
}

func (c *countingKeys) AccountForKey(_ context.Context, h string) (string, error) {
	c.calls++
	if a, ok := c.keys[h]; ok {
		return a, nil
	}
	return "", ledger.ErrNoKey
}

func TestKeyCache(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	l := &countingKeys{keys: map[string]string{"h1": "acct"}}
	c := newKeyCache(10*time.Second, clock)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if a, err := c.lookup(ctx, l, "h1"); err != nil || a != "acct" {
			t.Fatalf("lookup: %q %v", a, err)
		}
	}
	if l.calls != 1 {
		t.Fatalf("%d ledger calls within the TTL, want 1", l.calls)
	}
	// Unknown keys are never cached: a key created a moment later works.
	if _, err := c.lookup(ctx, l, "h2"); !errors.Is(err, ledger.ErrNoKey) {
		t.Fatalf("unknown key: %v", err)
	}
	l.keys["h2"] = "other"
	if a, _ := c.lookup(ctx, l, "h2"); a != "other" {
		t.Fatalf("new key not seen: %q", a)
	}
	// Revocation takes effect once the TTL passes.
	delete(l.keys, "h1")
	now = now.Add(11 * time.Second)
	if _, err := c.lookup(ctx, l, "h1"); !errors.Is(err, ledger.ErrNoKey) {
		t.Fatalf("revoked key still accepted after the TTL: %v", err)
	}
	// TTL 0 disables the cache.
	l.calls = 0
	off := newKeyCache(0, clock)
	off.lookup(ctx, l, "h2")
	off.lookup(ctx, l, "h2")
	if l.calls != 2 {
		t.Fatalf("disabled cache made %d calls, want 2", l.calls)
	}
}
