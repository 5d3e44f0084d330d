package extproc

import (
	"context"
	"sync"
	"time"
)

// keyCache remembers virtual-key → account lookups for a short time, so the
// request path costs two Redis round trips (reserve, capture) instead of
// three. A revoked key keeps working for at most the TTL; unknown keys are
// not cached, so a new key works at once.
type keyCache struct {
	ttl   time.Duration
	clock func() time.Time
	max   int
	mu    sync.Mutex
	m     map[string]keyEntry
}

type keyEntry struct {
	account string
	expires time.Time
}

func newKeyCache(ttl time.Duration, clock func() time.Time) *keyCache {
	return &keyCache{ttl: ttl, clock: clock, max: 100_000, m: map[string]keyEntry{}}
}

// lookup returns the cached account or asks the ledger.
func (c *keyCache) lookup(ctx context.Context, l Ledger, hash string) (string, error) {
	if c == nil || c.ttl <= 0 {
		return l.AccountForKey(ctx, hash)
	}
	now := c.clock()
	c.mu.Lock()
	e, ok := c.m[hash]
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.account, nil
	}
	acct, err := l.AccountForKey(ctx, hash)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	if len(c.m) >= c.max {
		// Crude but bounded: start over rather than grow without limit.
		c.m = map[string]keyEntry{}
	}
	c.m[hash] = keyEntry{account: acct, expires: now.Add(c.ttl)}
	c.mu.Unlock()
	return acct, nil
}
