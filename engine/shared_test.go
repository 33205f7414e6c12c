package engine

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/goutong/goutong/partition"
)

type assignedOnly struct {
	partition.Log
	tps []partition.TopicPartition
}

func (l *assignedOnly) Assigned() []partition.TopicPartition { return l.tps }

// A replica assigned part of the status topic past the settling time says
// so, once, until it has the whole topic again.
func TestSharedNodeIDNoticed(t *testing.T) {
	core, logs := observer.New(zapcore.ErrorLevel)
	e := &Engine{cfg: Config{Logger: zap.New(core), NodeID: "n1"}, m: newMetrics()}
	s := &sharedNodeID{e: e}
	all := map[partition.TopicPartition]int64{}
	var tps []partition.TopicPartition
	for p := range int32(4) {
		tp := partition.TopicPartition{Topic: "goutong.status", Partition: p}
		all[tp] = 10
		tps = append(tps, tp)
	}
	log := &assignedOnly{tps: tps[:2]}
	for range 3 {
		s.check(log, all)
	}
	if got := testutil.ToFloat64(e.m.replicaShared); got != 1 || logs.Len() != 1 {
		t.Fatalf("half the topic: gauge %v, %d errors logged, want 1 and 1", got, logs.Len())
	}
	log.tps = tps
	s.check(log, all)
	if got := testutil.ToFloat64(e.m.replicaShared); got != 0 {
		t.Fatalf("the whole topic again: gauge %v", got)
	}
	s.after = 1 << 62 // a rebalance: partial for a moment
	log.tps = tps[:3]
	s.check(log, all)
	if got := testutil.ToFloat64(e.m.replicaShared); got != 0 || logs.Len() != 1 {
		t.Fatalf("a moment's partial assignment: gauge %v, %d errors logged", got, logs.Len())
	}
}

// The status replica tells this node's events apart by their last field
// (followStatus): a field added after Node would make it decode them all
// again.
func TestNodeIsTheEventsLastField(t *testing.T) {
	var enc eventEncoder
	v, err := enc.encode(&StatusEvent{ID: "x", State: StateSent, Tenant: "t", IdempotencyKey: "k", Node: "n-1"})
	if err != nil || !strings.HasSuffix(string(v), `,"node":"n-1"}`) {
		t.Fatalf("%s, %v: want the node last", v, err)
	}
}
