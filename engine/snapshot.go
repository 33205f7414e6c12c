package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"

	"github.com/goutong/goutong/partition"
)

// Starting a new Kafka node from a copy of another's stores.
//
// A node's status replica reads the whole status topic, so a new node
// would read the fleet's last day of events before it could deduplicate
// (hours, on a busy fleet), and would never learn keys older than the
// topic's retention. Instead it can start from a snapshot of a running
// node: that node's status store, seeded to read the status topic on from
// where its replica had applied it, and its dedupe store. The snapshot is
// taken by the replica itself, between two polls and right after one of
// its checkpoints, so the copied events are exactly those below the
// positions it records (those above are read again: applying an event
// twice lands it on the same key), and once it has read what the topic
// held when asked.

// Snapshot directory layout.
const (
	SnapshotStatusDir = "status"
	SnapshotDedupeDir = "dedupe"
)

// ErrNoSnapshot: only a node with a status replica (a NodeID and a status
// store) can take a snapshot.
var ErrNoSnapshot = errors.New("engine: snapshots are taken by nodes with a status replica (serve --kafka)")

type snapshotReq struct {
	ctx   context.Context
	dir   string
	reply chan snapshotReply // buffered: the replica never waits on it
}

type snapshotReply struct {
	positions map[partition.TopicPartition]int64
	err       error
}

// Snapshot writes a copy of the node's stores into dir, which must not
// exist: the status store in dir/status, seeded to read the status topic
// on from where the copy was taken, and the dedupe store in dir/dedupe.
// The copy is taken once the status replica has read what the status topic
// held at the call, so it holds every event and key produced before.
// A new node whose data directory holds them starts from there (see
// docs/operations.md). The stores' files are hard links where the file
// system allows, so dir belongs on the stores' file system.
func (e *Engine) Snapshot(ctx context.Context, dir string) error {
	if !e.takeoverOn() {
		return ErrNoSnapshot
	}
	req := snapshotReq{ctx: ctx, dir: dir, reply: make(chan snapshotReply, 1)}
	select {
	case e.snapshots <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	var r snapshotReply
	select {
	case r = <-req.reply:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r.err != nil {
		return r.err
	}
	return seedReplica(filepath.Join(dir, SnapshotStatusDir), r.positions)
}

// takeSnapshot runs on the status replica, right after a checkpoint: every
// event below positions is in the status store's tables and its key in the
// dedupe store.
func (e *Engine) takeSnapshot(dir string, positions map[partition.TopicPartition]int64) error {
	if err := e.cfg.Status.copyTo(filepath.Join(dir, SnapshotStatusDir)); err != nil {
		return err
	}
	// After the status store: keys are copied into the dedupe store before
	// their events are applied, so it holds at least the copy's keys.
	return e.cfg.Dedupe.Checkpoint(filepath.Join(dir, SnapshotDedupeDir))
}

// copyTo writes a copy of the store into dir (Pebble checkpoints of the
// events, flushed first since they have no WAL, and of aux).
func (s *StatusStore) copyTo(dir string) error {
	if err := s.db.Flush(); err != nil {
		return fmt.Errorf("engine: status store copy: %w", err)
	}
	if err := s.db.Checkpoint(dir); err != nil {
		return fmt.Errorf("engine: status store copy: %w", err)
	}
	if err := s.aux.Checkpoint(filepath.Join(dir, "aux"), pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("engine: status store copy: %w", err)
	}
	return nil
}

// replicaStartKey holds, in a store copied from another node, where its
// status replica starts reading the status topic.
var replicaStartKey = []byte("!replica-start")

type replicaStart struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

// seedReplica records positions in the copied status store in dir.
func seedReplica(dir string, positions map[partition.TopicPartition]int64) error {
	var starts []replicaStart
	for tp, off := range positions {
		starts = append(starts, replicaStart{tp.Topic, tp.Partition, off})
	}
	v, err := json.Marshal(starts)
	if err != nil {
		return err
	}
	s, err := OpenStatus(dir, 0, false)
	if err != nil {
		return fmt.Errorf("engine: seeding the copied status store: %w", err)
	}
	// The events have no WAL: Close's flush makes it durable.
	if err := s.db.Set(replicaStartKey, v, pebble.NoSync); err != nil {
		s.Close()
		return fmt.Errorf("engine: seeding the copied status store: %w", err)
	}
	return s.Close()
}

// replicaStart is where the status replica starts partitions its group has
// not committed: what a copied store was seeded with, or nothing.
func (s *StatusStore) replicaStart() (map[partition.TopicPartition]int64, error) {
	v, closer, err := s.db.Get(replicaStartKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	var starts []replicaStart
	if err := json.Unmarshal(v, &starts); err != nil {
		return nil, fmt.Errorf("engine: status store: replica start: %w", err)
	}
	out := make(map[partition.TopicPartition]int64, len(starts))
	for _, st := range starts {
		out[partition.TopicPartition{Topic: st.Topic, Partition: st.Partition}] = st.Offset
	}
	return out, nil
}

// SnapshotStart is where a status replica on the copied status store in
// dir starts reading the status topic (see Snapshot): a node joining from
// a snapshot checks that the topic still holds those offsets.
func SnapshotStart(dir string) (map[partition.TopicPartition]int64, error) {
	s, err := OpenStatus(dir, 0, false)
	if err != nil {
		return nil, err
	}
	start, err := s.replicaStart()
	return start, errors.Join(err, s.Close())
}
