// Package logtest wraps a partition.Log so that its writes fail or wait the
// way a real log's do under faults, for the tests of the packages that
// write to one (engine, api).
package logtest

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync/atomic"

	"github.com/goutong/goutong/partition"
)

// PartialProduce is a Log whose first Produce holding a record Lose picks
// writes the others and fails those, with a *partition.ProduceError, as a
// log does when one of a call's partitions refuses its append (a full
// disk, a broker down) and the rest take theirs. Later calls go through.
type PartialProduce struct {
	partition.Log
	Lose  func(r *partition.Record) bool
	Calls *atomic.Int64 // calls holding a record Lose picks (only the first loses them)
	// Partial, when set, is set once a call wrote some records and lost
	// others (a call of lost records alone writes nothing).
	Partial *atomic.Bool
}

func (l PartialProduce) Produce(ctx context.Context, recs []partition.Record) error {
	if !slices.ContainsFunc(recs, func(r partition.Record) bool { return l.Lose(&r) }) || l.Calls.Add(1) != 1 {
		return l.Log.Produce(ctx, recs)
	}
	var keep []partition.Record
	var at []int
	written := make([]bool, len(recs))
	for i := range recs {
		if !l.Lose(&recs[i]) {
			keep, at = append(keep, recs[i]), append(at, i)
			written[i] = true
		}
	}
	if err := l.Log.Produce(ctx, keep); err != nil {
		return err
	}
	for j, i := range at {
		recs[i] = keep[j] // with the partitions and offsets the log gave them
	}
	if len(keep) > 0 && l.Partial != nil {
		l.Partial.Store(true)
	}
	return &partition.ProduceError{Written: written, Err: errors.New("partition 3 refused the append")}
}

// HeldProduce is a Log whose first Produce of a record whose value holds
// Marker closes Entered and waits on Release: an error received there
// fails the call, nil (or Release closed) lets it through.
type HeldProduce struct {
	partition.Log
	Marker  []byte
	Calls   *atomic.Int64 // calls holding Marker (only the first waits)
	Entered chan struct{}
	Release chan error
}

// NewHeldProduce holds the first Produce of a record holding marker.
func NewHeldProduce(marker string) HeldProduce {
	return HeldProduce{Marker: []byte(marker), Calls: new(atomic.Int64), Entered: make(chan struct{}), Release: make(chan error, 1)}
}

func (l HeldProduce) Produce(ctx context.Context, recs []partition.Record) error {
	held := slices.ContainsFunc(recs, func(r partition.Record) bool { return bytes.Contains(r.Value, l.Marker) })
	if held && l.Calls.Add(1) == 1 {
		close(l.Entered)
		if err := <-l.Release; err != nil {
			return err
		}
	}
	return l.Log.Produce(ctx, recs)
}
