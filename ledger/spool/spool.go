// Package spool keeps settlements that could not reach Redis in a local,
// fsynced append-only file and replays them until they land, so a Redis
// outage at the end of a call loses no debit (design-notes §6). Replaying is
// safe because every ledger operation is idempotent on its request id: a
// settlement that did land before the error was seen replays as a no-op.
package spool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// Ledger is what replay needs.
type Ledger interface {
	Capture(ctx context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error)
	Charge(ctx context.Context, req ledger.CaptureRequest) (ledger.CaptureResult, error)
	Release(ctx context.Context, account, requestID, reason string) (ledger.ReleaseResult, error)
}

// Settlement is one pending capture, charge or release.
type Settlement struct {
	Capture *ledger.CaptureRequest `json:"capture,omitempty"`
	// Charge is the settlement of a request admitted without a hold (fail
	// open), replayed with Ledger.Charge.
	Charge  *ledger.CaptureRequest `json:"charge,omitempty"`
	Release *Release               `json:"release,omitempty"`
}

// Release is a pending release.
type Release struct {
	Account   string `json:"account"`
	RequestID string `json:"request_id"`
	Reason    string `json:"reason"`
}

// Spool is safe for concurrent use.
type Spool struct {
	mu   sync.Mutex
	path string
	n    int
}

// Open opens (creating if needed) the spool file at path.
func Open(path string) (*Spool, error) {
	s := &Spool{path: path}
	items, err := s.read()
	if err != nil {
		return nil, err
	}
	s.n = len(items)
	return s, nil
}

// Len is the number of settlements waiting.
func (s *Spool) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Add appends a settlement and fsyncs before returning: once Add returns,
// the debit survives a crash of this process.
func (s *Spool) Add(st Settlement) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := os.OpenFile(s.path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	line := append(b, '\n')
	// A write that died half way (crash, or a full disk failing an earlier
	// Add) leaves a torn line with no newline. Appending straight after it
	// would glue this settlement onto the torn bytes, and read() would drop
	// the whole line: a debit lost although Add returned nil. Start a fresh
	// line instead; read() skips the torn one.
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			line = append([]byte{'\n'}, line...)
		}
	}
	if _, err := f.Write(line); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	s.n++
	return nil
}

func (s *Spool) read() ([]Settlement, error) {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var out []Settlement
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var st Settlement
		if err := json.Unmarshal(line, &st); err != nil {
			// A torn last line from a crash mid-write: the Add that wrote it
			// never returned, so its caller did not count on it.
			continue
		}
		out = append(out, st)
	}
	return out, sc.Err()
}

// Replay applies every waiting settlement. Settlements that fail with
// ledger.ErrUnavailable stay for the next replay; any other outcome (done,
// replayed, or a permanent error such as a hold already closed) removes
// them. It returns how many were applied.
func (s *Spool) Replay(ctx context.Context, l Ledger, onPermanent func(Settlement, error)) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	items, err := s.read()
	if err != nil || len(items) == 0 {
		return 0, err
	}
	var keep []Settlement
	applied := 0
	var lastErr error
	for _, st := range items {
		var err error
		switch {
		case st.Capture != nil:
			_, err = l.Capture(ctx, *st.Capture)
		case st.Charge != nil:
			_, err = l.Charge(ctx, *st.Charge)
		case st.Release != nil:
			_, err = l.Release(ctx, st.Release.Account, st.Release.RequestID, st.Release.Reason)
		}
		switch {
		case err == nil:
			applied++
		case st.Release != nil && errors.Is(err, ledger.ErrNoHold):
			// A release spooled after a reserve whose outcome was unknown:
			// the hold never landed, so there is nothing to release.
			applied++
		case errors.Is(err, ledger.ErrUnavailable):
			keep = append(keep, st)
			lastErr = err
		default:
			if onPermanent != nil {
				onPermanent(st, err)
			}
		}
	}
	if err := s.rewrite(keep); err != nil {
		return applied, err
	}
	s.n = len(keep)
	return applied, lastErr
}

// rewrite replaces the file atomically (write temp, fsync, rename).
func (s *Spool) rewrite(items []Settlement) error {
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	w := bufio.NewWriter(f)
	for _, st := range items {
		b, _ := json.Marshal(st)
		w.Write(append(b, '\n'))
	}
	if err := errors.Join(w.Flush(), f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return os.Rename(tmp, s.path)
}

// Run replays every interval until ctx ends.
func (s *Spool) Run(ctx context.Context, l Ledger, every time.Duration, onErr func(error), onPermanent func(Settlement, error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if s.Len() == 0 {
				continue
			}
			if _, err := s.Replay(ctx, l, onPermanent); err != nil && onErr != nil {
				onErr(err)
			}
		}
	}
}
