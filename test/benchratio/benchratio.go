// Package benchratio runs a benchmark against a baseline measured in the
// same run and reports the ratio, the project's one way to state a
// performance claim (`make bench`).
package benchratio

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Case is one side of a comparison.
type Case struct {
	Name string
	Run  func(b *testing.B)
}

// Pair runs baseline, then subject, as sub-benchmarks of b in the same
// process, and reports subject ns/op ÷ baseline ns/op as "x-vs-baseline" on
// the subject's line. Run alone (a -bench pattern that skips the baseline),
// the subject reports no ratio. A summary line follows on stdout.
func Pair(b *testing.B, baseline, subject Case) {
	b.Helper()
	var baseNs, subjNs float64
	b.Run(baseline.Name, func(b *testing.B) {
		baseline.Run(b)
		baseNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run(subject.Name, func(b *testing.B) {
		subject.Run(b)
		subjNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if baseNs > 0 {
			b.ReportMetric(subjNs/baseNs, "x-vs-baseline")
		}
	})
	// Printed, not logged: a parent benchmark's log shows only under -v.
	if baseNs > 0 && subjNs > 0 {
		fmt.Printf("summary: %s: %s %.0f ns/op = %.2fx %s %.0f ns/op\n",
			b.Name(), subject.Name, subjNs, subjNs/baseNs, baseline.Name, baseNs)
	}
}

// RoundTrips is a go-redis hook counting round trips to Redis: one per
// command, one per pipeline.
type RoundTrips struct{ N *atomic.Int64 }

func (RoundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c RoundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.N.Add(1)
		return next(ctx, cmd)
	}
}

func (c RoundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.N.Add(1) // one round trip for the whole pipeline
		return next(ctx, cmds)
	}
}
