package ledger_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

// lossyProxy sits between go-redis and redis-server. When armed, it forwards
// the next script call (EVALSHA/EVAL) to Redis, waits until Redis has run it,
// throws the reply away and closes the client's connection: the "reply lost
// on the way back" failure that makes go-redis (MaxRetries ≥ 1) send the same
// command again. Everything else passes through untouched.
type lossyProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	armed   int
	dropped int
	scripts int // script calls forwarded to Redis, retries included
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

func startLossyProxy(t testing.TB, target string) *lossyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *lossyProxy) Addr() string { return p.ln.Addr().String() }

// Arm makes the proxy drop the replies of the next n script calls.
func (p *lossyProxy) Arm(n int) {
	p.mu.Lock()
	p.armed = n
	p.mu.Unlock()
}

// Disarm cancels drops not yet used and reports how many were left.
func (p *lossyProxy) Disarm() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.armed
	p.armed = 0
	return n
}

// Counts returns how many replies were dropped and how many script calls
// reached Redis so far.
func (p *lossyProxy) Counts() (dropped, scripts int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped, p.scripts
}

func (p *lossyProxy) close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *lossyProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *lossyProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *lossyProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// serve relays one client connection command by command: read one request,
// forward it, read exactly one reply, then deliver or drop it.
func (p *lossyProxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = client.Close()
		return
	}
	if !p.track(client) || !p.track(server) {
		_ = client.Close()
		_ = server.Close()
		return
	}
	defer p.untrack(client)
	defer p.untrack(server)
	cr, sr := bufio.NewReader(client), bufio.NewReader(server)
	for {
		req, args, err := readRESP(cr)
		if err != nil {
			return
		}
		if _, err := server.Write(req); err != nil {
			return
		}
		// A RESP3 attribute may precede the reply; it belongs to it.
		var reply []byte
		for {
			part, _, err := readRESP(sr)
			if err != nil {
				return
			}
			reply = append(reply, part...)
			if part[0] != '|' {
				break
			}
		}
		name := ""
		if len(args) > 0 {
			name = strings.ToUpper(string(args[0]))
		}
		// A NOSCRIPT reply means Redis ran nothing (go-redis then sends
		// EVAL); losing it would test nothing, so only real runs are dropped.
		if (name == "EVALSHA" || name == "EVAL") && !bytes.HasPrefix(reply, []byte("-NOSCRIPT")) {
			p.mu.Lock()
			p.scripts++
			drop := p.armed > 0
			if drop {
				p.armed--
				p.dropped++
			}
			p.mu.Unlock()
			if drop {
				return // Redis ran it; the client never hears back
			}
		}
		if _, err := client.Write(reply); err != nil {
			return
		}
	}
}

// readRESP reads one complete RESP2/RESP3 value and returns its raw bytes and,
// for an array of bulk strings (every client command), its elements.
func readRESP(r *bufio.Reader) (raw []byte, args [][]byte, err error) {
	var buf bytes.Buffer
	args, err = readValue(r, &buf, true)
	return buf.Bytes(), args, err
}

func readValue(r *bufio.Reader, buf *bytes.Buffer, top bool) ([][]byte, error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("resp: malformed line %q", line)
	}
	buf.Write(line)
	body := string(line[1 : len(line)-2])
	switch line[0] {
	case '+', '-', ':', '_', ',', '#', '(':
		return nil, nil
	case '$', '!', '=':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, fmt.Errorf("resp: bad length %q", body)
		}
		if n < 0 {
			return nil, nil
		}
		data := make([]byte, n+2)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, err
		}
		buf.Write(data)
		return [][]byte{data[:n]}, nil
	case '*', '~', '>', '%', '|':
		n, err := strconv.Atoi(body)
		if err != nil {
			return nil, fmt.Errorf("resp: bad count %q", body)
		}
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		var args [][]byte
		for i := 0; i < n; i++ {
			el, err := readValue(r, buf, false)
			if err != nil {
				return nil, err
			}
			if top && line[0] == '*' && len(el) == 1 {
				args = append(args, el[0])
			}
		}
		return args, nil
	default:
		return nil, fmt.Errorf("resp: unknown type %q", line[0])
	}
}

// lossyClient is a go-redis client that reaches Redis through a lossyProxy.
// It keeps go-redis's default retry policy (MaxRetries 3): that retry is the
// thing under test. Backoffs are shortened only to keep the suite fast.
func lossyClient(t testing.TB) (*redis.Client, *lossyProxy) {
	t.Helper()
	p := startLossyProxy(t, redistest.Addr(t))
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), MaxRetries: 3,
		MinRetryBackoff: time.Millisecond, MaxRetryBackoff: 4 * time.Millisecond})
	t.Cleanup(func() { _ = c.Close() })
	return c, p
}

// realClock starts an injected clock at the real time. Request records get a
// Redis TTL computed from the caller's clock (reserve.lua PEXPIREAT), so a
// clock far in the past would make Redis drop them on creation.
func realClock() *clock { return &clock{t: time.Now().UTC().Truncate(time.Millisecond)} }

func newLossyEnv(t *testing.T, fee ledger.FeePolicy) (*env, *lossyProxy) {
	t.Helper()
	c, p := lossyClient(t)
	clk := realClock()
	l, err := ledger.New(c, ledger.Options{Prefix: redistest.Prefix(t), Clock: clk.Now, Fee: fee})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &env{l: l, rdb: c, clk: clk, ctx: context.Background()}, p
}

// fataler is what both *testing.T and *rapid.T offer.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

func journalOf(t fataler, l *ledger.Ledger, acct string) []ledger.Entry {
	t.Helper()
	var all []ledger.Entry
	after := ""
	for {
		page, next, err := l.Journal(context.Background(), acct, after, 10000)
		if err != nil {
			t.Fatalf("journal %s: %v", acct, err)
		}
		all = append(all, page...)
		if next == "" {
			return all
		}
		after = next
	}
}

// TestLostReplyRetriedOnce drops the reply of every money-moving script once.
// go-redis re-sends the command; the ledger must answer the retry with the
// first call's result (marked Replayed) and move money exactly once.
func TestLostReplyRetriedOnce(t *testing.T) {
	e, proxy := newLossyEnv(t, ledger.FeePolicy{BasisPoints: 550, Min: 800_000})
	if _, err := e.l.CreateAccount(e.ctx, "a"); err != nil {
		t.Fatal(err)
	}
	pico := func(s string) money.Pico { return money.Pico(usd(t, s)) * money.PicoPerMicro }
	tests := []struct {
		name       string
		call       func() (any, error)
		want       any // the first call's result as a replay reports it
		wantBal    string
		wantHeld   string
		wantCarry  int64
		newEntries int
		lastType   string
	}{
		{name: "topup",
			call: func() (any, error) {
				return e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "a", PaymentID: "pay-1", Amount: usd(t, "20")})
			},
			want: ledger.Receipt{Account: "a", PaymentID: "pay-1", Amount: usd(t, "20"), Fee: usd(t, "1.1"),
				TotalCharged: usd(t, "21.1"), BalanceAfter: usd(t, "20"), Replayed: true},
			wantBal: "20", wantHeld: "0", newEntries: 2, lastType: "fee"},
		{name: "reserve",
			call: func() (any, error) {
				h, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: "req-1", Estimate: usd(t, "3"), TTL: time.Minute})
				h.Deadline = h.Deadline.UTC()
				return h, err
			},
			want: ledger.Hold{Account: "a", RequestID: "req-1", Amount: usd(t, "3"), Deadline: e.clk.Now().Add(time.Minute),
				Balance: usd(t, "20"), Held: usd(t, "3"), Replayed: true},
			wantBal: "20", wantHeld: "3", newEntries: 1, lastType: "reserve"},
		{name: "capture above the hold with a sub-µUSD remainder",
			call: func() (any, error) {
				return e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "a", RequestID: "req-1", Cost: pico("3.5") + 250_000})
			},
			want: ledger.CaptureResult{Account: "a", RequestID: "req-1", Debited: usd(t, "3.5"), CarryPico: 250_000,
				Balance: usd(t, "16.5"), Held: 0, Replayed: true},
			wantBal: "16.5", wantHeld: "0", wantCarry: 250_000, newEntries: 1, lastType: "capture"},
		{name: "reserve for release",
			call: func() (any, error) {
				h, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "a", RequestID: "req-2", Estimate: usd(t, "1"), TTL: time.Minute})
				h.Deadline = h.Deadline.UTC()
				return h, err
			},
			want: ledger.Hold{Account: "a", RequestID: "req-2", Amount: usd(t, "1"), Deadline: e.clk.Now().Add(time.Minute),
				Balance: usd(t, "16.5"), Held: usd(t, "1"), Replayed: true},
			wantBal: "16.5", wantHeld: "1", wantCarry: 250_000, newEntries: 1, lastType: "reserve"},
		{name: "release",
			call: func() (any, error) { return e.l.Release(e.ctx, "a", "req-2", "upstream 503") },
			want: ledger.ReleaseResult{Account: "a", RequestID: "req-2", Released: usd(t, "1"), Balance: usd(t, "16.5"),
				Held: 0, Replayed: true},
			wantBal: "16.5", wantHeld: "0", wantCarry: 250_000, newEntries: 1, lastType: "release"},
		{name: "adjust debit",
			call: func() (any, error) {
				return e.l.Adjust(e.ctx, ledger.AdjustRequest{Account: "a", AdjustmentID: "adj-1", Amount: usd(t, "-0.5"), Reason: "refund reversal"})
			},
			want:    ledger.AdjustResult{Account: "a", AdjustmentID: "adj-1", Amount: usd(t, "-0.5"), Balance: usd(t, "16"), Replayed: true},
			wantBal: "16", wantHeld: "0", wantCarry: 250_000, newEntries: 1, lastType: "adjust"},
		{name: "adjust credit",
			call: func() (any, error) {
				return e.l.Adjust(e.ctx, ledger.AdjustRequest{Account: "a", AdjustmentID: "adj-2", Amount: usd(t, "2"), Reason: "goodwill"})
			},
			want:    ledger.AdjustResult{Account: "a", AdjustmentID: "adj-2", Amount: usd(t, "2"), Balance: usd(t, "18"), Replayed: true},
			wantBal: "18", wantHeld: "0", wantCarry: 250_000, newEntries: 1, lastType: "adjust"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(journalOf(t, e.l, "a"))
			d0, s0 := proxy.Counts()
			proxy.Arm(1)
			got, err := tc.call()
			if err != nil {
				t.Fatalf("retried call failed: %v", err)
			}
			d1, s1 := proxy.Counts()
			if d1-d0 != 1 || s1-s0 != 2 {
				t.Fatalf("proxy dropped %d replies and saw %d script calls; want 1 drop and 1 retry", d1-d0, s1-s0)
			}
			if got != tc.want {
				t.Fatalf("retry returned %+v\nwant the first result %+v", got, tc.want)
			}
			b := e.balance(t, "a")
			if b.Balance != usd(t, tc.wantBal) || b.Held != usd(t, tc.wantHeld) || b.CarryPico != tc.wantCarry {
				t.Fatalf("balance %+v, want balance %s held %s carry %d (money moved more than once?)", b, tc.wantBal, tc.wantHeld, tc.wantCarry)
			}
			j := journalOf(t, e.l, "a")
			if len(j)-before != tc.newEntries || j[len(j)-1].Type != tc.lastType {
				t.Fatalf("journal grew by %d (last %q), want %d ending in %q", len(j)-before, j[len(j)-1].Type, tc.newEntries, tc.lastType)
			}
		})
	}
	e.auditClean(t)
}

// TestLostReplyExpiryAndCreate covers the two scripts whose retry does not
// replay a stored result: expire (a retried sweep finds the hold already
// expired) and create (a retried create finds the account). Money must still
// move once; what each reports is pinned down here.
func TestLostReplyExpiryAndCreate(t *testing.T) {
	e, proxy := newLossyEnv(t, ledger.FeePolicy{})
	proxy.Arm(1)
	created, err := e.l.CreateAccount(e.ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	// The account was created by this very call, but the retry sees it exist.
	if created {
		t.Fatalf("a create whose reply was lost reports created=true; the retry should have found the account")
	}
	if d, _ := proxy.Counts(); d != 1 {
		t.Fatalf("dropped %d replies, want 1", d)
	}
	if j := journalOf(t, e.l, "b"); len(j) != 1 || j[0].Type != "open" {
		t.Fatalf("journal after lost create: %+v", j)
	}
	if _, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "b", PaymentID: "p", Amount: usd(t, "5")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "b", RequestID: "r", Estimate: usd(t, "2"), TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * time.Second)
	proxy.Arm(1)
	n, err := e.l.Sweep(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := proxy.Counts(); d != 2 {
		t.Fatalf("dropped %d replies, want 2", d)
	}
	// The retried expire finds nothing left to do, so the sweep undercounts.
	if n != 0 {
		t.Fatalf("sweep reported %d expiries after a lost reply; the retry cannot see the first run's work", n)
	}
	b := e.balance(t, "b")
	if b.Held != 0 || b.Balance != usd(t, "5") {
		t.Fatalf("after lost expire reply: %+v", b)
	}
	expires := 0
	for _, en := range journalOf(t, e.l, "b") {
		if en.Type == "expire" {
			expires++
		}
	}
	if expires != 1 {
		t.Fatalf("%d expire entries, want exactly 1", expires)
	}
	// Late capture through a lost reply still charges once.
	proxy.Arm(1)
	c, err := e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "b", RequestID: "r", Cost: 1_500_000})
	if err != nil || !c.Late || !c.Replayed || c.Debited != 1 || c.CarryPico != 500_000 {
		t.Fatalf("late capture through lost reply: %+v %v", c, err)
	}
	if b := e.balance(t, "b"); b.Balance != usd(t, "5")-1 {
		t.Fatalf("late capture charged %s, want 1 µUSD", usd(t, "5")-b.Balance)
	}
	e.auditClean(t)
}

// TestLostReplyErrorsStayErrors: a refused call whose error reply is lost is
// refused again on retry, with the same typed error and nothing moved.
func TestLostReplyErrorsStayErrors(t *testing.T) {
	e, proxy := newLossyEnv(t, ledger.FeePolicy{})
	e.account(t, "c", "1")
	if _, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "c", RequestID: "r", Estimate: usd(t, "0.4"), TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	before := len(journalOf(t, e.l, "c"))
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"reserve short", func() error {
			_, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "c", RequestID: "r2", Estimate: usd(t, "0.7"), TTL: time.Minute})
			return err
		}, nil},
		{"reserve conflict", func() error {
			_, err := e.l.Reserve(e.ctx, ledger.ReserveRequest{Account: "c", RequestID: "r", Estimate: usd(t, "0.1"), TTL: time.Minute})
			return err
		}, ledger.ErrIDConflict},
		{"capture unknown", func() error {
			_, err := e.l.Capture(e.ctx, ledger.CaptureRequest{Account: "c", RequestID: "nope", Cost: 5})
			return err
		}, ledger.ErrNoHold},
		{"topup conflict", func() error {
			_, err := e.l.TopUp(e.ctx, ledger.TopUpRequest{Account: "c", PaymentID: "seed-c", Amount: 7})
			return err
		}, ledger.ErrIDConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d0, _ := proxy.Counts()
			proxy.Arm(1)
			err := tc.call()
			if d, _ := proxy.Counts(); d-d0 != 1 {
				t.Fatalf("no reply was dropped")
			}
			if tc.want == nil {
				var ins *ledger.InsufficientFundsError
				if !errors.As(err, &ins) || ins.Available != usd(t, "0.6") || ins.Held != usd(t, "0.4") || ins.Balance != usd(t, "1") {
					t.Fatalf("want insufficient funds (available 0.6), got %v", err)
				}
			} else if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	if n := len(journalOf(t, e.l, "c")); n != before {
		t.Fatalf("refused calls wrote %d journal entries", n-before)
	}
	e.auditClean(t)
}
