// Package ledger is creditgate's prepaid dollar ledger on Redis. Every
// money-moving operation is one Lua script (ledger/lua), atomic and
// idempotent on its request, payment or adjustment id, so retries by go-redis,
// Envoy, clients or networks never move money twice. Amounts are integer µUSD;
// time is passed in from the caller's clock, scripts never read one.
package ledger

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"math/bits"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger/money"
)

//go:embed lua/*.lua
var luaFS embed.FS

// FeePolicy is the platform fee charged on top of a purchase:
// max(Min, ceil(amount × BasisPoints / 10000)). The fee never reduces the
// credited amount.
type FeePolicy struct {
	BasisPoints int64        `json:"basis_points" yaml:"basis_points"`
	Min         money.Micros `json:"min" yaml:"min"`
}

// Fee computes the fee for a purchase of amount. Rounds up to the µUSD: the
// fee is a price the buyer agrees to before paying, never a hidden remainder.
func (p FeePolicy) Fee(amount money.Micros) money.Micros {
	if amount <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(amount), uint64(p.BasisPoints))
	q, r := bits.Div64(hi, lo, 10000)
	fee := money.Micros(q)
	if r > 0 {
		fee++
	}
	if fee < p.Min {
		fee = p.Min
	}
	return fee
}

// Validate reports a nonsensical policy.
func (p FeePolicy) Validate() error {
	var errs []error
	if p.BasisPoints < 0 || p.BasisPoints > 10000 {
		errs = append(errs, fmt.Errorf("fee basis_points %d outside [0, 10000]", p.BasisPoints))
	}
	if p.Min < 0 {
		errs = append(errs, fmt.Errorf("fee min %s is negative", p.Min))
	}
	return errors.Join(errs...)
}

// Options configure a Ledger. Zero values take the documented defaults.
type Options struct {
	// Prefix namespaces every key (default "cg").
	Prefix string
	// Clock is the time source passed into every script (default time.Now).
	Clock func() time.Time
	// Fee is the top-up fee policy (default: none).
	Fee FeePolicy
	// Retention keeps request records after they end, so late retries still
	// replay instead of failing (default 7 days).
	Retention time.Duration
	// SweepLease is how long a sweeper claims an account it is expiring
	// holds for; it bounds how late an expiry can be (default 15s).
	SweepLease time.Duration
	// SweepBatch caps accounts per sweep pass and holds per account per call
	// (default 500).
	SweepBatch int
}

// Ledger runs the ledger scripts against one Redis (or Redis Cluster).
type Ledger struct {
	rdb     redis.UniversalClient
	opt     Options
	scripts map[string]*redis.Script
}

var scriptNames = []string{"create", "topup", "reserve", "capture", "charge", "release", "expire", "adjust", "extend"}

// New builds a Ledger. It does not touch Redis; call Load to preload scripts.
func New(rdb redis.UniversalClient, opt Options) (*Ledger, error) {
	if opt.Prefix == "" {
		opt.Prefix = "cg"
	}
	if strings.ContainsAny(opt.Prefix, "{} ") {
		return nil, fmt.Errorf("%w: prefix %q may not contain braces or spaces", ErrInvalid, opt.Prefix)
	}
	if opt.Clock == nil {
		opt.Clock = time.Now
	}
	if opt.Retention <= 0 {
		opt.Retention = 7 * 24 * time.Hour
	}
	if opt.SweepLease <= 0 {
		opt.SweepLease = 15 * time.Second
	}
	if opt.SweepBatch <= 0 {
		opt.SweepBatch = 500
	}
	if err := opt.Fee.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	lib, err := luaFS.ReadFile("lua/lib.lua")
	if err != nil {
		return nil, err
	}
	l := &Ledger{rdb: rdb, opt: opt, scripts: map[string]*redis.Script{}}
	for _, n := range scriptNames {
		src, err := luaFS.ReadFile("lua/" + n + ".lua")
		if err != nil {
			return nil, err
		}
		l.scripts[n] = redis.NewScript(string(lib) + "\n" + string(src))
	}
	return l, nil
}

// Load preloads every script (SCRIPT LOAD). Optional: a NOSCRIPT reply, e.g.
// after a Redis restart or failover, is answered by sending the source once.
func (l *Ledger) Load(ctx context.Context) error {
	for n, s := range l.scripts {
		if err := s.Load(ctx, l.rdb).Err(); err != nil {
			return fmt.Errorf("ledger: load %s.lua: %w", n, classify(err))
		}
	}
	return nil
}

// Ping checks the ledger's Redis path.
func (l *Ledger) Ping(ctx context.Context) error {
	if err := l.rdb.Ping(ctx).Err(); err != nil {
		return classify(err)
	}
	return nil
}

// FeePolicy returns the configured fee policy.
func (l *Ledger) FeePolicy() FeePolicy { return l.opt.Fee }

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,199}$`)

func checkID(kind, id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w: %s %q must be 1-200 characters of [A-Za-z0-9._:@/+=-] starting with a letter or digit", ErrInvalid, kind, id)
	}
	return nil
}

// keys of one account. Every key carries the account's hash tag, so all of an
// account's keys live in one Redis Cluster slot and each script touches one slot.
type keys struct {
	tag                          string
	acct, journal, holds, reqPfx string
}

func (l *Ledger) keys(account string) keys {
	tag := l.opt.Prefix + ":{" + account + "}:"
	return keys{tag: tag, acct: tag + "a", journal: tag + "j", holds: tag + "holds", reqPfx: tag + "r:"}
}

func (k keys) req(id string) string { return k.reqPfx + id }
func (k keys) pay(id string) string { return k.tag + "p:" + id }
func (k keys) adj(id string) string { return k.tag + "x:" + id }

// AccountKeys lists every key name pattern of an account (for the cluster
// slot test and operators); concrete ids replace the trailing "*".
func (l *Ledger) AccountKeys(account string) []string {
	k := l.keys(account)
	return []string{k.acct, k.journal, k.holds, k.req("req-1"), k.pay("pay-1"), k.adj("adj-1")}
}

// Global keys span accounts and are never touched by per-account scripts.
func (l *Ledger) accountsKey() string { return l.opt.Prefix + ":accounts" }
func (l *Ledger) sweepKey() string    { return l.opt.Prefix + ":sweep" }

func (l *Ledger) now(t time.Time) int64 {
	if t.IsZero() {
		t = l.opt.Clock()
	}
	return t.UnixMilli()
}

func (l *Ledger) run(ctx context.Context, name string, keys []string, args ...any) ([]any, error) {
	res, err := l.scripts[name].Run(ctx, l.rdb, keys, args...).Slice()
	if err != nil {
		return nil, classify(err)
	}
	return res, nil
}

var scriptErrors = map[string]error{
	"CG_NOACCOUNT": ErrNoAccount, "CG_CONFLICT": ErrIDConflict, "CG_CLOSED": ErrHoldClosed,
	"CG_NOHOLD": ErrNoHold, "CG_INVALID": ErrInvalid, "CG_LIMIT": ErrInvalid,
}

// classify maps a script's error reply to a typed error, and transport
// failures to ErrUnavailable.
func classify(err error) error {
	if err == nil {
		return nil
	}
	// The code is the first CG_ token of the reply (error_reply puts it first;
	// a Lua error() puts Redis's script prefix before it). Ids echoed later in
	// the message must not be mistaken for the code.
	msg := err.Error()
	if i := strings.Index(msg, "CG_"); i >= 0 {
		code, rest, _ := strings.Cut(msg[i:], " ")
		if typed, ok := scriptErrors[code]; ok {
			return fmt.Errorf("%w: %s", typed, strings.TrimSpace(rest))
		}
	}
	// Replies that mean "this Redis cannot serve right now" (loading after a
	// restart, a replica during failover, a cluster re-sharding, out of
	// connections) are outages, not answers: the outcome is unknown and a
	// retry with the same id is safe. Callers spool on ErrUnavailable.
	// OOM (maxmemory with noeviction) belongs here too: a script is refused
	// at its first write, so nothing changed, and a capture refused that way
	// must be spooled, not dropped to let its hold expire unpaid.
	if redis.IsLoadingError(err) || redis.IsReadOnlyError(err) || redis.IsClusterDownError(err) ||
		redis.IsTryAgainError(err) || redis.IsMasterDownError(err) || redis.IsMaxClientsError(err) || redis.IsOOMError(err) ||
		redis.IsNoReplicasError(err) || redis.HasErrorPrefix(err, "BUSY") {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return fmt.Errorf("ledger: redis error: %w", err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	case nil:
		return ""
	default:
		return fmt.Sprint(x)
	}
}

func i64(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

func mic(v any) money.Micros { return money.Micros(i64(v)) }

// CreateAccount creates an account with a zero balance. It is idempotent:
// created is false when the account already existed.
func (l *Ledger) CreateAccount(ctx context.Context, account string) (created bool, err error) {
	if err := checkID("account", account); err != nil {
		return false, err
	}
	k := l.keys(account)
	// The account index is written first and separately: it spans accounts, so
	// no per-account script may touch it; an entry for an account whose
	// create then failed is harmless (audit skips it) and a retry repeats both.
	if err := l.rdb.SAdd(ctx, l.accountsKey(), account).Err(); err != nil {
		return false, classify(err)
	}
	res, err := l.run(ctx, "create", []string{k.acct, k.journal}, account, l.now(time.Time{}))
	if err != nil {
		return false, err
	}
	return i64(res[0]) == 1, nil
}

// TopUp credits req.Amount in full and charges the policy fee on top.
func (l *Ledger) TopUp(ctx context.Context, req TopUpRequest) (Receipt, error) {
	if err := errors.Join(checkID("account", req.Account), checkID("payment id", req.PaymentID)); err != nil {
		return Receipt{}, err
	}
	if req.Amount <= 0 || req.Amount > money.MaxExactLua {
		return Receipt{}, fmt.Errorf("%w: top-up amount %s must be positive and below $9,007,199,254", ErrInvalid, req.Amount)
	}
	fee := l.opt.Fee.Fee(req.Amount)
	k := l.keys(req.Account)
	res, err := l.run(ctx, "topup", []string{k.acct, k.journal, k.pay(req.PaymentID)},
		req.PaymentID, int64(req.Amount), int64(fee), l.now(req.Time))
	if err != nil {
		return Receipt{}, err
	}
	return Receipt{Account: req.Account, PaymentID: req.PaymentID, Amount: mic(res[0]), Fee: mic(res[1]),
		TotalCharged: mic(res[2]), BalanceAfter: mic(res[3]), Replayed: i64(res[4]) == 1}, nil
}

// Reserve holds req.Estimate until req.Time+req.TTL, or returns an
// *InsufficientFundsError when balance − held < estimate.
func (l *Ledger) Reserve(ctx context.Context, req ReserveRequest) (Hold, error) {
	if err := errors.Join(checkID("account", req.Account), checkID("request id", req.RequestID)); err != nil {
		return Hold{}, err
	}
	if req.Estimate < 0 || req.Estimate > money.MaxExactLua || req.TTL <= 0 {
		return Hold{}, fmt.Errorf("%w: estimate %s must be non-negative and TTL positive", ErrInvalid, req.Estimate)
	}
	now := l.now(req.Time)
	deadline := now + req.TTL.Milliseconds()
	k := l.keys(req.Account)
	// The sweep index entry and the hold travel in one pipeline: one round
	// trip on the request path. Either order of the two writes is safe (see
	// Sweep); what must not happen is a hold with no index entry, so a failed
	// index write is retried on its own.
	idx := l.sweepIndex("LT", deadline, req.Account)
	keys := []string{k.acct, k.journal, k.req(req.RequestID), k.holds}
	args := []any{req.RequestID, int64(req.Estimate), deadline, now, req.Provider, req.Model}
	pipe := l.rdb.Pipeline()
	zadd := pipe.Do(ctx, idx...)
	eval := l.scripts["reserve"].EvalSha(ctx, pipe, keys, args...)
	_, _ = pipe.Exec(ctx)
	var res []any
	var err error
	if e := eval.Err(); e != nil && redis.HasErrorPrefix(e, "NOSCRIPT") {
		res, err = l.run(ctx, "reserve", keys, args...)
	} else if err = classify(e); err == nil {
		res, err = eval.Slice()
		err = classify(err)
	}
	if err != nil {
		return Hold{}, err
	}
	if str(res[0]) == "insufficient" {
		// No hold was made, so whether the index write landed is moot.
		return Hold{}, &InsufficientFundsError{Balance: mic(res[1]), Held: mic(res[2]), Available: mic(res[3]), Requested: req.Estimate}
	}
	if zadd.Err() != nil {
		if err := l.rdb.Do(ctx, idx...).Err(); err != nil {
			// A hold the sweeper cannot see would leak if its request never
			// settles: undo it and refuse, as for any Redis failure.
			if _, rerr := l.Release(ctx, req.Account, req.RequestID, "hold could not be indexed for expiry"); rerr == nil {
				// The outcome is known (no hold), so this is not reported as
				// ErrUnavailable: a caller failing open on an outage would let
				// the call run and its Charge would then meet a released
				// request id (ErrHoldClosed) and debit nothing. The cause is
				// quoted, not wrapped, for the same reason.
				return Hold{}, fmt.Errorf("ledger: hold could not be indexed for expiry and was released: %s", err.Error())
			}
			return Hold{}, fmt.Errorf("%w: hold could not be indexed for expiry: %w", ErrUnavailable, err)
		}
	}
	return Hold{Account: req.Account, RequestID: req.RequestID, Amount: mic(res[1]), Deadline: time.UnixMilli(i64(res[2])),
		Balance: mic(res[3]), Held: mic(res[4]), Replayed: i64(res[5]) == 1}, nil
}

// Capture debits the exact cost of a reserved request (carrying sub-µUSD
// remainders) and ends its hold; valid after the hold expired too.
func (l *Ledger) Capture(ctx context.Context, req CaptureRequest) (CaptureResult, error) {
	res, err := l.debit(ctx, "capture", req, true)
	if err != nil {
		return CaptureResult{}, err
	}
	return captureResult(req, res), nil
}

// debit runs capture.lua or charge.lua: both take the same arguments (the
// cost split into whole µUSD and a pico remainder), and capture also needs
// the account's open-holds key.
func (l *Ledger) debit(ctx context.Context, script string, req CaptureRequest, holds bool) ([]any, error) {
	if err := errors.Join(checkID("account", req.Account), checkID("request id", req.RequestID)); err != nil {
		return nil, err
	}
	micros, rem := req.Cost.Split()
	if req.Cost < 0 || micros > money.MaxExactLua {
		return nil, fmt.Errorf("%w: cost %s out of range", ErrInvalid, req.Cost)
	}
	est := "0"
	if req.Estimated {
		est = "1"
	}
	k := l.keys(req.Account)
	keys := []string{k.acct, k.journal, k.req(req.RequestID)}
	if holds {
		keys = append(keys, k.holds)
	}
	return l.run(ctx, script, keys, req.RequestID, int64(micros), rem, l.now(req.Time), req.Provider, req.Model,
		req.Usage, req.PriceRow, est, l.opt.Retention.Milliseconds())
}

func captureResult(req CaptureRequest, res []any) CaptureResult {
	return CaptureResult{Account: req.Account, RequestID: req.RequestID, Debited: mic(res[0]), CarryPico: i64(res[1]),
		Balance: mic(res[2]), Held: mic(res[3]), Late: i64(res[4]) == 1, Replayed: i64(res[5]) == 1}
}

// Charge debits the exact cost of a request admitted without a hold (fail
// open: Redis was unreachable at the reserve), with capture's carry rule.
// Nothing was held, so the balance may go below zero; the sidecar's
// per-account credit line bounds by how much. Journaled as a capture with
// unreserved=1. Idempotent on the request id, sharing capture's request
// record: a replay returns the first result. If a hold for the id exists
// after all (the reserve that timed out had landed), the request is
// captured against that hold instead, so the hold does not expire unpaid.
func (l *Ledger) Charge(ctx context.Context, req CaptureRequest) (CaptureResult, error) {
	res, err := l.debit(ctx, "charge", req, false)
	if err != nil {
		return CaptureResult{}, err
	}
	if str(res[0]) == "held" {
		return l.Capture(ctx, req)
	}
	return captureResult(req, res), nil
}

// Extend pushes an open hold's deadline to deadline, so a stream that runs
// longer than the hold TTL keeps its hold. It reports false when the hold is
// no longer open (its capture will then be a late one).
func (l *Ledger) Extend(ctx context.Context, account, requestID string, deadline time.Time) (bool, error) {
	if err := errors.Join(checkID("account", account), checkID("request id", requestID)); err != nil {
		return false, err
	}
	k := l.keys(account)
	res, err := l.run(ctx, "extend", []string{k.req(requestID), k.holds}, requestID, deadline.UnixMilli())
	if err != nil {
		return false, err
	}
	return i64(res[0]) == 1, nil
}

// Release ends a hold without charge.
func (l *Ledger) Release(ctx context.Context, account, requestID, reason string) (ReleaseResult, error) {
	if err := errors.Join(checkID("account", account), checkID("request id", requestID)); err != nil {
		return ReleaseResult{}, err
	}
	k := l.keys(account)
	res, err := l.run(ctx, "release", []string{k.acct, k.journal, k.req(requestID), k.holds},
		requestID, l.now(time.Time{}), reason, l.opt.Retention.Milliseconds())
	if err != nil {
		return ReleaseResult{}, err
	}
	return ReleaseResult{Account: account, RequestID: requestID, Released: mic(res[0]), Balance: mic(res[1]),
		Held: mic(res[2]), Replayed: i64(res[3]) == 1}, nil
}

// Adjust applies an operator credit or debit with a reason. A debit that
// would take the balance below what is held returns *InsufficientFundsError.
func (l *Ledger) Adjust(ctx context.Context, req AdjustRequest) (AdjustResult, error) {
	if err := errors.Join(checkID("account", req.Account), checkID("adjustment id", req.AdjustmentID)); err != nil {
		return AdjustResult{}, err
	}
	if req.Amount == 0 || req.Amount > money.MaxExactLua || req.Amount < -money.MaxExactLua || strings.TrimSpace(req.Reason) == "" {
		return AdjustResult{}, fmt.Errorf("%w: an adjustment needs a non-zero amount within range and a reason", ErrInvalid)
	}
	k := l.keys(req.Account)
	res, err := l.run(ctx, "adjust", []string{k.acct, k.journal, k.adj(req.AdjustmentID)},
		req.AdjustmentID, int64(req.Amount), req.Reason, l.now(req.Time))
	if err != nil {
		return AdjustResult{}, err
	}
	if str(res[0]) == "insufficient" {
		return AdjustResult{}, &InsufficientFundsError{Balance: mic(res[1]), Held: mic(res[2]), Available: mic(res[3]), Requested: -req.Amount}
	}
	return AdjustResult{Account: req.Account, AdjustmentID: req.AdjustmentID, Amount: mic(res[1]), Balance: mic(res[2]),
		Replayed: i64(res[3]) == 1}, nil
}

// Balance reads an account's balance, held amount and carry atomically.
func (l *Ledger) Balance(ctx context.Context, account string) (Balance, error) {
	if err := checkID("account", account); err != nil {
		return Balance{}, err
	}
	v, err := l.rdb.HMGet(ctx, l.keys(account).acct, "bal", "held", "carry").Result()
	if err != nil {
		return Balance{}, classify(err)
	}
	if v[0] == nil {
		return Balance{}, fmt.Errorf("%w: %s", ErrNoAccount, account)
	}
	b := Balance{Account: account, Balance: mic(v[0]), Held: mic(v[1]), CarryPico: i64(v[2])}
	b.Available = b.Balance - b.Held
	return b, nil
}

// Accounts lists every account id (unordered).
func (l *Ledger) Accounts(ctx context.Context) ([]string, error) {
	var out []string
	iter := l.rdb.SScan(ctx, l.accountsKey(), 0, "", 1000).Iterator()
	for iter.Next(ctx) {
		out = append(out, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, classify(err)
	}
	return out, nil
}
