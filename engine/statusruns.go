package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/v2"
)

// Accepted runs. Ingest accepts a request's notifications at one time,
// under ids made in one call (ascending, and above every id made before
// them), and their "accepted" events differ in little else. The status
// store keeps up to maxRun of them under one key, 'r' + the run's last id,
// instead of a key each: Pebble's per-key work (memtable inserts, the
// flushes that write them out again) was a fifth of an NDJSON ingest's
// CPU. Reads merge a notification's run entry into its other events.
//
// A run's value: storedRunV1, the time (8 bytes, Unix ns), the count n
// (uvarint), n offsets (4 bytes each, into the entries), then n entries,
// each an id (uvarint length, bytes) followed by its event in the stored
// form (appendStoredEvent) to the next entry. Ids ascend, so a lookup
// is a binary search. No two runs overlap: Ingest makes a run's ids in one
// call, above every id it made before, and a store writes runs only above
// the last it held at open (one written before a restart under a clock set
// back since, or copied from another node's store by a join). So the run
// holding an id is the first whose last id is not below it.
const (
	runPrefix    = 'r'
	storedRunV1  = 1
	maxRun       = 1024
	runHeaderLen = 1 + 8
)

var errStoredRun = errors.New("engine: malformed stored run of accepted events")

// appendRunKV appends a run's key and value for evs: accepted events of
// one time with ascending ids.
func appendRunKV(dst []byte, evs []StatusEvent) (out []byte, key, value []byte, err error) {
	start := len(dst)
	dst = append(append(dst, runPrefix), evs[len(evs)-1].ID...)
	mid := len(dst)
	dst = append(dst, storedRunV1)
	dst = binary.BigEndian.AppendUint64(dst, uint64(evs[0].At.UnixNano()))
	dst = binary.AppendUvarint(dst, uint64(len(evs)))
	offs := len(dst)
	dst = append(dst, make([]byte, 4*len(evs))...)
	base := len(dst)
	for i := range evs {
		binary.BigEndian.PutUint32(dst[offs+4*i:], uint32(len(dst)-base))
		dst = binary.AppendUvarint(dst, uint64(len(evs[i].ID)))
		dst = append(dst, evs[i].ID...)
		if dst, err = appendStoredEvent(dst, &evs[i]); err != nil {
			return dst[:start], nil, nil, err
		}
	}
	return dst, dst[start:mid:mid], dst[mid:len(dst):len(dst)], nil
}

// runnable reports whether ev may join a run after prev (nil for the
// first): accepted, with an event id (what tells it from the same event
// applied again), at prev's time (kept once, in Unix ns), above its id.
func runnable(ev, prev *StatusEvent) bool {
	if ev.State != StateAccepted || ev.EventID == "" || ev.ID == "" ||
		!time.Unix(0, ev.At.UnixNano()).Equal(ev.At) {
		return false
	}
	return prev == nil || (ev.At.Equal(prev.At) && ev.ID > prev.ID)
}

// storedRun is a run's value, parsed.
type storedRun struct {
	at      int64 // Unix ns
	offs    []byte
	entries []byte
}

func parseRun(v []byte) (storedRun, error) {
	if len(v) < runHeaderLen || v[0] != storedRunV1 {
		return storedRun{}, errStoredRun
	}
	r := storedRun{at: int64(binary.BigEndian.Uint64(v[1:]))}
	n, w := binary.Uvarint(v[runHeaderLen:])
	rest := v[runHeaderLen+max(w, 0):]
	if w <= 0 || n == 0 || n > uint64(len(rest))/4 {
		return storedRun{}, errStoredRun
	}
	r.offs, r.entries = rest[:4*n], rest[4*n:]
	return r, nil
}

func (r storedRun) len() int { return len(r.offs) / 4 }

// entry returns the i-th id and the bytes of its stored event.
func (r storedRun) entry(i int) (id, ev []byte, err error) {
	start := int(binary.BigEndian.Uint32(r.offs[4*i:]))
	end := len(r.entries)
	if i+1 < r.len() {
		end = int(binary.BigEndian.Uint32(r.offs[4*(i+1):]))
	}
	if start > end || end > len(r.entries) {
		return nil, nil, errStoredRun
	}
	e := r.entries[start:end]
	l, w := binary.Uvarint(e)
	if w <= 0 || l > uint64(len(e)-w) {
		return nil, nil, errStoredRun
	}
	return e[w : w+int(l)], e[w+int(l):], nil
}

func (r storedRun) event(id, ev []byte) (StatusEvent, error) {
	return decodeStoredEventAt(string(id), r.at, ev)
}

// findEntry returns id's stored event in the run, undecoded.
func (r storedRun) findEntry(id string) ([]byte, bool, error) {
	lo, hi := 0, r.len()
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		mid, ev, err := r.entry(m)
		if err != nil {
			return nil, false, err
		}
		switch c := strings.Compare(unsafe.String(unsafe.SliceData(mid), len(mid)), id); {
		case c == 0:
			return ev, true, nil
		case c < 0:
			lo = m + 1
		default:
			hi = m
		}
	}
	return nil, false, nil
}

// lastRunID returns the last id of the store's runs, "" when it has none.
func (s *StatusStore) lastRunID() (string, error) {
	it, err := s.runIter()
	if err != nil {
		return "", err
	}
	var last string
	if it.Last() {
		last = string(it.Key()[1:])
	}
	return last, it.Close()
}

// runIter returns an iterator over the runs.
func (s *StatusStore) runIter() (*pebble.Iterator, error) {
	return s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{runPrefix}, UpperBound: []byte{runPrefix + 1}})
}

// runsAndEvents returns an iterator over the runs and the events: one
// iterator where a read needs both (making one is most of a Get).
func (s *StatusStore) runsAndEvents() (*pebble.Iterator, error) {
	return s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{runPrefix}, UpperBound: []byte{'t'}})
}

// runEvent returns id's event from the run holding it, if one does. Runs
// are tried from the first whose last id is not below id, until one
// starts above it. it may reach past the runs (Get's reads events too).
func runEvent(it *pebble.Iterator, id string) (StatusEvent, bool, error) {
	at, v, ok, err := runEntry(it, id, nil)
	if !ok || err != nil {
		return StatusEvent{}, false, err
	}
	ev, err := decodeStoredEventAt(id, at, v)
	return ev, err == nil, err
}

// runEntry is runEvent before decoding: the run's time and the stored
// event, valid until it moves. key is scratch space for the seek key.
func runEntry(it *pebble.Iterator, id string, key []byte) (at int64, ev []byte, ok bool, err error) {
	key = append(append(key[:0], runPrefix), id...)
	for valid := it.SeekGE(key); valid && it.Key()[0] == runPrefix; valid = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, nil, false, err
		}
		r, err := parseRun(v)
		if err != nil {
			return 0, nil, false, fmt.Errorf("%w under %q", err, it.Key())
		}
		first, _, err := r.entry(0)
		if err != nil || string(first) > id {
			return 0, nil, false, err
		}
		if ev, ok, err := r.findEntry(id); ok || err != nil {
			return r.at, ev, ok, err
		}
	}
	return 0, nil, false, it.Error()
}

// withRunEvent puts ev, a notification's event from its run, into its
// history where its own key would have sorted it (time, then sequence),
// unless the history holds it already: applied again from the status
// topic after a crash, it is also under a key of its own.
func withRunEvent(hist []StatusEvent, ev StatusEvent) []StatusEvent {
	for i := range hist {
		if hist[i].EventID == ev.EventID {
			return hist
		}
	}
	seq := eventSeq(&ev, 0)
	j := 0
	for j < len(hist) {
		h := &hist[j]
		if h.At.After(ev.At) || h.At.Equal(ev.At) && eventSeq(h, j) > seq {
			break
		}
		j++
	}
	return slices.Insert(hist, j, ev)
}

// runCursor reads the runs' events of ids in [lo, hi) in id order.
type runCursor struct {
	it     *pebble.Iterator
	lo, hi string
	run    storedRun
	i      int  // the next entry of run
	valid  bool // run holds entries from i on
	done   bool
}

func newRunCursor(it *pebble.Iterator, lo, hi string) *runCursor {
	c := &runCursor{it: it, lo: lo, hi: hi}
	if !it.SeekGE(append([]byte{runPrefix}, lo...)) {
		c.done = true
	}
	return c
}

// next returns the next id and event, ok false at the end.
func (c *runCursor) next() (id string, ev StatusEvent, ok bool, err error) {
	for !c.done {
		if !c.valid {
			v, err := c.it.ValueAndErr()
			if err != nil {
				return "", StatusEvent{}, false, err
			}
			if c.run, err = parseRun(v); err != nil {
				return "", StatusEvent{}, false, fmt.Errorf("%w under %q", err, c.it.Key())
			}
			c.i, c.valid = 0, true
		}
		for c.i < c.run.len() {
			rid, rev, err := c.run.entry(c.i)
			if err != nil {
				return "", StatusEvent{}, false, err
			}
			c.i++
			if string(rid) < c.lo {
				continue
			}
			if string(rid) >= c.hi {
				// Runs are in the order of their last ids: a later one
				// starts above this one's entries, so none is left.
				c.done = true
				break
			}
			e, err := c.run.event(rid, rev)
			return string(rid), e, err == nil, err
		}
		if !c.done {
			c.valid = false
			c.done = !c.it.Next()
		}
	}
	return "", StatusEvent{}, false, c.it.Error()
}
