package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/creditgate/creditgate/ledger/admin"
)

// runHealthcheck is for container health checks in images without curl.
func runHealthcheck(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("healthcheck", "exit 0 if URL answers 200 (for container health checks)", e)
	u := fs.String("url", "http://127.0.0.1:8081/readyz", "URL to probe")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *u, nil)
	if err != nil {
		return usageErr("healthcheck: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s: %d %s", *u, resp.StatusCode, body)
	}
	fmt.Fprintf(e.stdout, "%s", body)
	return nil
}

// runSeed creates an account, binds a virtual key and tops it up, all
// idempotently, so a demo or a one-shot job can run it on every start.
func runSeed(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("seed", "idempotently create an account, bind a virtual API key and top it up (demo / one-shot jobs)", e)
	af := addAdminFlags(fs, e)
	account := fs.String("account", "demo", "account id")
	key := fs.String("key", "", "virtual API key to bind to the account (32+ characters)")
	amount := fs.String("amount", "1.00", "top-up amount in USD")
	pid := fs.String("payment-id", "seed-1", "payment id of the top-up (a re-run does not credit twice)")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the admin API to come up")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	amt, err := amountArg(*amount)
	if err != nil {
		return err
	}
	c := af.client(e)
	deadline := time.Now().Add(*wait)
	for {
		_, err = c.CreateAccount(ctx, *account)
		var apiErr *admin.Error
		if err == nil || errors.As(err, &apiErr) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		return err
	}
	if *key != "" {
		if _, err := c.CreateKey(ctx, *account, *key); err != nil {
			return err
		}
	}
	r, err := c.TopUp(ctx, *account, *pid, amt)
	if err != nil {
		return err
	}
	if r.Replayed {
		// A replayed top-up answers with its original receipt; show what
		// the account holds now instead of a stale balance.
		b, err := c.Balance(ctx, *account)
		if err != nil {
			return err
		}
		return af.output(e, r, func(w io.Writer) {
			fmt.Fprintf(w, "seeded account %s: payment %s was already applied; balance now $%s\n", *account, *pid, b.Balance)
		})
	}
	return af.output(e, r, func(w io.Writer) {
		fmt.Fprintf(w, "seeded account %s: balance $%s (payment %s)\n", *account, r.BalanceAfter, *pid)
	})
}
