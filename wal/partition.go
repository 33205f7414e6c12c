package wal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type appendReq struct {
	recs  []Record
	bytes int // the records' recordBytes, summed at enqueue
	done  func(base int64, err error)
}

// partition owns one directory of segments and the goroutine that writes it.
type partition struct {
	log   *Log
	topic *topic
	id    int32
	dir   string

	// closeMu orders enqueue against shutdown: enqueuers hold it shared
	// while sending, shutdown takes it exclusively before stopping the writer,
	// so no request is sent after the writer's last drain.
	closeMu sync.RWMutex
	closing bool
	reqs    chan appendReq
	syncs   chan chan error // Sync's requests, answered by the writer
	// lazySyncs counts the fsyncs of data acknowledged unsynced (interval
	// ticks, Sync): tests see from it that Sync syncs only what is dirty.
	lazySyncs atomic.Int64
	stopped   chan struct{} // closed when the writer has drained and exited
	stopReq   chan struct{}

	// mu guards segs, each segment's index slice header and refs, and the
	// visible bounds. Readers hold it only to snapshot; I/O runs unlocked.
	mu     sync.Mutex
	segs   []*segment
	start  int64 // lowest kept offset
	end    int64 // next offset; everything below is written per policy
	endPos int64 // byte size of the active segment up to end
	failed error // a write error that left the tail unknown; appends fail until reopen

	// last is the decoded frame a read last stopped inside: the next read
	// of the partition starts there.
	lastMu sync.Mutex
	last   *decodedFrame

	// writer-only state
	buf   []byte
	raw   []byte
	dirty bool // written since the last fsync
}

// segment is one log file plus its sparse index.
type segment struct {
	base    int64
	f       *os.File
	idx     *os.File
	index   []indexEntry
	size    int64 // bytes written; writer-owned for the active segment
	next    int64 // offset after the last record
	created time.Time
	maxTS   int64

	refs    int // readers using f; guarded by partition.mu
	deleted bool
}

func segmentName(base int64) string { return fmt.Sprintf("%020d", base) }

func openPartition(l *Log, t *topic, id int32) (*partition, error) {
	dir := filepath.Join(l.dir, "topics", t.name, strconv.Itoa(int(id)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	p := &partition{log: l, topic: t, id: id, dir: dir,
		reqs: make(chan appendReq, l.opts.queueDepth), syncs: make(chan chan error), stopped: make(chan struct{}), stopReq: make(chan struct{})}
	if err := p.recover(); err != nil {
		p.close()
		return nil, fmt.Errorf("wal: %s/%d: %w", t.name, id, err)
	}
	go p.writeLoop()
	return p, nil
}

// recover loads every segment, trusting the sealed ones' indexes (checked
// for consistency) and scanning the active one batch by batch.
func (p *partition) recover() error {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	var bases []int64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok {
			continue
		}
		b, err := strconv.ParseInt(name, 10, 64)
		if err != nil {
			return fmt.Errorf("stray segment file %s", e.Name())
		}
		bases = append(bases, b)
	}
	slices.Sort(bases)
	now := p.log.opts.now()
	for i, base := range bases {
		last := i == len(bases)-1
		s, err := p.openSegment(base, last)
		if err != nil {
			return err
		}
		if last {
			err = p.scanActive(s)
		} else {
			err = p.loadSealed(s)
		}
		if err != nil {
			s.closeFiles()
			return err
		}
		if len(p.segs) > 0 && p.segs[len(p.segs)-1].next != s.base {
			s.closeFiles()
			return fmt.Errorf("%w: segment %d does not follow %d (ends at %d)", ErrCorrupt, s.base, p.segs[len(p.segs)-1].base, p.segs[len(p.segs)-1].next)
		}
		s.created = now
		p.segs = append(p.segs, s)
	}
	if len(p.segs) == 0 {
		s, err := p.createSegment(0)
		if err != nil {
			return err
		}
		p.segs = append(p.segs, s)
	}
	p.start = p.segs[0].base
	act := p.segs[len(p.segs)-1]
	p.end, p.endPos = act.next, act.size
	return nil
}

func (p *partition) openSegment(base int64, active bool) (*segment, error) {
	flag := os.O_RDONLY
	if active {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(filepath.Join(p.dir, segmentName(base)+".log"), flag, 0)
	if err != nil {
		return nil, err
	}
	s := &segment{base: base, f: f, next: base}
	if active {
		if s.idx, err = os.OpenFile(filepath.Join(p.dir, segmentName(base)+".idx"), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
			f.Close()
			return nil, err
		}
	}
	return s, nil
}

func (p *partition) createSegment(base int64) (*segment, error) {
	name := filepath.Join(p.dir, segmentName(base))
	f, err := os.OpenFile(name+".log", os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	idx, err := os.OpenFile(name+".idx", os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		f.Close()
		return nil, err
	}
	// The new file's directory entry must be durable before acknowledged
	// data lands in it.
	if err := syncDir(p.dir); err != nil {
		f.Close()
		idx.Close()
		return nil, err
	}
	return &segment{base: base, f: f, idx: idx, next: base, created: p.log.opts.now()}, nil
}

// scanActive reads the newest segment batch by batch, verifying framing,
// CRC and offset continuity, and truncates it after the last whole batch.
func (p *partition) scanActive(s *segment) error {
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	fileSize := st.Size()
	var pos, sinceIdx int64
	next := s.base
	hdr := make([]byte, headerSize)
	var frame []byte
	for pos < fileSize {
		if _, err := s.f.ReadAt(hdr, pos); err != nil {
			break // torn header
		}
		h, err := parseHeader(hdr)
		if err != nil || h.base != next || pos+h.length > fileSize {
			break
		}
		frame = growTo(frame[:0], int(h.length))[:h.length]
		if _, err := s.f.ReadAt(frame, pos); err != nil {
			break
		}
		if checkFrame(frame) != nil {
			break
		}
		if pos == 0 || sinceIdx >= indexInterval {
			s.index = append(s.index, indexEntry{offset: h.base, pos: pos, ts: h.ts})
			sinceIdx = 0
		}
		pos += h.length
		sinceIdx += h.length
		next = h.next()
		s.maxTS = max(s.maxTS, h.ts)
	}
	if pos < fileSize {
		if err := s.f.Truncate(pos); err != nil {
			return fmt.Errorf("truncate torn tail: %w", err)
		}
		if err := s.f.Sync(); err != nil {
			return err
		}
	}
	s.size, s.next = pos, next
	if _, err := s.f.Seek(pos, 0); err != nil {
		return err
	}
	// The index of the active segment is rebuilt from the scan, so it can
	// never point past the truncation.
	if err := s.idx.Truncate(0); err != nil {
		return err
	}
	b := make([]byte, 0, len(s.index)*indexEntrySize)
	for _, e := range s.index {
		b = e.append(b)
	}
	if _, err := s.idx.WriteAt(b, 0); err != nil {
		return err
	}
	_, err = s.idx.Seek(int64(len(b)), 0)
	return err
}

// loadSealed reads a sealed segment's index; if the index is missing or does
// not describe the file exactly, it is rebuilt from the batch headers.
func (p *partition) loadSealed(s *segment) error {
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	s.size = st.Size()
	b, err := os.ReadFile(filepath.Join(p.dir, segmentName(s.base)+".idx"))
	if err == nil {
		if idx, ok := parseIndex(b, s.base, s.size); ok {
			lastE := idx[len(idx)-1]
			hdr := make([]byte, headerSize)
			if _, err := s.f.ReadAt(hdr, lastE.pos); err == nil {
				if h, err := parseHeader(hdr); err == nil && h.base == lastE.offset && lastE.pos+h.length == s.size {
					s.index, s.next, s.maxTS = idx, h.next(), lastE.ts
					return nil
				}
			}
		}
	}
	return p.rebuildSealed(s)
}

func (p *partition) rebuildSealed(s *segment) error {
	hdr := make([]byte, headerSize)
	var pos, sinceIdx int64
	next := s.base
	s.index = s.index[:0]
	var lastPos int64
	var lastH batchHeader
	for pos < s.size {
		if _, err := s.f.ReadAt(hdr, pos); err != nil {
			return fmt.Errorf("%w: sealed segment %d: %v", ErrCorrupt, s.base, err)
		}
		h, err := parseHeader(hdr)
		if err != nil || h.base != next || pos+h.length > s.size {
			return fmt.Errorf("%w: sealed segment %d at byte %d", ErrCorrupt, s.base, pos)
		}
		if pos == 0 || sinceIdx >= indexInterval {
			s.index = append(s.index, indexEntry{offset: h.base, pos: pos, ts: h.ts})
			sinceIdx = 0
		}
		lastPos, lastH = pos, h
		pos += h.length
		sinceIdx += h.length
		next = h.next()
		s.maxTS = max(s.maxTS, h.ts)
	}
	s.next = next
	if s.size > 0 && s.index[len(s.index)-1].pos != lastPos {
		s.index = append(s.index, indexEntry{offset: lastH.base, pos: lastPos, ts: lastH.ts})
	}
	var b []byte
	for _, e := range s.index {
		b = e.append(b)
	}
	return writeFileAtomic(filepath.Join(p.dir, segmentName(s.base)+".idx"), b)
}

func (s *segment) closeFiles() {
	s.f.Close()
	if s.idx != nil {
		s.idx.Close()
	}
}

func (p *partition) bounds() (start, end int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.start, p.end
}

func (p *partition) enqueue(ctx context.Context, recs []Record, done func(int64, error)) error {
	if len(recs) == 0 {
		return errors.New("wal: append of no records")
	}
	size := 0
	for i := range recs {
		n := recordBytes(&recs[i])
		if n > MaxRecordBytes {
			return fmt.Errorf("%w: %d bytes, %d at most", ErrRecordTooLarge, n, MaxRecordBytes)
		}
		size += n
	}
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closing {
		return ErrClosed
	}
	select {
	case p.reqs <- appendReq{recs: recs, bytes: size, done: done}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sync fsyncs what the partition has written and not synced (see
// Log.Sync).
func (p *partition) sync(ctx context.Context) error {
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closing {
		return ErrClosed // shutdown syncs what is left
	}
	done := make(chan error, 1)
	select {
	case p.syncs <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-done
}

// shutdown stops the writer after it drained the queue, then closes files.
func (p *partition) shutdown() error {
	p.closeMu.Lock()
	p.closing = true
	p.closeMu.Unlock()
	close(p.stopReq)
	<-p.stopped
	return p.close()
}

func (p *partition) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, s := range p.segs {
		if s.idx != nil {
			errs = append(errs, s.idx.Close())
		}
		errs = append(errs, s.f.Close())
	}
	p.segs = nil
	return errors.Join(errs...)
}

func (p *partition) writeLoop() {
	defer close(p.stopped)
	var tick <-chan time.Time
	if p.topic.cfg.Fsync == FsyncInterval {
		t := time.NewTicker(p.topic.cfg.FsyncInterval)
		defer t.Stop()
		tick = t.C
	}
	group := make([]appendReq, 0, 64)
	for {
		select {
		case r := <-p.reqs:
			group = append(group[:0], r)
			group = p.gather(group)
			p.commitGroup(group)
			clear(group) // drop references to callers' records
		case <-tick:
			p.syncIfDirty()
		case done := <-p.syncs:
			// Every append acknowledged before this request was written
			// by this goroutine already.
			p.syncIfDirty()
			p.mu.Lock()
			done <- p.failed
			p.mu.Unlock()
		case <-p.stopReq:
			// No sender can enqueue once closing is set; drain what is queued.
			for {
				select {
				case r := <-p.reqs:
					group = p.gather(append(group[:0], r))
					p.commitGroup(group)
					clear(group)
				default:
					p.syncIfDirty()
					return
				}
			}
		}
	}
}

// gather adds whatever else is queued, up to the group byte limit.
func (p *partition) gather(group []appendReq) []appendReq {
	size := group[0].bytes
	for size < p.log.opts.maxGroupBytes {
		select {
		case r := <-p.reqs:
			group = append(group, r)
			size += r.bytes
		default:
			return group
		}
	}
	return group
}

// commitGroup frames the group as one batch, writes it, syncs per policy,
// publishes the new end and acknowledges every request.
func (p *partition) commitGroup(group []appendReq) {
	p.mu.Lock()
	failed := p.failed
	p.mu.Unlock()
	if failed != nil {
		p.log.counters.appendErrors.Add(int64(len(group)))
		for _, r := range group {
			r.done(0, failed)
		}
		return
	}
	now := p.log.opts.now()
	if err := p.maybeRoll(now); err != nil {
		p.fail(group, err)
		return
	}
	act := p.segs[len(p.segs)-1] // only the writer changes segs' tail
	base := act.next
	ts := now.UnixNano()
	// One frame for the group, or several where its payload passes
	// maxFrameRaw; each frame is whole on its own for reads and recovery.
	p.raw, p.buf = p.raw[:0], p.buf[:0]
	count, inFrame, frames := 0, 0, 0
	cut := func(next int) { // ends the frame if next more bytes would pass maxFrameRaw
		if inFrame > 0 && len(p.raw)+next > maxFrameRaw {
			p.buf = p.log.comp.appendBatch(p.buf, p.topic.cfg.Codec, base+int64(count-inFrame), inFrame, ts, p.raw)
			p.raw, inFrame = p.raw[:0], 0
			frames++
		}
	}
	for _, r := range group {
		cut(r.bytes)
		if r.bytes <= maxFrameRaw { // a request whole in one frame: the usual case
			p.raw = appendRecords(p.raw, r.recs)
			count, inFrame = count+len(r.recs), inFrame+len(r.recs)
			continue
		}
		for i := range r.recs {
			cut(recordBytes(&r.recs[i]))
			p.raw = appendRecords(p.raw, r.recs[i:i+1])
			count++
			inFrame++
		}
	}
	p.buf = p.log.comp.appendBatch(p.buf, p.topic.cfg.Codec, base+int64(count-inFrame), inFrame, ts, p.raw)
	frames++
	pos := act.size
	if _, err := act.f.Write(p.buf); err != nil {
		// The tail is now unknown; cut back to the last whole batch or stop.
		if terr := act.f.Truncate(pos); terr != nil {
			p.mu.Lock()
			p.refuse(fmt.Errorf("wal: %s/%d: write failed and tail not restored: %w", p.topic.name, p.id, errors.Join(err, terr)))
			p.mu.Unlock()
		}
		act.f.Seek(pos, 0)
		p.fail(group, err)
		return
	}
	act.size += int64(len(p.buf))
	act.next = base + int64(count)
	p.log.counters.records.Add(int64(count))
	p.log.counters.batches.Add(int64(frames))
	p.log.counters.bytes.Add(int64(len(p.buf)))
	act.maxTS = max(act.maxTS, ts)
	p.dirty = true
	if p.topic.cfg.Fsync == FsyncEveryGroup {
		if err := act.f.Sync(); err != nil {
			// After a failed fsync the page cache state is unknowable
			// (fsyncgate); refuse further appends until reopened.
			p.mu.Lock()
			p.refuse(fmt.Errorf("wal: %s/%d: fsync: %w", p.topic.name, p.id, err))
			p.mu.Unlock()
			p.fail(group, err)
			return
		}
		p.log.counters.fsyncs.Add(1)
		p.dirty = false
	}
	var entry *indexEntry
	if len(act.index) == 0 || pos-act.index[len(act.index)-1].pos >= indexInterval {
		entry = &indexEntry{offset: base, pos: pos, ts: ts}
		// The index is derivable; a lost write is repaired on open.
		act.idx.Write(entry.append(nil))
	}
	p.mu.Lock()
	if entry != nil {
		act.index = append(act.index, *entry)
	}
	p.end, p.endPos = act.next, act.size
	p.mu.Unlock()
	p.log.notify(p.topic.name)
	off := base
	for _, r := range group {
		r.done(off, nil)
		off += int64(len(r.recs))
	}
}

func (p *partition) fail(group []appendReq, err error) {
	p.log.counters.appendErrors.Add(int64(len(group)))
	err = fmt.Errorf("wal: append to %s/%d: %w", p.topic.name, p.id, err)
	for _, r := range group {
		r.done(0, err)
	}
}

func (p *partition) syncIfDirty() {
	if !p.dirty {
		return
	}
	p.mu.Lock()
	act := p.segs[len(p.segs)-1]
	p.mu.Unlock()
	if err := act.f.Sync(); err != nil {
		p.mu.Lock()
		p.refuse(fmt.Errorf("wal: %s/%d: fsync: %w", p.topic.name, p.id, err))
		p.mu.Unlock()
		return
	}
	p.lazySyncs.Add(1)
	p.log.counters.fsyncs.Add(1)
	p.dirty = false
}

// maybeRoll seals the active segment when it is full or old and starts a
// new one. Sealing syncs the old file and ends its index with an entry for
// its last batch, which lets open trust the index without a scan.
func (p *partition) maybeRoll(now time.Time) error {
	act := p.segs[len(p.segs)-1]
	if act.size == 0 || (act.size < p.topic.cfg.SegmentBytes && now.Sub(act.created) < p.topic.cfg.SegmentAge) {
		return nil
	}
	if err := act.f.Sync(); err != nil {
		return err
	}
	p.dirty = false
	last, err := lastBatch(act)
	if err != nil {
		return err
	}
	if act.index[len(act.index)-1].pos != last.pos {
		act.idx.Write(last.append(nil))
		p.mu.Lock()
		act.index = append(act.index, last)
		p.mu.Unlock()
	}
	if err := act.idx.Sync(); err != nil {
		return err
	}
	ns, err := p.createSegment(act.next)
	if err != nil {
		return err
	}
	p.mu.Lock()
	act.idx.Close()
	act.idx = nil
	p.segs = append(p.segs, ns)
	p.endPos = 0
	p.mu.Unlock()
	return nil
}

// lastBatch finds the last batch of a segment by walking from its last
// index entry.
func lastBatch(s *segment) (indexEntry, error) {
	e := s.index[len(s.index)-1]
	hdr := make([]byte, headerSize)
	for {
		if _, err := s.f.ReadAt(hdr, e.pos); err != nil {
			return e, err
		}
		h, err := parseHeader(hdr)
		if err != nil {
			return e, err
		}
		if e.pos+h.length >= s.size {
			e.offset, e.ts = h.base, h.ts
			return e, nil
		}
		e.pos += h.length
	}
}

// read returns records from offset on, crossing into later segments until
// maxRecords or maxBytes is reached or the end is hit.
func (p *partition) read(offset int64, maxRecords, maxBytes int) ([]Record, error) {
	if maxRecords <= 0 {
		maxRecords = 1
	}
	if maxBytes <= 0 {
		maxBytes = 1 << 20
	}
	var out []Record
	bytes := 0
	for len(out) < maxRecords && bytes < maxBytes {
		p.mu.Lock()
		if p.segs == nil {
			p.mu.Unlock()
			return out, ErrClosed
		}
		if offset < p.start || offset > p.end {
			start, end := p.start, p.end
			p.mu.Unlock()
			if len(out) > 0 {
				return out, nil
			}
			return nil, fmt.Errorf("%w: %d not in [%d, %d]", ErrOffsetOutOfRange, offset, start, end)
		}
		if offset == p.end {
			p.mu.Unlock()
			return out, nil
		}
		if out == nil {
			out = make([]Record, 0, min(int64(maxRecords), p.end-offset))
		}
		i, _ := slices.BinarySearchFunc(p.segs, offset, func(s *segment, o int64) int {
			switch {
			case s.base > o:
				return 1
			case s.base < o:
				return -1
			}
			return 0
		})
		if i == len(p.segs) || p.segs[i].base > offset {
			i--
		}
		s := p.segs[i]
		// The writer owns the active segment's fields; use what it published.
		limit, segNext := p.endPos, p.end
		if i < len(p.segs)-1 {
			limit, segNext = s.size, s.next
		}
		index := s.index
		s.refs++
		p.mu.Unlock()

		n := len(out)
		var err error
		out, bytes, err = p.readSegment(s, index, limit, offset, out, maxRecords, maxBytes, bytes)
		p.unref(s)
		if err != nil {
			return out, fmt.Errorf("wal: read %s/%d@%d: %w", p.topic.name, p.id, offset, err)
		}
		if len(out) == n {
			// Nothing past offset in this segment: it was deleted or ended
			// under us; re-resolve.
			if offset < segNext {
				return out, nil
			}
			offset = segNext
			continue
		}
		offset = out[len(out)-1].Offset + 1
	}
	return out, nil
}

func (p *partition) unref(s *segment) {
	p.mu.Lock()
	s.refs--
	closeNow := s.deleted && s.refs == 0
	p.mu.Unlock()
	if closeNow {
		s.closeFiles()
	}
}

func (p *partition) readSegment(s *segment, index []indexEntry, limit, offset int64, out []Record, maxRecords, maxBytes, bytes int) ([]Record, int, error) {
	var pos int64
	if j, found := slices.BinarySearchFunc(index, offset, func(e indexEntry, o int64) int {
		switch {
		case e.offset > o:
			return 1
		case e.offset < o:
			return -1
		}
		return 0
	}); found {
		pos = index[j].pos
	} else if j > 0 {
		pos = index[j-1].pos
	}
	hdr := make([]byte, headerSize)
	var scratch []byte
	for pos < limit && len(out) < maxRecords && bytes < maxBytes {
		if _, err := s.f.ReadAt(hdr, pos); err != nil {
			return out, bytes, err
		}
		h, err := parseHeader(hdr)
		if err != nil {
			return out, bytes, err
		}
		if h.next() <= offset {
			pos += h.length
			continue
		}
		n := len(out)
		from := max(offset, h.base)
		want := min(h.next()-from, int64(maxRecords-n))
		midFrame := want < h.next()-from // this read stops inside the frame
		if recs := p.cachedFrame(s, pos); recs != nil {
			out = append(out, recs[from-h.base:][:want]...)
		} else {
			if out, scratch, err = p.decodeAt(s, pos, h, out, scratch, from, want, midFrame); err != nil {
				return out[:n], bytes, err
			}
		}
		if !midFrame {
			p.dropFrame(s, pos)
		}
		for i := n; i < len(out); i++ {
			bytes += len(out[i].Value) + len(out[i].Key)
		}
		pos += h.length
	}
	return out, bytes, nil
}

// decodeAt reads and decodes the frame at pos, appending want records from
// offset from to out. When the read stops inside the frame (midFrame), the whole
// frame is decoded and kept for the next read, within the log's budget.
func (p *partition) decodeAt(s *segment, pos int64, h batchHeader, out []Record, scratch []byte, from, want int64, midFrame bool) ([]Record, []byte, error) {
	// Records alias the frame only when it is not compressed; otherwise
	// they alias the decompressed copy and the frame can be reused.
	if h.codec == CodecNone || int64(cap(scratch)) < h.length {
		scratch = make([]byte, h.length)
	}
	frame := scratch[:h.length]
	if h.codec == CodecNone {
		scratch = nil
	}
	if _, err := s.f.ReadAt(frame, pos); err != nil {
		return out, scratch, err
	}
	if midFrame && p.log.opts.frameCacheBytes > 0 {
		all, err := p.log.comp.decodeFrame(make([]Record, 0, h.count), frame, h.base, h.count)
		if err != nil {
			return out, scratch, err
		}
		p.keepFrame(s, pos, all)
		return append(out, all[from-h.base:][:want]...), scratch, nil
	}
	n := len(out)
	out = slices.Grow(out, int(want))
	out, err := p.log.comp.decodeFrame(out, frame, from, n+int(want))
	return out, scratch, err
}

// decodedFrame is every record of one frame, decoded.
type decodedFrame struct {
	seg  *segment
	pos  int64
	recs []Record
	size int64
}

func (p *partition) cachedFrame(s *segment, pos int64) []Record {
	p.lastMu.Lock()
	defer p.lastMu.Unlock()
	if p.last != nil && p.last.seg == s && p.last.pos == pos {
		return p.last.recs
	}
	return nil
}

// keepFrame makes recs the partition's kept frame if the log's budget
// allows, replacing the one it had.
func (p *partition) keepFrame(s *segment, pos int64, recs []Record) {
	var size int64
	for i := range recs {
		size += int64(len(recs[i].Key)+len(recs[i].Value)) + 64
	}
	p.lastMu.Lock()
	defer p.lastMu.Unlock()
	if p.last != nil {
		p.log.frameCache.Add(-p.last.size)
		p.last = nil
	}
	if p.log.frameCache.Add(size) > p.log.opts.frameCacheBytes {
		p.log.frameCache.Add(-size)
		return
	}
	p.last = &decodedFrame{seg: s, pos: pos, recs: recs, size: size}
}

// dropFrame forgets the kept frame once a read has passed its end.
func (p *partition) dropFrame(s *segment, pos int64) {
	p.lastMu.Lock()
	defer p.lastMu.Unlock()
	if p.last != nil && p.last.seg == s && p.last.pos == pos {
		p.log.frameCache.Add(-p.last.size)
		p.last = nil
	}
}
