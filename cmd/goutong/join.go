package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/zap"

	"github.com/goutong/goutong/api"
	"github.com/goutong/goutong/engine"
	"github.com/goutong/goutong/partition"
)

// joinFrom puts a snapshot of a running node's stores (cfg.Join: its API
// URL, or a file goutong snapshot saved) into a data directory that has
// none, so that this node starts with every id and key that node knew and
// its status replica reads on from where the copy was taken. Stores
// already there win: the setting is for a node's first start.
func joinFrom(ctx context.Context, cfg Config, lg *zap.Logger) error {
	if len(cfg.Kafka) == 0 {
		return errors.New("config join: only a Kafka node joins another (set kafka)")
	}
	status := filepath.Join(cfg.Data, engine.SnapshotStatusDir)
	dedupeDir := filepath.Join(cfg.Data, engine.SnapshotDedupeDir)
	if exists(status) || exists(dedupeDir) {
		lg.Info("join: the data directory has stores already; starting from them", zap.String("join", cfg.Join))
		return nil
	}
	tmp, err := os.MkdirTemp(cfg.Data, joinTmpPrefix+"*")
	if err != nil {
		return err
	}
	defer func() {
		// Once the marker is down the download holds what finishJoin moves.
		if !exists(filepath.Join(cfg.Data, joinMarker)) {
			os.RemoveAll(tmp)
		}
	}()
	start := time.Now()
	var n int64
	if isURL(cfg.Join) {
		n, err = downloadSnapshot(ctx, strings.TrimSuffix(cfg.Join, "/")+"/v1/admin/snapshot", cfg.JoinAPIKey, tmp)
	} else {
		n, err = extractSnapshotFile(cfg.Join, tmp)
	}
	if err != nil {
		return fmt.Errorf("join %s: %w", cfg.Join, err)
	}
	for _, d := range []string{engine.SnapshotStatusDir, engine.SnapshotDedupeDir} {
		if !exists(filepath.Join(tmp, d)) {
			return fmt.Errorf("join %s: the snapshot has no %s store", cfg.Join, d)
		}
	}
	if err := checkSnapshotOffsets(ctx, cfg.Kafka, filepath.Join(tmp, engine.SnapshotStatusDir)); err != nil {
		return fmt.Errorf("join %s: %w", cfg.Join, err)
	}
	if err := moveInStores(cfg.Data, tmp); err != nil {
		return fmt.Errorf("join %s: %w", cfg.Join, err)
	}
	lg.Info("join: started from a snapshot of another node's stores", zap.String("join", cfg.Join),
		zap.Int64("bytes", n), zap.Duration("took", time.Since(start)))
	return nil
}

// checkSnapshotOffsets fails when the status topic no longer holds the
// offsets the copied status store in dir reads on from: retention dropped
// them, and the events in between would be missing on this node.
func checkSnapshotOffsets(ctx context.Context, brokers []string, dir string) error {
	starts, err := engine.SnapshotStart(dir)
	if err != nil {
		return err
	}
	if len(starts) == 0 {
		return errors.New("the snapshot's status store says nowhere to read the status topic from")
	}
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer adm.Close()
	topic := engine.DefaultTopics().Status
	listed, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("the status topic's start offsets: %w", err)
	}
	if err := listed.Error(); err != nil {
		return fmt.Errorf("the status topic's start offsets: %w", err)
	}
	var gaps []string
	listed.Each(func(o kadm.ListedOffset) {
		if at, ok := starts[partition.TopicPartition{Topic: o.Topic, Partition: o.Partition}]; ok && o.Offset > at {
			gaps = append(gaps, fmt.Sprintf("%s/%d starts at %d, the snapshot at %d", o.Topic, o.Partition, o.Offset, at))
		}
	})
	if len(gaps) > 0 {
		slices.Sort(gaps)
		return fmt.Errorf("the snapshot is older than the status topic's retention (%s): take a new one", strings.Join(gaps, "; "))
	}
	return nil
}

// downloadSnapshot extracts the tar at url into dir and returns its bytes.
func downloadSnapshot(ctx context.Context, url, key, dir string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return extractTar(resp.Body, dir)
}

func isURL(s string) bool { return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") }

// extractSnapshotFile extracts a snapshot saved by goutong snapshot.
func extractSnapshotFile(path, dir string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return extractTar(f, dir)
}

// extractTar writes the directories and regular files of the tar r under
// dir, refusing any path that would leave it, and returns the files' bytes.
func extractTar(r io.Reader, dir string) (int64, error) {
	tr := tar.NewReader(r)
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		name := filepath.FromSlash(h.Name)
		if !filepath.IsLocal(name) {
			return total, fmt.Errorf("snapshot entry %q leaves the directory", h.Name)
		}
		path := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(path, 0o755); err != nil {
				return total, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return total, err
			}
			n, err := writeFile(path, tr)
			total += n
			if err != nil {
				return total, err
			}
		default:
			return total, fmt.Errorf("snapshot entry %q: type %c is not a file or directory", h.Name, h.Typeflag)
		}
	}
}

func writeFile(path string, r io.Reader) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	return n, errors.Join(err, f.Close())
}

// moveInStores moves both stores from the join's download tmp into data,
// both or neither across a crash: a marker naming tmp is made durable
// first, and a start that finds it finishes the move (finishJoin) before
// anything opens the stores. Without it, a crash between the two renames
// left one store, and the next start took that for a node's own stores.
func moveInStores(data, tmp string) error {
	// The extracted files are synced; their directory entries must be too
	// before the renames can make them the node's stores.
	if err := syncTree(tmp); err != nil {
		return err
	}
	err := writeAtomically(filepath.Join(data, joinMarker), func(w io.Writer) error {
		_, err := io.WriteString(w, filepath.Base(tmp))
		return err
	})
	if err != nil {
		return err
	}
	return finishJoin(data)
}

// finishJoin completes a move of the stores that moveInStores began, if
// its marker is in data: each store still in the download moves in, then
// the marker goes. Without a marker it does nothing.
func finishJoin(data string) error {
	marker := filepath.Join(data, joinMarker)
	name, err := os.ReadFile(marker)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	tmp := filepath.Join(data, filepath.Base(string(name)))
	for _, d := range []string{engine.SnapshotDedupeDir, engine.SnapshotStatusDir} {
		from, to := filepath.Join(tmp, d), filepath.Join(data, d)
		if !exists(from) {
			if !exists(to) {
				return fmt.Errorf("the joined %s store is in neither %s nor %s", d, tmp, data)
			}
			continue // moved before the crash
		}
		if err := os.Rename(from, to); err != nil {
			return fmt.Errorf("moving the joined %s store in: %w", d, err)
		}
	}
	if err := syncDir(data); err != nil {
		return err
	}
	if err := os.Remove(marker); err != nil {
		return err
	}
	return syncDir(data)
}

// writeAtomically writes path through a temporary file beside it
// (path.part-*), synced and renamed into place, then syncs the directory:
// path is only ever whole, and is durable once this returns.
func writeAtomically(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+partSuffix+"*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails once renamed
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// partSuffix, after a file's name, names writeAtomically's temporary file.
const partSuffix = ".part-"

// syncTree fsyncs every directory under and including root.
func syncTree(root string) error {
	return filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return syncDir(path)
	})
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(f.Sync(), f.Close())
}

// removeLeftovers removes what a snapshot sent or a join received left in
// the data directory when the process ended in the middle of it.
func removeLeftovers(data string, lg *zap.Logger) {
	entries, err := os.ReadDir(data)
	if err != nil {
		return
	}
	for _, e := range entries {
		if (e.IsDir() && (strings.HasPrefix(e.Name(), api.SnapshotTempPrefix) || strings.HasPrefix(e.Name(), joinTmpPrefix))) ||
			(!e.IsDir() && strings.HasPrefix(e.Name(), joinMarker+partSuffix)) {
			if err := os.RemoveAll(filepath.Join(data, e.Name())); err != nil {
				lg.Warn("removing a snapshot's leftovers", zap.Error(err))
			}
		}
	}
}

const (
	// joinTmpPrefix names a join's download in the data directory.
	joinTmpPrefix = ".join-"
	// joinMarker, in the data directory, names the download whose stores
	// are being moved in.
	joinMarker = "join-moving"
)
