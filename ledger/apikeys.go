package ledger

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"

	"github.com/redis/go-redis/v9"
)

// ErrNoKey: no virtual API key with that hash (never created, or revoked).
var ErrNoKey = errors.New("ledger: no such api key")

// HashKey is the only form in which a virtual API key is stored or looked
// up: lowercase hex SHA-256 of the raw key. The admin API and the ext_proc
// request path must both use it so that they agree on the stored form.
//
// A plain, unsalted hash is enough here because generated keys carry 256
// random bits (and hand-supplied ones are required to be long): there is no
// dictionary to attack, and the lookup has to be a single O(1) GET on every
// proxied request.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

var keyHashRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func checkKeyHash(h string) error {
	if !keyHashRE.MatchString(h) {
		// The value is deliberately not echoed: a caller that passed a raw
		// key by mistake must not see it in an error, a log or a response.
		return fmt.Errorf("%w: key hash must be 64 lowercase hex characters (SHA-256)", ErrInvalid)
	}
	return nil
}

// apiKey is the Redis key mapping a key hash to its account:
// <prefix>:key:<sha256hex>. It is global, not under an account's hash tag,
// because the lookup happens before the account is known (that is what it
// is for), and it is not touched by any money-moving script: it is a
// single-key string read with GET, valid on any Redis Cluster slot.
func (l *Ledger) apiKey(keyHash string) string { return l.opt.Prefix + ":key:" + keyHash }

// CreateAPIKey maps the key whose HashKey is keyHash to account. It is
// idempotent: creating the same mapping again is not an error; the same
// hash already bound to another account is ErrIDConflict.
func (l *Ledger) CreateAPIKey(ctx context.Context, account, keyHash string) error {
	if err := errors.Join(checkID("account", account), checkKeyHash(keyHash)); err != nil {
		return err
	}
	// The account hash lives in the account's slot and the key mapping in
	// another, so this check cannot be atomic with the SETNX. That is harmless:
	// accounts are never deleted, so an account seen here still exists.
	n, err := l.rdb.Exists(ctx, l.keys(account).acct).Result()
	if err != nil {
		return classify(err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNoAccount, account)
	}
	rk := l.apiKey(keyHash)
	// A concurrent revoke can delete the key between SETNX and GET; the loop
	// then simply tries to create it again. Two rounds always suffice unless
	// another client keeps creating and revoking the same hash.
	for range 5 {
		set, err := l.rdb.SetNX(ctx, rk, account, 0).Result()
		if err != nil {
			return classify(err)
		}
		if set {
			return nil
		}
		owner, err := l.rdb.Get(ctx, rk).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return classify(err)
		}
		if owner != account {
			return fmt.Errorf("%w: key hash %s already belongs to another account", ErrIDConflict, keyHash)
		}
		return nil
	}
	return fmt.Errorf("%w: key hash %s: concurrent create and revoke did not settle", ErrUnavailable, keyHash)
}

// RevokeAPIKey deletes the mapping; ErrNoKey if there was none.
func (l *Ledger) RevokeAPIKey(ctx context.Context, keyHash string) error {
	if err := checkKeyHash(keyHash); err != nil {
		return err
	}
	n, err := l.rdb.Del(ctx, l.apiKey(keyHash)).Result()
	if err != nil {
		return classify(err)
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNoKey, keyHash)
	}
	return nil
}

// AccountForKey returns the account a key hash belongs to, or ErrNoKey.
func (l *Ledger) AccountForKey(ctx context.Context, keyHash string) (string, error) {
	if err := checkKeyHash(keyHash); err != nil {
		return "", err
	}
	acct, err := l.rdb.Get(ctx, l.apiKey(keyHash)).Result()
	if errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("%w: %s", ErrNoKey, keyHash)
	}
	if err != nil {
		return "", classify(err)
	}
	return acct, nil
}
