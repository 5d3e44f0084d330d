package admin

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/ledger/money"
)

const (
	defaultJournalLimit = 100
	maxJournalLimit     = 1000
	// Hand-supplied keys must be long enough that an unsalted SHA-256 of
	// them cannot be reversed by guessing (see ledger.HashKey).
	minKeyLen = 32
	maxKeyLen = 256
	// GeneratedKeyPrefix starts every key the server mints, so keys are
	// recognisable in secret scanners and support tickets.
	GeneratedKeyPrefix = "cgk_"
)

var (
	streamIDRE = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)
	keyHashRE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

func badRequest(format string, args ...any) *Error {
	return apiErr(http.StatusBadRequest, CodeInvalidArgument, fmt.Sprintf(format, args...))
}

func badAmount(format string, args ...any) *Error {
	return apiErr(http.StatusBadRequest, CodeInvalidAmount, fmt.Sprintf(format, args...))
}

// decode reads exactly one JSON object with no unknown fields. Its messages
// name fields and types but never echo values: a body may hold a key.
func decode(r *http.Request, dst any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		var (
			syn *json.SyntaxError
			typ *json.UnmarshalTypeError
			big *http.MaxBytesError
		)
		switch {
		case errors.As(err, &big):
			return err
		case errors.Is(err, io.EOF):
			return apiErr(http.StatusBadRequest, CodeInvalidJSON, "request body is empty; a JSON object is required")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return apiErr(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON: the body ends in the middle of a value")
		case errors.As(err, &syn):
			return apiErr(http.StatusBadRequest, CodeInvalidJSON, fmt.Sprintf("malformed JSON at byte %d", syn.Offset))
		case errors.As(err, &typ) && typ.Field != "":
			return apiErr(http.StatusBadRequest, CodeInvalidJSON, fmt.Sprintf("field %q must be a JSON %s, not %s", typ.Field, jsonKind(typ.Type.Kind().String()), typ.Value))
		case errors.As(err, &typ):
			return apiErr(http.StatusBadRequest, CodeInvalidJSON, "request body must be a JSON object")
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return apiErr(http.StatusBadRequest, CodeInvalidJSON, strings.TrimPrefix(err.Error(), "json: "))
		default:
			return apiErr(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON")
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var big *http.MaxBytesError
		if errors.As(err, &big) {
			return err
		}
		return apiErr(http.StatusBadRequest, CodeInvalidJSON, "request body must hold exactly one JSON object")
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	}
	return goKind
}

// parseAmount parses a decimal USD string; sign is +1 (must be positive)
// or 0 (any non-zero amount).
func parseAmount(s string, sign int) (money.Micros, error) {
	if s == "" {
		return 0, badAmount("amount is required, as a decimal USD string such as \"12.50\"")
	}
	m, err := money.ParseUSD(s)
	if err != nil {
		return 0, badAmount("amount: %s", strings.TrimPrefix(err.Error(), money.ErrInvalidAmount.Error()+": "))
	}
	switch {
	case sign > 0 && m <= 0:
		return 0, badAmount("amount must be positive")
	case m == 0:
		return 0, badAmount("amount must not be zero")
	case m > money.MaxExactLua || m < -money.MaxExactLua:
		return 0, badAmount("amount is out of range (at most $%s)", money.Micros(money.MaxExactLua))
	}
	return m, nil
}

// required reports the fields (name, value pairs) that are blank.
func required(fields ...string) error {
	var missing []string
	for i := 0; i+1 < len(fields); i += 2 {
		if strings.TrimSpace(fields[i+1]) == "" {
			missing = append(missing, fields[i])
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return badRequest("%s is required", missing[0])
	}
	return badRequest("%s are required", strings.Join(missing, " and "))
}

// ledgerErr rewords the ledger errors whose text is written for Go callers
// (raw µUSD, script codes) into messages about the request's own fields;
// the code and status come from toError either way.
func ledgerErr(err error, account, idField, id string) error {
	switch {
	case errors.Is(err, ledger.ErrNoAccount):
		return apiErr(http.StatusNotFound, CodeNoAccount, fmt.Sprintf("account %q does not exist", account))
	case errors.Is(err, ledger.ErrIDConflict) && idField != "":
		return apiErr(http.StatusConflict, CodeIDConflict, fmt.Sprintf(
			"%s %q was already used with different arguments; a retry must repeat the original request exactly", idField, id))
	case errors.Is(err, ledger.ErrNoKey):
		return apiErr(http.StatusNotFound, CodeNoKey, "no API key has this hash (never created, or revoked)")
	case errors.Is(err, ledger.ErrInvalid):
		return apiErr(http.StatusBadRequest, CodeInvalidArgument, strings.TrimPrefix(err.Error(), ledger.ErrInvalid.Error()+": "))
	}
	return err
}

func (s *server) now() time.Time {
	if s.opt.Clock == nil {
		return time.Time{} // the ledger's clock decides
	}
	return s.opt.Clock()
}

func (s *server) createAccount(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	var b createAccountBody
	if err := decode(r, &b); err != nil {
		return 0, nil, err
	}
	if err := required("account", b.Account); err != nil {
		return 0, nil, err
	}
	created, err := s.l.CreateAccount(r.Context(), b.Account)
	if err != nil {
		return 0, nil, ledgerErr(err, b.Account, "", "")
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	return status, AccountCreated{Account: b.Account, Created: created}, nil
}

func (s *server) listAccounts(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	ids, err := s.l.Accounts(r.Context())
	if err != nil {
		return 0, nil, err
	}
	// The account index is a Redis set; sorting makes the output stable.
	slices.Sort(ids)
	if ids == nil {
		ids = []string{}
	}
	return http.StatusOK, AccountList{Accounts: ids}, nil
}

func (s *server) balance(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	b, err := s.l.Balance(r.Context(), r.PathValue("id"))
	if err != nil {
		return 0, nil, ledgerErr(err, r.PathValue("id"), "", "")
	}
	return http.StatusOK, Balance{Account: b.Account, Balance: b.Balance, Held: b.Held, Available: b.Available}, nil
}

func (s *server) topUp(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	var b topUpBody
	if err := decode(r, &b); err != nil {
		return 0, nil, err
	}
	if err := required("payment_id", b.PaymentID); err != nil {
		return 0, nil, err
	}
	amount, err := parseAmount(b.Amount, +1)
	if err != nil {
		return 0, nil, err
	}
	rc, err := s.l.TopUp(r.Context(), ledger.TopUpRequest{Account: r.PathValue("id"), PaymentID: b.PaymentID, Amount: amount, Time: s.now()})
	if err != nil {
		return 0, nil, ledgerErr(err, r.PathValue("id"), "payment_id", b.PaymentID)
	}
	status := http.StatusCreated
	if rc.Replayed {
		status = http.StatusOK
	}
	return status, Receipt{Account: rc.Account, PaymentID: rc.PaymentID, Amount: rc.Amount, Fee: rc.Fee,
		TotalCharged: rc.TotalCharged, BalanceAfter: rc.BalanceAfter, Replayed: rc.Replayed}, nil
}

func (s *server) adjust(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	var b adjustBody
	if err := decode(r, &b); err != nil {
		return 0, nil, err
	}
	if err := required("adjustment_id", b.AdjustmentID, "reason", b.Reason); err != nil {
		return 0, nil, err
	}
	amount, err := parseAmount(b.Amount, 0)
	if err != nil {
		return 0, nil, err
	}
	res, err := s.l.Adjust(r.Context(), ledger.AdjustRequest{Account: r.PathValue("id"), AdjustmentID: b.AdjustmentID,
		Amount: amount, Reason: b.Reason, Time: s.now()})
	if err != nil {
		return 0, nil, ledgerErr(err, r.PathValue("id"), "adjustment_id", b.AdjustmentID)
	}
	status := http.StatusCreated
	if res.Replayed {
		status = http.StatusOK
	}
	return status, Adjustment{Account: res.Account, AdjustmentID: res.AdjustmentID, Amount: res.Amount,
		BalanceAfter: res.Balance, Replayed: res.Replayed}, nil
}

func (s *server) journal(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	q := r.URL.Query()
	for k := range q {
		if k != "after" && k != "limit" {
			return 0, nil, badRequest("unknown query parameter %q (after, limit)", k)
		}
	}
	after := q.Get("after")
	if after != "" && !streamIDRE.MatchString(after) {
		return 0, nil, badRequest("after must be a journal entry id such as \"1733313600000-0\" (the previous page's next)")
	}
	limit := defaultJournalLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxJournalLimit {
			return 0, nil, badRequest("limit must be an integer from 1 to %d", maxJournalLimit)
		}
		limit = n
	}
	account := r.PathValue("id")
	// A journal read of a missing account is just an empty stream; ask the
	// account hash first so a typo is a 404, not an empty page.
	if _, err := s.l.Balance(r.Context(), account); err != nil {
		return 0, nil, ledgerErr(err, account, "", "")
	}
	entries, next, err := s.l.Journal(r.Context(), account, after, limit)
	if err != nil {
		return 0, nil, ledgerErr(err, account, "", "")
	}
	page := JournalPage{Entries: make([]JournalEntry, 0, len(entries)), Next: next}
	for _, e := range entries {
		page.Entries = append(page.Entries, entryWire(e))
	}
	return http.StatusOK, page, nil
}

func (s *server) audit(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	report, ok, err := s.l.Audit(r.Context())
	if err != nil {
		return 0, nil, err
	}
	out := AuditReport{OK: ok, Accounts: make([]AccountAudit, 0, len(report))}
	for _, a := range report {
		out.Accounts = append(out.Accounts, AccountAudit{Account: a.Account, Entries: a.Entries, Balance: a.Balance,
			Held: a.Held, JournalBalance: a.JournalBal, JournalHeld: a.JournalHeld, Problems: a.Problems})
	}
	slices.SortFunc(out.Accounts, func(a, b AccountAudit) int { return strings.Compare(a.Account, b.Account) })
	if !ok {
		// 409: the stored state conflicts with its own journal. The body is
		// the report, not an error object: it is the answer asked for.
		return http.StatusConflict, out, nil
	}
	return http.StatusOK, out, nil
}

// checkKey validates a hand-supplied key without ever quoting it back.
func checkKey(k string) error {
	if len(k) < minKeyLen || len(k) > maxKeyLen {
		return badRequest("key must be %d to %d characters long", minKeyLen, maxKeyLen)
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return badRequest("key may only hold printable ASCII without spaces")
		}
	}
	return nil
}

// newKey mints a key with 256 random bits; base64url keeps it header-safe.
func newKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it crashes instead)
	return GeneratedKeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

func (s *server) createKey(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	var b createKeyBody
	if err := decode(r, &b); err != nil {
		return 0, nil, err
	}
	if err := required("account", b.Account); err != nil {
		return 0, nil, err
	}
	key, generated := b.Key, b.Key == ""
	if generated {
		key = newKey()
	} else if err := checkKey(key); err != nil {
		return 0, nil, err
	}
	h := ledger.HashKey(key)
	if err := s.l.CreateAPIKey(r.Context(), b.Account, h); err != nil {
		if errors.Is(err, ledger.ErrIDConflict) {
			return 0, nil, apiErr(http.StatusConflict, CodeIDConflict, "this key is already bound to another account")
		}
		return 0, nil, ledgerErr(err, b.Account, "", "")
	}
	out := KeyCreated{Account: b.Account, KeyHash: h}
	if generated {
		out.Key = key
	}
	return http.StatusCreated, out, nil
}

func keyHashParam(r *http.Request) (string, error) {
	h := r.PathValue("hash")
	if !keyHashRE.MatchString(h) {
		// Not echoed: a raw key pasted here by mistake must not travel on.
		return "", badRequest("the path must hold a key hash: 64 lowercase hex characters (key_hash from POST /v1/keys), never the key itself")
	}
	return h, nil
}

func (s *server) lookupKey(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	h, err := keyHashParam(r)
	if err != nil {
		return 0, nil, err
	}
	acct, err := s.l.AccountForKey(r.Context(), h)
	if err != nil {
		return 0, nil, ledgerErr(err, "", "", "")
	}
	return http.StatusOK, KeyInfo{KeyHash: h, Account: acct}, nil
}

func (s *server) revokeKey(_ http.ResponseWriter, r *http.Request) (int, any, error) {
	h, err := keyHashParam(r)
	if err != nil {
		return 0, nil, err
	}
	if err := s.l.RevokeAPIKey(r.Context(), h); err != nil {
		return 0, nil, ledgerErr(err, "", "", "")
	}
	return http.StatusOK, KeyRevoked{KeyHash: h, Revoked: true}, nil
}
