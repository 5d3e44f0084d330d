package provider

import (
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// Constants of the input-token estimate; see EstimateInputTokens.
const (
	// ImageTokens is charged per image part instead of its bytes. The
	// largest per-image counts among the priced models: OpenAI high detail
	// ≤ 1,445 (gpt-4o tiles), patch models ≤ 3,779 (1,536 patches × 2.46 on
	// gpt-4.1-nano), Anthropic ≈ 1,600, Gemini 258 per tile.
	ImageTokens = 4000
	// FileTokens is added per non-image media part (audio, video, PDF, file
	// reference) on top of its bytes, which are counted like text.
	FileTokens = 4000
	// ToolsOverheadTokens is added when the request defines tools: Anthropic
	// injects a tool-use system prompt of 313–530 tokens.
	ToolsOverheadTokens = 600
	// inlineMediaMin is the length above which a string inside an image part
	// is taken to be the encoded image rather than text.
	inlineMediaMin = 256
)

// EstimateInputTokens returns an upper bound on the prompt tokens of a
// request body, without a tokenizer. It is applied to the raw JSON body
// (keys, quotes and escapes included, which pays for chat-template and
// per-message tokens), split into runs of one character class:
//
//   - punctuation: 1 token per byte; digits, and any alphanumeric run that
//     mixes letters and digits (ids, hex, base64): 1 token per byte. For
//     ASCII, one token per byte is a hard upper bound of every byte-level
//     BPE (cl100k, o200k, Claude's, Gemini's byte fallback), and Gemini's
//     tokenizer does split numbers into single digits.
//   - a run of ASCII letters: ½ token per byte, rounded up per run. Words
//     average 4+ bytes per token in every tokenizer in use; only random
//     letter soup gets near 2.
//   - whitespace: ½ token per byte per run, rounded up; a single space in
//     front of a word is free (tokenizers fold it into the word).
//   - a non-ASCII rune of 2 bytes (Latin accents, Cyrillic, Arabic) or 3
//     bytes (CJK, Indic) counts 1 or 2 tokens; a 4-byte rune (emoji, rare
//     CJK) counts 4, its byte-level worst case; an invalid byte counts 1.
//   - an image part counts ImageTokens and its inline base64 is not
//     counted; any other media part (audio, file, document, Gemini
//     inline/file data) counts FileTokens plus its bytes as above.
//   - a non-empty tools array adds ToolsOverheadTokens.
//
// testdata/estimate holds prose in eight scripts, code, JSON, CSV, base64,
// UUIDs, emoji and rare CJK with their real cl100k/o200k counts; the
// estimate is 1.07–2.7× the larger count there (rare CJK, which is at its
// byte bound, is the tight one). Known under-estimates: documents and
// videos referenced by id or URL (a long PDF exceeds FileTokens), server
// tools whose results are fed back as input (web search), and text made
// only of rare 3-byte characters (up to 3 tokens each).
func EstimateInputTokens(body []byte) int64 {
	var images, files, excluded int64
	root := gjson.ParseBytes(body)
	walkMedia(root, false, &images, &files, &excluded)
	est := textTokens(body) - excluded + images*ImageTokens + files*FileTokens
	if t := root.Get("tools"); t.IsArray() && len(t.Array()) > 0 {
		est += ToolsOverheadTokens
	}
	return max(est, 0)
}

// EstimateOutputTokens turns streamed text bytes into tokens when a stream
// ended without usage: ceil(bytes/3). English runs about 4 bytes per token
// and code about 3, so this charges English ~⅓ over and code about right;
// CJK (3 bytes per char, ≈1 token per char) comes out about right. Reasoning
// tokens that never appear as text (OpenAI o-series) cannot be seen and are
// not in this estimate.
func EstimateOutputTokens(bytes int64) int64 {
	if bytes <= 0 {
		return 0
	}
	return (bytes + 2) / 3
}

type charClass uint8

const (
	classLetter charClass = iota
	classDigit
	classSpace
	classPunct
	classOther // non-ASCII
)

func classOf(c byte) charClass {
	switch {
	case c >= utf8.RuneSelf:
		return classOther
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		return classLetter
	case '0' <= c && c <= '9':
		return classDigit
	case c == ' ' || c == '\t' || c == '\r' || c == '\n':
		return classSpace
	}
	return classPunct
}

// textTokens applies the run rules of EstimateInputTokens to b.
func textTokens(b []byte) int64 {
	var t int64
	for i := 0; i < len(b); {
		c := classOf(b[i])
		if c == classOther {
			r, n := utf8.DecodeRune(b[i:])
			switch {
			case r == utf8.RuneError && n <= 1:
				t, i = t+1, i+1
			case n == 4:
				t, i = t+4, i+4
			default:
				t, i = t+int64(n-1), i+n
			}
			continue
		}
		j := i
		if c == classLetter || c == classDigit {
			// One alphanumeric word: letters only, or mixed with digits.
			digits := false
			for j < len(b) && (classOf(b[j]) == classLetter || classOf(b[j]) == classDigit) {
				digits = digits || classOf(b[j]) == classDigit
				j++
			}
			if digits {
				t += int64(j - i)
			} else {
				t += int64(j-i+1) / 2
			}
			i = j
			continue
		}
		for j < len(b) && classOf(b[j]) == c {
			j++
		}
		n := int64(j - i)
		switch {
		case c == classPunct:
			t += n
		case n == 1 && b[i] == ' ' && j < len(b) && (classOf(b[j]) == classLetter || classOf(b[j]) == classOther):
			// a space folded into the following word
		default:
			t += (n + 1) / 2
		}
		i = j
	}
	return t
}

// walkMedia counts image and other media parts, and the tokens textTokens
// charged for inline image payloads, which are replaced by ImageTokens.
func walkMedia(v gjson.Result, inImage bool, images, files, excluded *int64) {
	switch {
	case v.IsObject():
		img, file := classifyPart(v)
		if !inImage {
			if img {
				*images++
			} else if file {
				*files++
			}
		}
		v.ForEach(func(_, child gjson.Result) bool {
			walkMedia(child, inImage || img, images, files, excluded)
			return true
		})
	case v.IsArray():
		v.ForEach(func(_, child gjson.Result) bool {
			walkMedia(child, inImage, images, files, excluded)
			return true
		})
	case v.Type == gjson.String:
		s := v.Str
		switch {
		case isImageDataURL(s):
			if !inImage {
				*images++ // an inline image outside any part shape we know
			}
			*excluded += stringContentTokens(v.Raw)
		case inImage && len(s) >= inlineMediaMin && isASCII(v.Raw):
			*excluded += stringContentTokens(v.Raw)
		}
	}
}

// classifyPart recognizes the content-part shapes of §2–§7: OpenAI chat
// image_url/input_audio/file, Responses input_image/input_file, Anthropic
// image/document, Gemini inline_data/file_data (either JSON name style).
func classifyPart(o gjson.Result) (image, file bool) {
	switch o.Get("type").String() {
	case "image_url", "input_image", "image":
		return true, false
	case "input_audio", "input_file", "file", "document", "audio":
		return false, true
	}
	for _, k := range [...]string{"inline_data", "inlineData", "file_data", "fileData"} {
		d := o.Get(k)
		if !d.IsObject() {
			continue
		}
		mime := d.Get("mime_type").String()
		if mime == "" {
			mime = d.Get("mimeType").String()
		}
		if strings.HasPrefix(mime, "image/") {
			return true, false
		}
		return false, true
	}
	return false, false
}

// stringContentTokens is what textTokens charged for the content of a raw
// JSON string (quotes excluded; they are punctuation of their own).
func stringContentTokens(raw string) int64 {
	if len(raw) < 2 {
		return 0
	}
	return textTokens([]byte(raw[1 : len(raw)-1]))
}

func isImageDataURL(s string) bool {
	if !strings.HasPrefix(s, "data:image/") {
		return false
	}
	head := s
	if len(head) > 100 {
		head = head[:100]
	}
	return strings.Contains(head, ";base64,")
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
