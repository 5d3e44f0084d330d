package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/redistest"
)

const clusterSlots = 16384

// startCluster builds an n-master Redis Cluster from real redis-server
// processes, entirely from Go: contiguous slot ranges per node
// (CLUSTER ADDSLOTSRANGE), one CLUSTER MEET per node, then it waits until
// every node agrees the cluster is whole. It returns the node addresses and
// a direct client per node.
func startCluster(t *testing.T, n int) ([]string, []*redis.Client) {
	t.Helper()
	ctx := context.Background()
	addrs := make([]string, n)
	nodes := make([]*redis.Client, n)
	for i := range addrs {
		addrs[i] = redistest.StartServer(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "5000")
		nodes[i] = redis.NewClient(&redis.Options{Addr: addrs[i]})
		t.Cleanup(func() { _ = nodes[i].Close() })
	}
	for i, c := range nodes {
		lo, hi := clusterRange(i, n)
		if err := c.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			t.Fatalf("node %d: ADDSLOTSRANGE %d %d: %v", i, lo, hi, err)
		}
	}
	host, port, err := net.SplitHostPort(addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range nodes[1:] {
		if err := c.ClusterMeet(ctx, host, port).Err(); err != nil {
			t.Fatalf("CLUSTER MEET: %v", err)
		}
	}
	want := []string{"cluster_state:ok", fmt.Sprintf("cluster_known_nodes:%d", n), fmt.Sprintf("cluster_slots_assigned:%d", clusterSlots)}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ready := true
		for _, c := range nodes {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil {
				ready = false
				break
			}
			for _, w := range want {
				ready = ready && strings.Contains(info, w)
			}
			if slots, err := c.ClusterSlots(ctx).Result(); err != nil || len(slots) != n {
				ready = false
			}
		}
		if ready {
			return addrs, nodes
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster of %v did not converge", addrs)
		}
	}
}

func clusterRange(i, n int) (lo, hi int) {
	per := clusterSlots / n
	lo, hi = i*per, (i+1)*per-1
	if i == n-1 {
		hi = clusterSlots - 1
	}
	return lo, hi
}

// TestClusterEveryScript runs every ledger operation on a 3-master Redis
// Cluster over accounts spread across all masters. Each script declares all
// of its keys and they share the account's hash tag, so any key outside the
// account's slot would fail here with CROSSSLOT; the global index keys
// (accounts, sweep) are only touched by plain commands.
func TestClusterEveryScript(t *testing.T) {
	const masters = 3
	addrs, nodes := startCluster(t, masters)
	ctx := context.Background()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = cc.Close() })
	clk := realClock()
	l, err := ledger.New(cc, ledger.Options{Prefix: "cg", Clock: clk.Now, Fee: ledger.FeePolicy{BasisPoints: 550, Min: 800_000}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Load(ctx); err != nil {
		t.Fatal(err)
	}

	// Accounts and the master that owns each one's slot.
	var accts []string
	owner := map[string]int{}
	perNode := make([]int, masters)
	for i := 0; i < 24; i++ {
		a := fmt.Sprintf("acct-%02d", i)
		keys := l.AccountKeys(a)
		slot, err := cc.ClusterKeySlot(ctx, keys[0]).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys[1:] {
			if s, _ := cc.ClusterKeySlot(ctx, k).Result(); s != slot {
				t.Fatalf("%s: key %s in slot %d, account hash in %d", a, k, s, slot)
			}
		}
		node := int(slot) / (clusterSlots / masters)
		node = min(node, masters-1)
		accts = append(accts, a)
		owner[a] = node
		perNode[node]++
	}
	for i, n := range perNode {
		if n == 0 {
			t.Fatalf("no account on master %d (%v); choose other names", i, perNode)
		}
	}
	t.Logf("accounts per master: %v", perNode)

	usdP := func(s string) money.Pico { return money.Pico(usd(t, s)) * money.PicoPerMicro }
	for _, a := range accts {
		if created, err := l.CreateAccount(ctx, a); err != nil || !created {
			t.Fatalf("%s: create: %v %v", a, created, err)
		}
		if created, err := l.CreateAccount(ctx, a); err != nil || created {
			t.Fatalf("%s: second create: %v %v", a, created, err)
		}
		r, err := l.TopUp(ctx, ledger.TopUpRequest{Account: a, PaymentID: "pay-1", Amount: usd(t, "10")})
		if err != nil || r.Fee != usd(t, "0.8") || r.BalanceAfter != usd(t, "10") {
			t.Fatalf("%s: topup: %+v %v", a, r, err)
		}
		if r, err := l.TopUp(ctx, ledger.TopUpRequest{Account: a, PaymentID: "pay-1", Amount: usd(t, "10")}); err != nil || !r.Replayed {
			t.Fatalf("%s: topup replay: %+v %v", a, r, err)
		}
		if _, err := l.TopUp(ctx, ledger.TopUpRequest{Account: a, PaymentID: "pay-1", Amount: usd(t, "11")}); !errors.Is(err, ledger.ErrIDConflict) {
			t.Fatalf("%s: topup conflict: %v", a, err)
		}
		for _, h := range []struct {
			id, est string
			ttl     time.Duration
		}{{"r-cap", "2", time.Minute}, {"r-rel", "1", time.Minute}, {"r-exp", "3", 10 * time.Second}, {"r-late", "1", 10 * time.Second}} {
			if _, err := l.Reserve(ctx, ledger.ReserveRequest{Account: a, RequestID: h.id, Estimate: usd(t, h.est), TTL: h.ttl, Provider: "openai", Model: "gpt-4o"}); err != nil {
				t.Fatalf("%s: reserve %s: %v", a, h.id, err)
			}
		}
		_, err = l.Reserve(ctx, ledger.ReserveRequest{Account: a, RequestID: "r-big", Estimate: usd(t, "20"), TTL: time.Minute})
		var ins *ledger.InsufficientFundsError
		if !errors.As(err, &ins) || ins.Balance != usd(t, "10") || ins.Held != usd(t, "7") || ins.Available != usd(t, "3") {
			t.Fatalf("%s: reserve beyond funds: %v", a, err)
		}
		c, err := l.Capture(ctx, ledger.CaptureRequest{Account: a, RequestID: "r-cap", Cost: usdP("2.5") + 123_456, Provider: "openai", Model: "gpt-4o"})
		if err != nil || c.Debited != usd(t, "2.5") || c.CarryPico != 123_456 || c.Balance != usd(t, "7.5") || c.Held != usd(t, "5") {
			t.Fatalf("%s: capture: %+v %v", a, c, err)
		}
		if c, err := l.Capture(ctx, ledger.CaptureRequest{Account: a, RequestID: "r-cap", Cost: usdP("2.5") + 123_456}); err != nil || !c.Replayed {
			t.Fatalf("%s: capture replay: %+v %v", a, c, err)
		}
		if rr, err := l.Release(ctx, a, "r-rel", "upstream 500"); err != nil || rr.Released != usd(t, "1") || rr.Held != usd(t, "4") {
			t.Fatalf("%s: release: %+v %v", a, rr, err)
		}
		if _, err := l.Capture(ctx, ledger.CaptureRequest{Account: a, RequestID: "r-rel", Cost: 1}); !errors.Is(err, ledger.ErrHoldClosed) {
			t.Fatalf("%s: capture after release: %v", a, err)
		}
		if ar, err := l.Adjust(ctx, ledger.AdjustRequest{Account: a, AdjustmentID: "adj-credit", Amount: usd(t, "1"), Reason: "goodwill"}); err != nil || ar.Balance != usd(t, "8.5") {
			t.Fatalf("%s: adjust credit: %+v %v", a, ar, err)
		}
		if _, err := l.Adjust(ctx, ledger.AdjustRequest{Account: a, AdjustmentID: "adj-too-much", Amount: usd(t, "-5"), Reason: "x"}); !errors.As(err, &ins) {
			t.Fatalf("%s: debit below held: %v", a, err)
		}
		if ar, err := l.Adjust(ctx, ledger.AdjustRequest{Account: a, AdjustmentID: "adj-debit", Amount: usd(t, "-4"), Reason: "correction"}); err != nil || ar.Balance != usd(t, "4.5") {
			t.Fatalf("%s: adjust debit: %+v %v", a, ar, err)
		}
	}

	clk.Advance(11 * time.Second)
	n, err := l.Sweep(ctx)
	if err != nil || n != 2*len(accts) {
		t.Fatalf("sweep expired %d (%v), want %d", n, err, 2*len(accts))
	}
	if n, err := l.Sweep(ctx); err != nil || n != 0 {
		t.Fatalf("second sweep expired %d (%v)", n, err)
	}

	wantTypes := "open topup fee reserve reserve reserve reserve capture release adjust adjust expire expire capture"
	for _, a := range accts {
		c, err := l.Capture(ctx, ledger.CaptureRequest{Account: a, RequestID: "r-late", Cost: usdP("0.5") + 900_000})
		if err != nil || !c.Late || c.Debited != usd(t, "0.500001") || c.CarryPico != 23_456 || c.Balance != usd(t, "3.999999") || c.Held != 0 {
			t.Fatalf("%s: late capture: %+v %v", a, c, err)
		}
		if rr, err := l.Release(ctx, a, "r-exp", "late"); err != nil || rr.Released != 0 || !rr.Replayed {
			t.Fatalf("%s: release after expiry: %+v %v", a, rr, err)
		}
		b, err := l.Balance(ctx, a)
		if err != nil || b.Balance != usd(t, "3.999999") || b.Held != 0 || b.CarryPico != 23_456 {
			t.Fatalf("%s: balance %+v %v", a, b, err)
		}
		j := journalOf(t, l, a)
		var types []string
		for _, e := range j {
			types = append(types, e.Type)
		}
		if got := strings.Join(types, " "); got != wantTypes {
			t.Fatalf("%s: journal %s\nwant %s", a, got, wantTypes)
		}
		if _, probs := checkJournal(j, b, true); len(probs) > 0 {
			t.Fatalf("%s: %v", a, probs)
		}
		// The account's data lives on the master that owns its slot.
		for _, k := range l.AccountKeys(a)[:2] {
			if n, err := nodes[owner[a]].Exists(ctx, k).Result(); err != nil || n != 1 {
				t.Fatalf("%s: key %s not on master %d: %d %v", a, k, owner[a], n, err)
			}
		}
	}

	rep, ok, err := l.Audit(ctx)
	if err != nil || !ok || len(rep) != len(accts) {
		t.Fatalf("audit: ok=%v %d accounts, %v %+v", ok, len(rep), err, rep)
	}
	for i, c := range nodes {
		if n, err := c.DBSize(ctx).Result(); err != nil || n == 0 {
			t.Fatalf("master %d holds %d keys (%v): the accounts did not spread", i, n, err)
		}
	}
}
