package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Batch framing, little endian:
//
//	0  length    uint32  bytes after this field
//	4  crc       uint32  CRC32C (Castagnoli) of bytes 8..end
//	8  base      int64   offset of the first record
//	16 count     uint32  records in the batch
//	20 magic     uint8   frame version, 1
//	21 codec     uint8   Codec of the payload
//	22 timestamp int64   append time, Unix nanoseconds
//	30 payload           the records, compressed with codec
//
// A record in the uncompressed payload is
// uvarint(len(key)+1, 0 for a nil key) key uvarint(len(value)) value
// uvarint(headers) { uvarint(len(k)) k uvarint(len(v)) v }.
const (
	headerSize   = 30
	frameMagic   = 1
	maxBatchSize = 64 << 20 // a length above this is corruption, not data
	// maxFrameRaw is where a group's payload is cut into another frame, so
	// no frame, even of incompressible records, nears maxBatchSize: one
	// 80 MiB append was written as one frame, acknowledged, and then read
	// as corrupt (and cut off by the next open).
	maxFrameRaw = 16 << 20
	// MaxRecordBytes is the largest record (key, value and headers) an
	// append takes: alone in a frame, compressed or not, it stays below
	// maxBatchSize.
	MaxRecordBytes = 32 << 20
)

// ErrRecordTooLarge is an append's error for a record above MaxRecordBytes.
var ErrRecordTooLarge = errors.New("wal: record too large")

// recordBytes is r's size in a payload, near enough to bound it.
func recordBytes(r *Record) int {
	n := len(r.Key) + len(r.Value) + 3*binary.MaxVarintLen64
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 2*binary.MaxVarintLen64
	}
	return n
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by errors about bytes that fail framing or CRC checks.
var ErrCorrupt = errors.New("wal: corrupt batch")

// Codec is a batch compression codec, chosen per topic.
type Codec uint8

// Codecs. S2 is the default: it compresses JSON about 2x at memory speed.
const (
	CodecNone Codec = 0
	CodecS2   Codec = 1
	CodecZstd Codec = 2
)

func (c Codec) String() string {
	switch c {
	case CodecNone:
		return "none"
	case CodecS2:
		return "s2"
	case CodecZstd:
		return "zstd"
	}
	return fmt.Sprintf("codec(%d)", uint8(c))
}

// ParseCodec maps a config name to a Codec.
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "none", "":
		return CodecNone, nil
	case "s2":
		return CodecS2, nil
	case "zstd":
		return CodecZstd, nil
	}
	return 0, fmt.Errorf("wal: unknown codec %q (want none, s2 or zstd)", s)
}

// MarshalText and UnmarshalText let topic configs store the codec by name.
func (c Codec) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

func (c *Codec) UnmarshalText(b []byte) error {
	v, err := ParseCodec(string(b))
	*c = v
	return err
}

// compressor holds the codecs' encoders and decoders. zstd's EncodeAll and
// DecodeAll are safe for concurrent use, so one of each serves a whole Log.
type compressor struct {
	zenc *zstd.Encoder
	zdec *zstd.Decoder
}

func newCompressor() (*compressor, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxBatchSize*2))
	if err != nil {
		return nil, err
	}
	return &compressor{zenc: enc, zdec: dec}, nil
}

func (c *compressor) close() {
	c.zenc.Close()
	c.zdec.Close()
}

// appendRecords appends the uncompressed payload encoding of recs to dst.
func appendRecords(dst []byte, recs []Record) []byte {
	for i := range recs {
		r := &recs[i]
		if r.Key == nil {
			dst = binary.AppendUvarint(dst, 0)
		} else {
			dst = binary.AppendUvarint(dst, uint64(len(r.Key))+1)
			dst = append(dst, r.Key...)
		}
		dst = binary.AppendUvarint(dst, uint64(len(r.Value)))
		dst = append(dst, r.Value...)
		dst = binary.AppendUvarint(dst, uint64(len(r.Headers)))
		for _, h := range r.Headers {
			dst = binary.AppendUvarint(dst, uint64(len(h.Key)))
			dst = append(dst, h.Key...)
			dst = binary.AppendUvarint(dst, uint64(len(h.Value)))
			dst = append(dst, h.Value...)
		}
	}
	return dst
}

// appendBatch frames raw (an uncompressed payload of count records) into a
// batch and appends it to dst.
func (c *compressor) appendBatch(dst []byte, codec Codec, base int64, count int, ts int64, raw []byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, headerSize)...)
	switch codec {
	case CodecS2:
		n := s2.MaxEncodedLen(len(raw))
		dst = growTo(dst, len(dst)+n)
		enc := s2.Encode(dst[len(dst):len(dst)+n], raw)
		dst = dst[:len(dst)+len(enc)]
	case CodecZstd:
		dst = c.zenc.EncodeAll(raw, dst)
	default:
		dst = append(dst, raw...)
	}
	h := dst[start:]
	binary.LittleEndian.PutUint32(h[0:], uint32(len(h)-4))
	binary.LittleEndian.PutUint64(h[8:], uint64(base))
	binary.LittleEndian.PutUint32(h[16:], uint32(count))
	h[20] = frameMagic
	h[21] = byte(codec)
	binary.LittleEndian.PutUint64(h[22:], uint64(ts))
	binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(h[8:], castagnoli))
	return dst
}

func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b
	}
	nb := make([]byte, len(b), max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}

// batchHeader is the decoded fixed part of a frame.
type batchHeader struct {
	length int64 // whole frame, header included
	base   int64
	count  int
	codec  Codec
	ts     int64
}

func (h batchHeader) next() int64 { return h.base + int64(h.count) }

// parseHeader decodes a frame header; it does not check the CRC.
func parseHeader(b []byte) (batchHeader, error) {
	if len(b) < headerSize {
		return batchHeader{}, fmt.Errorf("%w: short header", ErrCorrupt)
	}
	n := int64(binary.LittleEndian.Uint32(b[0:])) + 4
	h := batchHeader{
		length: n,
		base:   int64(binary.LittleEndian.Uint64(b[8:])),
		count:  int(binary.LittleEndian.Uint32(b[16:])),
		codec:  Codec(b[21]),
		ts:     int64(binary.LittleEndian.Uint64(b[22:])),
	}
	switch {
	case n < headerSize || n > maxBatchSize:
		return h, fmt.Errorf("%w: length %d", ErrCorrupt, n)
	case b[20] != frameMagic:
		return h, fmt.Errorf("%w: magic %d", ErrCorrupt, b[20])
	case h.count <= 0 || h.base < 0:
		return h, fmt.Errorf("%w: base %d count %d", ErrCorrupt, h.base, h.count)
	}
	return h, nil
}

// checkFrame verifies the CRC of a whole frame.
func checkFrame(frame []byte) error {
	if crc32.Checksum(frame[8:], castagnoli) != binary.LittleEndian.Uint32(frame[4:]) {
		return fmt.Errorf("%w: CRC mismatch", ErrCorrupt)
	}
	return nil
}

// decodeFrame verifies and decodes a whole frame, appending the records at
// or after from to dst until dst holds limit records. Record slices alias a
// fresh payload buffer.
func (c *compressor) decodeFrame(dst []Record, frame []byte, from int64, limit int) ([]Record, error) {
	h, err := parseHeader(frame)
	if err != nil {
		return dst, err
	}
	if int64(len(frame)) != h.length {
		return dst, fmt.Errorf("%w: frame size %d, header says %d", ErrCorrupt, len(frame), h.length)
	}
	if err := checkFrame(frame); err != nil {
		return dst, err
	}
	raw := frame[headerSize:]
	switch h.codec {
	case CodecNone:
	case CodecS2:
		if raw, err = s2.Decode(nil, raw); err != nil {
			return dst, fmt.Errorf("%w: s2: %v", ErrCorrupt, err)
		}
	case CodecZstd:
		if raw, err = c.zdec.DecodeAll(raw, nil); err != nil {
			return dst, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
	default:
		return dst, fmt.Errorf("%w: codec %d", ErrCorrupt, h.codec)
	}
	return parseRecords(dst, raw, h, from, limit)
}

func parseRecords(dst []Record, raw []byte, h batchHeader, from int64, limit int) ([]Record, error) {
	bad := func(what string) error { return fmt.Errorf("%w: record %s", ErrCorrupt, what) }
	take := func(n uint64) ([]byte, bool) {
		if n > uint64(len(raw)) {
			return nil, false
		}
		b := raw[:n:n]
		raw = raw[n:]
		return b, true
	}
	uvarint := func() (uint64, bool) {
		v, n := binary.Uvarint(raw)
		if n <= 0 {
			return 0, false
		}
		raw = raw[n:]
		return v, true
	}
	for i := 0; i < h.count; i++ {
		var r Record
		kl, ok := uvarint()
		if !ok {
			return dst, bad("key length")
		}
		if kl > 0 {
			if r.Key, ok = take(kl - 1); !ok {
				return dst, bad("key")
			}
		}
		vl, ok := uvarint()
		if !ok {
			return dst, bad("value length")
		}
		if r.Value, ok = take(vl); !ok {
			return dst, bad("value")
		}
		nh, ok := uvarint()
		if !ok || nh > uint64(len(raw)) {
			return dst, bad("header count")
		}
		if nh > 0 {
			r.Headers = make([]Header, nh)
			for j := range r.Headers {
				l, ok := uvarint()
				k, ok2 := take(l)
				if !ok || !ok2 {
					return dst, bad("header key")
				}
				r.Headers[j].Key = string(k)
				if l, ok = uvarint(); !ok {
					return dst, bad("header value length")
				}
				if r.Headers[j].Value, ok = take(l); !ok {
					return dst, bad("header value")
				}
			}
		}
		r.Offset = h.base + int64(i)
		r.Timestamp = h.ts
		if r.Offset >= from {
			dst = append(dst, r)
			if len(dst) >= limit {
				return dst, nil // the CRC already vouched for the rest
			}
		}
	}
	if len(raw) != 0 {
		return dst, bad("trailing bytes")
	}
	return dst, nil
}
