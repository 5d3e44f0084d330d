package provider_test

import (
	"bytes"
	"github.com/creditgate/creditgate/test/benchratio"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/tidwall/gjson"

	"github.com/creditgate/creditgate/extproc/provider"
)

// benchStreamBytes is how many bytes of content-delta events each benchmark
// stream carries: a long answer, so per-stream setup does not dominate.
const benchStreamBytes = 1 << 20

// BenchmarkStreamParse prices parsing a streamed response while it passes
// through: Feed of every 1–4 KiB chunk (Envoy's usual body callback sizes)
// and Finish, against a baseline that only copies the same chunks into a
// bytes.Buffer. Each stream is a recorded fixture whose content deltas are
// repeated to about 1 MiB; "injected" is the path where the parser also
// holds back and hides the usage chunk the gateway asked for.
func BenchmarkStreamParse(b *testing.B) {
	for _, name := range []string{"openai_chat_stream_cached", "openai_chat_stream_injected", "anthropic_stream"} {
		b.Run(name, func(b *testing.B) {
			s := loadBenchStream(b, name)
			benchratio.Pair(b,
				benchratio.Case{Name: "baseline=copy", Run: func(b *testing.B) {
					var buf bytes.Buffer
					buf.Grow(len(s.stream))
					b.SetBytes(int64(len(s.stream)))
					for b.Loop() {
						buf.Reset()
						for _, c := range s.chunks {
							buf.Write(c)
						}
					}
				}},
				benchratio.Case{Name: "feed+finish", Run: func(b *testing.B) {
					b.SetBytes(int64(len(s.stream)))
					for b.Loop() {
						p := provider.NewStreamParser(s.route, s.req)
						for _, c := range s.chunks {
							p.Feed(c)
						}
						p.Finish()
					}
				}})
		})
	}
}

type benchStream struct {
	route  provider.Route
	req    provider.Request
	stream []byte
	chunks [][]byte
}

// loadBenchStream builds the stream of a fixture in testdata/cases and
// checks, untimed, that parsing it gives the fixture's own result scaled by
// the repetition: a benchmark of a parser that lost track of the stream
// would time the wrong thing.
func loadBenchStream(b *testing.B, name string) benchStream {
	b.Helper()
	read := func(ext string) []byte {
		buf, err := os.ReadFile(filepath.Join("testdata", "cases", name+ext))
		if err != nil {
			b.Fatal(err)
		}
		return buf
	}
	authority, path, _ := strings.Cut(strings.TrimSpace(string(read(".route"))), " ")
	route, err := (&provider.Detector{}).Detect(authority, path)
	if err != nil {
		b.Fatal(err)
	}
	req, err := provider.ParseRequest(route, read(".request.json"))
	if err != nil {
		b.Fatal(err)
	}
	fixture := read(".response.sse")
	cycle := len(deltaCycle(b, fixture))
	reps := max(1, (benchStreamBytes+cycle-1)/cycle)
	s := benchStream{route: route, req: req, stream: repeatDeltas(b, fixture, reps)}

	// Envoy hands the body over in pieces of whatever size the socket read
	// returned; a fixed seed keeps every run's split the same.
	rng := rand.New(rand.NewPCG(1, 2))
	for rest := s.stream; len(rest) > 0; {
		n := min(len(rest), 1024+rng.IntN(3*1024+1))
		s.chunks, rest = append(s.chunks, rest[:n]), rest[n:]
	}

	want := parseWhole(route, req, fixture)
	want.OutputBytes *= int64(reps)
	p := provider.NewStreamParser(route, req)
	var forwarded []byte
	for _, c := range s.chunks {
		forwarded = append(forwarded, p.Feed(c)...)
	}
	got := p.Finish()
	forwarded = append(forwarded, got.Tail...)
	got.Tail = nil
	if !reflect.DeepEqual(got, want) {
		b.Fatalf("%s repeated %d times: parsed %+v, want %+v", name, reps, got, want)
	}
	wantFwd := s.stream
	if fwd, err := os.ReadFile(filepath.Join("testdata", "cases", name+".forwarded.sse")); err == nil {
		wantFwd = repeatDeltas(b, fwd, reps)
	}
	if !bytes.Equal(forwarded, wantFwd) {
		b.Fatalf("%s: forwarded %d bytes, want %d", name, len(forwarded), len(wantFwd))
	}
	return s
}

func parseWhole(route provider.Route, req provider.Request, stream []byte) provider.Result {
	p := provider.NewStreamParser(route, req)
	p.Feed(stream)
	res := p.Finish()
	res.Tail = nil
	return res
}

// sseBlocks splits an LF-framed SSE stream into its events, each with its
// blank line.
func sseBlocks(b *testing.B, stream []byte) [][]byte {
	b.Helper()
	if bytes.Contains(stream, []byte("\r")) {
		b.Fatal("bench fixtures must be LF-framed")
	}
	var out [][]byte
	for _, ev := range bytes.SplitAfter(stream, []byte("\n\n")) {
		if len(ev) > 0 {
			out = append(out, ev)
		}
	}
	return out
}

// isContentDelta: an OpenAI chat chunk with generated text, or an Anthropic
// content_block_delta.
func isContentDelta(ev []byte) bool {
	for _, line := range bytes.Split(ev, []byte("\n")) {
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok {
			continue
		}
		d := gjson.ParseBytes(data)
		if d.Get("type").String() == "content_block_delta" || d.Get("choices.0.delta.content").String() != "" {
			return true
		}
	}
	return false
}

// deltaSpan finds the contiguous run of content-delta events.
func deltaSpan(b *testing.B, evs [][]byte) (first, last int) {
	b.Helper()
	first, last = -1, -1
	for i, ev := range evs {
		if isContentDelta(ev) {
			if first < 0 {
				first = i
			} else if last != i-1 {
				b.Fatal("content deltas are not contiguous")
			}
			last = i
		}
	}
	if first < 0 {
		b.Fatal("no content deltas in fixture")
	}
	return first, last
}

func deltaCycle(b *testing.B, stream []byte) []byte {
	evs := sseBlocks(b, stream)
	first, last := deltaSpan(b, evs)
	return bytes.Join(evs[first:last+1], nil)
}

// repeatDeltas returns stream with its content-delta events repeated reps
// times in place: the same start, a longer answer, the same end.
func repeatDeltas(b *testing.B, stream []byte, reps int) []byte {
	evs := sseBlocks(b, stream)
	first, last := deltaSpan(b, evs)
	var out []byte
	out = append(out, bytes.Join(evs[:first], nil)...)
	out = append(out, bytes.Repeat(bytes.Join(evs[first:last+1], nil), reps)...)
	return append(out, bytes.Join(evs[last+1:], nil)...)
}
