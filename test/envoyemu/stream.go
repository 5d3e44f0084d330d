package envoyemu

import (
	"context"
	"sync"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// procStream is the client side of one Process stream. Sends go through a
// queue drained by one goroutine so the event loop never blocks on gRPC flow
// control; replies and the final status come back as loop events.
type procStream struct {
	cs     grpc.BidiStreamingClient[extprocv3.ProcessingRequest, extprocv3.ProcessingResponse]
	cancel context.CancelFunc

	mu      sync.Mutex
	cond    *sync.Cond
	queue   []*extprocv3.ProcessingRequest
	closing bool
	closed  bool
}

func openProcStream(x *exchange) (*procStream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	if md := x.f.initialMetadata(); len(md) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	cs, err := x.p.client.Process(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &procStream{cs: cs, cancel: cancel}
	s.cond = sync.NewCond(&s.mu)
	go s.sendLoop()
	go func() {
		for {
			resp, err := cs.Recv()
			if err != nil {
				x.post(event{kind: evGRPCEnd, stream: s, err: err})
				return
			}
			x.post(event{kind: evGRPCReply, stream: s, reply: resp})
		}
	}()
	return s, nil
}

func (s *procStream) send(req *extprocv3.ProcessingRequest) {
	s.mu.Lock()
	s.queue = append(s.queue, req)
	s.mu.Unlock()
	s.cond.Signal()
}

// close is Envoy's stream_->close(): half-close, then reset
// (envoy-extproc.md §1.1). Queued messages are sent before the half-close.
func (s *procStream) close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.cond.Signal()
}

func (s *procStream) sendLoop() {
	for {
		s.mu.Lock()
		for len(s.queue) == 0 && !s.closing {
			s.cond.Wait()
		}
		if len(s.queue) == 0 && s.closing {
			s.closed = true
			s.mu.Unlock()
			_ = s.cs.CloseSend()
			s.cancel()
			return
		}
		req := s.queue[0]
		s.queue = s.queue[1:]
		s.mu.Unlock()
		// A send error means the stream already ended; Recv reports the status.
		_ = s.cs.Send(req)
	}
}
