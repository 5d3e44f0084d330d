package pricing

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrUnknownModel is matched (errors.Is) by every *UnknownModelError.
var ErrUnknownModel = errors.New("unknown model")

// UnknownModelError says that no price row prices this call. Callers must
// refuse or hold the request, never treat it as free.
type UnknownModelError struct {
	Provider string
	Model    string
	At       time.Time
	// Reason distinguishes "no such model" from "no price in force yet".
	Reason string
}

func (e *UnknownModelError) Error() string {
	return fmt.Sprintf("pricing: no price for %s model %q at %s: %s",
		e.Provider, e.Model, e.At.UTC().Format(time.RFC3339), e.Reason)
}

// Is makes errors.Is(err, ErrUnknownModel) true.
func (e *UnknownModelError) Is(target error) bool { return target == ErrUnknownModel }

// fallbackProvider lists providers that sell another provider's models at
// the same list prices: Azure OpenAI bills OpenAI's list price for the same
// model, so azure rows are optional.
func fallbackProvider(p string) string {
	if p == "azure" {
		return "openai"
	}
	return ""
}

// Lookup finds the row that prices a call to model at time at (the time the
// call started). The model is matched case-insensitively, in this order:
//  1. a model name or alias of the provider;
//  2. a dated snapshot of one: the longest known name that is followed by
//     '-' or '@' and a snapshot suffix (see isSnapshotSuffix), e.g.
//     "claude-sonnet-4-5-20250929" → claude-sonnet-4-5 and
//     "gpt-4o-mini-2024-07-18" → gpt-4o-mini, never gpt-4o;
//  3. for azure only, the same two steps on openai's rows.
//
// A leading "models/" (Gemini's resource name form) is ignored. Of the
// model's rows, the one with the latest effective_from not after at wins.
func (c *Catalog) Lookup(provider, model string, at time.Time) (*Row, error) {
	prov := strings.ToLower(strings.TrimSpace(provider))
	key := modelKey(strings.TrimPrefix(strings.TrimSpace(model), "models/"))
	unknown := func(reason string) error {
		return &UnknownModelError{Provider: provider, Model: model, At: at, Reason: reason}
	}
	if key == "" {
		return nil, unknown("empty model name")
	}
	for p := prov; p != ""; p = fallbackProvider(p) {
		idx := c.providers[p]
		if idx == nil {
			continue
		}
		canon, ok := idx.resolve(key)
		if !ok {
			continue
		}
		rows := idx.rows[canon]
		var found *Row
		for _, r := range rows {
			if r.EffectiveFrom.After(at) {
				break
			}
			found = r
		}
		if found == nil {
			return nil, unknown(fmt.Sprintf("model %s/%s has no price in force yet (earliest row %s)",
				p, rows[0].Model, rows[0].ID))
		}
		return found, nil
	}
	if c.providers[prov] == nil && fallbackProvider(prov) == "" {
		return nil, unknown("provider not in catalog " + c.version)
	}
	return nil, unknown("model not in catalog " + c.version)
}

func (idx *providerIndex) resolve(key string) (string, bool) {
	if canon, ok := idx.names[key]; ok {
		return canon, true
	}
	for i := len(key) - 1; i > 0; i-- {
		if key[i] != '-' && key[i] != '@' {
			continue
		}
		if canon, ok := idx.names[key[:i]]; ok && isSnapshotSuffix(key[i:]) {
			return canon, true
		}
	}
	return "", false
}

// isSnapshotSuffix accepts what providers append to pin a snapshot of the
// same model: '-' or '@', then '-'-separated groups of at least two digits
// ("-20250929", "-2024-08-06", "@20250929", "-0709", "-001"), optionally
// ending in a version tag such as "-v1:0". Words are not accepted, so
// "gpt-4o-audio-preview" or "-latest" (a moving alias that may change price)
// never silently resolve to the base model's row; list them as aliases.
func isSnapshotSuffix(s string) bool {
	if len(s) < 2 || (s[0] != '-' && s[0] != '@') {
		return false
	}
	groups := strings.Split(s[1:], "-")
	digitGroups := 0
	for i, g := range groups {
		switch {
		case len(g) >= 2 && allDigits(g):
			digitGroups++
		case i == len(groups)-1 && digitGroups > 0 && isVersionTag(g):
		default:
			return false
		}
	}
	return digitGroups > 0
}

// isVersionTag matches "v1" or "v1:0".
func isVersionTag(g string) bool {
	if len(g) < 2 || g[0] != 'v' {
		return false
	}
	major, minor, hasMinor := strings.Cut(g[1:], ":")
	return allDigits(major) && major != "" && (!hasMinor || (minor != "" && allDigits(minor)))
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
