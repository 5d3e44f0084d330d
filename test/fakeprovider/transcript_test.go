package fakeprovider

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
)

var update = flag.Bool("update", false, "rewrite golden files")

// segmentRecorder is a ResponseWriter that keeps every flushed segment, so a
// test sees the exact write boundaries a client would.
type segmentRecorder struct {
	header   http.Header
	status   int
	segments [][]byte
	pending  bytes.Buffer
}

func newSegmentRecorder() *segmentRecorder { return &segmentRecorder{header: http.Header{}} }

func (r *segmentRecorder) Header() http.Header { return r.header }

func (r *segmentRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *segmentRecorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.pending.Write(b)
}

func (r *segmentRecorder) Flush() {
	if r.pending.Len() > 0 {
		r.segments = append(r.segments, bytes.Clone(r.pending.Bytes()))
		r.pending.Reset()
	}
}

// finish closes the response and reports whether the handler aborted.
func (r *segmentRecorder) run(h func()) (aborted bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			aborted = true
		}
		r.Flush()
	}()
	h()
	return false
}

// decodePrefix decompresses as much of b as is available; a flushed but
// unfinished stream yields everything written so far.
func decodePrefix(b []byte, encoding string) string {
	var rd io.Reader
	switch encoding {
	case "gzip":
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		rd = zr
	case "br":
		rd = brotli.NewReader(bytes.NewReader(b))
	default:
		return string(b)
	}
	var out bytes.Buffer
	buf := make([]byte, 512)
	for {
		n, err := rd.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			return out.String()
		}
	}
}

// dump renders a replay for the golden files. Compressed segments are shown
// as the text they make available when decoded up to that point.
func dump(rec *segmentRecorder, aborted bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "status: %d\n", rec.status)
	keys := make([]string, 0, len(rec.header))
	for k := range rec.header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "header %s: %s\n", k, strings.Join(rec.header[k], ", "))
	}
	enc := rec.header.Get("Content-Encoding")
	var sofar []byte
	prev := ""
	for i, s := range rec.segments {
		if enc == "" {
			fmt.Fprintf(&b, "segment %d: %q\n", i+1, s)
			continue
		}
		sofar = append(sofar, s...)
		text := decodePrefix(sofar, enc)
		fmt.Fprintf(&b, "segment %d (%d compressed bytes) adds: %q\n", i+1, len(s), strings.TrimPrefix(text, prev))
		prev = text
	}
	if aborted {
		b.WriteString("end: connection aborted\n")
	} else {
		b.WriteString("end: complete\n")
	}
	return b.String()
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s mismatch\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// TestReplayGolden replays every testdata/transcripts/*.json and compares the
// exact flushed segments with its .golden file.
func TestReplayGolden(t *testing.T) {
	ts, err := LoadTranscripts("testdata/transcripts")
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) == 0 {
		t.Fatal("no transcripts loaded")
	}
	for name, tr := range ts {
		t.Run(name, func(t *testing.T) {
			rec := newSegmentRecorder()
			req := httptest.NewRequest("POST", "/x", nil)
			aborted := rec.run(func() { tr.serve(rec, req) })
			checkGolden(t, filepath.Join("testdata/transcripts", name+".golden"), dump(rec, aborted))
			// Independently of the golden text: a complete replay delivers
			// exactly the transcript body.
			if !aborted {
				var all []byte
				for _, s := range rec.segments {
					all = append(all, s...)
				}
				if got := decodePrefix(all, rec.header.Get("Content-Encoding")); got != string(tr.Joined()) {
					t.Errorf("delivered %q, want %q", got, tr.Joined())
				}
			}
		})
	}
}

// TestStreamChunksKeepBoundaries: an uncompressed stream is flushed exactly
// at the transcript's chunk boundaries.
func TestStreamChunksKeepBoundaries(t *testing.T) {
	chunks := [][]byte{[]byte("data: {\"a\""), []byte(":1}\n\n"), []byte(""), []byte("data: [DONE]\n\n")}
	rec := newSegmentRecorder()
	rec.run(func() { Transcript{Chunks: chunks}.serve(rec, httptest.NewRequest("GET", "/", nil)) })
	var want [][]byte
	for _, c := range chunks {
		if len(c) > 0 {
			want = append(want, c)
		}
	}
	if len(rec.segments) != len(want) {
		t.Fatalf("segments %q, want %q", rec.segments, want)
	}
	for i := range want {
		if !bytes.Equal(rec.segments[i], want[i]) {
			t.Errorf("segment %d = %q, want %q", i, rec.segments[i], want[i])
		}
	}
}

func TestLoadTranscriptRejectsInvalid(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.json")
	if len(files) == 0 {
		t.Fatal("no invalid cases")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := LoadTranscript(f); err == nil {
				t.Error("loaded without error")
			}
		})
	}
}

func TestSplitAt(t *testing.T) {
	tests := []struct {
		body    string
		offsets []int
		want    []string
		wantErr bool
	}{
		{"abcdef", nil, []string{"abcdef"}, false},
		{"abcdef", []int{2, 4}, []string{"ab", "cd", "ef"}, false},
		{"abcdef", []int{0, 6}, []string{"", "abcdef", ""}, false},
		{"abcdef", []int{3, 3}, []string{"abc", "", "def"}, false},
		{"abcdef", []int{4, 2}, nil, true},
		{"abcdef", []int{7}, nil, true},
		{"abcdef", []int{-1}, nil, true},
	}
	for _, tc := range tests {
		got, err := SplitAt([]byte(tc.body), tc.offsets...)
		if (err != nil) != tc.wantErr {
			t.Errorf("SplitAt(%q, %v) error %v", tc.body, tc.offsets, err)
			continue
		}
		if !tc.wantErr && fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tc.want) {
			t.Errorf("SplitAt(%q, %v) = %q, want %q", tc.body, tc.offsets, got, tc.want)
		}
	}
}

func TestSplitEveryAndEvents(t *testing.T) {
	tests := []struct {
		name string
		got  [][]byte
		want []string
	}{
		{"every 4", SplitEvery([]byte("abcdefghij"), 4), []string{"abcd", "efgh", "ij"}},
		{"every 0", SplitEvery([]byte("abc"), 0), []string{"abc"}},
		{"events lf", SplitEvents([]byte("data: 1\n\ndata: 2\n\n")), []string{"data: 1\n\n", "data: 2\n\n"}},
		{"events crlf and tail", SplitEvents([]byte("data: 1\r\n\r\nevent: x\ndata: 2\n\npartial")), []string{"data: 1\r\n\r\n", "event: x\ndata: 2\n\n", "partial"}},
		{"events cr", SplitEvents([]byte("data: 1\r\rdata: 2\r\r")), []string{"data: 1\r\r", "data: 2\r\r"}},
	}
	for _, tc := range tests {
		if fmt.Sprintf("%q", tc.got) != fmt.Sprintf("%q", tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}

// TestCutAfterOverHTTP: a real client sees the first chunks, then a broken
// stream instead of a clean end.
func TestCutAfterOverHTTP(t *testing.T) {
	tr, err := LoadTranscript("testdata/transcripts/cut_after_two_chunks.json")
	if err != nil {
		t.Fatal(err)
	}
	p := New()
	p.Handle("/v1/chat/completions", tr)
	srv := httptest.NewServer(p)
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read error %v, want unexpected EOF", err)
	}
	if want := "data: {\"n\":1}\n\ndata: {\"n\":2}\n\n"; string(got) != want {
		t.Errorf("read %q before the cut, want %q", got, want)
	}
}

// TestGzipOverHTTP: a compressed stream decodes to the transcript body for a
// real client.
func TestGzipOverHTTP(t *testing.T) {
	tr, err := LoadTranscript("testdata/transcripts/gzip_stream.json")
	if err != nil {
		t.Fatal(err)
	}
	p := New()
	p.Handle("/s", tr)
	srv := httptest.NewServer(p)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/s") // the default transport decompresses gzip
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || string(got) != string(tr.Joined()) || !resp.Uncompressed {
		t.Errorf("got %q (uncompressed=%t) err %v", got, resp.Uncompressed, err)
	}
}
