package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/ledger/pricing"
)

// adminFlags are shared by every admin-API subcommand.
type adminFlags struct {
	url, token *string
	json       *bool
}

func addAdminFlags(fs *flag.FlagSet, e env) adminFlags {
	def := e.getenv("CG_ADMIN_URL")
	if def == "" {
		def = "http://127.0.0.1:8081"
	}
	return adminFlags{
		url:   fs.String("admin-url", def, "admin API base URL (env CG_ADMIN_URL)"),
		token: fs.String("token", "", "admin bearer token (default: env CG_ADMIN_TOKEN)"),
		json:  fs.Bool("json", false, "print JSON instead of human-readable text"),
	}
}

func (a adminFlags) client(e env) *admin.Client {
	tok := *a.token
	if tok == "" {
		tok = e.getenv("CG_ADMIN_TOKEN")
	}
	return &admin.Client{BaseURL: strings.TrimRight(*a.url, "/"), Token: tok}
}

// output prints v as JSON with --json, else calls human.
func (a adminFlags) output(e env, v any, human func(w io.Writer)) error {
	if *a.json {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	human(e.stdout)
	return nil
}

// parseArgs parses flags that may come before or after positional
// arguments ("topup acct_1 10 --payment-id p1"). A negative number is an
// argument, not a flag ("adjust acct_1 -1.50 --id a1 --reason ..."), unless
// it is the value of a flag that takes one.
func parseArgs(fs *flag.FlagSet, args []string, want int, names string) ([]string, error) {
	var flagArgs, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case negativeNumber(a) || !strings.HasPrefix(a, "-") || a == "-":
			pos = append(pos, a)
		default:
			flagArgs = append(flagArgs, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue
			}
			if f := fs.Lookup(name); f != nil && !isBoolFlag(f) && i+1 < len(args) {
				i++
				flagArgs = append(flagArgs, args[i])
			}
		}
	}
	if err := parseFlags(fs, flagArgs); err != nil {
		return nil, err
	}
	if want >= 0 && len(pos) != want {
		fs.Usage()
		return nil, usageErr("%s: want %d argument(s): %s", fs.Name(), want, names)
	}
	return pos, nil
}

func negativeNumber(s string) bool {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "-"), "$")
	return len(s) > 0 && (s[0] >= '0' && s[0] <= '9' || s[0] == '.')
}

func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func amountArg(s string) (money.Micros, error) {
	m, err := money.ParseUSD(strings.TrimPrefix(s, "$"))
	if err != nil {
		return 0, usageErr("%v", err)
	}
	return m, nil
}

func runAccounts(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("accounts", "accounts create ID | accounts list", e)
	af := addAdminFlags(fs, e)
	pos, err := parseArgs(fs, args, -1, "")
	if err != nil {
		return err
	}
	c := af.client(e)
	switch {
	case len(pos) == 2 && pos[0] == "create":
		r, err := c.CreateAccount(ctx, pos[1])
		if err != nil {
			return err
		}
		return af.output(e, r, func(w io.Writer) {
			if r.Created {
				fmt.Fprintf(w, "created account %s\n", r.Account)
			} else {
				fmt.Fprintf(w, "account %s already exists\n", r.Account)
			}
		})
	case len(pos) == 1 && pos[0] == "list":
		ids, err := c.Accounts(ctx)
		if err != nil {
			return err
		}
		return af.output(e, ids, func(w io.Writer) {
			for _, id := range ids {
				fmt.Fprintln(w, id)
			}
		})
	}
	fs.Usage()
	return usageErr("accounts: want 'create ID' or 'list'")
}

func runTopUp(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("topup", "topup ACCOUNT AMOUNT --payment-id ID: credit AMOUNT (USD) in full; the fee is charged on top", e)
	af := addAdminFlags(fs, e)
	pid := fs.String("payment-id", "", "external payment id (required: a retry with the same id never credits twice)")
	pos, err := parseArgs(fs, args, 2, "ACCOUNT AMOUNT")
	if err != nil {
		return err
	}
	if *pid == "" {
		return usageErr("topup: --payment-id is required")
	}
	amt, err := amountArg(pos[1])
	if err != nil {
		return err
	}
	r, err := af.client(e).TopUp(ctx, pos[0], *pid, amt)
	if err != nil {
		return err
	}
	return af.output(e, r, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "account\t%s\npayment\t%s\ncredited\t$%s\nfee\t$%s\ntotal charged\t$%s\nbalance after\t$%s\n",
			r.Account, r.PaymentID, r.Amount, r.Fee, r.TotalCharged, r.BalanceAfter)
		if r.Replayed {
			fmt.Fprintln(tw, "note\treplayed: this payment id was already applied; nothing changed")
		}
		tw.Flush()
	})
}

func runBalance(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("balance", "balance ACCOUNT: balance, held by in-flight requests, available", e)
	af := addAdminFlags(fs, e)
	pos, err := parseArgs(fs, args, 1, "ACCOUNT")
	if err != nil {
		return err
	}
	b, err := af.client(e).Balance(ctx, pos[0])
	if err != nil {
		return err
	}
	return af.output(e, b, func(w io.Writer) {
		fmt.Fprintf(w, "%s: balance $%s, held $%s, available $%s\n", b.Account, b.Balance, b.Held, b.Available)
	})
}

func runJournal(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("journal", "journal ACCOUNT [--after ID] [--limit N]", e)
	af := addAdminFlags(fs, e)
	after := fs.String("after", "", "start after this entry id (from a previous page)")
	limit := fs.Int("limit", 50, "entries per page")
	pos, err := parseArgs(fs, args, 1, "ACCOUNT")
	if err != nil {
		return err
	}
	p, err := af.client(e).Journal(ctx, pos[0], *after, *limit)
	if err != nil {
		return err
	}
	return af.output(e, p, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tTYPE\tAMOUNT\tBALANCE\tHELD\tREF\tDETAIL")
		for _, en := range p.Entries {
			detail := en.Reason
			if en.Model != "" {
				detail = strings.TrimSpace(fmt.Sprintf("%s/%s cost=%s %s", en.Provider, en.Model, en.Cost, flags(en)))
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", en.Seq, en.Time.UTC().Format(time.RFC3339), en.Type,
				en.Amount, en.Balance, en.Held, en.Ref, detail)
		}
		tw.Flush()
		if p.Next != "" {
			fmt.Fprintf(w, "more: --after %s\n", p.Next)
		}
	})
}

func flags(en admin.JournalEntry) string {
	var f []string
	if en.Estimated {
		f = append(f, "estimated")
	}
	if en.Late {
		f = append(f, "late")
	}
	return strings.Join(f, ",")
}

func runAdjust(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("adjust", "adjust ACCOUNT AMOUNT --id ID --reason TEXT: operator credit (+) or debit (-)", e)
	af := addAdminFlags(fs, e)
	id := fs.String("id", "", "adjustment id (required; makes retries safe)")
	reason := fs.String("reason", "", "why (required; journaled)")
	pos, err := parseArgs(fs, args, 2, "ACCOUNT AMOUNT")
	if err != nil {
		return err
	}
	if *id == "" || strings.TrimSpace(*reason) == "" {
		return usageErr("adjust: --id and --reason are required")
	}
	amt, err := amountArg(pos[1])
	if err != nil {
		return err
	}
	r, err := af.client(e).Adjust(ctx, pos[0], *id, amt, *reason)
	if err != nil {
		return err
	}
	return af.output(e, r, func(w io.Writer) {
		fmt.Fprintf(w, "adjusted %s by $%s; balance $%s\n", r.Account, r.Amount, r.BalanceAfter)
	})
}

func runAudit(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("audit", "recompute every account's balance and held from its journal; exit 1 on any difference", e)
	af := addAdminFlags(fs, e)
	redisURL := fs.String("redis-url", "", "audit Redis directly instead of through the admin API")
	prefix := fs.String("prefix", "cg", "key prefix (with --redis-url)")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	var rep admin.AuditReport
	if *redisURL != "" {
		cfg := DefaultConfig()
		cfg.Redis.URL = *redisURL
		rdb, err := newRedis(cfg)
		if err != nil {
			return err
		}
		defer rdb.Close()
		l, err := ledger.New(rdb, ledger.Options{Prefix: *prefix})
		if err != nil {
			return err
		}
		accts, ok, err := l.Audit(ctx)
		if err != nil {
			return err
		}
		rep.OK = ok
		for _, a := range accts {
			rep.Accounts = append(rep.Accounts, admin.AccountAudit{Account: a.Account, Entries: a.Entries, Balance: a.Balance,
				Held: a.Held, JournalBalance: a.JournalBal, JournalHeld: a.JournalHeld, Problems: a.Problems})
		}
	} else {
		var err error
		if rep, err = af.client(e).Audit(ctx); err != nil {
			return err
		}
	}
	if err := af.output(e, rep, func(w io.Writer) {
		for _, a := range rep.Accounts {
			verdict := "ok"
			if len(a.Problems) > 0 {
				verdict = "MISMATCH"
			}
			fmt.Fprintf(w, "%-8s %s: %d entries, balance $%s (journal $%s), held $%s (journal $%s)\n", verdict, a.Account,
				a.Entries, a.Balance, a.JournalBalance, a.Held, a.JournalHeld)
			for _, p := range a.Problems {
				fmt.Fprintf(w, "         - %s\n", p)
			}
		}
		fmt.Fprintf(w, "audit: %d accounts, ok=%v\n", len(rep.Accounts), rep.OK)
	}); err != nil {
		return err
	}
	if !rep.OK {
		return &exitError{code: 1, err: errors.New("audit found differences")}
	}
	return nil
}

func runKeys(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("keys", "keys create ACCOUNT [--key KEY] | keys revoke HASH_OR_KEY", e)
	af := addAdminFlags(fs, e)
	key := fs.String("key", "", "register this existing key instead of minting one")
	pos, err := parseArgs(fs, args, 2, "create ACCOUNT | revoke HASH")
	if err != nil {
		return err
	}
	c := af.client(e)
	switch pos[0] {
	case "create":
		r, err := c.CreateKey(ctx, pos[1], *key)
		if err != nil {
			return err
		}
		return af.output(e, r, func(w io.Writer) {
			if r.Key != "" {
				fmt.Fprintf(w, "key for %s (shown once, store it now): %s\n", r.Account, r.Key)
			} else {
				fmt.Fprintf(w, "key registered for %s\n", r.Account)
			}
			fmt.Fprintf(w, "hash: %s\n", r.KeyHash)
		})
	case "revoke":
		h := pos[1]
		if len(h) != 64 {
			h = ledger.HashKey(h) // a raw key was given
		}
		if err := c.RevokeKey(ctx, h); err != nil {
			return err
		}
		return af.output(e, map[string]string{"revoked": h}, func(w io.Writer) { fmt.Fprintf(w, "revoked %s\n", h) })
	}
	fs.Usage()
	return usageErr("keys: want create or revoke")
}

func runPrices(ctx context.Context, e env, args []string) error {
	if len(args) == 0 || (args[0] != "import" && args[0] != "check" && args[0] != "show") {
		fmt.Fprintln(e.stdout, "usage: creditgate prices import --from litellm FILE [--effective-from DATE] [--out FILE]")
		fmt.Fprintln(e.stdout, "       creditgate prices check FILE      validate a catalog (every error listed)")
		fmt.Fprintln(e.stdout, "       creditgate prices show [FILE]     print the catalog's rows (default: embedded catalog)")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil
		}
		return usageErr("prices: want import, check or show")
	}
	switch args[0] {
	case "import":
		fs := newFlagSet("prices import", "convert a LiteLLM model_prices_and_context_window.json into a creditgate catalog", e)
		from := fs.String("from", "", "source format (litellm)")
		eff := fs.String("effective-from", "", "effective_from date for every row (default: today, UTC)")
		out := fs.String("out", "", "write the catalog here instead of stdout")
		pos, err := parseArgs(fs, args[1:], 1, "FILE")
		if err != nil {
			return err
		}
		if *from != "litellm" {
			return usageErr("prices import: --from litellm is the supported format")
		}
		when := time.Now().UTC().Truncate(24 * time.Hour)
		if *eff != "" {
			if when, err = time.Parse("2006-01-02", *eff); err != nil {
				return usageErr("--effective-from: %v", err)
			}
		}
		data, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		f, skipped, err := pricing.ImportLiteLLM(data, when)
		if err != nil {
			return err
		}
		b := f.Bytes()
		if *out != "" {
			if err := os.WriteFile(*out, b, 0o644); err != nil {
				return err
			}
		} else if _, err := e.stdout.Write(b); err != nil {
			return err
		}
		for _, s := range skipped {
			fmt.Fprintf(e.stderr, "skipped %s: %s\n", s.Key, s.Reason)
		}
		n := 0
		for _, rows := range f.Providers {
			n += len(rows)
		}
		fmt.Fprintf(e.stderr, "imported %d models, skipped %d\n", n, len(skipped))
		return nil
	case "check", "show":
		fs := newFlagSet("prices "+args[0], "validate or print a catalog", e)
		pos, err := parseArgs(fs, args[1:], -1, "[FILE]")
		if err != nil {
			return err
		}
		cat := pricing.Default()
		if len(pos) > 0 {
			data, err := os.ReadFile(pos[0])
			if err != nil {
				return err
			}
			if cat, err = pricing.Parse(data); err != nil {
				return err
			}
		} else if args[0] == "check" {
			return usageErr("prices check: want FILE")
		}
		if args[0] == "check" {
			fmt.Fprintf(e.stdout, "ok: catalog %s, %d rows\n", cat.Version(), len(cat.Rows()))
			return nil
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ROW\tINPUT/1M\tCACHED/1M\tOUTPUT/1M")
		for _, r := range cat.Rows() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.ID, r.Input, r.CachedInput, r.Output)
		}
		return tw.Flush()
	}
	return nil
}
