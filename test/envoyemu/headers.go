package envoyemu

import (
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// headerMap is an ordered multi-map with lower-case keys, like Envoy's
// HeaderMapImpl: repeated headers stay separate entries and pseudo-headers are
// ordinary entries.
type headerMap struct {
	entries []headerEntry
}

type headerEntry struct {
	key   string
	value string
}

func (h *headerMap) get(key string) (string, bool) {
	for _, e := range h.entries {
		if e.key == key {
			return e.value, true
		}
	}
	return "", false
}

func (h *headerMap) value(key string) string {
	v, _ := h.get(key)
	return v
}

func (h *headerMap) has(key string) bool {
	_, ok := h.get(key)
	return ok
}

func (h *headerMap) add(key, value string) {
	h.entries = append(h.entries, headerEntry{key: strings.ToLower(key), value: value})
}

// set replaces every value of key with one value, keeping the position of the
// first occurrence (Envoy's setCopy).
func (h *headerMap) set(key, value string) {
	key = strings.ToLower(key)
	out := h.entries[:0]
	placed := false
	for _, e := range h.entries {
		if e.key != key {
			out = append(out, e)
			continue
		}
		if !placed {
			out = append(out, headerEntry{key: key, value: value})
			placed = true
		}
	}
	h.entries = out
	if !placed {
		h.entries = append(h.entries, headerEntry{key: key, value: value})
	}
}

func (h *headerMap) del(key string) {
	key = strings.ToLower(key)
	out := h.entries[:0]
	for _, e := range h.entries {
		if e.key != key {
			out = append(out, e)
		}
	}
	h.entries = out
}

func (h *headerMap) size() int { return len(h.entries) }

func (h *headerMap) byteSize() int {
	n := 0
	for _, e := range h.entries {
		n += len(e.key) + len(e.value)
	}
	return n
}

func (h *headerMap) clone() *headerMap {
	return &headerMap{entries: append([]headerEntry(nil), h.entries...)}
}

// toProto encodes the map the way MutationUtils::headersToProto does since
// Envoy 1.32: key lower-case, value only in raw_value, filtered by
// forward_rules (envoy-extproc.md §1.3).
func (h *headerMap) toProto(fr *forwardRules) *corev3.HeaderMap {
	out := &corev3.HeaderMap{}
	for _, e := range h.entries {
		if fr != nil && !fr.canForward(e.key) {
			continue
		}
		out.Headers = append(out.Headers, &corev3.HeaderValue{Key: e.key, RawValue: []byte(e.value)})
	}
	return out
}

// forwardRules implements ExternalProcessor.forward_rules
// (MutationUtils::headerCanBeForwarded), pseudo-headers included (§1.3).
type forwardRules struct {
	allowed    []*stringMatcher
	disallowed []*stringMatcher
}

func newForwardRules(r *extprocfilterv3.HeaderForwardingRules) (*forwardRules, error) {
	if r == nil {
		return nil, nil
	}
	fr := &forwardRules{}
	var err error
	if fr.allowed, err = compileMatchers(r.GetAllowedHeaders().GetPatterns()); err != nil {
		return nil, err
	}
	if fr.disallowed, err = compileMatchers(r.GetDisallowedHeaders().GetPatterns()); err != nil {
		return nil, err
	}
	return fr, nil
}

func (fr *forwardRules) canForward(key string) bool {
	if matchAny(fr.disallowed, key) {
		return false
	}
	return len(fr.allowed) == 0 || matchAny(fr.allowed, key)
}

type stringMatcher struct {
	exact, prefix, suffix, contains string
	kind                            int
	ignoreCase                      bool
	re                              *regexp.Regexp
}

const (
	matchExact = iota
	matchPrefix
	matchSuffix
	matchContains
	matchRegex
)

func compileMatchers(ms []*matcherv3.StringMatcher) ([]*stringMatcher, error) {
	var out []*stringMatcher
	for _, m := range ms {
		sm := &stringMatcher{ignoreCase: m.GetIgnoreCase()}
		switch p := m.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			sm.kind, sm.exact = matchExact, p.Exact
		case *matcherv3.StringMatcher_Prefix:
			sm.kind, sm.prefix = matchPrefix, p.Prefix
		case *matcherv3.StringMatcher_Suffix:
			sm.kind, sm.suffix = matchSuffix, p.Suffix
		case *matcherv3.StringMatcher_Contains:
			sm.kind, sm.contains = matchContains, p.Contains
		case *matcherv3.StringMatcher_SafeRegex:
			re, err := fullMatchRegexp(p.SafeRegex.GetRegex())
			if err != nil {
				return nil, err
			}
			sm.kind, sm.re = matchRegex, re
		default:
			return nil, errUnsupported("string matcher %T", p)
		}
		out = append(out, sm)
	}
	return out, nil
}

// fullMatchRegexp mirrors RE2::FullMatch, which Envoy's safe_regex uses.
func fullMatchRegexp(expr string) (*regexp.Regexp, error) {
	return regexp.Compile(`^(?:` + expr + `)$`)
}

func (m *stringMatcher) match(s string) bool {
	cmp := func(a string) string { return a }
	if m.ignoreCase {
		cmp = strings.ToLower
	}
	switch m.kind {
	case matchExact:
		return cmp(s) == cmp(m.exact)
	case matchPrefix:
		return strings.HasPrefix(cmp(s), cmp(m.prefix))
	case matchSuffix:
		return strings.HasSuffix(cmp(s), cmp(m.suffix))
	case matchContains:
		return strings.Contains(cmp(s), cmp(m.contains))
	default:
		return m.re.MatchString(s)
	}
}

func matchAny(ms []*stringMatcher, s string) bool {
	for _, m := range ms {
		if m.match(s) {
			return true
		}
	}
	return false
}
