package fakeprovider

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/andybalholm/brotli"
)

// Transcript is one scripted upstream response.
//
// With Chunks the response is streamed: headers are flushed first, then each
// chunk is written and flushed on its own, exactly as split (an SSE event may
// span chunks). Without Chunks, Body is written in one piece with a
// Content-Length. Gzip or Brotli compress the body; for streams the
// compressor is flushed after every chunk so each chunk still leaves at once.
// CutAfter > 0 aborts the connection after that many chunks (no terminating
// chunk, no compressor trailer); CutAfter == len(Chunks) sends everything but
// the clean end. Delay is slept before the body (Body) or before every chunk
// (Chunks); the status line of a stream is sent before the first delay.
type Transcript struct {
	Status   int
	Headers  map[string]string
	Body     []byte
	Chunks   [][]byte
	Gzip     bool
	Brotli   bool
	CutAfter int
	Delay    time.Duration
}

// Validate reports transcripts that cannot be replayed unambiguously.
func (t Transcript) Validate() error {
	switch {
	case t.Gzip && t.Brotli:
		return errors.New("fakeprovider: Gzip and Brotli are exclusive")
	case len(t.Body) > 0 && len(t.Chunks) > 0:
		return errors.New("fakeprovider: Body and Chunks are exclusive")
	case t.CutAfter < 0 || t.CutAfter > len(t.Chunks):
		return fmt.Errorf("fakeprovider: CutAfter %d outside 0..%d chunks", t.CutAfter, len(t.Chunks))
	case t.Status != 0 && (t.Status < 100 || t.Status > 999):
		return fmt.Errorf("fakeprovider: invalid status %d", t.Status)
	}
	return nil
}

// Joined returns the uncompressed body a complete replay delivers.
func (t Transcript) Joined() []byte {
	if len(t.Chunks) == 0 {
		return t.Body
	}
	return bytes.Join(t.Chunks, nil)
}

// serve replays t. It must be called from an http.Handler.
func (t Transcript) serve(w http.ResponseWriter, r *http.Request) {
	if err := t.Validate(); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	status := t.Status
	if status == 0 {
		status = http.StatusOK
	}
	h := w.Header()
	for k, v := range t.Headers {
		h.Set(k, v)
	}
	compressed := t.Gzip || t.Brotli
	if t.Gzip {
		h.Set("Content-Encoding", "gzip")
	}
	if t.Brotli {
		h.Set("Content-Encoding", "br")
	}
	if len(t.Chunks) == 0 {
		body := t.Body
		if compressed {
			body = compressAll(body, t.Brotli)
			h.Del("Content-Length")
		}
		if h.Get("Content-Length") == "" {
			h.Set("Content-Length", strconv.Itoa(len(body)))
		}
		if !sleep(r.Context(), t.Delay) {
			return
		}
		w.WriteHeader(status)
		_, _ = w.Write(body)
		return
	}
	if compressed {
		h.Del("Content-Length")
	}
	rc := http.NewResponseController(w)
	w.WriteHeader(status)
	_ = rc.Flush()
	var cw compressWriter
	var out io.Writer = w
	if compressed {
		cw = newCompressor(w, t.Brotli)
		out = cw
	}
	for i, c := range t.Chunks {
		if t.CutAfter > 0 && i == t.CutAfter {
			panic(http.ErrAbortHandler)
		}
		if !sleep(r.Context(), t.Delay) {
			return
		}
		if _, err := out.Write(c); err != nil {
			return
		}
		if cw != nil {
			if err := cw.Flush(); err != nil {
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
	}
	if t.CutAfter > 0 && t.CutAfter == len(t.Chunks) {
		panic(http.ErrAbortHandler)
	}
	if cw != nil {
		_ = cw.Close()
		_ = rc.Flush()
	}
}

type compressWriter interface {
	io.WriteCloser
	Flush() error
}

func newCompressor(w io.Writer, br bool) compressWriter {
	if br {
		return brotli.NewWriter(w)
	}
	return gzip.NewWriter(w)
}

func compressAll(b []byte, br bool) []byte {
	var buf bytes.Buffer
	cw := newCompressor(&buf, br)
	_, _ = cw.Write(b)
	_ = cw.Close()
	return buf.Bytes()
}

// sleep waits d unless ctx ends first; it reports whether to carry on.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// SplitAt cuts body at the given increasing offsets: SplitAt(b, 3, 7) gives
// b[:3], b[3:7], b[7:]. Offsets outside 0..len(body) or out of order are an
// error; empty pieces are kept (they are real zero-length writes).
func SplitAt(body []byte, offsets ...int) ([][]byte, error) {
	prev := 0
	var out [][]byte
	for _, o := range offsets {
		if o < prev || o > len(body) {
			return nil, fmt.Errorf("fakeprovider: split offset %d outside %d..%d", o, prev, len(body))
		}
		out = append(out, body[prev:o])
		prev = o
	}
	return append(out, body[prev:]), nil
}

// SplitEvery cuts body into pieces of n bytes (the last may be shorter).
func SplitEvery(body []byte, n int) [][]byte {
	if n <= 0 {
		return [][]byte{body}
	}
	var out [][]byte
	for len(body) > n {
		out = append(out, body[:n])
		body = body[n:]
	}
	return append(out, body)
}

// SplitEvents cuts an SSE body after every event terminator ("\n\n",
// "\r\n\r\n" or "\r\r"), so each chunk holds exactly one event.
func SplitEvents(body []byte) [][]byte {
	var out [][]byte
	for len(body) > 0 {
		end := -1
		for i := 0; i < len(body) && end < 0; i++ {
			for _, term := range [][]byte{[]byte("\r\n\r\n"), []byte("\n\n"), []byte("\r\r")} {
				if bytes.HasPrefix(body[i:], term) {
					end = i + len(term)
					break
				}
			}
		}
		if end < 0 {
			end = len(body)
		}
		out = append(out, body[:end])
		body = body[end:]
	}
	return out
}

// transcriptFile is the on-disk form read by LoadTranscript.
type transcriptFile struct {
	Status      int               `json:"status"`
	Headers     map[string]string `json:"headers"`
	Body        *string           `json:"body"`
	BodyFile    string            `json:"body_file"`
	BodyBase64  string            `json:"body_base64"`
	Chunks      []string          `json:"chunks"`
	SplitAt     []int             `json:"split_at"`
	SplitEvery  int               `json:"split_every"`
	SplitEvents bool              `json:"split_events"`
	Gzip        bool              `json:"gzip"`
	Brotli      bool              `json:"brotli"`
	CutAfter    int               `json:"cut_after"`
	Delay       string            `json:"delay"`
}

// LoadTranscript reads a JSON transcript document:
//
//	{"status": 200, "headers": {"Content-Type": "text/event-stream"},
//	 "body": "…" | "body_file": "stream.sse" | "body_base64": "…" | "chunks": ["…", "…"],
//	 "split_at": [12, 40] | "split_every": 7 | "split_events": true,
//	 "gzip": false, "brotli": false, "cut_after": 0, "delay": "5ms"}
//
// body_file is relative to the transcript. A split turns the body into
// Chunks (a stream). Unknown fields are an error so typos do not pass
// silently.
func LoadTranscript(path string) (Transcript, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Transcript{}, fmt.Errorf("fakeprovider: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var f transcriptFile
	if err := dec.Decode(&f); err != nil {
		return Transcript{}, fmt.Errorf("fakeprovider: %s: %w", path, err)
	}
	t, err := f.transcript(filepath.Dir(path))
	if err != nil {
		return Transcript{}, fmt.Errorf("fakeprovider: %s: %w", path, err)
	}
	return t, nil
}

func (f transcriptFile) transcript(dir string) (Transcript, error) {
	t := Transcript{Status: f.Status, Headers: f.Headers, Gzip: f.Gzip, Brotli: f.Brotli, CutAfter: f.CutAfter}
	if f.Delay != "" {
		d, err := time.ParseDuration(f.Delay)
		if err != nil {
			return t, err
		}
		t.Delay = d
	}
	sources := 0
	var body []byte
	if f.Body != nil {
		sources++
		body = []byte(*f.Body)
	}
	if f.BodyFile != "" {
		sources++
		b, err := os.ReadFile(filepath.Join(dir, f.BodyFile))
		if err != nil {
			return t, err
		}
		body = b
	}
	if f.BodyBase64 != "" {
		sources++
		b, err := base64.StdEncoding.DecodeString(f.BodyBase64)
		if err != nil {
			return t, err
		}
		body = b
	}
	if f.Chunks != nil {
		sources++
		for _, c := range f.Chunks {
			t.Chunks = append(t.Chunks, []byte(c))
		}
	}
	if sources > 1 {
		return t, errors.New("give only one of body, body_file, body_base64, chunks")
	}
	splits := 0
	for _, on := range []bool{f.SplitAt != nil, f.SplitEvery > 0, f.SplitEvents} {
		if on {
			splits++
		}
	}
	switch {
	case splits > 1:
		return t, errors.New("give only one of split_at, split_every, split_events")
	case splits == 1 && f.Chunks != nil:
		return t, errors.New("chunks are already split")
	case f.SplitAt != nil:
		chunks, err := SplitAt(body, f.SplitAt...)
		if err != nil {
			return t, err
		}
		t.Chunks = chunks
	case f.SplitEvery > 0:
		t.Chunks = SplitEvery(body, f.SplitEvery)
	case f.SplitEvents:
		t.Chunks = SplitEvents(body)
	default:
		t.Body = body
	}
	return t, t.Validate()
}

// LoadTranscripts loads every *.json file of dir, keyed by file name without
// the extension.
func LoadTranscripts(dir string) (map[string]Transcript, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("fakeprovider: %w", err)
	}
	sort.Strings(matches)
	out := make(map[string]Transcript, len(matches))
	for _, m := range matches {
		t, err := LoadTranscript(m)
		if err != nil {
			return nil, err
		}
		out[strings.TrimSuffix(filepath.Base(m), ".json")] = t
	}
	return out, nil
}
