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
// request body, without a tokenizer. The rule, applied to the raw JSON body
// (keys, punctuation and escapes included, which pays for chat-template and
// per-message tokens):
//
//   - each ASCII byte counts ½ token (total rounded up). Byte-level BPE
//     tokenizers (cl100k, o200k, Claude's, Gemini's SentencePiece) average
//     about 4 bytes per token on English and 3 on code; 2 bytes per token is
//     reached only by letters separated by spaces, lone digits and runs of
//     punctuation, which real prompts do not consist of.
//   - each non-ASCII rune of n bytes counts n−1 tokens (2-byte Latin/Cyrillic
//     → 1; 3-byte CJK/Indic → 2; 4-byte emoji → 3); an invalid byte counts 1.
//     Common CJK characters are 1 token or less (o200k ≈ 0.7/char), rare ones
//     split into at most their 3 bytes, so 2 per rune covers text with a
//     sprinkling of rare characters.
//   - an image part counts ImageTokens and its inline base64 is not counted.
//   - any other media part (audio, file, document, Gemini inline/file data)
//     counts FileTokens plus its bytes as text.
//   - a non-empty tools array adds ToolsOverheadTokens.
//
// Known under-estimates: documents and videos referenced by id or URL (a long
// PDF can be far more than FileTokens), server-side tools whose results are
// fed back as input (web search), and adversarial punctuation-only prompts.
// testdata/estimate holds texts with real cl100k/o200k counts that the rule
// must stay above.
func EstimateInputTokens(body []byte) int64 {
	ascii, multi := countText(body)
	var images, files, excluded int64
	root := gjson.ParseBytes(body)
	walkMedia(root, false, &images, &files, &excluded)
	ascii -= excluded
	if ascii < 0 {
		ascii = 0
	}
	est := (ascii+1)/2 + multi + images*ImageTokens + files*FileTokens
	if t := root.Get("tools"); t.IsArray() && len(t.Array()) > 0 {
		est += ToolsOverheadTokens
	}
	return est
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

// countText counts ASCII bytes and the token charge of non-ASCII runes.
func countText(b []byte) (ascii, multi int64) {
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			ascii++
			i++
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			multi++
			i++
			continue
		}
		multi += int64(n - 1)
		i += n
	}
	return ascii, multi
}

// walkMedia counts image and other media parts and the raw bytes of inline
// image payloads (ASCII base64) that countText already counted.
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
			*excluded += int64(len(v.Raw))
		case inImage && len(s) >= inlineMediaMin && isASCII(v.Raw):
			*excluded += int64(len(v.Raw))
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
