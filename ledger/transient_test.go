package ledger_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/creditgate/creditgate/ledger"
)

// fakeRedis answers every command with one fixed error reply, like a Redis
// that is loading its dataset or a replica during failover.
func fakeRedis(t *testing.T, reply string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					// Read one RESP array command: *N, then N bulk strings.
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					n := 0
					if strings.HasPrefix(line, "*") {
						for _, ch := range strings.TrimSpace(line[1:]) {
							n = n*10 + int(ch-'0')
						}
					}
					for i := 0; i < 2*n; i++ {
						if _, err := r.ReadString('\n'); err != nil {
							return
						}
					}
					if _, err := c.Write([]byte(reply + "\r\n")); err != nil {
						return
					}
				}
			}(c)
		}
	}()
	return l.Addr().String()
}

// TestTransientRepliesAreUnavailable: a capture answered with LOADING,
// READONLY, ... must be ErrUnavailable so the caller spools it; classified
// as a plain Redis error it was dropped and the call became free.
func TestTransientRepliesAreUnavailable(t *testing.T) {
	for _, reply := range []string{
		"-LOADING Redis is loading the dataset in memory",
		"-READONLY You can't write against a read only replica.",
		"-MASTERDOWN Link with MASTER is down",
		"-CLUSTERDOWN The cluster is down",
		"-TRYAGAIN Multiple keys request during rehashing of slot",
		"-BUSY Redis is busy running a script",
	} {
		t.Run(strings.Fields(reply)[0][1:], func(t *testing.T) {
			c := redis.NewClient(&redis.Options{Addr: fakeRedis(t, reply), MaxRetries: -1, Protocol: 2,
				DisableIdentity: true, ReadTimeout: time.Second})
			defer c.Close()
			l, err := ledger.New(c, ledger.Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = l.Capture(context.Background(), ledger.CaptureRequest{Account: "a", RequestID: "r", Cost: 1})
			if !errors.Is(err, ledger.ErrUnavailable) {
				t.Fatalf("capture against %q: %v, want ErrUnavailable", reply, err)
			}
			_, err = l.Release(context.Background(), "a", "r", "x")
			if !errors.Is(err, ledger.ErrUnavailable) {
				t.Fatalf("release against %q: %v, want ErrUnavailable", reply, err)
			}
		})
	}
	// A real answer stays a typed answer, not an outage.
	c := redis.NewClient(&redis.Options{Addr: fakeRedis(t, "-CG_NOHOLD no hold for request id r"), MaxRetries: -1, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	l, _ := ledger.New(c, ledger.Options{})
	if _, err := l.Capture(context.Background(), ledger.CaptureRequest{Account: "a", RequestID: "r", Cost: 1}); !errors.Is(err, ledger.ErrNoHold) || errors.Is(err, ledger.ErrUnavailable) {
		t.Fatalf("script answer: %v", err)
	}
}
