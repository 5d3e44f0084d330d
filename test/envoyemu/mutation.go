package envoyemu

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Limits of the HTTP connection manager that bound header mutations
// (common_http_protocol_options.max_headers_count, max_request_headers_kb).
const (
	maxHeadersCount = 100
	maxHeadersBytes = 60 * 1024
)

type checkOp int

const (
	opSet checkOp = iota
	opAppend
	opRemove
)

type checkResult int

const (
	checkOK checkResult = iota
	checkIgnore
	checkFail
)

// mutationChecker is Filters::Common::MutationRules::Checker
// (envoy-extproc.md §2.3; defaults apply when mutation_rules is unset).
type mutationChecker struct {
	allowAllRouting bool
	allowEnvoy      bool
	disallowSystem  bool
	disallowAll     bool
	disallowIsError bool
	allowExpr       *regexp.Regexp
	disallowExpr    *regexp.Regexp
}

func newMutationChecker(r *mutationrulesv3.HeaderMutationRules) (*mutationChecker, error) {
	c := &mutationChecker{
		allowAllRouting: r.GetAllowAllRouting().GetValue(),
		allowEnvoy:      r.GetAllowEnvoy().GetValue(),
		disallowSystem:  r.GetDisallowSystem().GetValue(),
		disallowAll:     r.GetDisallowAll().GetValue(),
		disallowIsError: r.GetDisallowIsError().GetValue(),
	}
	var err error
	if r.GetAllowExpression() != nil {
		if c.allowExpr, err = fullMatchRegexp(r.GetAllowExpression().GetRegex()); err != nil {
			return nil, fmt.Errorf("mutation_rules.allow_expression: %w", err)
		}
	}
	if r.GetDisallowExpression() != nil {
		if c.disallowExpr, err = fullMatchRegexp(r.GetDisallowExpression().GetRegex()); err != nil {
			return nil, fmt.Errorf("mutation_rules.disallow_expression: %w", err)
		}
	}
	return c, nil
}

// routingHeaders may only change with allow_all_routing (§2.3).
var routingHeaders = map[string]bool{"host": true, ":authority": true, ":method": true, ":scheme": true}

func (c *mutationChecker) check(op checkOp, name, value string) checkResult {
	if c.isAllowed(op, name) && (op == opRemove || isValidMutationValue(name, value)) {
		return checkOK
	}
	if c.disallowIsError {
		return checkFail
	}
	return checkIgnore
}

func (c *mutationChecker) isAllowed(op checkOp, name string) bool {
	// envoy-extproc.md §2.3: REMOVE is never allowed for ":" headers or host.
	if op == opRemove && (strings.HasPrefix(name, ":") || name == "host") {
		return false
	}
	if c.disallowExpr != nil && c.disallowExpr.MatchString(name) {
		return false
	}
	if c.allowExpr != nil && c.allowExpr.MatchString(name) {
		return true
	}
	if c.disallowAll {
		return false
	}
	if !c.allowAllRouting && routingHeaders[name] {
		return false
	}
	// §2.3: APPEND to any ":" header is ignored; disallow_system blocks all of them.
	if strings.HasPrefix(name, ":") && (op == opAppend || c.disallowSystem) {
		return false
	}
	// §2.3: x-envoy-* (the bootstrap header_prefix) needs allow_envoy.
	if !c.allowEnvoy && strings.HasPrefix(name, "x-envoy") {
		return false
	}
	return true
}

// isValidMutationValue is Checker::isValidValue: the checks that keep Envoy
// from behaving badly on sensitive headers (§2.3).
func isValidMutationValue(name, value string) bool {
	if !strings.HasPrefix(name, ":") && !headerValueIsValid(value) {
		return false
	}
	switch name {
	case "host", ":authority":
		return authorityIsValid(value)
	case ":scheme":
		return strings.EqualFold(value, "http") || strings.EqualFold(value, "https")
	case ":status":
		n, err := strconv.ParseUint(value, 10, 32)
		return err == nil && n >= 200
	}
	return true
}

// headerValueIsValid follows nghttp2_check_header_value: HTAB, SP, VCHAR and
// obs-text.
func headerValueIsValid(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\t' || (c >= 0x20 && c != 0x7f) {
			continue
		}
		return false
	}
	return true
}

// headerNameIsValid uses HTTP/2 rules for pseudo-headers (lower-case token)
// and HTTP/1 token rules otherwise, like HeaderUtility::headerNameIsValid.
func headerNameIsValid(k string) bool {
	if k == "" {
		return false
	}
	rest := k
	pseudo := strings.HasPrefix(k, ":")
	if pseudo {
		rest = k[1:]
		if rest == "" {
			return false
		}
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if pseudo && c >= 'A' && c <= 'Z' {
			return false
		}
		if !isTokenChar(c) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func authorityIsValid(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~!$&'()*+,;=:@[]%", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// applyHeaderMutations mirrors MutationUtils::applyHeaderMutations with the
// legacy append semantics Envoy honours (envoy-extproc.md §2.3):
//   - only HeaderValueOption.append (default false = overwrite) counts;
//     append_action and keep_empty_value are ignored;
//   - value and raw_value both set is an error; raw_value is the value used,
//     so a value-only header becomes an empty string;
//   - replacing (CONTINUE_AND_REPLACE) always allows :method;
//   - with removeContentLength, content-length sets are skipped (§2.4).
//
// rejected counts ignored or failed entries (rejected_header_mutations).
func applyHeaderMutations(m *extprocv3.HeaderMutation, h *headerMap, replacing bool,
	c *mutationChecker, removeContentLength bool, rejected func()) error {
	if len(m.GetRemoveHeaders()) > maxHeadersCount || len(m.GetSetHeaders()) > maxHeadersCount {
		rejected()
		return processingErr("Header mutation remove header count %d or set header count %d exceed the HCM header count limit %d", len(m.GetRemoveHeaders()), len(m.GetSetHeaders()), maxHeadersCount)
	}
	for _, name := range m.GetRemoveHeaders() {
		if !headerNameIsValid(name) {
			rejected()
			return processingErr("Invalid character in remove_headers mutation.")
		}
		name = strings.ToLower(name)
		switch c.check(opRemove, name, "") {
		case checkOK:
			h.del(name)
		case checkIgnore:
			rejected()
		case checkFail:
			rejected()
			return processingErr("Invalid attempt to remove %s", name)
		}
	}
	for _, sh := range m.GetSetHeaders() {
		hv := sh.GetHeader()
		if hv == nil {
			continue
		}
		if hv.GetValue() != "" && len(hv.GetRawValue()) != 0 {
			rejected()
			return processingErr("Only one of value or raw_value in the HeaderValue message should be set.")
		}
		value := string(hv.GetRawValue())
		if !headerNameIsValid(hv.GetKey()) || !headerValueIsValid(value) {
			rejected()
			return processingErr("Invalid character in set_headers mutation.")
		}
		name := strings.ToLower(hv.GetKey())
		if removeContentLength && name == "content-length" {
			// envoy-extproc.md §2.4: a content-length the server sets is silently skipped.
			continue
		}
		appendMode := sh.GetAppend().GetValue()
		op := opSet
		if appendMode && h.has(name) {
			op = opAppend
		}
		res := c.check(op, name, value)
		if replacing && name == ":method" {
			res = checkOK
		}
		switch res {
		case checkOK:
			if appendMode {
				h.add(name, value)
			} else {
				h.set(name, value)
			}
		case checkIgnore:
			rejected()
		case checkFail:
			rejected()
			return processingErr("Invalid attempt to modify %s", name)
		}
	}
	if h.byteSize() > maxHeadersBytes || h.size() > maxHeadersCount {
		rejected()
		return processingErr("Header mutation causes end result header count %d or header size %d bytes, exceeding the count limit %d or the size limit %d kilobytes", h.size(), h.byteSize(), maxHeadersCount, maxHeadersBytes/1024)
	}
	return nil
}
