package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/creditgate/creditgate/envoy"
)

var update = flag.Bool("update", false, "rewrite golden files")

// mapEnv is a getenv over a fixed map.
func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaultConfigValidates(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig does not validate:\n%v", err)
	}
}

// TestLoadConfig loads testdata/config/*.yaml with environment overrides
// and compares the result with its golden JSON.
func TestLoadConfig(t *testing.T) {
	allEnv := map[string]string{
		"CREDITGATE_GRPC_ADDR":        "127.0.0.1:7000",
		"CREDITGATE_ADMIN_ADDR":       "127.0.0.1:7081",
		"CG_ADMIN_TOKEN":              "env-token",
		"REDIS_URL":                   "rediss://secret@redis.env:6379/3",
		"CREDITGATE_REDIS_PREFIX":     "cgenv",
		"CREDITGATE_PRICES_CATALOG":   "/env/prices.yaml",
		"CREDITGATE_LOG_LEVEL":        "warn",
		"CREDITGATE_LOG_FORMAT":       "json",
		"CREDITGATE_SPOOL_PATH":       "/env/spool.jsonl",
		"CREDITGATE_IDENTITY_SOURCES": "apikey, principal",
		"CREDITGATE_FEE_BASIS_POINTS": "125",
		"CREDITGATE_FEE_MIN":          "0.25",
	}
	tests := []struct {
		name    string
		file    string // under testdata/config; "" = no file
		env     map[string]string
		golden  string // testdata/config/<golden>.golden.json
		wantErr string
	}{
		{name: "no file is the defaults", golden: "defaults"},
		{name: "every key from the file", file: "full.yaml", golden: "full"},
		{name: "some keys from the file", file: "partial.yaml", golden: "partial"},
		{name: "environment over the file", file: "full.yaml", env: allEnv, golden: "env-over-file"},
		{name: "environment over defaults", env: map[string]string{"REDIS_URL": "redis://10.0.0.5:6379/1", "CG_ADMIN_TOKEN": "t0k"}, golden: "env-over-defaults"},
		{name: "unknown field", file: "unknown-field.yaml", wantErr: `unknown field "hold_tll"`},
		{name: "bad duration", file: "bad-duration.yaml", wantErr: `bad duration "5 seconds"`},
		{name: "seventh decimal in fee_min", file: "bad-money.yaml", wantErr: "at most 6"},
		{name: "missing file", file: "does-not-exist.yaml", wantErr: "no such file"},
		{name: "bad basis points in env", env: map[string]string{"CREDITGATE_FEE_BASIS_POINTS": "5.5"}, wantErr: "CREDITGATE_FEE_BASIS_POINTS"},
		{name: "bad fee min in env", env: map[string]string{"CREDITGATE_FEE_MIN": "$1"}, wantErr: "CREDITGATE_FEE_MIN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = filepath.Join("testdata", "config", tc.file)
			}
			cfg, err := LoadConfig(path, mapEnv(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("loaded config does not validate:\n%v", err)
			}
			got, err := json.MarshalIndent(cfg, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			gp := filepath.Join("testdata", "config", tc.golden+".golden.json")
			if *update {
				if err := os.WriteFile(gp, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(gp)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("loaded config differs from %s:\n%s", gp, got)
			}
		})
	}
}

// countErrs counts the problems in an errors.Join result.
func countErrs(err error) int {
	if err == nil {
		return 0
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return len(j.Unwrap())
	}
	return 1
}

func TestValidateListsEveryError(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   []string // one substring per expected problem
	}{
		{"valid", func(c *Config) {}, nil},
		{"five problems at once", func(c *Config) {
			c.GRPCAddr = "9000"
			c.Redis.Prefix = ""
			c.Ledger.SweepInterval = Duration{}
			c.Log.Level = "loud"
			c.Log.Format = "xml"
		}, []string{`grpc_addr "9000"`, "redis.prefix", "ledger.sweep_interval must be positive", `log.level "loud"`, `log.format "xml"`}},
		{"bad admin addr", func(c *Config) { c.AdminAddr = "localhost" }, []string{`admin_addr "localhost"`}},
		{"not a redis url", func(c *Config) { c.Redis.URL = "http://x:6379" }, []string{"redis.url"}},
		{"cluster addrs replace the url", func(c *Config) { c.Redis.URL = ""; c.Redis.ClusterAddr = []string{"10.0.0.1:6379"} }, nil},
		{"braces in prefix", func(c *Config) { c.Redis.Prefix = "cg{x}" }, []string{"redis.prefix"}},
		{"fee out of range", func(c *Config) { c.Ledger.FeeBasisPoints = 10001 }, []string{"basis_points 10001"}},
		{"negative fee min", func(c *Config) { c.Ledger.FeeMin = -1 }, []string{"fee min"}},
		{"every duration zero", func(c *Config) {
			c.Redis.Timeout, c.Ledger.HoldTTL, c.Ledger.SweepInterval = Duration{}, Duration{}, Duration{}
			c.Ledger.SweepLease, c.Ledger.Retention, c.Prices.ReloadInterval, c.ShutdownTimeout = Duration{}, Duration{}, Duration{}, Duration{}
		}, []string{"redis.timeout", "ledger.hold_ttl", "ledger.sweep_interval", "ledger.sweep_lease", "ledger.retention", "prices.reload_interval", "shutdown_timeout"}},
		// A hold must be expired within its TTL + 30 s: the sweeper looks at an
		// idle account once per lease, and sweeps once per interval.
		{"sweep interval + lease exactly 30s", func(c *Config) {
			c.Ledger.SweepInterval, c.Ledger.SweepLease = Duration{10 * time.Second}, Duration{20 * time.Second}
		}, nil},
		{"sweep interval + lease over 30s", func(c *Config) {
			c.Ledger.SweepInterval, c.Ledger.SweepLease = Duration{10 * time.Second}, Duration{20*time.Second + time.Millisecond}
		}, []string{"ledger.sweep_interval + ledger.sweep_lease is 30.001s, more than 30s"}},
		{"long sweep interval with the default lease", func(c *Config) { c.Ledger.SweepInterval = Duration{16 * time.Second} },
			[]string{"ledger.sweep_interval + ledger.sweep_lease is 31s"}},
		{"negative sweep lease", func(c *Config) { c.Ledger.SweepLease = Duration{-time.Second} }, []string{"ledger.sweep_lease must be positive"}},
		{"retention shorter than hold ttl", func(c *Config) { c.Ledger.Retention = Duration{time.Minute} }, []string{"ledger.retention must be at least"}},
		{"negative key cache ttl", func(c *Config) { c.KeyCacheTTL = Duration{-time.Second} }, []string{"key_cache_ttl"}},
		{"no identity source", func(c *Config) { c.Identity.Sources = nil }, []string{"at least one source"}},
		{"unknown identity source", func(c *Config) { c.Identity.Sources = []string{"cookie"} }, []string{`unknown source "cookie"`}},
		{"fail open", func(c *Config) {
			c.FailOpen.Routes, c.FailOpen.CreditLine = []string{"/v1/chat/completions", "api.openai.com/v1/"}, 5_000_000
		}, nil},
		{"fail open with a negative credit line and an empty route", func(c *Config) {
			c.FailOpen.Routes, c.FailOpen.CreditLine = []string{"/v1/", ""}, -1
		}, []string{"fail_open.credit_line -0.000001 must not be negative", "fail_open.routes[1] is empty"}},
		{"provider host with port", func(c *Config) { c.Providers.Hosts = map[string]string{"llm.internal:8080": "openai"} }, []string{"providers.hosts"}},
		{"provider host to unknown provider", func(c *Config) { c.Providers.Hosts = map[string]string{"llm.internal": "acme"} }, []string{"providers.hosts"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mutate(&c)
			err := c.Validate()
			if n := countErrs(err); n != len(tc.want) {
				t.Fatalf("%d problems reported, want %d:\n%v", n, len(tc.want), err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

// composeEnv is the environment docker-compose.yaml gives a service.
func composeEnv(t *testing.T, service string) map[string]string {
	t.Helper()
	cf := readCompose(t)
	s, ok := cf.Services[service]
	if !ok {
		t.Fatalf("docker-compose.yaml has no %s service", service)
	}
	return s.Environment
}

// TestShippedConfigsValidate loads the configurations we ship the way the
// container loads them.
func TestShippedConfigsValidate(t *testing.T) {
	istio := istioConfigMapConfig(t)
	istioPath := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(istioPath, []byte(istio), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		env  map[string]string
	}{
		{"docker compose", filepath.Join("..", "..", "envoy", "compose", "creditgate.yaml"), composeEnv(t, "creditgate")},
		// The Deployment gives CG_ADMIN_TOKEN from a Secret.
		{"istio configmap", istioPath, map[string]string{"CG_ADMIN_TOKEN": "from-secret"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadConfig(tc.path, mapEnv(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("shipped config does not validate:\n%v", err)
			}
			// Anything but loopback needs a token, or serve refuses to
			// start the admin API.
			if !isLoopback(cfg.AdminAddr) && cfg.AdminToken == "" {
				t.Errorf("admin_addr %s is not loopback and no admin token is set", cfg.AdminAddr)
			}
			if cfg.Ledger.SpoolPath == "" {
				t.Errorf("no spool: settlements that cannot reach Redis would be lost")
			}
		})
	}
}

// istioConfigMapConfig extracts config.yaml from the creditgate ConfigMap
// in envoy/istio/creditgate.yaml and checks the Deployment really reads it.
func istioConfigMapConfig(t *testing.T) string {
	t.Helper()
	doc, err := envoy.ReadFile(envoy.IstioCreditgate)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := envoy.ParseObjects(doc)
	if err != nil {
		t.Fatal(err)
	}
	cm, ok := envoy.FindObject(objs, "ConfigMap", "creditgate", "creditgate")
	if !ok {
		t.Fatal("no ConfigMap creditgate/creditgate")
	}
	data, _ := cm.Doc["data"].(map[string]any)
	cfg, _ := data["config.yaml"].(string)
	if cfg == "" {
		t.Fatal("ConfigMap has no config.yaml")
	}

	dep, ok := envoy.FindObject(objs, "Deployment", "creditgate", "creditgate")
	if !ok {
		t.Fatal("no Deployment creditgate/creditgate")
	}
	var d struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Name  string   `json:"name"`
						Args  []string `json:"args"`
						Ports []struct {
							Name          string `json:"name"`
							ContainerPort int    `json:"containerPort"`
						} `json:"ports"`
						VolumeMounts []struct {
							Name      string `json:"name"`
							MountPath string `json:"mountPath"`
						} `json:"volumeMounts"`
					} `json:"containers"`
					Volumes []struct {
						Name      string `json:"name"`
						ConfigMap *struct {
							Name string `json:"name"`
						} `json:"configMap"`
					} `json:"volumes"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	raw, _ := json.Marshal(dep.Doc)
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	ps := d.Spec.Template.Spec
	if len(ps.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(ps.Containers))
	}
	c := ps.Containers[0]
	// The args parse with serve's own flags, and -config names the file
	// the ConfigMap volume provides.
	var stdout bytes.Buffer
	e := env{stdout: &stdout, stderr: &stdout, getenv: mapEnv(nil)}
	if len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Fatalf("container args %q do not run serve", c.Args)
	}
	if _, err := serveConfig(e, append(append([]string{}, c.Args[1:]...), "--help")); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("serve args %q do not parse: %v", c.Args[1:], err)
	}
	cfgPath := ""
	for i, a := range c.Args {
		if (a == "-config" || a == "--config") && i+1 < len(c.Args) {
			cfgPath = c.Args[i+1]
		}
	}
	cmVolume := ""
	for _, v := range ps.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == "creditgate" {
			cmVolume = v.Name
		}
	}
	provided := ""
	for _, m := range c.VolumeMounts {
		if m.Name == cmVolume {
			provided = m.MountPath + "/config.yaml"
		}
	}
	if cfgPath == "" || cfgPath != provided {
		t.Errorf("serve reads %q but the ConfigMap provides %q", cfgPath, provided)
	}

	// Probes and the Service name ports by name: their numbers must be the
	// ones serve listens on, and the spool must be on a mounted volume
	// (the root file system is read-only).
	loaded, err := loadConfigText(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if got, want := ports["grpc"], portOf(t, loaded.GRPCAddr); got != want {
		t.Errorf("containerPort grpc = %d, grpc_addr port %d", got, want)
	}
	if got, want := ports["http-admin"], portOf(t, loaded.AdminAddr); got != want {
		t.Errorf("containerPort http-admin = %d, admin_addr port %d", got, want)
	}
	onVolume := false
	for _, m := range c.VolumeMounts {
		if m.Name != cmVolume && strings.HasPrefix(loaded.Ledger.SpoolPath, strings.TrimSuffix(m.MountPath, "/")+"/") {
			onVolume = true
		}
	}
	if !onVolume {
		t.Errorf("spool_path %q is not on a writable volume mount", loaded.Ledger.SpoolPath)
	}
	return cfg
}

// loadConfigText loads a config given as text, with no environment.
func loadConfigText(t *testing.T, text string) (Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return LoadConfig(p, mapEnv(nil))
}

// configKeys flattens a Config into dotted YAML keys and the JSON (which is
// YAML) rendering of each value.
func configKeys(t *testing.T, c Config) map[string]string {
	t.Helper()
	out := map[string]string{}
	durationType := reflect.TypeOf(Duration{})
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				t.Fatalf("Config field %s%s has no json tag", prefix, f.Name)
			}
			fv := v.Field(i)
			if f.Type.Kind() == reflect.Struct && f.Type != durationType {
				walk(prefix+name+".", fv)
				continue
			}
			b, err := json.Marshal(fv.Interface())
			if err != nil {
				t.Fatal(err)
			}
			out[prefix+name] = string(b)
		}
	}
	walk("", reflect.ValueOf(c))
	return out
}

// changedKeys lists the keys whose values differ between a and b.
func changedKeys(a, b map[string]string) []string {
	var ks []string
	for k, v := range a {
		if b[k] != v {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return ks
}

// envOverrides discovers, by running LoadConfig, which environment
// variable overrides which key.
func envOverrides(t *testing.T) map[string]string {
	t.Helper()
	var asked []string
	if _, err := LoadConfig("", func(k string) string { asked = append(asked, k); return "" }); err != nil {
		t.Fatal(err)
	}
	base := configKeys(t, DefaultConfig())
	out := map[string]string{}
	for _, name := range asked {
		var keys []string
		for _, probe := range []string{"1", "x"} {
			c, err := LoadConfig("", mapEnv(map[string]string{name: probe}))
			if err != nil {
				continue
			}
			if keys = changedKeys(configKeys(t, c), base); len(keys) > 0 {
				break
			}
		}
		if len(keys) != 1 {
			t.Fatalf("env %s changes keys %q, want exactly one", name, keys)
		}
		if prev, dup := out[keys[0]]; dup {
			t.Fatalf("both %s and %s override %s", prev, name, keys[0])
		}
		out[keys[0]] = name
	}
	return out
}

var flagLineRE = regexp.MustCompile(`(?m)^\s+-([a-z][a-z0-9-]*)`)

// serveFlagOverrides discovers serve's flags from its --help and which key
// each one overrides.
func serveFlagOverrides(t *testing.T) map[string]string {
	t.Helper()
	var help bytes.Buffer
	e := env{stdout: &help, stderr: &help, getenv: mapEnv(nil)}
	if _, err := serveConfig(e, []string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("serve --help: %v", err)
	}
	base, err := serveConfig(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	baseKeys := configKeys(t, base)
	out := map[string]string{}
	for _, m := range flagLineRE.FindAllStringSubmatch(help.String(), -1) {
		name := m[1]
		if name == "config" {
			continue // names the file, overrides no key
		}
		c, err := serveConfig(e, []string{"--" + name, "probe-value"})
		if err != nil {
			t.Fatalf("--%s: %v", name, err)
		}
		keys := changedKeys(configKeys(t, c), baseKeys)
		if len(keys) != 1 {
			t.Fatalf("flag --%s changes keys %q, want exactly one", name, keys)
		}
		out[keys[0]] = "--" + name
	}
	if len(out) == 0 {
		t.Fatalf("no flags found in serve --help:\n%s", help.String())
	}
	return out
}

// docRow is one row of the key table in docs/configuration.md.
type docRow struct{ def, env, flag string }

var docRowRE = regexp.MustCompile("^\\|\\s*`([a-z0-9_.]+)`\\s*\\|([^|]*)\\|([^|]*)\\|([^|]*)\\|")

func docCell(s string) string {
	s = strings.TrimSpace(s)
	if s == "—" || s == "" {
		return ""
	}
	return strings.Trim(s, "`")
}

// TestConfigurationDoc keeps docs/configuration.md in step with the code:
// every Config key has a row whose default, environment variable and serve
// flag are what DefaultConfig, LoadConfig and serve really do.
func TestConfigurationDoc(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]docRow{}
	for _, line := range strings.Split(string(raw), "\n") {
		m := docRowRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if _, dup := doc[m[1]]; dup {
			t.Errorf("key %s documented twice", m[1])
		}
		doc[m[1]] = docRow{def: docCell(m[2]), env: docCell(m[3]), flag: docCell(m[4])}
	}
	defaults := configKeys(t, DefaultConfig())
	envs := envOverrides(t)
	flags := serveFlagOverrides(t)
	keys := make([]string, 0, len(defaults))
	for k := range defaults {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		want := docRow{def: defaults[k], env: envs[k], flag: flags[k]}
		got, ok := doc[k]
		if !ok {
			t.Errorf("docs/configuration.md lacks key %s; add:\n| `%s` | %s | %s | %s | ... |", k, k, cellOf(want.def), cellOf(want.env), cellOf(want.flag))
			continue
		}
		if got != want {
			t.Errorf("docs/configuration.md row %s = %+v, want %+v:\n| `%s` | %s | %s | %s | ... |", k, got, want, k, cellOf(want.def), cellOf(want.env), cellOf(want.flag))
		}
	}
	for k := range doc {
		if _, ok := defaults[k]; !ok {
			t.Errorf("docs/configuration.md documents %s, which Config does not have", k)
		}
	}
}

func cellOf(s string) string {
	if s == "" {
		return "—"
	}
	return fmt.Sprintf("`%s`", s)
}
