package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/creditgate/creditgate/ledger/money"
)

// Client calls the admin API. Its errors for any non-2xx answer are *Error
// holding the server's status, code and message; errors.Is/As then also
// match the ledger's typed errors (see Error.Unwrap).
type Client struct {
	BaseURL string // e.g. "http://127.0.0.1:8081"
	Token   string // bearer token; sent only as the Authorization header
	HTTP    *http.Client
}

// maxResponseBytes bounds what the client reads: a journal page of 1000
// entries with usage JSON is well below it.
const maxResponseBytes = 32 << 20

// CreateAccount creates an account; Created is false if it already existed.
func (c *Client) CreateAccount(ctx context.Context, account string) (AccountCreated, error) {
	var out AccountCreated
	err := c.do(ctx, http.MethodPost, "/v1/accounts", nil, createAccountBody{Account: account}, &out)
	return out, err
}

// Accounts lists every account id, sorted.
func (c *Client) Accounts(ctx context.Context) ([]string, error) {
	var out AccountList
	err := c.do(ctx, http.MethodGet, "/v1/accounts", nil, nil, &out)
	return out.Accounts, err
}

// Balance reads an account's balance, held and available amounts.
func (c *Client) Balance(ctx context.Context, account string) (Balance, error) {
	var out Balance
	err := c.do(ctx, http.MethodGet, acctPath(account, "balance"), nil, nil, &out)
	return out, err
}

// TopUp credits amount to account, idempotent on paymentID.
func (c *Client) TopUp(ctx context.Context, account, paymentID string, amount money.Micros) (Receipt, error) {
	var out Receipt
	err := c.do(ctx, http.MethodPost, acctPath(account, "topups"), nil,
		topUpBody{PaymentID: paymentID, Amount: amount.String()}, &out)
	return out, err
}

// Adjust applies a signed operator adjustment, idempotent on adjustmentID.
func (c *Client) Adjust(ctx context.Context, account, adjustmentID string, amount money.Micros, reason string) (Adjustment, error) {
	var out Adjustment
	err := c.do(ctx, http.MethodPost, acctPath(account, "adjustments"), nil,
		adjustBody{AdjustmentID: adjustmentID, Amount: amount.String(), Reason: reason}, &out)
	return out, err
}

// Journal reads one page of an account's journal after the entry id after
// ("" = from the start); limit 0 takes the server's default.
func (c *Client) Journal(ctx context.Context, account, after string, limit int) (JournalPage, error) {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit != 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out JournalPage
	err := c.do(ctx, http.MethodGet, acctPath(account, "journal"), q, nil, &out)
	return out, err
}

// Audit runs the ledger audit. A failed audit is a report with OK false,
// not an error; errors are for failing to run it.
func (c *Client) Audit(ctx context.Context) (AuditReport, error) {
	var out AuditReport
	err := c.do(ctx, http.MethodGet, "/v1/audit", nil, nil, &out, http.StatusConflict)
	return out, err
}

// CreateKey binds an API key to account. With key "" the server mints one
// and returns it in KeyCreated.Key; it cannot be retrieved again.
func (c *Client) CreateKey(ctx context.Context, account, key string) (KeyCreated, error) {
	var out KeyCreated
	err := c.do(ctx, http.MethodPost, "/v1/keys", nil, createKeyBody{Account: account, Key: key}, &out)
	return out, err
}

// LookupKey returns the account a key hash belongs to.
func (c *Client) LookupKey(ctx context.Context, keyHash string) (KeyInfo, error) {
	var out KeyInfo
	err := c.do(ctx, http.MethodGet, "/v1/keys/"+url.PathEscape(keyHash), nil, nil, &out)
	return out, err
}

// RevokeKey deletes a key by its hash.
func (c *Client) RevokeKey(ctx context.Context, keyHash string) error {
	var out KeyRevoked
	return c.do(ctx, http.MethodDelete, "/v1/keys/"+url.PathEscape(keyHash), nil, nil, &out)
}

// acctPath escapes the account id: ids may contain '/', which must stay
// inside the one path segment.
func acctPath(account, tail string) string {
	return "/v1/accounts/" + url.PathEscape(account) + "/" + tail
}

// do sends one request. alsoOK lists non-2xx statuses whose body is still
// the answer (the audit's 409).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any, alsoOK ...int) error {
	u := strings.TrimRight(c.BaseURL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("admin client: encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("admin client: %s %s: read response: %w", method, path, err)
	}
	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	for _, s := range alsoOK {
		ok = ok || resp.StatusCode == s
	}
	if !ok {
		return responseError(resp.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("admin client: %s %s: decode %d response: %w", method, path, resp.StatusCode, err)
	}
	return nil
}

// responseError keeps the server's error object; a body that is not one
// (a proxy's HTML page) still yields an *Error with the status.
func responseError(status int, raw []byte) error {
	var eb errorBody
	if err := json.Unmarshal(raw, &eb); err == nil && eb.Error != nil && eb.Error.Code != "" {
		eb.Error.Status = status
		return eb.Error
	}
	msg := strings.TrimSpace(string(raw))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &Error{Status: status, Code: "http_" + strconv.Itoa(status), Message: msg}
}

// IsCode reports whether err is an admin API error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
