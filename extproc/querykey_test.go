package extproc

import "testing"

func TestClientKeyFromGeminiQuery(t *testing.T) {
	for _, tc := range []struct {
		path, key, hdr, stripped string
	}{
		{"/v1beta/models/gemini-2.5-flash:generateContent?key=AIzaXYZ", "AIzaXYZ", queryKey, "/v1beta/models/gemini-2.5-flash:generateContent"},
		{"/v1beta/models/m:streamGenerateContent?alt=sse&key=k1", "k1", queryKey, "/v1beta/models/m:streamGenerateContent?alt=sse"},
		{"/v1beta/models/m:generateContent", "", "", "/v1beta/models/m:generateContent"},
	} {
		key, hdr := clientKey(headers{":path": {tc.path}})
		if key != tc.key || hdr != tc.hdr {
			t.Errorf("clientKey(%q) = %q %q, want %q %q", tc.path, key, hdr, tc.key, tc.hdr)
		}
		if got := withoutQueryKey(tc.path); got != tc.stripped {
			t.Errorf("withoutQueryKey(%q) = %q, want %q", tc.path, got, tc.stripped)
		}
	}
	// A header key wins over the query.
	if key, hdr := clientKey(headers{":path": {"/x?key=q"}, "x-goog-api-key": {"h"}}); key != "h" || hdr != "x-goog-api-key" {
		t.Errorf("header key should win: %q %q", key, hdr)
	}
}
