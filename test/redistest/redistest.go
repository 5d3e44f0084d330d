// Package redistest gives tests a real redis-server. CI (.ci/run) starts one
// and exports REDIS_ADDR; without it, the first test that asks starts a
// private redis-server on a free loopback port for the life of the test
// binary. A missing redis-server is a test failure, not a skip: a ledger test
// that silently does not run proves nothing.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var (
	once    sync.Once
	addr    string
	initErr error
)

// Addr returns the address of a running redis-server.
func Addr(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		if a := os.Getenv("REDIS_ADDR"); a != "" {
			addr = a
			return
		}
		addr, initErr = start()
	})
	if initErr != nil {
		t.Fatalf("redistest: %v (install redis-server or set REDIS_ADDR)", initErr)
	}
	return addr
}

// Client returns a client for the shared server, closed at test end.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: Addr(t)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Prefix returns a key prefix unique to this test so tests sharing one
// server never see each other's keys.
func Prefix(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartServer starts a redis-server with extra arguments (e.g. cluster mode)
// and returns its address; it is stopped when the test ends.
func StartServer(t testing.TB, args ...string) string {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd, a, err := launch(port, dir, args...)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return a
}

func start() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "redistest")
	if err != nil {
		return "", err
	}
	// A shared server cannot be stopped by t.Cleanup; setDeathSignal ties
	// its life to the test binary instead.
	_, a, err := launch(port, dir)
	return a, err
}

func launch(port int, dir string, extra ...string) (*exec.Cmd, string, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, "", fmt.Errorf("redis-server not found on PATH: %w", err)
	}
	args := append([]string{"--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir}, extra...)
	cmd := exec.Command(bin, args...)
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	a := fmt.Sprintf("127.0.0.1:%d", port)
	c := redis.NewClient(&redis.Options{Addr: a})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return cmd, a, nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			return nil, "", fmt.Errorf("redis-server on %s did not answer: %w", a, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
