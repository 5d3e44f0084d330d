package provider

import "bytes"

// maxLineBytes bounds one SSE line held across chunks; a longer line is
// skipped (its event is marked broken) so a hostile or runaway upstream
// cannot grow the buffer without bound.
const maxLineBytes = 16 << 20

// sseEvent is one dispatched SSE event. data is only valid during the
// emit callback.
type sseEvent struct {
	name    string
	data    []byte
	hasData bool
	broken  bool // a line of it was too long and skipped
	// terminated is false for the last event of a stream that ended
	// without its blank line.
	terminated bool
}

// sseFramer reassembles SSE events (§1.1) from arbitrary chunks. It keeps
// only the unfinished line; event boundaries are reported as absolute
// stream offsets so the caller can forward or drop exact byte ranges.
//
// Lines end in \n, \r\n or \r; a \r at the end of a chunk is held until the
// next byte shows whether \n follows, so a CRLF split across chunks is never
// read as two line ends (which would dispatch an event early). Events end at
// a blank line; "data:" lines are joined with \n; a single space after the
// colon is stripped; comment lines (":…") and unknown fields are ignored.
type sseFramer struct {
	line     []byte // unfinished line carried across chunks
	base     int64  // stream offset of line[0]
	clean    int    // line[:clean] holds no line terminator
	skipping bool   // inside an over-long line, dropping bytes until its end

	blockStart int64 // stream offset where the current event began
	name       string
	data       []byte
	hasData    bool
	broken     bool
}

// push consumes chunk and calls emit for each complete event with its byte
// range [start, end) in the stream, the blank line included.
func (f *sseFramer) push(chunk []byte, emit func(ev *sseEvent, start, end int64)) {
	f.line = append(f.line, chunk...)
	f.scan(false, emit)
}

// finish ends the stream: a trailing \r ends its line, an unterminated last
// line counts as complete, and an event left without its blank line is
// emitted with terminated=false (the handler decides whether its data is
// whole).
func (f *sseFramer) finish(emit func(ev *sseEvent, start, end int64)) {
	f.scan(true, emit)
	if len(f.line) > 0 && !f.skipping {
		f.processLine(f.line)
	}
	end := f.base + int64(len(f.line))
	f.base, f.line = end, f.line[:0]
	if f.hasData || f.name != "" || f.broken || end > f.blockStart {
		f.dispatch(false, end, emit)
	}
}

func (f *sseFramer) scan(final bool, emit func(ev *sseEvent, start, end int64)) {
	pos := 0
	for {
		// Bytes before f.clean were searched already: a long line arriving
		// in small chunks is scanned once, not once per chunk.
		from := max(pos, f.clean)
		i := bytes.IndexAny(f.line[from:], "\r\n")
		if i < 0 {
			f.clean = len(f.line)
			break
		}
		i += from
		term := 1
		if f.line[i] == '\r' {
			if i+1 == len(f.line) && !final {
				f.clean = i // wait: \r\n may be split across chunks
				break
			}
			if i+1 < len(f.line) && f.line[i+1] == '\n' {
				term = 2
			}
		}
		line := f.line[pos:i]
		pos = i + term
		if f.skipping {
			f.skipping = false // the over-long line ends here
			continue
		}
		if len(line) == 0 {
			f.dispatch(true, f.base+int64(pos), emit)
			continue
		}
		f.processLine(line)
	}
	if pos > 0 {
		f.base += int64(pos)
		n := copy(f.line, f.line[pos:])
		f.line = f.line[:n]
		f.clean = max(f.clean-pos, 0)
	}
	if len(f.line) > maxLineBytes {
		f.skipping, f.broken = true, true
	}
	if f.skipping {
		// Drop the over-long line's bytes, but keep a trailing \r: it may be
		// the first half of the CRLF that ends the line.
		n, keep := len(f.line), 0
		if n > 0 && f.line[n-1] == '\r' {
			keep = 1
		}
		f.base += int64(n - keep)
		f.line = append(f.line[:0], f.line[n-keep:]...)
		f.clean = 0
	}
}

func (f *sseFramer) processLine(line []byte) {
	if line[0] == ':' {
		return // comment, e.g. ": keep-alive"
	}
	field, value := line, []byte(nil)
	if i := bytes.IndexByte(line, ':'); i >= 0 {
		field, value = line[:i], line[i+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "data":
		if f.hasData {
			f.data = append(f.data, '\n')
		}
		f.data = append(f.data, value...)
		f.hasData = true
	case "event":
		f.name = string(value)
	}
}

func (f *sseFramer) dispatch(terminated bool, end int64, emit func(ev *sseEvent, start, end int64)) {
	ev := sseEvent{name: f.name, data: f.data, hasData: f.hasData, broken: f.broken, terminated: terminated}
	emit(&ev, f.blockStart, end)
	f.blockStart = end
	f.name, f.data, f.hasData, f.broken = "", f.data[:0], false, false
}
