// Package admin is the ledger's operator HTTP JSON API: accounts, balances,
// top-ups, adjustments, the journal, the audit and virtual API keys.
//
// Every amount crosses the wire as a decimal USD string with at most six
// fractional digits ("12.345678"), never as a JSON number, so no client's
// float parser ever touches money. Every money-moving call requires its
// idempotency id, so a retried request never moves money twice. The API is
// documented for operators in docs/admin-api.md; Client is its Go client.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/creditgate/creditgate/ledger"
)

// DefaultAddr is where the admin API should listen unless configured
// otherwise: loopback only, because it can mint money and keys.
const DefaultAddr = "127.0.0.1:8081"

// DefaultMaxBodyBytes bounds a request body; every request is a few hundred
// bytes, so anything near this is a mistake or an attack.
const DefaultMaxBodyBytes = 64 << 10

// Ledger is what the admin API needs of *ledger.Ledger. It is an interface
// so the wiring can wrap it (metrics, tracing); tests use the real ledger.
type Ledger interface {
	CreateAccount(ctx context.Context, account string) (created bool, err error)
	Accounts(ctx context.Context) ([]string, error)
	Balance(ctx context.Context, account string) (ledger.Balance, error)
	TopUp(ctx context.Context, req ledger.TopUpRequest) (ledger.Receipt, error)
	Adjust(ctx context.Context, req ledger.AdjustRequest) (ledger.AdjustResult, error)
	Journal(ctx context.Context, account, after string, limit int) ([]ledger.Entry, string, error)
	Audit(ctx context.Context) (report []ledger.AccountAudit, ok bool, err error)
	CreateAPIKey(ctx context.Context, account, keyHash string) error
	RevokeAPIKey(ctx context.Context, keyHash string) error
	AccountForKey(ctx context.Context, keyHash string) (string, error)
}

var _ Ledger = (*ledger.Ledger)(nil)

// Options configure the handler.
type Options struct {
	// Token is the bearer token every request must present. Empty is refused
	// unless Insecure is set.
	Token string
	// Insecure allows an empty Token, turning authentication off; only for
	// the local demo. A non-empty Token is still enforced.
	Insecure bool
	// Logger receives one line per request (never a body, header, token or
	// key). Nil discards.
	Logger *slog.Logger
	// Clock stamps top-ups and adjustments. Nil leaves it to the ledger's
	// own clock.
	Clock func() time.Time
	// MaxBodyBytes bounds request bodies (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
}

// ErrNoToken is returned by New when no token is configured and Insecure
// is not set: an admin API that mints money must not start open by accident.
var ErrNoToken = errors.New("admin: no token configured (set one, or Insecure for a local demo)")

type server struct {
	l        Ledger
	opt      Options
	log      *slog.Logger
	tokenSum [sha256.Size]byte
	mux      *http.ServeMux
}

// New returns the admin API handler.
func New(l Ledger, opts Options) (http.Handler, error) {
	if l == nil {
		return nil, errors.New("admin: nil ledger")
	}
	if opts.Token == "" && !opts.Insecure {
		return nil, ErrNoToken
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	s := &server{l: l, opt: opts, log: opts.Logger, mux: http.NewServeMux()}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if opts.Token == "" {
		s.log.Warn("admin API has no token: every request is accepted (insecure mode)")
	} else {
		s.tokenSum = sha256.Sum256([]byte(opts.Token))
	}
	routes := []struct {
		method, path string
		h            handlerFunc
	}{
		{"POST", "/v1/accounts", s.createAccount},
		{"GET", "/v1/accounts", s.listAccounts},
		{"GET", "/v1/accounts/{id}/balance", s.balance},
		{"POST", "/v1/accounts/{id}/topups", s.topUp},
		{"POST", "/v1/accounts/{id}/adjustments", s.adjust},
		{"GET", "/v1/accounts/{id}/journal", s.journal},
		{"GET", "/v1/audit", s.audit},
		{"POST", "/v1/keys", s.createKey},
		{"GET", "/v1/keys/{hash}", s.lookupKey},
		{"DELETE", "/v1/keys/{hash}", s.revokeKey},
	}
	allowed := map[string][]string{}
	var paths []string
	for _, rt := range routes {
		s.handle(rt.method+" "+rt.path, rt.h)
		if allowed[rt.path] == nil {
			paths = append(paths, rt.path)
		}
		allowed[rt.path] = append(allowed[rt.path], rt.method)
	}
	// The method-less patterns are less specific than the routes above, so
	// they only see methods no route takes: answer those in JSON rather than
	// with ServeMux's plain-text 405.
	for _, p := range paths {
		allow := strings.Join(allowed[p], ", ")
		s.handle(p, func(w http.ResponseWriter, r *http.Request) (int, any, error) {
			w.Header().Set("Allow", allow)
			return 0, nil, apiErr(http.StatusMethodNotAllowed, CodeMethodNotAllowed,
				fmt.Sprintf("%s is not allowed here; allowed: %s", r.Method, allow))
		})
	}
	s.handle("/", func(w http.ResponseWriter, r *http.Request) (int, any, error) {
		return 0, nil, apiErr(http.StatusNotFound, CodeNotFound, "no such endpoint")
	})
	return s.mux, nil
}

// handlerFunc returns a status and a body to encode, or an error that
// writeError turns into the error shape.
type handlerFunc func(w http.ResponseWriter, r *http.Request) (int, any, error)

func (s *server) handle(pattern string, h handlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var (
			status int
			body   any
			err    error
		)
		// Authentication comes before routing answers anything, so an
		// unauthenticated caller cannot even learn which paths exist.
		if !s.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="creditgate-admin"`)
			err = apiErr(http.StatusUnauthorized, CodeUnauthorized, "missing or wrong bearer token")
		} else {
			r.Body = http.MaxBytesReader(w, r.Body, s.opt.MaxBodyBytes)
			status, body, err = h(w, r)
		}
		var e *Error
		if err != nil {
			e = s.toError(err)
			status, body = e.Status, errorBody{Error: e}
		}
		writeJSON(w, status, body)
		s.logRequest(r, pattern, status, e, err, time.Since(start))
	})
}

// authorized compares SHA-256 digests in constant time: comparing the
// digests rather than the tokens keeps the token's length from leaking
// through timing as well.
func (s *server) authorized(r *http.Request) bool {
	if s.opt.Token == "" {
		return true
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) == 1
}

// logRequest writes one line per request. It logs the route pattern, not
// the path: a path can carry anything a caller typed, including a raw key
// pasted where a key hash belongs.
func (s *server) logRequest(r *http.Request, pattern string, status int, e *Error, cause error, d time.Duration) {
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("route", pattern),
		slog.Int("status", status),
		slog.Duration("duration", d),
		slog.String("remote", r.RemoteAddr),
	}
	if id := r.PathValue("id"); id != "" {
		attrs = append(attrs, slog.String("account", id))
	}
	level := slog.LevelInfo
	if e != nil {
		attrs = append(attrs, slog.String("code", e.Code))
		switch {
		case status >= 500:
			level = slog.LevelError
			attrs = append(attrs, slog.String("err", cause.Error()))
		case status == http.StatusUnauthorized:
			level = slog.LevelWarn
		}
	}
	s.log.LogAttrs(r.Context(), level, "admin request", attrs...)
}
