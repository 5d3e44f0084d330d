package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"sigs.k8s.io/yaml"

	"github.com/creditgate/creditgate/envoy"
)

// repoRoot is where docker-compose.yaml and its relative paths live.
var repoRoot = filepath.Join("..", "..")

type composeFile struct {
	Name     string                    `json:"name"`
	Services map[string]composeService `json:"services"`
	Volumes  map[string]any            `json:"volumes"`
}

type composeService struct {
	Image       string            `json:"image"`
	Build       string            `json:"build"`
	Command     []string          `json:"command"`
	Environment map[string]string `json:"environment"`
	Volumes     []string          `json:"volumes"`
	Ports       []string          `json:"ports"`
	DependsOn   map[string]struct {
		Condition string `json:"condition"`
	} `json:"depends_on"`
	Healthcheck *struct {
		Test []string `json:"test"`
	} `json:"healthcheck"`
}

// composeServiceKeys are the service keys this file may use (a subset of
// the Compose spec); anything else is most likely a typo Compose would
// reject or, worse, ignore.
var composeServiceKeys = map[string]bool{
	"image": true, "build": true, "command": true, "entrypoint": true, "environment": true, "env_file": true,
	"volumes": true, "ports": true, "expose": true, "depends_on": true, "healthcheck": true, "restart": true,
	"user": true, "read_only": true, "tmpfs": true, "stop_grace_period": true, "stop_signal": true, "networks": true,
	"labels": true, "logging": true, "init": true, "cap_drop": true, "security_opt": true, "working_dir": true,
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var loose struct {
		Services map[string]map[string]any `json:"services"`
	}
	if err := yaml.Unmarshal(raw, &loose); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	for name, s := range loose.Services {
		for k := range s {
			if !composeServiceKeys[k] {
				t.Errorf("service %s: unexpected key %q", name, k)
			}
		}
	}
	var cf composeFile
	if err := yaml.Unmarshal(raw, &cf); err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	if len(cf.Services) == 0 {
		t.Fatal("docker-compose.yaml has no services")
	}
	return cf
}

// flagValue returns the value of --name (or -name) in args, "--name=v" too.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		trimmed := strings.TrimLeft(a, "-")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		if trimmed == name && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(trimmed, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		t.Fatalf("address %q: bad port", addr)
	}
	return n
}

// runsCreditgate reports whether the service runs our image.
func (s composeService) runsCreditgate() bool { return s.Build != "" }

// composeConfig is envoy/compose/creditgate.yaml loaded with the
// creditgate service's environment.
func composeConfig(t *testing.T, cf composeFile) Config {
	t.Helper()
	cfg, err := LoadConfig(filepath.Join(repoRoot, "envoy", "compose", "creditgate.yaml"), mapEnv(cf.Services["creditgate"].Environment))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestComposeServices(t *testing.T) {
	cf := readCompose(t)
	names := make([]string, 0, len(cf.Services))
	for n := range cf.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		s := cf.Services[name]
		t.Run(name, func(t *testing.T) {
			if (s.Image == "") == (s.Build == "") {
				t.Errorf("want exactly one of image and build, got image=%q build=%q", s.Image, s.Build)
			}
			if s.Image != "" {
				repo, tag, ok := strings.Cut(s.Image[strings.LastIndex(s.Image, "/")+1:], ":")
				if !ok || tag == "" || tag == "latest" {
					t.Errorf("image %q is not pinned to a version (%s)", s.Image, repo)
				}
			}
			if s.Build != "" {
				if _, err := os.Stat(filepath.Join(repoRoot, s.Build, "Dockerfile")); err != nil {
					t.Errorf("build %q: %v", s.Build, err)
				}
			}
			for dep, d := range s.DependsOn {
				target, ok := cf.Services[dep]
				if !ok {
					t.Errorf("depends_on %q: no such service", dep)
					continue
				}
				switch d.Condition {
				case "service_started", "service_completed_successfully":
				case "service_healthy":
					if target.Healthcheck == nil {
						t.Errorf("depends_on %s: service_healthy, but %s has no healthcheck", dep, dep)
					}
				default:
					t.Errorf("depends_on %s: unknown condition %q", dep, d.Condition)
				}
			}
			for _, v := range s.Volumes {
				src, dst, ok := strings.Cut(v, ":")
				if !ok || !strings.HasPrefix(dst, "/") {
					t.Errorf("volume %q: want SOURCE:/container/path[:ro]", v)
					continue
				}
				if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
					fi, err := os.Stat(filepath.Join(repoRoot, src))
					if err != nil {
						t.Errorf("bind mount %q: %v", v, err)
					} else if fi.IsDir() {
						t.Errorf("bind mount %q: source is a directory, want the file", v)
					}
				} else if _, ok := cf.Volumes[src]; !ok {
					t.Errorf("volume %q: named volume %s is not declared under volumes:", v, src)
				}
			}
		})
	}
}

// TestComposeCommands: every command and health check that runs our binary
// names a real subcommand whose flags parse. Appending --help makes the
// command stop after flag parsing, so nothing runs.
func TestComposeCommands(t *testing.T) {
	cf := readCompose(t)
	dockerfile, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	entry := regexp.MustCompile(`(?m)^ENTRYPOINT \["([^"]+)"\]`).FindSubmatch(dockerfile)
	if entry == nil {
		t.Fatal("Dockerfile has no exec-form ENTRYPOINT")
	}
	binary := string(entry[1])
	known := map[string]bool{}
	for _, c := range commands() {
		known[c.name] = true
	}
	type cmdline struct {
		where string
		args  []string
	}
	var lines []cmdline
	for name, s := range cf.Services {
		if s.runsCreditgate() {
			if len(s.Command) == 0 {
				t.Errorf("%s: no command (the image's default would run)", name)
			}
			lines = append(lines, cmdline{name + " command", s.Command})
		}
		if s.Healthcheck != nil && len(s.Healthcheck.Test) > 1 && s.Healthcheck.Test[0] == "CMD" && s.Healthcheck.Test[1] == binary {
			if !s.runsCreditgate() {
				t.Errorf("%s: healthcheck runs %s, which is only in our image", name, binary)
			}
			lines = append(lines, cmdline{name + " healthcheck", s.Healthcheck.Test[2:]})
		}
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].where < lines[j].where })
	for _, l := range lines {
		t.Run(l.where, func(t *testing.T) {
			if len(l.args) == 0 || !known[l.args[0]] {
				t.Fatalf("%q does not start with a creditgate subcommand", l.args)
			}
			var out, errb bytes.Buffer
			args := append(append([]string{}, l.args...), "--help")
			if err := Run(context.Background(), args, &out, &errb, mapEnv(nil)); err != nil {
				t.Fatalf("creditgate %s: %v\n%s", strings.Join(args, " "), err, errb.String())
			}
			if !strings.Contains(out.String(), "usage:") {
				t.Fatalf("--help printed no usage:\n%s", out.String())
			}
		})
	}
}

// TestComposeWiring: the addresses each piece is told to use match what the
// other pieces listen on.
func TestComposeWiring(t *testing.T) {
	cf := readCompose(t)
	cfg := composeConfig(t, cf)
	if err := cfg.Validate(); err != nil {
		t.Fatalf("compose config: %v", err)
	}
	cg := cf.Services["creditgate"]

	// serve reads the file the bind mount provides.
	cfgPath, ok := flagValue(cg.Command, "config")
	if !ok {
		t.Fatalf("creditgate command %q has no --config", cg.Command)
	}
	mounted := false
	for _, v := range cg.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == cfgPath && filepath.Clean(parts[0]) == filepath.Join("envoy", "compose", "creditgate.yaml") {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("serve --config %s is not the bind-mounted envoy/compose/creditgate.yaml", cfgPath)
	}
	// The spool must survive a container restart: it lives on a named volume.
	onVolume := false
	for _, v := range cg.Volumes {
		src, rest, _ := strings.Cut(v, ":")
		dst, _, _ := strings.Cut(rest, ":")
		if _, named := cf.Volumes[src]; named && strings.HasPrefix(cfg.Ledger.SpoolPath, strings.TrimSuffix(dst, "/")+"/") {
			onVolume = true
		}
	}
	if !onVolume {
		t.Errorf("spool_path %q is not on a named volume", cfg.Ledger.SpoolPath)
	}

	// Redis and the admin API are reached by service name.
	ru, err := url.Parse(cfg.Redis.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cf.Services[ru.Hostname()]; !ok || ru.Port() != "6379" {
		t.Errorf("redis url %s does not name the redis service on 6379", cfg.Redis.URL)
	}
	adminPort := portOf(t, cfg.AdminAddr)
	grpcPort := portOf(t, cfg.GRPCAddr)
	if host, _, _ := net.SplitHostPort(cfg.AdminAddr); isLoopback(cfg.AdminAddr) || host == "localhost" {
		t.Errorf("admin_addr %s is loopback inside the container: the seed job and the published port cannot reach it", cfg.AdminAddr)
	}
	seed := cf.Services["seed"]
	if au, ok := flagValue(seed.Command, "admin-url"); !ok {
		t.Errorf("seed has no --admin-url")
	} else if u, err := url.Parse(au); err != nil || u.Hostname() != "creditgate" || u.Port() != strconv.Itoa(adminPort) {
		t.Errorf("seed --admin-url %s, want http://creditgate:%d", au, adminPort)
	}
	if seed.Environment["CG_ADMIN_TOKEN"] != cg.Environment["CG_ADMIN_TOKEN"] || cfg.AdminToken == "" {
		t.Errorf("seed and creditgate disagree on CG_ADMIN_TOKEN (or it is empty)")
	}
	healthURL := func(service string) *url.URL {
		s := cf.Services[service]
		if s.Healthcheck == nil {
			t.Fatalf("%s has no healthcheck", service)
		}
		v, ok := flagValue(s.Healthcheck.Test, "url")
		if !ok {
			t.Fatalf("%s healthcheck has no --url", service)
		}
		u, err := url.Parse(v)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	if u := healthURL("creditgate"); u.Port() != strconv.Itoa(adminPort) || u.Path != "/readyz" {
		t.Errorf("creditgate healthcheck %s, want /readyz on the admin port %d", u, adminPort)
	}
	devAddr, ok := flagValue(cf.Services["fakeprovider"].Command, "addr")
	if !ok {
		t.Fatal("fakeprovider command has no --addr")
	}
	devPort := portOf(t, devAddr)
	if u := healthURL("fakeprovider"); u.Port() != strconv.Itoa(devPort) {
		t.Errorf("fakeprovider healthcheck %s, want port %d", u, devPort)
	}

	// Envoy's clusters point at those services and ports.
	doc, err := os.ReadFile(filepath.Join(repoRoot, "envoy", "envoy-demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoy.ParseBootstrap(doc)
	if err != nil {
		t.Fatal(err)
	}
	endpoints := map[string][]*corev3.SocketAddress{}
	for _, c := range b.GetStaticResources().GetClusters() {
		for _, le := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				endpoints[c.GetName()] = append(endpoints[c.GetName()], lb.GetEndpoint().GetAddress().GetSocketAddress())
			}
		}
	}
	for _, want := range []struct {
		cluster, service string
		port             int
	}{
		{"creditgate", "creditgate", grpcPort},
		{"fakeprovider", "fakeprovider", devPort},
	} {
		eps := endpoints[want.cluster]
		if len(eps) != 1 {
			t.Errorf("cluster %s has %d endpoints, want 1", want.cluster, len(eps))
			continue
		}
		if eps[0].GetAddress() != want.service || int(eps[0].GetPortValue()) != want.port {
			t.Errorf("cluster %s -> %s:%d, want %s:%d", want.cluster, eps[0].GetAddress(), eps[0].GetPortValue(), want.service, want.port)
		}
	}
	var listenerPorts []int
	for _, l := range b.GetStaticResources().GetListeners() {
		listenerPorts = append(listenerPorts, int(l.GetAddress().GetSocketAddress().GetPortValue()))
	}

	// Published ports: valid, unique on the host, and each one something
	// the service listens on.
	listens := map[string][]int{"creditgate": {adminPort, grpcPort}, "envoy": listenerPorts, "fakeprovider": {devPort}, "redis": {6379}}
	hostPorts := map[string]string{}
	for name, s := range cf.Services {
		for _, p := range s.Ports {
			ip, hostPort, ctr, err := parsePort(p)
			if err != nil {
				t.Errorf("%s port %q: %v", name, p, err)
				continue
			}
			key := fmt.Sprintf("%s:%d", ip, hostPort)
			if ip == "" || ip == "0.0.0.0" {
				key = fmt.Sprintf("*:%d", hostPort)
			}
			if prev, dup := hostPorts[key]; dup {
				t.Errorf("host port %s published by both %s and %s", key, prev, name)
			}
			hostPorts[key] = name
			found := false
			for _, l := range listens[name] {
				found = found || l == ctr
			}
			if !found {
				t.Errorf("%s publishes container port %d, but listens on %v", name, ctr, listens[name])
			}
		}
	}
	if len(hostPorts) == 0 {
		t.Error("nothing is published")
	}
}

// parsePort reads the short port syntax [IP:]HOST:CONTAINER.
func parsePort(p string) (ip string, host, ctr int, err error) {
	parts := strings.Split(p, ":")
	switch len(parts) {
	case 2:
		parts = append([]string{""}, parts...)
	case 3:
	default:
		return "", 0, 0, fmt.Errorf("want [IP:]HOST:CONTAINER")
	}
	if parts[0] != "" && net.ParseIP(parts[0]) == nil {
		return "", 0, 0, fmt.Errorf("bad IP %q", parts[0])
	}
	nums := [2]int{}
	for i, s := range parts[1:] {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 {
			return "", 0, 0, fmt.Errorf("bad port %q", s)
		}
		nums[i] = n
	}
	return parts[0], nums[0], nums[1], nil
}

// TestComposeEnvoyVersion: the Envoy image runs the release whose protos
// validate envoy-demo.yaml (go.mod's go-control-plane/envoy).
func TestComposeEnvoyVersion(t *testing.T) {
	cf := readCompose(t)
	img := cf.Services["envoy"].Image
	name, tag, ok := strings.Cut(img, ":")
	if !ok || name != "envoyproxy/envoy" {
		t.Fatalf("envoy image %q, want envoyproxy/envoy:<version>", img)
	}
	gomod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*github\.com/envoyproxy/go-control-plane/envoy (v[0-9.]+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod does not require github.com/envoyproxy/go-control-plane/envoy")
	}
	if tag != string(m[1]) {
		t.Errorf("envoy image tag %s, but envoy-demo.yaml is validated against protos %s", tag, m[1])
	}
	// The ext_proc cluster is named creditgate in the demo bootstrap's filter too.
	doc, err := os.ReadFile(filepath.Join(repoRoot, "envoy", "envoy-demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoy.ParseBootstrap(doc)
	if err != nil {
		t.Fatal(err)
	}
	fs, err := envoy.ExtProcFilters(b)
	if err != nil || len(fs) != 1 {
		t.Fatalf("ext_proc filters: %d, %v", len(fs), err)
	}
	if c := fs[0].GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != "creditgate" {
		t.Errorf("ext_proc filter calls cluster %q, want creditgate", c)
	}
	raw, _ := json.Marshal(cf.Services["envoy"].Volumes)
	if !strings.Contains(string(raw), "envoy-demo.yaml") {
		t.Errorf("envoy does not mount envoy-demo.yaml: %s", raw)
	}
}
