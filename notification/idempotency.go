package notification

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
)

// DefaultIdempotencyKey derives a key from what makes two requests "the
// same send": tenant, channel, recipient, and either the template with its
// variables or the literal content. Vars are canonicalised by sorting their
// keys, so {"a":1,"b":2} and {"b":2,"a":1} give the same key. Every field is
// length-prefixed, so no choice of values can make two different inputs
// collide by concatenation.
//
// Tenant is included although the wire docs speak of channel, recipient,
// template and vars: two tenants sending the same code to the same number
// are two sends, not one.
func DefaultIdempotencyKey(n *Notification) string {
	var buf [DefaultKeyLen]byte
	return string(AppendDefaultIdempotencyKey(buf[:0], n))
}

// DefaultKeyLen is the length of a DefaultIdempotencyKey.
const DefaultKeyLen = len("k1-") + 32

// AppendDefaultIdempotencyKey appends DefaultIdempotencyKey(n) to dst.
// The hashed fields are laid out in one buffer (on the stack unless they
// are long) and hashed in one call: feeding a hash.Hash field by field
// cost a third more.
func AppendDefaultIdempotencyKey(dst []byte, n *Notification) []byte {
	var scratch [512]byte
	in := scratch[:0]
	put := func(s string) {
		in = binary.AppendUvarint(in, uint64(len(s)))
		in = append(in, s...)
	}
	put("v1")
	put(n.Tenant)
	put(string(n.Channel))
	put(n.Recipient)
	put(n.Template)
	var few [8]string
	keys := few[:0]
	for k := range n.Vars {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	in = binary.AppendUvarint(in, uint64(len(keys)))
	for _, k := range keys {
		put(k)
		put(n.Vars[k])
	}
	if n.Content != nil {
		put(n.Content.Subject)
		put(n.Content.Body)
	}
	sum := sha256.Sum256(in)
	// 128 bits is ample against accidental collisions and halves key size
	// in the dedupe store.
	return hex.AppendEncode(append(dst, "k1-"...), sum[:16])
}
