package wal

import "encoding/binary"

// The sparse index holds one entry per indexInterval bytes of log: the base
// offset of a batch, its byte position and its timestamp. A read binary
// searches it and scans forward at most indexInterval bytes of headers.
const (
	indexInterval  = 64 << 10
	indexEntrySize = 24
)

type indexEntry struct {
	offset int64
	pos    int64
	ts     int64
}

func (e indexEntry) append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(e.offset))
	b = binary.LittleEndian.AppendUint64(b, uint64(e.pos))
	return binary.LittleEndian.AppendUint64(b, uint64(e.ts))
}

// parseIndex decodes an index file and checks that it is ordered and within
// the segment; ok is false when it cannot be trusted.
func parseIndex(b []byte, base, size int64) ([]indexEntry, bool) {
	if len(b) == 0 || len(b)%indexEntrySize != 0 {
		return nil, false
	}
	out := make([]indexEntry, 0, len(b)/indexEntrySize)
	for ; len(b) > 0; b = b[indexEntrySize:] {
		e := indexEntry{
			offset: int64(binary.LittleEndian.Uint64(b)),
			pos:    int64(binary.LittleEndian.Uint64(b[8:])),
			ts:     int64(binary.LittleEndian.Uint64(b[16:])),
		}
		if n := len(out); n == 0 {
			if e.pos != 0 || e.offset != base {
				return nil, false
			}
		} else if e.pos <= out[n-1].pos || e.offset <= out[n-1].offset {
			return nil, false
		}
		if e.pos >= size {
			return nil, false
		}
		out = append(out, e)
	}
	return out, true
}
