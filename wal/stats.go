package wal

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
)

// Stats is what the log holds now and what it has done since Open.
type Stats struct {
	Topics []TopicStats // by name
	// Since Open.
	Records      int64 // appended
	Batches      int64 // frames written: one per group commit of a partition
	BytesWritten int64 // frames' bytes, after compression
	Fsyncs       int64 // of segment files: per group, per interval tick, per Sync
	AppendErrors int64 // appends answered with an error
}

// TopicStats is one topic's share of Stats.
type TopicStats struct {
	Name       string
	Partitions int
	Records    int64 // kept: from each partition's start to its end
	Bytes      int64 // of segment files
	Segments   int
	// Refusing counts partitions that refuse appends until the log is
	// reopened (see Err).
	Refusing int
}

// counters are the log's since Open.
type counters struct {
	records, batches, bytes, fsyncs, appendErrors atomic.Int64
}

// Stats returns a snapshot.
func (l *Log) Stats() Stats {
	s := Stats{Records: l.counters.records.Load(), Batches: l.counters.batches.Load(), BytesWritten: l.counters.bytes.Load(),
		Fsyncs: l.counters.fsyncs.Load(), AppendErrors: l.counters.appendErrors.Load()}
	l.mu.RLock()
	topics := make([]*topic, 0, len(l.topics))
	for _, t := range l.topics {
		topics = append(topics, t)
	}
	l.mu.RUnlock()
	slices.SortFunc(topics, func(a, b *topic) int { return strings.Compare(a.name, b.name) })
	for _, t := range topics {
		ts := TopicStats{Name: t.name, Partitions: len(t.parts)}
		for _, p := range t.parts {
			p.mu.Lock()
			ts.Records += p.end - p.start
			ts.Segments += len(p.segs)
			for _, seg := range p.segs[:len(p.segs)-1] {
				ts.Bytes += seg.size // sealed: no longer written
			}
			ts.Bytes += p.endPos // the active segment, up to what is published
			if p.failed != nil {
				ts.Refusing++
			}
			p.mu.Unlock()
		}
		s.Topics = append(s.Topics, ts)
	}
	return s
}

// ErrRefusing wraps Err's answer.
var ErrRefusing = errors.New("wal: a partition refuses appends until the log is reopened")

// Err is nil while every partition takes appends. Once a write or fsync
// leaves a partition's tail unknown, that partition refuses every append
// until the log is reopened (its recovery finds the last whole batch), and
// Err wraps ErrRefusing and the first such failure.
func (l *Log) Err() error {
	if err := l.refusing.Load(); err != nil {
		return *err
	}
	return nil
}

// refuse records that p refuses appends from now on, for Err; under p.mu.
func (p *partition) refuse(err error) {
	p.failed = err
	wrapped := errors.Join(ErrRefusing, err)
	p.log.refusing.CompareAndSwap(nil, &wrapped)
}
