package provider

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"sort"
	"testing"
)

// FuzzStreamReassembly: however a stream is cut into chunks, the parser
// must reach the same Result and forward the same bytes as when it gets the
// stream whole; when nothing is hidden, the forwarded bytes are the input.
// Plain `go test` runs the seeds; `go test -fuzz FuzzStreamReassembly`
// explores further.
func FuzzStreamReassembly(f *testing.F) {
	seeds := []string{
		contentEv + usageOnlyEv + doneEv,
		": keep-alive\r\n\r\nid: 1\r\ndata:{\"choices\":[{\"delta\":{\"content\":\"你好🙂\"}}]}\r\n\r\n" + usageOnlyEv,
		"data: {\"choices\":[],\rdata: \"usage\":{\"prompt_tokens\":1}}\r\r\rdata: [DONE]\r",
		"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n",
		"[{\"usageMetadata\":{\"promptTokenCount\":2}},\r\n{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"}\\\"{\"}]},\"finishReason\":\"STOP\"}]}]",
		"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12",
	}
	for i, s := range seeds {
		f.Add([]byte(s), uint64(i)*7919, uint8(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, cutSeed uint64, mode uint8) {
		routes := []Route{routeOpenAIChat, routeResponses, routeAnthropic, routeGeminiSSE, routeGeminiSSE}
		route := routes[int(mode)%len(routes)]
		if int(mode)%len(routes) == 4 {
			route.ArrayStream = true
		}
		req := Request{Model: "m", Stream: true}
		hiding := route.IsChat() && mode&0x80 != 0
		if hiding {
			req.InjectedUsage = true
		}

		wantFwd, want := feedParts(route, req, [][]byte{data})
		if !hiding && !bytes.Equal(wantFwd, data) {
			t.Fatalf("passthrough forwarded %q, want the input %q", wantFwd, data)
		}
		if hiding && len(wantFwd) > len(data) {
			t.Fatalf("forwarded more than received")
		}

		rng := rand.New(rand.NewPCG(cutSeed, uint64(len(data))))
		for iter := 0; iter < 8; iter++ {
			cuts := make([]int, 1+rng.IntN(8))
			for j := range cuts {
				cuts[j] = rng.IntN(len(data) + 1)
			}
			sort.Ints(cuts)
			var parts [][]byte
			prev := 0
			for _, c := range cuts {
				parts = append(parts, data[prev:c])
				prev = c
			}
			parts = append(parts, data[prev:])
			fwd, got := feedParts(route, req, parts)
			if !bytes.Equal(fwd, wantFwd) {
				t.Fatalf("cuts %v: forwarded %q, whole forwarded %q", cuts, fwd, wantFwd)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("cuts %v: result %+v, whole %+v", cuts, got, want)
			}
		}
	})
}
