package extproc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/creditgate/creditgate/ledger"
)

// Identity says who pays for a request. Sources are tried in order; the
// first that yields an account wins.
type Identity struct {
	// Sources: "header" (set by an upstream auth filter, which must
	// overwrite any client value), "principal" (an Envoy attribute such as
	// source.principal, the mesh workload identity, mapped through
	// Principals) and "apikey" (the client's Authorization, x-api-key,
	// x-goog-api-key or api-key, matched by SHA-256 against keys stored in
	// the ledger).
	Sources []string `yaml:"sources" json:"sources"`
	// Header names the account header (default x-creditgate-account). It is
	// always removed before the request goes upstream.
	Header string `yaml:"header" json:"header"`
	// Attribute is the Envoy attribute read by "principal" (default
	// source.principal); list it in the filter's request_attributes.
	Attribute string `yaml:"attribute" json:"attribute"`
	// Principals maps attribute values to accounts.
	Principals map[string]string `yaml:"principals" json:"principals"`
	// ProviderKeys, when set for a provider, replace a virtual key with the
	// real provider key on the way upstream.
	ProviderKeys map[string]string `yaml:"provider_keys" json:"provider_keys"`
}

// Validate reports every configuration error.
func (id Identity) Validate() error {
	var errs []error
	if len(id.Sources) == 0 {
		errs = append(errs, errors.New("identity: at least one source (header, principal, apikey) is required"))
	}
	for _, s := range id.Sources {
		switch s {
		case "header", "principal", "apikey":
		default:
			errs = append(errs, fmt.Errorf("identity: unknown source %q (want header, principal or apikey)", s))
		}
	}
	return errors.Join(errs...)
}

func (id Identity) header() string {
	if id.Header == "" {
		return "x-creditgate-account"
	}
	return strings.ToLower(id.Header)
}

func (id Identity) attribute() string {
	if id.Attribute == "" {
		return "source.principal"
	}
	return id.Attribute
}

// keyHeaders are where SDKs put API keys: OpenAI and most others
// (authorization: Bearer), Anthropic (x-api-key), Gemini (x-goog-api-key),
// Azure OpenAI (api-key).
var keyHeaders = []string{"authorization", "x-api-key", "x-goog-api-key", "api-key"}

// clientKey returns the API key a client sent and the header it came in.
func clientKey(h headers) (key, header string) {
	for _, name := range keyHeaders {
		v := h.get(name)
		if v == "" {
			continue
		}
		if name == "authorization" {
			scheme, tok, ok := strings.Cut(v, " ")
			if !ok || !strings.EqualFold(scheme, "bearer") {
				continue
			}
			v = strings.TrimSpace(tok)
		}
		return v, name
	}
	// Gemini also accepts the key as ?key= (go-genai uses the header; curl
	// examples and older clients use the query).
	if _, q, ok := strings.Cut(h.get(":path"), "?"); ok {
		if vals, err := url.ParseQuery(q); err == nil && vals.Get("key") != "" {
			return vals.Get("key"), queryKey
		}
	}
	return "", ""
}

// queryKey marks a key that came in the :path query (?key=).
const queryKey = "?key"

// withoutQueryKey drops the key parameter from a path, keeping the rest.
func withoutQueryKey(path string) string {
	p, q, ok := strings.Cut(path, "?")
	if !ok {
		return path
	}
	vals, err := url.ParseQuery(q)
	if err != nil {
		return p
	}
	vals.Del("key")
	if len(vals) == 0 {
		return p
	}
	return p + "?" + vals.Encode()
}

// errUnknownPayer: no source named an account.
var errUnknownPayer = errors.New("no account for this request")

// resolve finds the paying account.
func (id Identity) resolve(ctx context.Context, l Ledger, keys *keyCache, h headers, attrs map[string]string) (account, keyHeader string, err error) {
	for _, src := range id.Sources {
		switch src {
		case "header":
			if a := h.get(id.header()); a != "" {
				return a, "", nil
			}
		case "principal":
			if p := attrs[id.attribute()]; p != "" {
				if a, ok := id.Principals[p]; ok {
					return a, "", nil
				}
			}
		case "apikey":
			key, hdr := clientKey(h)
			if key == "" {
				continue
			}
			a, err := keys.lookup(ctx, l, ledger.HashKey(key))
			if errors.Is(err, ledger.ErrNoKey) {
				continue
			}
			if err != nil {
				return "", "", err
			}
			return a, hdr, nil
		}
	}
	return "", "", errUnknownPayer
}
