package provider

import (
	"bytes"

	"github.com/tidwall/gjson"
)

// maxHeldBytes bounds what the parser holds back while hiding an injected
// usage chunk. An event that grows past it is forwarded as is and hiding
// stops; the client then may see the usage chunk, which is harmless next to
// stalling the stream.
const maxHeldBytes = 8 << 20

// StreamParser reads a streamed response body chunk by chunk.
type StreamParser interface {
	// Feed consumes the next body chunk and returns the bytes to forward to
	// the client. Unless an injected usage chunk is being hidden, that is
	// chunk itself (the same slice). When hiding, bytes are returned once
	// the event they belong to is complete, exactly as received, minus the
	// whole usage-only event (its lines and blank line) and nothing else.
	Feed(chunk []byte) (out []byte)
	// Finish ends the stream and reports what it contained. Result.Tail
	// holds bytes still held back, which the caller must forward last.
	// Feed must not be called after Finish.
	Finish() Result
}

// NewStreamParser returns the parser for a streamed response of route r to
// request req: SSE for every kind, or Gemini's streamed JSON array when
// r.ArrayStream. It hides the usage-only chunk when req.InjectedUsage and
// the client did not ask for usage itself (§1.3).
func NewStreamParser(r Route, req Request) StreamParser {
	p := &streamParser{acc: newAcc(r), req: req}
	p.hide = r.IsChat() && req.InjectedUsage && !req.ClientAskedUsage
	if r.IsGemini() && r.ArrayStream {
		p.arr = &arrayFramer{}
	}
	return p
}

type streamParser struct {
	acc  *acc
	req  Request
	hide bool

	sse sseFramer
	arr *arrayFramer

	// While hiding: held are stream bytes from offset heldBase not yet
	// forwarded; decided is the offset up to which events are complete;
	// drops are complete usage-only event ranges inside [heldBase, decided).
	held     []byte
	heldBase int64
	decided  int64
	drops    [][2]int64

	finished bool
}

func (p *streamParser) Feed(chunk []byte) []byte {
	if p.finished {
		panic("provider: Feed after Finish")
	}
	if p.arr != nil {
		p.arr.push(chunk, p.acc)
		return chunk
	}
	if !p.hide {
		p.sse.push(chunk, p.onEvent)
		return chunk
	}
	p.held = append(p.held, chunk...)
	p.sse.push(chunk, p.onEvent)
	out := p.release()
	if len(p.held) > maxHeldBytes {
		p.acc.warn("event over %d bytes while hiding the usage chunk: forwarded unfiltered", maxHeldBytes)
		out = append(out, p.held...)
		p.heldBase += int64(len(p.held))
		p.held, p.hide = nil, false
	}
	return out
}

func (p *streamParser) Finish() Result {
	if !p.finished {
		p.finished = true
		var tail []byte
		if p.arr != nil {
			p.arr.finish(p.acc)
		} else {
			p.sse.finish(p.onEvent)
			if p.hide {
				tail = p.release()
			}
		}
		res := p.acc.result(p.req.Model)
		res.Tail = tail
		return res
	}
	return p.acc.result(p.req.Model)
}

// release returns the decided bytes minus dropped ranges and forgets them.
func (p *streamParser) release() []byte {
	n := int(p.decided - p.heldBase)
	if n <= 0 {
		return nil
	}
	var out []byte
	from := p.heldBase
	for _, d := range p.drops {
		out = append(out, p.held[from-p.heldBase:d[0]-p.heldBase]...)
		from = d[1]
	}
	out = append(out, p.held[from-p.heldBase:n]...)
	p.drops = p.drops[:0]
	rest := copy(p.held, p.held[n:])
	p.held = p.held[:rest]
	p.heldBase = p.decided
	if out == nil {
		out = []byte{} // everything decided was dropped
	}
	return out
}

var doneSentinel = []byte("[DONE]")

func (p *streamParser) onEvent(ev *sseEvent, start, end int64) {
	p.decided = end
	if ev.broken {
		p.acc.warn("sse: skipped an event with a line over %d bytes", maxLineBytes)
		return
	}
	if !ev.hasData {
		return
	}
	data := bytes.TrimSpace(ev.data)
	if bytes.Equal(data, doneSentinel) {
		p.acc.complete = true // OpenAI-family end; tolerated everywhere
		return
	}
	if !gjson.ValidBytes(data) {
		if ev.terminated {
			p.acc.warn("sse: event data is not JSON (%d bytes)", len(data))
		} else {
			p.acc.warn("sse: stream ended inside an event (%d bytes of data dropped)", len(data))
		}
		return
	}
	d := gjson.ParseBytes(data)
	r := p.acc.route
	switch {
	case r.IsChat(), r.IsEmbeddings():
		if p.acc.chatChunk(d) && p.hide {
			p.drops = append(p.drops, [2]int64{start, end})
		}
	case r.IsResponses():
		p.acc.responsesEvent(ev.name, d)
	case r.Kind == KindAnthropicMessages:
		p.acc.anthropicEvent(ev.name, d)
	case r.IsGemini():
		p.acc.geminiChunk(d)
	}
}

// arrayFramer splits Gemini's streamed JSON array ([{…},\r\n{…}]) into its
// element objects across arbitrary chunks, tracking strings and escapes so
// braces inside text do not count. A body that is a bare object (an error)
// is treated as a one-element stream.
type arrayFramer struct {
	started    bool
	elemDepth  int // depth at which elements start: 1 inside [, 0 for a bare object
	depth      int
	inStr, esc bool
	collecting bool
	obj        []byte
	tooBig     bool
}

func (f *arrayFramer) push(chunk []byte, a *acc) {
	for _, c := range chunk {
		if !f.started {
			switch c {
			case ' ', '\t', '\r', '\n':
				continue
			case '[':
				f.elemDepth = 1
			default:
				f.elemDepth = 0
			}
			f.started = true
		}
		f.step(c, a)
	}
}

func (f *arrayFramer) step(c byte, a *acc) {
	if f.collecting && !f.tooBig {
		f.obj = append(f.obj, c)
		if len(f.obj) > maxLineBytes {
			f.tooBig = true
			a.warn("gemini array stream: element over %d bytes skipped", maxLineBytes)
		}
	}
	if f.inStr {
		switch {
		case f.esc:
			f.esc = false
		case c == '\\':
			f.esc = true
		case c == '"':
			f.inStr = false
		}
		return
	}
	switch c {
	case '"':
		f.inStr = true
	case '{', '[':
		if c == '{' && f.depth == f.elemDepth && !f.collecting {
			f.collecting, f.tooBig = true, false
			f.obj = append(f.obj[:0], c)
		}
		f.depth++
	case '}', ']':
		f.depth--
		if f.collecting && f.depth == f.elemDepth {
			f.collecting = false
			if !f.tooBig {
				if gjson.ValidBytes(f.obj) {
					a.geminiChunk(gjson.ParseBytes(f.obj))
				} else {
					a.warn("gemini array stream: element is not JSON (%d bytes)", len(f.obj))
				}
			}
			f.obj = f.obj[:0]
		}
	}
}

func (f *arrayFramer) finish(a *acc) {
	if f.collecting {
		a.warn("gemini array stream: ended inside an element (%d bytes dropped)", len(f.obj))
	}
}
