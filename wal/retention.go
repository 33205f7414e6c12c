package wal

import (
	"errors"
	"os"
	"path/filepath"
	"time"
)

func (l *Log) retentionLoop() {
	defer l.wg.Done()
	t := time.NewTicker(l.opts.retentionInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.EnforceRetention()
		}
	}
}

// EnforceRetention deletes sealed segments that are past their topic's age
// or size limit, oldest first. Unless the topic sets DeleteUncommitted, a
// segment holding any record at or above the lowest offset a consumer group
// of the topic has committed is kept, whatever its age: retention never
// drops a backlog. It returns how many segments were deleted.
func (l *Log) EnforceRetention() (int, error) {
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return 0, ErrClosed
	}
	var parts []*partition
	for _, t := range l.topics {
		if t.cfg.RetentionAge > 0 || t.cfg.RetentionBytes > 0 {
			parts = append(parts, t.parts...)
		}
	}
	l.mu.RUnlock()
	now := l.opts.now()
	deleted := 0
	var errs []error
	for _, p := range parts {
		n, err := p.enforceRetention(now)
		deleted += n
		errs = append(errs, err)
	}
	return deleted, errors.Join(errs...)
}

func (p *partition) enforceRetention(now time.Time) (int, error) {
	cfg := p.topic.cfg
	floor := int64(-1) // no limit
	if !cfg.DeleteUncommitted {
		f, _ := p.log.offsets.floor(TopicPartition{p.topic.name, p.id})
		floor = f // a topic no group has committed on keeps everything
	}
	p.mu.Lock()
	var total int64
	for i, s := range p.segs {
		if i == len(p.segs)-1 {
			total += p.endPos
		} else {
			total += s.size
		}
	}
	var victims []*segment
	// Never the active segment, which the writer owns.
	for len(p.segs) > 1 {
		s := p.segs[0]
		tooOld := cfg.RetentionAge > 0 && now.Sub(time.Unix(0, s.maxTS)) > cfg.RetentionAge
		tooBig := cfg.RetentionBytes > 0 && total > cfg.RetentionBytes
		if !tooOld && !tooBig {
			break
		}
		if floor >= 0 && s.next > floor {
			break
		}
		p.segs = p.segs[1:]
		p.start = p.segs[0].base
		total -= s.size
		s.deleted = true
		victims = append(victims, s)
	}
	var toClose []*segment
	for _, s := range victims {
		if s.refs == 0 {
			toClose = append(toClose, s)
		}
	}
	p.mu.Unlock()
	var errs []error
	for _, s := range toClose {
		s.closeFiles()
	}
	for _, s := range victims {
		name := filepath.Join(p.dir, segmentName(s.base))
		errs = append(errs, os.Remove(name+".log"), ignoreNotExist(os.Remove(name+".idx")))
	}
	return len(victims), errors.Join(errs...)
}

func ignoreNotExist(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
