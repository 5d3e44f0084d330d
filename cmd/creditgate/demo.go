package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/tidwall/gjson"

	"github.com/creditgate/creditgate/envoy"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/money"
	"github.com/creditgate/creditgate/test/envoyemu"
	"github.com/creditgate/creditgate/test/fakeprovider"
)

// The demo's account, key and top-up are the ones docker-compose.yaml's
// seed service uses, so the README's commands work against either.
const (
	demoAccount    = "demo"
	demoKey        = "cgk_demo_0123456789abcdef0123456789abcdef"
	demoAdminToken = "demo-admin-token"
	demoTopUp      = "0.50"
	demoPaymentID  = "demo-seed-1"
	// demoReadyLine is printed once everything listens; tests wait for it.
	demoReadyLine = "Ctrl-C stops the demo."
)

type demoOptions struct {
	proxyAddr, providerAddr, adminAddr, grpcAddr string
	logLevel                                     string
	redisPrefix                                  string
	walkthrough                                  bool
}

// runDemo is `make run`: the whole product on loopback, on a machine with
// only Go. Without REDIS_URL the ledger is an embedded miniredis, which runs
// the ledger's Lua scripts unchanged, so the demo exercises the real code.
func runDemo(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("demo", "five-minute demo: creditgate with an in-memory ledger (or REDIS_URL), an Envoy-compatible proxy running the shipped ext_proc filter, and a fake LLM provider; prints copy-paste commands", e)
	var o demoOptions
	fs.StringVar(&o.proxyAddr, "proxy-addr", "127.0.0.1:10000", "Envoy-compatible proxy (clients call this)")
	fs.StringVar(&o.providerAddr, "provider-addr", "127.0.0.1:8080", "fake LLM provider (the proxy's upstream)")
	fs.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:8081", "creditgate admin API")
	fs.StringVar(&o.grpcAddr, "grpc-addr", "127.0.0.1:0", "creditgate ext_proc gRPC server (port 0: any free port)")
	fs.StringVar(&o.logLevel, "log-level", "error", "creditgate log level on stderr (info logs every refusal)")
	fs.StringVar(&o.redisPrefix, "redis-prefix", DefaultConfig().Redis.Prefix, "key prefix of the demo's ledger in REDIS_URL's Redis (keeps it apart from another ledger there)")
	fs.BoolVar(&o.walkthrough, "walkthrough", false, "run the three steps (charge, balance, 402) with a Go HTTP client, print each result and exit; non-zero if one misbehaves")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	// The admin token is printed and public: nothing may listen beyond this machine.
	for name, a := range map[string]string{"--proxy-addr": o.proxyAddr, "--provider-addr": o.providerAddr,
		"--admin-addr": o.adminAddr, "--grpc-addr": o.grpcAddr} {
		if !isLoopback(a) {
			return usageErr("demo: %s %q must be a loopback address (127.0.0.1:PORT): the demo's admin token is public", name, a)
		}
	}

	cfg := DefaultConfig()
	cfg.GRPCAddr, cfg.AdminAddr, cfg.AdminToken = o.grpcAddr, o.adminAddr, demoAdminToken
	cfg.Identity.Sources = []string{"apikey"}
	// SDKs pointed at http://127.0.0.1:10000/v1 send that as Host; without a
	// provider Host header, the proxy's own address means OpenAI.
	cfg.Providers.Hosts = map[string]string{"127.0.0.1": "openai", "localhost": "openai"}
	cfg.Providers.Passthrough = []string{"/v1/models"}
	cfg.Log.Level, cfg.Log.Format = o.logLevel, "text"
	cfg.Redis.Prefix = o.redisPrefix
	cfg.ShutdownTimeout = Duration{5 * time.Second}

	redisURL := e.getenv("REDIS_URL")
	var mr *miniredis.Miniredis
	if redisURL == "" {
		mr = miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("demo: in-memory ledger: %w", err)
		}
		defer mr.Close()
		cfg.Redis.URL = "redis://" + mr.Addr() + "/0"
	} else {
		cfg.Redis.URL = redisURL
	}
	if err := cfg.Validate(); err != nil {
		return usageErr("demo: %v", err)
	}
	rdb, err := newRedis(cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if redisURL != "" {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := rdb.Ping(pctx).Err()
		cancel()
		if err != nil {
			return fmt.Errorf("demo: REDIS_URL %s: %w (unset REDIS_URL to use the in-memory ledger)", redactURL(redisURL), err)
		}
	}
	printBanner(e.stdout, redisURL, cfg.Redis.Prefix)

	d, err := startDemo(ctx, e, cfg, rdb, o)
	if err != nil {
		return err
	}
	runErr := d.run(ctx, o.walkthrough)
	if err := d.stop(); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// demo is the running set of servers.
type demo struct {
	e                env
	proxyURL         string
	providerURL      string
	adminURL         string
	grpcAddr         string
	proxySrv, upSrv  *http.Server
	proxy            *envoyemu.Proxy
	cancelServe      context.CancelFunc
	serveDone        chan error
	seedLine         string
	balanceAfterSeed money.Micros
}

// startDemo binds every listener (a busy port fails before anything runs),
// starts creditgate's serve with the demo config, seeds the account and
// then opens the proxy.
func startDemo(ctx context.Context, e env, cfg Config, rdb redis.UniversalClient, o demoOptions) (*demo, error) {
	upL, err := net.Listen("tcp", o.providerAddr)
	if err != nil {
		return nil, fmt.Errorf("demo: fake provider: %w (choose another with --provider-addr)", err)
	}
	proxyL, err := net.Listen("tcp", o.proxyAddr)
	if err != nil {
		upL.Close()
		return nil, fmt.Errorf("demo: proxy: %w (choose another with --proxy-addr)", err)
	}
	d := &demo{e: e, proxyURL: "http://" + proxyL.Addr().String(), providerURL: "http://" + upL.Addr().String(),
		serveDone: make(chan error, 1)}
	d.upSrv = &http.Server{Handler: fakeprovider.NewDemo(), ReadHeaderTimeout: 5 * time.Second}
	go d.upSrv.Serve(upL)

	// serve stops when the demo cancels it, after the proxy's in-flight
	// requests (and so their ext_proc streams) are gone.
	serveCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancelServe = cancel
	ready := make(chan [2]string, 1)
	hooks := &serveHooks{ready: func(g, a string) { ready <- [2]string{g, a} }}
	go func() { d.serveDone <- serve(serveCtx, cfg, newLogger(cfg, e.stderr), rdb, hooks) }()
	fail := func(err error) (*demo, error) {
		proxyL.Close()
		_ = d.stop()
		return nil, err
	}
	select {
	case addrs := <-ready:
		d.grpcAddr, d.adminURL = addrs[0], "http://"+addrs[1]
	case err := <-d.serveDone:
		d.serveDone <- err // stop reads it again
		if err == nil {
			err = errors.New("creditgate stopped before it was ready")
		}
		return fail(fmt.Errorf("demo: %w (the admin API address is --admin-addr)", err))
	case <-ctx.Done():
		return fail(ctx.Err())
	}

	var seedOut, seedErr bytes.Buffer
	err = runSeed(ctx, env{stdout: &seedOut, stderr: &seedErr, getenv: func(string) string { return "" }}, []string{
		"--admin-url", d.adminURL, "--token", demoAdminToken, "--account", demoAccount, "--key", demoKey,
		"--amount", demoTopUp, "--payment-id", demoPaymentID, "--wait", "10s"})
	if err != nil {
		return fail(fmt.Errorf("demo: seed: %w %s", err, seedErr.String()))
	}
	d.seedLine = strings.TrimSpace(seedOut.String())
	b, err := d.admin().Balance(ctx, demoAccount)
	if err != nil {
		return fail(fmt.Errorf("demo: seed: %w", err))
	}
	d.balanceAfterSeed = b.Balance

	filter, err := envoy.ShippedExtProcFilter()
	if err != nil {
		return fail(err)
	}
	upURL, _ := url.Parse(d.providerURL)
	d.proxy, err = envoyemu.New(envoyemu.Config{Upstream: upURL, ProcessorTarget: d.grpcAddr, Filter: filter, UpstreamHTTP1: true})
	if err != nil {
		return fail(fmt.Errorf("demo: proxy: %w", err))
	}
	d.proxySrv = &http.Server{Handler: d.proxy, ReadHeaderTimeout: 5 * time.Second}
	go d.proxySrv.Serve(proxyL)
	return d, nil
}

func (d *demo) admin() *admin.Client {
	return &admin.Client{BaseURL: d.adminURL, Token: demoAdminToken, HTTP: demoHTTPClient()}
}

// stop shuts the proxy down first, so no new ext_proc stream opens, then
// creditgate (which drains and settles), then the fake provider.
func (d *demo) stop() error {
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.proxySrv != nil {
		if err := d.proxySrv.Shutdown(sctx); err != nil {
			d.proxySrv.Close()
		}
	}
	if d.proxy != nil {
		d.proxy.Close()
	}
	var err error
	if d.cancelServe != nil {
		d.cancelServe()
		err = <-d.serveDone
	}
	if d.upSrv != nil {
		if e := d.upSrv.Shutdown(sctx); e != nil {
			d.upSrv.Close()
		}
	}
	return err
}

func (d *demo) run(ctx context.Context, walkthrough bool) error {
	w := d.e.stdout
	for _, l := range [][2]string{
		{"proxy (Envoy ext_proc emulator, envoy/" + envoy.BootstrapFile + " filter)", d.proxyURL},
		{"fake LLM provider (no real API is called)", d.providerURL},
		{"creditgate ext_proc gRPC", d.grpcAddr},
		{"creditgate admin API, token " + demoAdminToken, d.adminURL},
	} {
		fmt.Fprintf(w, "  %-56s %s\n", l[0], l[1])
	}
	fmt.Fprintf(w, "\n%s\n  virtual API key: %s\n\n", d.seedLine, demoKey)
	if walkthrough {
		return d.walkthrough(ctx)
	}
	d.printCommands(w)
	fmt.Fprintf(w, "\n%s\n", demoReadyLine)
	<-ctx.Done()
	fmt.Fprintln(w, "\nstopping the demo...")
	return nil
}

func printBanner(w io.Writer, redisURL, prefix string) {
	line := strings.Repeat("=", 78)
	fmt.Fprintln(w, line)
	if redisURL == "" {
		fmt.Fprintln(w, "  creditgate DEMO MODE -- IN-MEMORY LEDGER (embedded miniredis)")
		fmt.Fprintln(w, "  Every balance, key and journal entry is LOST when this process exits.")
		fmt.Fprintln(w, "  Production needs Redis: `creditgate serve` with REDIS_URL (or `docker compose up`).")
	} else {
		fmt.Fprintln(w, "  creditgate DEMO MODE -- ledger in Redis from REDIS_URL")
		fmt.Fprintf(w, "  %s, key prefix %q: the demo account and its journal stay there after exit.\n", redactURL(redisURL), prefix)
	}
	fmt.Fprintln(w, line)
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// demoRequest is one request of the walkthrough. The demo prints it as a
// curl command and the walkthrough sends it itself, so the two cannot drift.
type demoRequest struct {
	method, url string
	host        string   // Host header the client sends, "" for the URL's
	apiKey      string   // "Name: value" carrying the client's API key
	header      []string // other "Name: value" headers
	body        string
	showHeaders bool // curl -i: the x-creditgate-* answers are headers
}

func (r demoRequest) curl() string {
	var b strings.Builder
	b.WriteString("curl -sS")
	if r.showHeaders {
		b.WriteString(" -i")
	}
	b.WriteString(" " + r.url)
	if r.host != "" {
		b.WriteString(" -H " + shellQuote("Host: "+r.host))
	}
	if r.apiKey != "" {
		// Double quotes, as people write them, so "$KEY" can replace it.
		b.WriteString(` -H "` + r.apiKey + `"`)
	}
	for _, h := range r.header {
		b.WriteString(" -H " + shellQuote(h))
	}
	if r.body != "" {
		b.WriteString(" -H 'Content-Type: application/json' -d " + shellQuote(r.body))
	}
	return b.String()
}

// shellQuote quotes for bash.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type demoResponse struct {
	status int
	header http.Header
	body   []byte
}

func (r demoRequest) send(ctx context.Context) (demoResponse, error) {
	method := r.method
	if method == "" {
		method = http.MethodGet
		if r.body != "" {
			method = http.MethodPost
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, r.url, strings.NewReader(r.body))
	if err != nil {
		return demoResponse{}, err
	}
	if r.host != "" {
		req.Host = r.host
	}
	for _, h := range append([]string{r.apiKey}, r.header...) {
		k, v, ok := strings.Cut(h, ":")
		if !ok {
			continue
		}
		req.Header.Set(k, strings.TrimSpace(v))
	}
	if r.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := demoHTTPClient().Do(req)
	if err != nil {
		return demoResponse{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return demoResponse{status: resp.StatusCode, header: resp.Header, body: body}, err
}

// demoHTTPClient never goes through an HTTP proxy from the environment.
func demoHTTPClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil}}
}

const (
	demoPrompt = `{"role":"user","content":"Say hello"}`
	// demoHugeMaxTokens makes gpt-4o's worst case $10 (1M output tokens at
	// $10 per 1M), more than the $0.50 seed, so the reserve refuses it.
	demoHugeMaxTokens = 1000000
)

func (d *demo) chargedCall() demoRequest {
	return demoRequest{url: d.proxyURL + "/v1/chat/completions", host: "api.openai.com", showHeaders: true,
		apiKey: "Authorization: Bearer " + demoKey,
		body:   `{"model":"gpt-4o","max_tokens":100,"messages":[` + demoPrompt + `]}`}
}

func (d *demo) balanceCall() demoRequest {
	return demoRequest{url: d.adminURL + "/v1/accounts/" + demoAccount + "/balance",
		header: []string{"Authorization: Bearer " + demoAdminToken}}
}

func (d *demo) refusedCall() demoRequest {
	return demoRequest{url: d.proxyURL + "/v1/chat/completions", host: "api.openai.com", showHeaders: true,
		apiKey: "Authorization: Bearer " + demoKey,
		body:   fmt.Sprintf(`{"model":"gpt-4o","max_tokens":%d,"messages":[%s]}`, demoHugeMaxTokens, demoPrompt)}
}

func (d *demo) anthropicCall() demoRequest {
	return demoRequest{url: d.proxyURL + "/v1/messages", host: "api.anthropic.com", showHeaders: true,
		apiKey: "x-api-key: " + demoKey, header: []string{"anthropic-version: 2023-06-01"},
		body: `{"model":"claude-sonnet-4-5","max_tokens":100,"messages":[` + demoPrompt + `]}`}
}

func (d *demo) balanceCLI() string {
	s := "CG_ADMIN_TOKEN=" + demoAdminToken + " go run ./cmd/creditgate balance " + demoAccount
	if d.adminURL != "http://"+DefaultConfig().AdminAddr {
		s += " --admin-url " + d.adminURL
	}
	return s
}

func (d *demo) printCommands(w io.Writer) {
	fmt.Fprintf(w, "Try it from another terminal (commands from the repository root):\n\n")
	fmt.Fprintf(w, "# 1. A charged call through the proxy. x-creditgate-cost is what it cost, x-creditgate-balance what is left.\n")
	fmt.Fprintf(w, "%s\n\n", d.chargedCall().curl())
	fmt.Fprintf(w, "# 2. The balance dropped below $%s (admin API, then the CLI):\n", demoTopUp)
	fmt.Fprintf(w, "%s\n", d.balanceCall().curl())
	fmt.Fprintf(w, "%s\n\n", d.balanceCLI())
	fmt.Fprintf(w, "# 3. Credit runs out: max_tokens %d on gpt-4o could cost $10, more than the balance -> 402, nothing sent upstream.\n", demoHugeMaxTokens)
	fmt.Fprintf(w, "%s\n\n", d.refusedCall().curl())
	fmt.Fprintf(w, "# Anthropic, same balance (the key goes in x-api-key, as the Anthropic SDK sends it):\n")
	fmt.Fprintf(w, "%s\n\n", d.anthropicCall().curl())
	fmt.Fprintf(w, "# SDKs need only a base URL and the virtual key (the proxy address itself means OpenAI).\n")
	fmt.Fprintf(w, "# Python (pip install openai):\n")
	fmt.Fprintf(w, "#   from openai import OpenAI\n")
	fmt.Fprintf(w, "#   client = OpenAI(base_url=%q, api_key=%q)\n", d.proxyURL+"/v1", demoKey)
	fmt.Fprintf(w, "#   print(client.chat.completions.create(model=\"gpt-4o\", messages=[{\"role\": \"user\", \"content\": \"Say hello\"}]))\n")
	fmt.Fprintf(w, "# Go (github.com/openai/openai-go/v3):\n")
	fmt.Fprintf(w, "#   client := openai.NewClient(option.WithBaseURL(%q), option.WithAPIKey(%q))\n", d.proxyURL+"/v1", demoKey)
	fmt.Fprintf(w, "#   chat, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{\n")
	fmt.Fprintf(w, "#   \tModel: openai.ChatModelGPT4o, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(\"Say hello\")}})\n")
	fmt.Fprintf(w, "# A 402 reaches either SDK as its usual API error (type insufficient_quota), never retried.\n")
}

// walkthrough runs the three printed steps itself and checks that each
// behaves: a charge, a lower balance, a 402 that moves no money.
func (d *demo) walkthrough(ctx context.Context) error {
	w := d.e.stdout
	var failed []string
	check := func(step string, ok bool, format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		if ok {
			fmt.Fprintf(w, "  ok: %s\n\n", msg)
			return
		}
		fmt.Fprintf(w, "  FAIL: %s\n\n", msg)
		failed = append(failed, step+": "+msg)
	}
	fmt.Fprintf(w, "walkthrough: the three steps `make run` prints, sent by a Go HTTP client\n\n")

	// 1. A charged call.
	fmt.Fprintf(w, "step 1: a charged call\n  $ %s\n", d.chargedCall().curl())
	r, err := d.chargedCall().send(ctx)
	if err != nil {
		return fmt.Errorf("walkthrough: step 1: %w", err)
	}
	cost, costErr := money.ParseUSD(r.header.Get("x-creditgate-cost"))
	fmt.Fprintf(w, "  HTTP %d, x-creditgate-cost: %s, x-creditgate-balance: %s\n", r.status,
		r.header.Get("x-creditgate-cost"), r.header.Get("x-creditgate-balance"))
	if reply := gjson.GetBytes(r.body, "choices.0.message.content").String(); reply != "" {
		fmt.Fprintf(w, "  reply: %q\n", reply)
	} else {
		fmt.Fprintf(w, "  body: %s\n", bytes.TrimSpace(r.body))
	}
	check("step 1", r.status == http.StatusOK && costErr == nil && cost > 0, "charged $%s for the call", cost)

	// 2. The balance dropped.
	fmt.Fprintf(w, "step 2: the balance dropped\n  $ %s\n", d.balanceCall().curl())
	r, err = d.balanceCall().send(ctx)
	if err != nil {
		return fmt.Errorf("walkthrough: step 2: %w", err)
	}
	fmt.Fprintf(w, "  HTTP %d %s\n", r.status, bytes.TrimSpace(r.body))
	var bal admin.Balance
	balErr := json.Unmarshal(r.body, &bal)
	fmt.Fprintf(w, "  $ %s\n  ", d.balanceCLI())
	if err := runBalance(ctx, env{stdout: w, stderr: d.e.stderr, getenv: func(string) string { return "" }},
		[]string{demoAccount, "--admin-url", d.adminURL, "--token", demoAdminToken}); err != nil {
		fmt.Fprintf(w, "balance command: %v\n", err)
	}
	check("step 2", r.status == http.StatusOK && balErr == nil && bal.Balance < d.balanceAfterSeed && bal.Balance == d.balanceAfterSeed-cost,
		"balance $%s -> $%s (down by the $%s charged)", d.balanceAfterSeed, bal.Balance, cost)

	// 3. Credit runs out.
	fmt.Fprintf(w, "step 3: credit runs out\n  $ %s\n", d.refusedCall().curl())
	r, err = d.refusedCall().send(ctx)
	if err != nil {
		return fmt.Errorf("walkthrough: step 3: %w", err)
	}
	fmt.Fprintf(w, "  HTTP %d\n  %s\n", r.status, bytes.TrimSpace(r.body))
	after, err := d.admin().Balance(ctx, demoAccount)
	if err != nil {
		return fmt.Errorf("walkthrough: step 3: %w", err)
	}
	errType := gjson.GetBytes(r.body, "error.type").String()
	check("step 3", r.status == http.StatusPaymentRequired && errType == "insufficient_quota" && after.Balance == bal.Balance,
		"refused with HTTP %d, OpenAI-shaped error type %q; balance still $%s", r.status, errType, after.Balance)

	if len(failed) > 0 {
		return fmt.Errorf("walkthrough: %d of 3 steps misbehaved:\n  %s", len(failed), strings.Join(failed, "\n  "))
	}
	fmt.Fprintln(w, "walkthrough: all 3 steps behaved as described")
	return nil
}

// runDevProvider serves the fake provider for docker compose, whose health
// check needs GET /healthz.
func runDevProvider(ctx context.Context, e env, args []string) error {
	fs := newFlagSet("dev-provider", "run the fake LLM provider used by the demos: answers OpenAI, Anthropic and Gemini requests like the real APIs, with usage derived from the request; no real API is called", e)
	addr := fs.String("addr", ":8080", "listen address")
	if _, err := parseArgs(fs, args, 0, ""); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("dev-provider: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.Handle("/", fakeprovider.NewDemo())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	fmt.Fprintf(e.stdout, "fake LLM provider listening on %s (no real API is called)\n", l.Addr())
	select {
	case err := <-errc:
		return fmt.Errorf("dev-provider: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return nil
}
