package dedupe

import (
	"syscall"

	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing f's bytes [off, off+n)
// to the disk without waiting for them. Unsynced writes otherwise pile up
// as dirty pages until the generation's fsync or the kernel's own flush
// writes tens of megabytes at once, and every fsync on the disk (a code's
// append to the log among them) queues behind that. A file closed
// meanwhile is skipped (Control holds the descriptor while it runs), and so
// is a file not on the OS's file system (WithFS).
func startWriteback(f vfs.File, off, n int64) {
	sc, ok := f.(syscall.Conn)
	if !ok {
		return
	}
	if rc, err := sc.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE) })
	}
}
