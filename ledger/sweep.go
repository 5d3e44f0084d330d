package ledger

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

func errorsIsNoAccount(err error) bool { return errors.Is(err, ErrNoAccount) }

// Sweep expires every hold whose deadline has passed, once. Any number of
// sidecars may sweep concurrently: the expire script is idempotent per hold.
//
// The sweep index (<prefix>:sweep, member = account, score = a time at which
// the account must be looked at) spans accounts, so per-account scripts never
// touch it. Invariant: every open hold's account has a score no later than
// min(hold deadline, last lease). Reserve lowers the score (ZADD LT) before
// creating the hold; a sweeper first pushes the score to now+lease (a claim
// that also guarantees a revisit if it dies), then expires, then lowers the
// score to the account's next deadline. Idle accounts are revisited once per
// lease, which bounds how late any expiry runs by the lease plus the sweep
// interval.
func (l *Ledger) Sweep(ctx context.Context) (expired int, err error) {
	now := l.opt.Clock().UnixMilli()
	due, err := l.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: l.sweepKey(), Start: "-inf", Stop: strconv.FormatInt(now, 10),
		ByScore: true, Count: int64(l.opt.SweepBatch)}).Result()
	if err != nil {
		return 0, classify(err)
	}
	lease := now + l.opt.SweepLease.Milliseconds()
	for _, acct := range due {
		if err := l.rdb.Do(ctx, l.sweepIndex("XX GT", lease, acct)...).Err(); err != nil {
			return expired, classify(err)
		}
		n, next, err := l.ExpireAccount(ctx, acct, now)
		if err != nil {
			if errorsIsNoAccount(err) {
				continue
			}
			return expired, err
		}
		expired += n
		if next >= 0 {
			if err := l.rdb.Do(ctx, l.sweepIndex("LT", next, acct)...).Err(); err != nil {
				return expired, classify(err)
			}
		}
	}
	return expired, nil
}

// sweepIndex builds a ZADD on the sweep index with integer millisecond
// scores written as decimal text: exact (below 2^53) and float-free.
func (l *Ledger) sweepIndex(flags string, ms int64, account string) []any {
	cmd := []any{"ZADD", l.sweepKey()}
	for _, f := range strings.Fields(flags) {
		cmd = append(cmd, f)
	}
	return append(cmd, strconv.FormatInt(ms, 10), account)
}

// ExpireAccount expires the due holds of one account at time nowMs and
// returns how many and the next deadline (-1 if none remain).
func (l *Ledger) ExpireAccount(ctx context.Context, account string, nowMs int64) (int, int64, error) {
	k := l.keys(account)
	total := 0
	for {
		res, err := l.run(ctx, "expire", []string{k.acct, k.journal, k.holds, k.reqPfx}, nowMs, l.opt.SweepBatch,
			l.opt.Retention.Milliseconds())
		if err != nil {
			return total, -1, err
		}
		n, next := int(i64(res[0])), i64(res[1])
		total += n
		if n < l.opt.SweepBatch || next < 0 || next > nowMs {
			return total, next, nil
		}
	}
}

// RunSweeper sweeps every interval until ctx ends. Errors are reported to
// onErr (may be nil) and the loop goes on: a Redis blip must not stop expiry.
func (l *Ledger) RunSweeper(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := l.Sweep(ctx); err != nil && onErr != nil && ctx.Err() == nil {
				onErr(err)
			}
		}
	}
}
