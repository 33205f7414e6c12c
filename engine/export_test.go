package engine

import (
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// OpenStatusOn opens a status store on fs: tests crash an in-memory one.
func OpenStatusOn(fs vfs.FS, dir string) (*StatusStore, error) {
	return openStatus(dir, time.Hour, true, fs)
}
