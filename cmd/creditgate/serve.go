package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/admin"
	"github.com/creditgate/creditgate/ledger/spool"
)

func runServe(ctx context.Context, e env, args []string) error {
	cfg, err := serveConfig(e, args)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := newLogger(cfg, e.stderr)
	rdb, err := newRedis(cfg)
	if err != nil {
		return err
	}
	defer rdb.Close()
	return serve(ctx, cfg, log, rdb, nil)
}

// serveConfig parses serve's flags and returns the configuration they
// select (file, then environment, then flags), not yet validated.
func serveConfig(e env, args []string) (Config, error) {
	fs := newFlagSet("serve", "run the ext_proc server, admin API, metrics and hold sweeper", e)
	cfgPath := fs.String("config", e.getenv("CREDITGATE_CONFIG"), "YAML config file (env CREDITGATE_CONFIG)")
	grpcAddr := fs.String("grpc-addr", "", "override grpc_addr")
	adminAddr := fs.String("admin-addr", "", "override admin_addr")
	redisURL := fs.String("redis-url", "", "override redis.url")
	logLevel := fs.String("log-level", "", "override log.level")
	if err := parseFlags(fs, args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return Config{}, usageErr("serve: unexpected argument %q", fs.Arg(0))
	}
	cfg, err := LoadConfig(*cfgPath, e.getenv)
	if err != nil {
		return cfg, err
	}
	for dst, v := range map[*string]string{&cfg.GRPCAddr: *grpcAddr, &cfg.AdminAddr: *adminAddr, &cfg.Redis.URL: *redisURL, &cfg.Log.Level: *logLevel} {
		if v != "" {
			*dst = v
		}
	}
	return cfg, nil
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.Log.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func newRedis(cfg Config) (redis.UniversalClient, error) {
	to := cfg.Redis.Timeout.Duration
	if len(cfg.Redis.ClusterAddr) > 0 {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: cfg.Redis.ClusterAddr, ReadTimeout: to, WriteTimeout: to, DialTimeout: to}), nil
	}
	opt, err := redis.ParseURL(cfg.Redis.URL)
	if err != nil {
		return nil, fmt.Errorf("redis.url: %w", err)
	}
	opt.ReadTimeout, opt.WriteTimeout, opt.DialTimeout = to, to, to
	return redis.NewClient(opt), nil
}

// serveHooks lets the demo and tests learn the bound addresses.
type serveHooks struct {
	ready func(grpcAddr, adminAddr string)
	// draining runs at shutdown right after readiness and gRPC health
	// flipped to NOT_SERVING, while both servers still answer.
	draining func()
}

// serve wires config → ledger → pricing → servers and runs until ctx ends,
// then shuts down in order: readiness and gRPC health flip to NOT_SERVING
// first (so Envoy and Kubernetes stop sending new requests), in-flight
// streams drain within shutdown_timeout, their settlements finish, and only
// then Redis closes.
func serve(ctx context.Context, cfg Config, log *slog.Logger, rdb redis.UniversalClient, hooks *serveHooks) error {
	clock := time.Now
	led, err := ledger.New(rdb, ledger.Options{
		Prefix: cfg.Redis.Prefix, Clock: clock, Retention: cfg.Ledger.Retention.Duration, SweepLease: cfg.Ledger.SweepLease.Duration,
		Fee: ledger.FeePolicy{BasisPoints: cfg.Ledger.FeeBasisPoints, Min: cfg.Ledger.FeeMin},
	})
	if err != nil {
		return err
	}
	if err := led.Load(ctx); err != nil {
		// Not fatal: /readyz reports it, and scripts load on first use.
		log.Warn("could not preload ledger scripts; will retry on first use", "err", err)
	}
	prices, err := newLiveCatalog(cfg.Prices.Catalog, log, clock)
	if err != nil {
		return err
	}
	var sp *spool.Spool
	if cfg.Ledger.SpoolPath != "" {
		if sp, err = spool.Open(cfg.Ledger.SpoolPath); err != nil {
			return err
		}
		if sp.Len() > 0 {
			log.Warn("settlements waiting in the spool from a previous run", "count", sp.Len())
		}
	} else {
		log.Warn("ledger.spool_path is not set: a settlement that cannot reach Redis waits only for its hold to expire")
	}
	reg := prometheus.NewRegistry()
	metrics := newMetrics(reg, prices)
	epOpt := extproc.Options{
		Ledger: led, Prices: prices, Identity: cfg.Identity,
		Detector:    &provider.Detector{Hosts: cfg.Providers.Hosts},
		Passthrough: cfg.Providers.Passthrough, HoldTTL: cfg.Ledger.HoldTTL.Duration,
		Logger: log, Clock: clock, Observer: metrics, KeyCacheTTL: cfg.KeyCacheTTL.Duration,
		LedgerTimeout: cfg.Ledger.CallTimeout.Duration,
		FailOpen:      extproc.FailOpen{Routes: cfg.FailOpen.Routes, CreditLine: cfg.FailOpen.CreditLine},
	}
	if len(cfg.FailOpen.Routes) > 0 && sp == nil {
		log.Warn("fail_open.routes is set without ledger.spool_path: a fail-open request whose charge cannot reach Redis is not charged")
	}
	if epOpt.KeyCacheTTL == 0 {
		epOpt.KeyCacheTTL = -1 // 0s in the config means off
	}
	if sp != nil {
		epOpt.Spool = sp
	}
	ep, err := extproc.NewServer(epOpt)
	if err != nil {
		return err
	}
	adminHandler, err := admin.New(metrics.wrapLedger(led), admin.Options{Token: cfg.AdminToken, Insecure: cfg.AdminToken == "" && isLoopback(cfg.AdminAddr) && hooks != nil, Logger: log})
	if err != nil {
		return err
	}

	gl, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listener: %w", err)
	}
	al, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		gl.Close()
		return fmt.Errorf("admin listener: %w", err)
	}

	// Envoy sends a BUFFERED request body as one message; the shipped configs
	// allow 32 MiB bodies, above gRPC's 4 MiB default.
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(maxGRPCMessage), grpc.MaxSendMsgSize(maxGRPCMessage))
	extprocv3.RegisterExternalProcessorServer(gs, ep)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)

	var draining atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/v1/", adminHandler)
	mux.Handle("GET /metrics", metrics.handler(reg))
	// Both endpoints fail while the ledger path fails (a sidecar that cannot
	// reach Redis refuses paid traffic, so it should get none) and flip to
	// 503 on SIGTERM before draining. /readyz also names the catalog version.
	// With fail-open routes configured, a Redis outage degrades the sidecar
	// but does not make it unready: Redis is shared by every sidecar, so
	// pulling all of them out of rotation would also stop the routes that
	// are meant to keep working.
	failOpen := len(cfg.FailOpen.Routes) > 0
	ledgerOK := func(r *http.Request) error {
		if draining.Load() {
			return errors.New("draining")
		}
		pctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := led.Ping(pctx); err != nil && !failOpen {
			return fmt.Errorf("ledger unavailable: %w", err)
		}
		return nil
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := ledgerOK(r); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ledgerOK(r); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok catalog=%s\n", prices.Version())
	})
	hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	bg, stopBG := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBG()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(6)
	go func() {
		// gRPC health follows the ledger path too, so Envoy's active health
		// checks on the creditgate cluster skip a sidecar that lost Redis.
		defer wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-bg.Done():
				return
			case <-t.C:
			}
			pctx, cancel := context.WithTimeout(bg, time.Second)
			err := led.Ping(pctx)
			cancel()
			if draining.Load() {
				continue
			}
			st := healthpb.HealthCheckResponse_SERVING
			if err != nil && !failOpen {
				st = healthpb.HealthCheckResponse_NOT_SERVING
			}
			hs.SetServingStatus("", st)
			hs.SetServingStatus(extprocv3.ExternalProcessor_ServiceDesc.ServiceName, st)
		}
	}()
	go func() {
		defer wg.Done()
		if sp == nil {
			return
		}
		sp.Run(bg, led, time.Second, func(err error) {
			metrics.LedgerError("spool_replay")
			log.Warn("spool replay waiting for the ledger", "err", err)
		}, func(item spool.Settlement, err error) {
			metrics.LedgerError("spool_replay")
			log.Error("spooled settlement refused by the ledger", "err", err)
		})
	}()
	go func() { defer wg.Done(); errc <- gs.Serve(gl) }()
	go func() {
		defer wg.Done()
		if err := hsrv.Serve(al); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	go func() {
		defer wg.Done()
		led.RunSweeper(bg, cfg.Ledger.SweepInterval.Duration, func(err error) {
			metrics.LedgerError("sweep")
			log.Error("hold sweep failed", "err", err)
		})
	}()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() { defer wg.Done(); prices.watch(bg, cfg.Prices.ReloadInterval.Duration, hup) }()

	log.Info("creditgate serving", "grpc", gl.Addr().String(), "admin", al.Addr().String(), "catalog", prices.Version())
	if hooks != nil && hooks.ready != nil {
		hooks.ready(gl.Addr().String(), al.Addr().String())
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}

	log.Info("shutting down: health NOT_SERVING, draining streams")
	draining.Store(true)
	hs.Shutdown()
	if hooks != nil && hooks.draining != nil {
		hooks.draining()
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(cfg.ShutdownTimeout.Duration):
		log.Warn("shutdown timeout: cancelling remaining streams (they settle on what they saw)")
		gs.Stop()
		<-stopped
	}
	dctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Duration)
	if err := ep.Drain(dctx); err != nil {
		log.Error("settlements did not finish", "err", err)
	}
	cancel()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = hsrv.Shutdown(sctx)
	cancel()
	stopBG()
	wg.Wait()
	log.Info("creditgate stopped")
	return runErr
}

const maxGRPCMessage = 48 << 20

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}
