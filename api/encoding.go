package api

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/valyala/fasthttp"
)

// Ingest bodies may come compressed (Content-Encoding gzip or zstd): a
// campaign of 100,000 notifications is ~30 MB of NDJSON, a tenth of that
// gzipped. api.max_body_bytes bounds the body as decompressed, which is
// what the server holds, so a small body that decompresses past it (a
// bomb) is 413 like a large one, found after reading at most the limit.

var (
	errDecodedTooLarge = errors.New("decompressed past the limit")
	errUnknownEncoding = errors.New("unsupported Content-Encoding")
)

var gzipReaders sync.Pool // *gzip.Reader

// zstdDecoders are shared by every request of a limit (DecodeAll is safe
// for concurrent use); a decoder per request cost its tables each time.
var zstdDecoders sync.Map // limit -> *zstd.Decoder

func zstdDecoder(limit int) (*zstd.Decoder, error) {
	if d, ok := zstdDecoders.Load(limit); ok {
		return d.(*zstd.Decoder), nil
	}
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(uint64(limit)),
		zstd.WithDecoderMaxWindow(uint64(max(limit, zstd.MinWindowSize))))
	if err != nil {
		return nil, err
	}
	if prev, loaded := zstdDecoders.LoadOrStore(limit, d); loaded {
		d.Close()
		return prev.(*zstd.Decoder), nil
	}
	return d, nil
}

// decodeContent undoes enc (a Content-Encoding value) on body, appending
// the result to dst, up to limit bytes: errDecodedTooLarge past it,
// errUnknownEncoding for an encoding other than gzip, zstd or identity,
// any other error for a body that is not what enc says.
func decodeContent(dst []byte, enc string, body []byte, limit int) ([]byte, error) {
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "", "identity":
		if len(body) > limit {
			return dst, errDecodedTooLarge
		}
		return append(dst, body...), nil
	case "gzip", "x-gzip":
		return gunzip(dst, body, limit)
	case "zstd":
		d, err := zstdDecoder(limit)
		if err != nil {
			return dst, err
		}
		// Into dst's spare room: the decoder's limit counts what it is
		// given to append to.
		out, err := d.DecodeAll(body, dst[len(dst):])
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) || len(out) > limit {
			return dst, errDecodedTooLarge
		}
		if err != nil {
			return dst, err
		}
		return append(dst, out...), nil
	}
	return dst, errUnknownEncoding
}

func gunzip(dst, body []byte, limit int) ([]byte, error) {
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	if zr == nil {
		zr = new(gzip.Reader)
	}
	defer gzipReaders.Put(zr)
	if err := zr.Reset(bytes.NewReader(body)); err != nil {
		return dst, err
	}
	// The trailer's size (of the last member, mod 4 GiB) is a hint only:
	// it is the sender's word, so it sizes no further than the limit and
	// what deflate can make of the body (1032:1), lest tiny bodies claiming
	// huge sizes pin memory.
	if n := len(body); n >= 18 {
		hint := int(binary.LittleEndian.Uint32(body[n-4:]))
		dst = growBy(dst, min(hint, limit, 1032*n)+1)
	}
	start := len(dst)
	for {
		if len(dst) == cap(dst) {
			dst = growBy(dst, max(len(dst)-start, 64<<10))
		}
		room := min(cap(dst), start+limit+1)
		n, err := zr.Read(dst[len(dst):room])
		dst = dst[:len(dst)+n]
		if len(dst)-start > limit {
			return dst[:start], errDecodedTooLarge
		}
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst[:start], err
		}
	}
}

func growBy(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n)
	copy(nb, b)
	return nb
}

// decodedBody is the request's body with its Content-Encoding undone, or
// the answer that refuses it (written; ok false). release returns its
// buffer.
func (s *Server) decodedBody(ctx *fasthttp.RequestCtx) (body []byte, release func(), ok bool) {
	raw, releaseRaw, ok := s.body(ctx)
	if !ok {
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, bodyTooLarge(s.cfg.MaxBodyBytes))
		return nil, nil, false
	}
	enc := ctx.Request.Header.ContentEncoding()
	if len(enc) == 0 {
		return raw, releaseRaw, true
	}
	defer releaseRaw()
	buf := bodyBuffers.Get().(*[]byte)
	out, err := decodeContent((*buf)[:0], string(enc), raw, s.cfg.MaxBodyBytes)
	release = func() {
		if cap(out) <= maxPooledBody {
			*buf = out[:0]
			bodyBuffers.Put(buf)
		}
	}
	switch {
	case err == nil:
		return out, release, true
	case errors.Is(err, errDecodedTooLarge):
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, apiError{Code: "body_too_large", Field: "Content-Encoding",
			Message: "request body decompresses past the limit of " + strconv.Itoa(s.cfg.MaxBodyBytes) + " bytes"})
	case errors.Is(err, errUnknownEncoding):
		writeError(ctx, fasthttp.StatusUnsupportedMediaType, apiError{Code: "unsupported_encoding", Field: "Content-Encoding",
			Message: fmt.Sprintf("Content-Encoding %q: gzip, zstd or identity", enc)})
	default:
		writeError(ctx, fasthttp.StatusBadRequest, apiError{Code: "malformed_body", Field: "Content-Encoding",
			Message: fmt.Sprintf("the body is not valid %s: %v", enc, err)})
	}
	release()
	return nil, nil, false
}
