package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/creditgate/creditgate/extproc"
	"github.com/creditgate/creditgate/extproc/provider"
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
)

// Duration reads "10s"-style strings in YAML.
type Duration struct{ time.Duration }

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q: %w", b, err)
	}
	d.Duration = v
	return nil
}

// Config is creditgate's whole configuration: one YAML file, then
// environment overrides, then flags. Every field has a default; Validate
// lists every error at once.
type Config struct {
	GRPCAddr  string `json:"grpc_addr"`  // ext_proc gRPC listener
	AdminAddr string `json:"admin_addr"` // admin API, metrics, health (loopback by default)
	// AdminToken guards the admin API (env CG_ADMIN_TOKEN).
	AdminToken string `json:"admin_token"`

	Redis struct {
		URL         string   `json:"url"`           // redis://host:port/db (env REDIS_URL)
		ClusterAddr []string `json:"cluster_addrs"` // set for Redis Cluster instead of url
		Prefix      string   `json:"prefix"`
		Timeout     Duration `json:"timeout"`
	} `json:"redis"`

	Ledger struct {
		FeeBasisPoints int64        `json:"fee_basis_points"`
		FeeMin         money.Micros `json:"fee_min"`
		HoldTTL        Duration     `json:"hold_ttl"`
		SweepInterval  Duration     `json:"sweep_interval"`
		// SweepLease is how long a sweeper claims an account; an idle
		// account is revisited once per lease, so a hold expires at most
		// sweep_interval + sweep_lease after its TTL.
		SweepLease Duration `json:"sweep_lease"`
		// CallTimeout bounds each ledger call Envoy waits on; keep it below
		// the ext_proc filter's message_timeout.
		CallTimeout Duration `json:"call_timeout"`
		Retention   Duration `json:"retention"`
		// SpoolPath keeps settlements that could not reach Redis until they
		// replay (env CREDITGATE_SPOOL_PATH); empty disables the spool.
		SpoolPath string `json:"spool_path"`
	} `json:"ledger"`

	Identity extproc.Identity `json:"identity"`
	// KeyCacheTTL keeps virtual-key lookups in memory; a revoked key works
	// for at most this long (0s disables the cache).
	KeyCacheTTL Duration `json:"key_cache_ttl"`

	Providers struct {
		// Hosts adds host→provider entries (self-hosted or test upstreams).
		Hosts       map[string]string `json:"hosts"`
		Passthrough []string          `json:"passthrough"`
	} `json:"providers"`

	// FailOpen lists the routes that go on without a hold while Redis is
	// unreachable, each account's spending that way bounded by CreditLine
	// per sidecar (design-notes §6). No routes: fail closed (503) everywhere.
	FailOpen struct {
		Routes     []string     `json:"routes"`
		CreditLine money.Micros `json:"credit_line"`
	} `json:"fail_open"`

	Prices struct {
		// Catalog is a price catalog file; empty uses the embedded default.
		Catalog        string   `json:"catalog"`
		ReloadInterval Duration `json:"reload_interval"`
	} `json:"prices"`

	Log struct {
		Level  string `json:"level"`  // debug, info, warn, error
		Format string `json:"format"` // json or text
	} `json:"log"`

	ShutdownTimeout Duration `json:"shutdown_timeout"`
}

// DefaultConfig is the configuration with every default filled in.
func DefaultConfig() Config {
	var c Config
	c.GRPCAddr = ":9000"
	c.AdminAddr = "127.0.0.1:8081"
	c.Redis.URL = "redis://127.0.0.1:6379/0"
	c.Redis.Prefix = "cg"
	c.Redis.Timeout = Duration{500 * time.Millisecond}
	c.Ledger.FeeBasisPoints = 550
	c.Ledger.FeeMin = 800_000
	c.Ledger.HoldTTL = Duration{10 * time.Minute}
	c.Ledger.SweepInterval = Duration{5 * time.Second}
	c.Ledger.SweepLease = Duration{15 * time.Second}
	c.Ledger.CallTimeout = Duration{1500 * time.Millisecond}
	c.Ledger.Retention = Duration{7 * 24 * time.Hour}
	c.Identity.Sources = []string{"apikey"}
	c.KeyCacheTTL = Duration{10 * time.Second}
	c.Prices.ReloadInterval = Duration{10 * time.Second}
	c.Log.Level = "info"
	c.Log.Format = "json"
	c.ShutdownTimeout = Duration{20 * time.Second}
	return c
}

// LoadConfig reads the YAML file (if any) over the defaults, then applies
// environment overrides. Unknown YAML fields are errors: a typo must not
// silently fall back to a default.
func LoadConfig(path string, getenv func(string) string) (Config, error) {
	c := DefaultConfig()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		if err := yaml.UnmarshalStrict(b, &c); err != nil {
			return c, fmt.Errorf("config %s: %w", path, err)
		}
	}
	var errs []error
	str := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	str("CREDITGATE_GRPC_ADDR", &c.GRPCAddr)
	str("CREDITGATE_ADMIN_ADDR", &c.AdminAddr)
	str("CG_ADMIN_TOKEN", &c.AdminToken)
	str("REDIS_URL", &c.Redis.URL)
	str("CREDITGATE_REDIS_PREFIX", &c.Redis.Prefix)
	str("CREDITGATE_PRICES_CATALOG", &c.Prices.Catalog)
	str("CREDITGATE_LOG_LEVEL", &c.Log.Level)
	str("CREDITGATE_SPOOL_PATH", &c.Ledger.SpoolPath)
	str("CREDITGATE_LOG_FORMAT", &c.Log.Format)
	if v := getenv("CREDITGATE_IDENTITY_SOURCES"); v != "" {
		c.Identity.Sources = nil
		for _, src := range strings.Split(v, ",") {
			c.Identity.Sources = append(c.Identity.Sources, strings.TrimSpace(src))
		}
	}
	if v := getenv("CREDITGATE_FEE_BASIS_POINTS"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("CREDITGATE_FEE_BASIS_POINTS: %w", err))
		}
		c.Ledger.FeeBasisPoints = n
	}
	if v := getenv("CREDITGATE_FEE_MIN"); v != "" {
		m, err := money.ParseUSD(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("CREDITGATE_FEE_MIN: %w", err))
		}
		c.Ledger.FeeMin = m
	}
	return c, errors.Join(errs...)
}

// maxExpiryDelay bounds how late after its TTL a hold may be expired.
const maxExpiryDelay = 30 * time.Second

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	addr := func(name, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %w", name, v, err))
		}
	}
	addr("grpc_addr", c.GRPCAddr)
	addr("admin_addr", c.AdminAddr)
	if len(c.Redis.ClusterAddr) == 0 {
		if _, err := url.Parse(c.Redis.URL); err != nil || !strings.HasPrefix(c.Redis.URL, "redis") {
			errs = append(errs, fmt.Errorf("redis.url %q is not a redis:// or rediss:// URL", c.Redis.URL))
		}
	}
	if c.Redis.Prefix == "" || strings.ContainsAny(c.Redis.Prefix, "{} ") {
		errs = append(errs, fmt.Errorf("redis.prefix %q must be non-empty without braces or spaces", c.Redis.Prefix))
	}
	if err := (ledger.FeePolicy{BasisPoints: c.Ledger.FeeBasisPoints, Min: c.Ledger.FeeMin}).Validate(); err != nil {
		errs = append(errs, err)
	}
	pos := func(name string, d Duration) {
		if d.Duration <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, got %s", name, d.Duration))
		}
	}
	pos("redis.timeout", c.Redis.Timeout)
	pos("ledger.hold_ttl", c.Ledger.HoldTTL)
	pos("ledger.sweep_interval", c.Ledger.SweepInterval)
	pos("ledger.sweep_lease", c.Ledger.SweepLease)
	pos("ledger.call_timeout", c.Ledger.CallTimeout)
	pos("ledger.retention", c.Ledger.Retention)
	pos("prices.reload_interval", c.Prices.ReloadInterval)
	pos("shutdown_timeout", c.ShutdownTimeout)
	if c.KeyCacheTTL.Duration < 0 {
		errs = append(errs, fmt.Errorf("key_cache_ttl must not be negative, got %s", c.KeyCacheTTL.Duration))
	}
	// The product promises a hold is expired within its TTL + 30 s.
	if late := c.Ledger.SweepInterval.Duration + c.Ledger.SweepLease.Duration; late > maxExpiryDelay {
		errs = append(errs, fmt.Errorf("ledger.sweep_interval + ledger.sweep_lease is %s, more than %s: a hold must expire within hold_ttl + %s",
			late, maxExpiryDelay, maxExpiryDelay))
	}
	if c.Ledger.Retention.Duration < c.Ledger.HoldTTL.Duration {
		errs = append(errs, errors.New("ledger.retention must be at least ledger.hold_ttl, or late retries could not replay"))
	}
	if err := c.Identity.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.FailOpen.CreditLine < 0 {
		errs = append(errs, fmt.Errorf("fail_open.credit_line %s must not be negative", c.FailOpen.CreditLine))
	}
	for i, r := range c.FailOpen.Routes {
		if strings.TrimSpace(r) == "" {
			errs = append(errs, fmt.Errorf("fail_open.routes[%d] is empty: it would match every request", i))
		}
	}
	// extproc.NewServer checks this too, but only after the rest passed.
	if err := (&provider.Detector{Hosts: c.Providers.Hosts}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("providers.hosts: %w", err))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q: want debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("log.format %q: want json or text", c.Log.Format))
	}
	return errors.Join(errs...)
}
