package dedupe

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/v2"
	"github.com/dchest/siphash"
)

// Stored keys are digests: the caller's key hashed to 16 bytes with
// SipHash-2-4-128 under a secret the store draws at creation. A caller's
// key is tens of bytes ("ingest", the tenant and a 35-character default
// key at the API); every generation log, sstable, flush and compaction
// moved them, and block compression found nothing to shrink in their hex.
// With digests the API's NDJSON ingest spent ~10 % less CPU a
// notification. SipHash is a keyed PRF made for exactly this: without the
// secret nobody can choose two keys that collide, and by chance two of
// 2^32 keys collide with odds of about 2^-65.
//
// Stores written before the digests hold their callers' keys as they were.
// Such a store is marked at its first open by this version with the newest
// bucket that may hold one (legacyTop); lookups of keys the digests do not
// answer also look for the key as it was in those buckets, until the
// window has passed them. Every write, including one to an old entry, goes
// under the digest, which a lookup prefers.
const digestLen = 16

var keyFormKey = []byte("m/key-form")

// keyFormDigests is the marker's first byte: stored keys are digests.
const keyFormDigests = 2

// keyForm is what the marker holds: the secret and the legacy range.
type keyForm struct {
	k0, k1    uint64
	legacy    bool   // some buckets may hold keys as the callers gave them
	legacyTop uint32 // the newest of them
}

func (f keyForm) append(dst []byte) []byte {
	dst = append(dst, keyFormDigests)
	dst = binary.BigEndian.AppendUint64(dst, f.k0)
	dst = binary.BigEndian.AppendUint64(dst, f.k1)
	legacy := byte(0)
	if f.legacy {
		legacy = 1
	}
	dst = append(dst, legacy)
	return binary.BigEndian.AppendUint32(dst, f.legacyTop)
}

func parseKeyForm(b []byte) (keyForm, error) {
	if len(b) != 22 || b[0] != keyFormDigests || b[17] > 1 {
		return keyForm{}, fmt.Errorf("dedupe: unknown key form %x (a newer version's store?)", b)
	}
	return keyForm{k0: binary.BigEndian.Uint64(b[1:]), k1: binary.BigEndian.Uint64(b[9:]), legacy: b[17] == 1,
		legacyTop: binary.BigEndian.Uint32(b[18:])}, nil
}

// loadKeyForm reads the store's key form, or makes one: a new secret, and
// for a store that existed (it has entries, or a layout) the legacy range
// up to the newest bucket on disk or now, whichever is later, plus one for
// a clock that stepped back. It is written, synced, before any digest is.
func (s *Store) loadKeyForm(existed bool) error {
	v, closer, err := s.db.Get(keyFormKey)
	if err == nil {
		defer closer.Close()
		s.form, err = parseKeyForm(v)
		return err
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("dedupe: %w", err)
	}
	var secret [16]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return fmt.Errorf("dedupe: key secret: %w", err)
	}
	f := keyForm{k0: binary.BigEndian.Uint64(secret[:8]), k1: binary.BigEndian.Uint64(secret[8:])}
	if existed {
		top := s.bucketOf(s.o.now())
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'b'}, UpperBound: []byte{'c'}})
		if err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
		if it.Last() && len(it.Key()) >= 5 {
			top = max(top, binary.BigEndian.Uint32(it.Key()[1:5]))
		}
		if err := it.Close(); err != nil {
			return fmt.Errorf("dedupe: %w", err)
		}
		f.legacy, f.legacyTop = true, top+1
	}
	if err := s.db.Set(keyFormKey, f.append(nil), pebble.Sync); err != nil {
		return fmt.Errorf("dedupe: %w", err)
	}
	s.form = f
	return nil
}

// digest is a stored key.
type digest [digestLen]byte

// digestOf is the digest held in the string d.
func digestOf(d string) (k digest) {
	copy(k[:], d)
	return k
}

// appendDigest appends key's stored form to dst.
func (s *Store) appendDigest(dst []byte, key string) []byte {
	h0, h1 := siphash.Hash128(s.form.k0, s.form.k1, unsafe.Slice(unsafe.StringData(key), len(key)))
	dst = binary.BigEndian.AppendUint64(dst, h0)
	return binary.BigEndian.AppendUint64(dst, h1)
}

// digests returns the stored form of each key. The strings share one
// array, which lives as long as any of them (the claims keep theirs).
func (s *Store) digests(n int, key func(i int) string) []string {
	buf := make([]byte, 0, n*digestLen)
	out := make([]string, n)
	for i := range out {
		buf = s.appendDigest(buf, key(i))
		out[i] = unsafe.String(&buf[i*digestLen], digestLen)
	}
	return out
}

// legacyRange is the buckets a lookup at now must also search for keys as
// the callers gave them; ok is false when none is left in the window.
func (s *Store) legacyRange(now time.Time) (newest, oldest uint32, ok bool) {
	if !s.form.legacy {
		return 0, 0, false
	}
	newest, oldest = s.liveBuckets(now)
	newest = min(newest, s.form.legacyTop)
	return newest, oldest, newest >= oldest
}

// lookupLegacy fills the results the digests left empty from the entries
// stored under the keys themselves, while any may be in the window.
func (s *Store) lookupLegacy(n int, key func(i int) string, res []found, now time.Time) error {
	newest, oldest, ok := s.legacyRange(now)
	if !ok {
		return nil
	}
	var idx []int
	var keys []string
	for i := range n {
		if !res[i].ok {
			idx = append(idx, i)
			keys = append(keys, key(i))
		}
	}
	if len(keys) == 0 {
		return nil
	}
	fs, err := s.lookupIn(keys, newest, oldest)
	if err != nil {
		return err
	}
	for j, i := range idx {
		if fs[j].ok {
			res[i] = fs[j]
		}
	}
	return nil
}
