package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/creditgate/creditgate/ledger/pricing"
)

// liveCatalog is the hot-reloadable price catalog: readers take the current
// *pricing.Catalog with one atomic load, a reload swaps the whole catalog at
// once, so a request never sees half of an old and half of a new file.
type liveCatalog struct {
	path     string
	cur      atomic.Pointer[pricing.Catalog]
	loadedAt atomic.Int64 // unix ms
	modTime  atomic.Int64
	log      *slog.Logger
	clock    func() time.Time
}

func newLiveCatalog(path string, log *slog.Logger, clock func() time.Time) (*liveCatalog, error) {
	lc := &liveCatalog{path: path, log: log, clock: clock}
	if err := lc.reload(); err != nil {
		return nil, err
	}
	return lc, nil
}

func (lc *liveCatalog) Lookup(provider, model string, at time.Time) (*pricing.Row, error) {
	return lc.cur.Load().Lookup(provider, model, at)
}

func (lc *liveCatalog) Version() string { return lc.cur.Load().Version() }

// Age is how long ago the catalog in use was loaded.
func (lc *liveCatalog) Age() time.Duration {
	return lc.clock().Sub(time.UnixMilli(lc.loadedAt.Load()))
}

// reload parses the file and swaps it in; a bad file keeps the old catalog.
func (lc *liveCatalog) reload() error {
	var c *pricing.Catalog
	if lc.path == "" {
		c = pricing.Default()
	} else {
		fi, err := os.Stat(lc.path)
		if err != nil {
			return fmt.Errorf("price catalog: %w", err)
		}
		b, err := os.ReadFile(lc.path)
		if err != nil {
			return fmt.Errorf("price catalog: %w", err)
		}
		c, err = pricing.Parse(b)
		if err != nil {
			return fmt.Errorf("price catalog %s: %w", lc.path, err)
		}
		lc.modTime.Store(fi.ModTime().UnixNano())
	}
	prev := lc.cur.Swap(c)
	lc.loadedAt.Store(lc.clock().UnixMilli())
	if prev != nil && lc.log != nil {
		lc.log.Info("price catalog reloaded", "version", c.Version(), "previous", prev.Version())
	}
	return nil
}

// changed reports whether the file's modification time moved.
func (lc *liveCatalog) changed() bool {
	if lc.path == "" {
		return false
	}
	fi, err := os.Stat(lc.path)
	return err == nil && fi.ModTime().UnixNano() != lc.modTime.Load()
}

// watch reloads on file change (polled) and whenever hup fires (SIGHUP).
func (lc *liveCatalog) watch(ctx context.Context, every time.Duration, hup <-chan os.Signal) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-t.C:
			if !lc.changed() {
				continue
			}
		}
		if err := lc.reload(); err != nil {
			lc.log.Error("price catalog reload failed; keeping the previous one", "err", err)
		}
	}
}
