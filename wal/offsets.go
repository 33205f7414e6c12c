package wal

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// offsetStore keeps each consumer group's committed offsets in a file of its
// own, replaced atomically (write, fsync, rename, fsync dir) on every commit,
// so a crash leaves either the old or the new offsets, never a mix.
type offsetStore struct {
	dir    string
	mu     sync.Mutex
	groups map[string]map[TopicPartition]int64
}

type offsetEntry struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
}

func openOffsets(dir string) (*offsetStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	s := &offsetStore{dir: dir, groups: map[string]map[TopicPartition]int64{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue // a leftover .tmp from a crash mid-commit: the old file stands
		}
		raw, err := hex.DecodeString(name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("wal: offsets: %w", err)
		}
		var list []offsetEntry
		if err := json.Unmarshal(b, &list); err != nil {
			return nil, fmt.Errorf("wal: offsets of group %q: %w", raw, err)
		}
		m := make(map[TopicPartition]int64, len(list))
		for _, o := range list {
			m[TopicPartition{o.Topic, o.Partition}] = o.Offset
		}
		s.groups[string(raw)] = m
	}
	return s, nil
}

func (s *offsetStore) commit(group string, offsets map[TopicPartition]int64) error {
	if group == "" {
		return fmt.Errorf("wal: empty group name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(s.groups[group])
	if next == nil {
		next = map[TopicPartition]int64{}
	}
	maps.Copy(next, offsets)
	list := make([]offsetEntry, 0, len(next))
	for tp, o := range next {
		list = append(list, offsetEntry{tp.Topic, tp.Partition, o})
	}
	b, _ := json.Marshal(list)
	// Hex keeps any group name a safe file name.
	if err := writeFileAtomic(filepath.Join(s.dir, hex.EncodeToString([]byte(group))+".json"), b); err != nil {
		return err
	}
	s.groups[group] = next
	return nil
}

func (s *offsetStore) get(group string) map[TopicPartition]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.groups[group])
}

// floor returns the lowest offset any group has committed on tp, and
// whether any group has committed on tp's topic at all.
func (s *offsetStore) floor(tp TopicPartition) (int64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var low int64
	found := false
	for _, m := range s.groups {
		subscribed := false
		for k := range m {
			if k.Topic == tp.Topic {
				subscribed = true
				break
			}
		}
		if !subscribed {
			continue
		}
		o := m[tp] // a group on the topic that never committed tp holds it at 0
		if !found || o < low {
			low, found = o, true
		}
	}
	return low, found
}

// lockDir takes an exclusive flock on dir/LOCK so a second process opening
// the same log fails at once instead of corrupting it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("wal: %s is in use by another process: %w", dir, err)
	}
	return f, nil
}
