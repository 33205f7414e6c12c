package api

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/valyala/fasthttp"
	"go.uber.org/zap"

	"github.com/goutong/goutong/engine"
)

// SnapshotTempPrefix names the copies a snapshot makes in Config.SnapshotDir
// until it is sent (a process that ended meanwhile leaves one behind).
const SnapshotTempPrefix = ".snapshot-"

// snapshotTimeout bounds how long the status replica may take to reach the
// request (it polls for up to a second) and copy the stores.
const snapshotTimeout = 2 * time.Minute

// snapshotWriteTimeout bounds streaming the copy: gigabytes, not the 60 s
// of an ordinary answer.
const snapshotWriteTimeout = 6 * time.Hour

// snapshot answers GET /v1/admin/snapshot with a tar of Engine.Snapshot's
// directory, which a new node extracts into its data directory (serve
// --join). The copy is made under cfg.SnapshotDir (the stores' file
// system, so that it is hard links) and removed once sent.
func (s *Server) snapshot(ctx *fasthttp.RequestCtx) {
	if s.cfg.SnapshotDir == "" {
		writeError(ctx, fasthttp.StatusNotFound, apiError{Code: "not_found", Message: "this node takes no snapshots"})
		return
	}
	tmp, err := os.MkdirTemp(s.cfg.SnapshotDir, SnapshotTempPrefix+"*")
	if err != nil {
		s.unavailable(ctx, "snapshot", err)
		return
	}
	dir := filepath.Join(tmp, "s")
	c, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	if err := s.cfg.Engine.Snapshot(c, dir); err != nil {
		os.RemoveAll(tmp)
		if errors.Is(err, engine.ErrNoSnapshot) {
			writeError(ctx, fasthttp.StatusConflict, apiError{Code: "not_supported", Message: err.Error()})
			return
		}
		s.unavailable(ctx, "snapshot", err)
		return
	}
	ctx.SetContentType("application/x-tar")
	ctx.Response.Header.Set("Content-Disposition", `attachment; filename="goutong-snapshot.tar"`)
	logger := s.cfg.Logger
	ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
		defer os.RemoveAll(tmp)
		if err := writeTar(w, dir); err != nil {
			logger.Warn("snapshot: sending failed", zap.Error(err))
		}
	})
}

// writeTar writes the directories and files under dir, by their paths
// relative to it, as a tar.
func writeTar(w *bufio.Writer, dir string) error {
	tw := tar.NewWriter(w)
	if err := tw.AddFS(os.DirFS(dir)); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return w.Flush()
}
