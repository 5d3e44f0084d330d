// Command creditgate is the creditgate sidecar and its operator CLI.
//
//	creditgate serve            run the ext_proc server, admin API, metrics and sweeper
//	creditgate demo             five-minute demo (in-memory ledger, proxy, fake provider)
//	creditgate accounts|topup|balance|journal|adjust|audit|keys   admin API client
//	creditgate prices import --from litellm FILE
//
// main only wires; Run is the testable entry point.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "creditgate:", err)
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit status (audit differences exit 1,
// usage errors 2).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func usageErr(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

// parseFlags is fs.Parse with a bad flag or value made a usage error
// (exit 2); flag.ErrHelp passes through for Run.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return &exitError{code: 2, err: fmt.Errorf("%s: %w", fs.Name(), err)}
	}
	return err
}

// env is what a command needs from its process.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

type command struct {
	name, summary string
	run           func(ctx context.Context, e env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run the ext_proc server, admin API, metrics and hold sweeper", runServe},
		{"demo", "five-minute demo: in-memory ledger, Envoy-compatible proxy, fake provider", runDemo},
		{"accounts", "create or list accounts (admin API)", runAccounts},
		{"topup", "credit an account; the fee is charged on top (admin API)", runTopUp},
		{"balance", "show balance, held and available (admin API)", runBalance},
		{"journal", "page through an account's journal (admin API)", runJournal},
		{"adjust", "operator credit or debit with a reason (admin API)", runAdjust},
		{"audit", "recompute every account from its journal; exit 1 on any difference", runAudit},
		{"keys", "create or revoke virtual API keys (admin API)", runKeys},
		{"prices", "check a price catalog or import one from LiteLLM", runPrices},
		{"seed", "idempotently create an account, bind a key and top it up (demo / one-shot jobs)", runSeed},
		{"healthcheck", "exit 0 if a URL answers 200 (container health checks)", runHealthcheck},
		{"dev-provider", "run the fake LLM provider used by the demos (no real API is called)", runDevProvider},
		{"version", "print the version", runVersion},
	}
}

// Run executes one creditgate command line (without the program name).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	e := env{stdout: stdout, stderr: stderr, getenv: getenv}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stdout)
		if len(args) == 0 {
			return usageErr("no command given")
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, e, args[1:])
			if errors.Is(err, flag.ErrHelp) {
				return nil // --help got the usage it asked for
			}
			return err
		}
	}
	printUsage(stderr)
	return usageErr("unknown command %q", args[0])
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: creditgate <command> [flags]   (creditgate <command> --help for its flags)")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-12s %s\n", c.name, c.summary)
	}
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func runVersion(_ context.Context, e env, args []string) error {
	fs := newFlagSet("version", "print the version", e)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "creditgate", version)
	return nil
}

// newFlagSet makes a subcommand flag set whose --help prints to stdout and
// whose errors become exit status 2.
func newFlagSet(name, summary string, e env) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stdout, "usage: creditgate %s [flags]\n  %s\n\nflags:\n", name, summary)
		fs.SetOutput(e.stdout)
		fs.PrintDefaults()
		fs.SetOutput(e.stderr)
	}
	return fs
}
