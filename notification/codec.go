package notification

import (
	"slices"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/oklog/ulid/v2"
	"github.com/valyala/fastjson"
)

// Limits bound what one notification may carry, so a single hostile record
// cannot blow up memory downstream.
const (
	MaxRecipientLen = 512
	MaxKeyLen       = 256 // idempotency_key, tenant, template, channel
	MaxVars         = 64
	MaxMetadata     = 32
	MaxValueLen     = 4096    // one var or metadata value
	MaxBodyLen      = 1 << 18 // literal content
)

// Codec decodes and encodes the wire format. The zero value knows the four
// built-in channels; a Codec is safe for concurrent use once built.
type Codec struct {
	extra   []Channel
	parsers fastjson.ParserPool
}

// NewCodec returns a Codec that also accepts the named extra channels
// (configured providers such as "sms-marketing").
func NewCodec(extraChannels ...string) *Codec {
	c := &Codec{}
	for _, ch := range extraChannels {
		c.extra = append(c.extra, Channel(ch))
	}
	return c
}

// KnownChannel reports whether ch is built in or configured.
func (c *Codec) KnownChannel(ch Channel) bool {
	switch ch {
	case SMS, Email, Push, Webhook:
		return true
	}
	return c != nil && slices.Contains(c.extra, ch)
}

// Decode parses one wire-format notification and validates it. The
// returned Notification owns its memory; data may be reused afterwards.
func (c *Codec) Decode(data []byte) (*Notification, error) { return c.DecodeIn(nil, data) }

// DecodeValue decodes an already parsed JSON value (an element of a JSON
// array or an NDJSON line) and validates it. fastjson's parser is lenient
// where JSON is not: run CheckJSON on the text before parsing it.
//
// Decoding is on the engine's hot path (every record, once per poll), so
// it copies every string of the record into one buffer: two allocations
// for a record without content, vars or metadata, instead of one per field
// (DecodeIn: none of its own).
func (c *Codec) DecodeValue(v *fastjson.Value) (*Notification, error) {
	return c.decodeValue(v, nil, 0)
}

// DecodeValueIn is DecodeValue into an Arena (see DecodeIn).
func (c *Codec) DecodeValueIn(a *Arena, v *fastjson.Value) (*Notification, error) {
	return c.decodeValue(v, a, 0)
}

// DecodeParsedIn is DecodeValueIn for a value parsed from raw alone (an
// NDJSON line, a single-object body; checked with CheckJSON, as DecodeValue
// asks): raw's length bounds the value's strings, which saves a pass over
// it to add them up. A nil raw (an array's item) is DecodeValueIn.
func (c *Codec) DecodeParsedIn(a *Arena, v *fastjson.Value, raw []byte) (*Notification, error) {
	return c.decodeValue(v, a, len(raw))
}

// DecodeIn is Decode with the Notification and its strings taken from a
// (none: allocated on their own): no allocation of its own for a record
// without vars or metadata.
func (c *Codec) DecodeIn(a *Arena, data []byte) (*Notification, error) {
	if err := CheckJSON(data); err != nil {
		return nil, fieldErr("", "malformed JSON: %v", err)
	}
	p := c.parsers.Get()
	defer c.parsers.Put(p)
	v, err := p.ParseBytes(data)
	if err != nil {
		return nil, fieldErr("", "malformed JSON: %v", err)
	}
	// The record's length bounds its strings (unescaping only shortens
	// them), which saves a pass over the value to add them up.
	return c.decodeValue(v, a, len(data))
}

// withContent is a Notification allocated together with its Content.
type withContent struct {
	n Notification
	c Content
}

// Arena holds the notifications decoded by DecodeIn (a poll's worth) in a
// few large allocations. What is decoded into it stays in memory while any
// of it is referenced: Clone a notification that must outlive the others.
type Arena struct {
	ns  []withContent
	buf []byte
}

// NewArena sizes an arena for about n notifications whose records total
// bytes; past that it grows in chunks each twice the last (up to
// maxArenaChunk notifications and maxArenaBytes), so an arena reused for
// larger and larger batches stops allocating once it has grown.
func NewArena(n, bytes int) *Arena {
	return &Arena{ns: make([]withContent, 0, max(n, 1)), buf: make([]byte, 0, max(bytes, 64))}
}

// Reset empties a for reuse, keeping its last chunk of each kind. Every
// notification decoded into a before is overwritten by the next decodes:
// only a caller that holds none of them, nor any of their strings, may
// reset.
func (a *Arena) Reset() {
	clear(a.ns)
	a.ns = a.ns[:0]
	a.buf = a.buf[:0]
}

// Chunk bounds of a growing arena.
const (
	maxArenaChunk = 4096
	maxArenaBytes = 4 << 20
)

// alloc returns a zeroed Notification, a zeroed Content beside it (for the
// decoder to attach if the record has one) and an empty buffer of capacity
// size for its strings.
func (a *Arena) alloc(size int) (*Notification, *Content, []byte) {
	if len(a.ns) == cap(a.ns) {
		a.ns = make([]withContent, 0, min(2*cap(a.ns), maxArenaChunk))
	}
	a.ns = a.ns[:len(a.ns)+1]
	nc := &a.ns[len(a.ns)-1]
	if cap(a.buf)-len(a.buf) < size {
		a.buf = make([]byte, 0, max(min(2*cap(a.buf), maxArenaBytes), size))
	}
	start := len(a.buf)
	a.buf = a.buf[:start+size]
	// A full slice expression: outgrowing the hint reallocates rather than
	// writing over the next notification's strings.
	return &nc.n, &nc.c, a.buf[start : start : start+size]
}

// decodeValue decodes v; size, when known (the record's length), bounds
// the bytes of its strings.
func (c *Codec) decodeValue(v *fastjson.Value, a *Arena, size int) (*Notification, error) {
	obj, err := v.Object()
	if err != nil {
		return nil, fieldErr("", "want a JSON object, got %s", v.Type())
	}
	if size <= 0 {
		obj.Visit(func(_ []byte, fv *fastjson.Value) { size += stringBytes(fv) })
	}
	d := decoder{c: c}
	if a != nil {
		d.n, d.spare, d.arena = a.alloc(size)
	} else {
		d.n, d.arena = &Notification{}, make([]byte, 0, size)
	}
	n := d.n
	obj.Visit(func(key []byte, fv *fastjson.Value) {
		if d.err == nil {
			d.err = d.field(key, fv)
		}
	})
	if d.err != nil {
		return nil, d.err
	}
	if err := c.Validate(n); err != nil {
		return nil, err
	}
	return n, nil
}

// stringBytes is how many bytes of strings v holds (its own, or its keys'
// and values' for an object), so one buffer can take them all.
func stringBytes(v *fastjson.Value) int {
	switch v.Type() {
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		return len(b)
	case fastjson.TypeObject:
		o, _ := v.Object()
		size := 0
		o.Visit(func(k []byte, ev *fastjson.Value) {
			size += len(k) + stringBytes(ev)
			if t := ev.Type(); t == fastjson.TypeNumber || t == fastjson.TypeTrue || t == fastjson.TypeFalse {
				size += 8
			}
		})
		return size
	}
	return 0
}

// decoder fills one Notification; its strings point into arena.
type decoder struct {
	c     *Codec
	n     *Notification
	spare *Content // the arena's Content for n; nil: allocate one if needed
	arena []byte
	err   error
}

// intern copies b into the arena and returns it as a string. Should the
// arena be outgrown, append moves on to a new array and the strings already
// made keep the old one alive: correct either way, the size is only a hint.
func (d *decoder) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	start := len(d.arena)
	d.arena = append(d.arena, b...)
	return unsafe.String(&d.arena[start], len(b))
}

// str checks a string field (null is empty) and returns its bytes, which
// live in the parser until it is reused.
func str(field string, v *fastjson.Value, max int) ([]byte, error) {
	if v.Type() == fastjson.TypeNull {
		return nil, nil
	}
	b, err := v.StringBytes()
	if err != nil {
		return nil, fieldErr(field, "want a string, got %s", v.Type())
	}
	if len(b) > max {
		return nil, fieldErr(field, "longer than %d bytes", max)
	}
	if !utf8.Valid(b) {
		return nil, fieldErr(field, "not valid UTF-8")
	}
	return b, nil
}

// view is b as a string for a call that does not keep it.
func view(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func (d *decoder) field(key []byte, v *fastjson.Value) error {
	n := d.n
	var b []byte
	var err error
	switch string(key) {
	case "id":
		if b, err = str("id", v, 26); err == nil && len(b) > 0 {
			if _, perr := ulid.ParseStrict(view(b)); perr != nil {
				return fieldErr("id", "not a ULID: %v", perr)
			}
			n.ID = d.intern(b)
		}
	case "idempotency_key":
		b, err = str("idempotency_key", v, MaxKeyLen)
		n.IdempotencyKey = d.intern(b)
	case "tenant":
		b, err = str("tenant", v, MaxKeyLen)
		n.Tenant = d.intern(b)
	case "channel":
		if b, err = str("channel", v, MaxKeyLen); err == nil {
			n.Channel = d.channel(b)
		}
	case "priority":
		if b, err = str("priority", v, 16); err == nil && len(b) > 0 {
			p, ok := ParsePriority(view(b))
			if !ok {
				return fieldErr("priority", "unknown priority %q (want critical, high, normal or bulk)", b)
			}
			n.Priority = p
		}
	case "recipient":
		b, err = str("recipient", v, MaxRecipientLen)
		n.Recipient = d.intern(b)
	case "template":
		b, err = str("template", v, MaxKeyLen)
		n.Template = d.intern(b)
	case "vars":
		n.Vars, err = d.stringMap("vars", v, MaxVars)
	case "content":
		err = d.content(v)
	case "not_before":
		n.NotBefore, err = timestamp("not_before", v)
	case "expires_at":
		n.ExpiresAt, err = timestamp("expires_at", v)
	case "accepted_at":
		n.AcceptedAt, err = timestamp("accepted_at", v)
	case "attempts":
		a, aerr := v.Int()
		if aerr == nil {
			// Only checked: the text borrows the arena and gives it back.
			start := len(d.arena)
			d.arena = v.MarshalTo(d.arena)
			aerr = strictNumber(d.arena[start:])
			d.arena = d.arena[:start]
		}
		if aerr != nil || a < 0 {
			return fieldErr("attempts", "want a non-negative integer")
		}
		n.Attempts = a
	case "metadata":
		n.Metadata, err = d.stringMap("metadata", v, MaxMetadata)
	default:
		return fieldErr(string(key), "unknown field")
	}
	return err
}

// channel returns a known channel's own name, so a record's channel costs
// no copy; an unknown one is copied and refused by Validate.
func (d *decoder) channel(b []byte) Channel {
	switch Channel(view(b)) {
	case SMS:
		return SMS
	case Email:
		return Email
	case Push:
		return Push
	case Webhook:
		return Webhook
	}
	for _, ch := range d.c.extra {
		if string(ch) == string(b) {
			return ch
		}
	}
	return Channel(d.intern(b))
}

// stringMap accepts string, number and boolean values; numbers and booleans
// keep their JSON spelling so "5" and 5 render the same in a template.
func (d *decoder) stringMap(field string, v *fastjson.Value, max int) (map[string]string, error) {
	if v.Type() == fastjson.TypeNull {
		return nil, nil
	}
	obj, err := v.Object()
	if err != nil {
		return nil, fieldErr(field, "want an object, got %s", v.Type())
	}
	if obj.Len() > max {
		return nil, fieldErr(field, "more than %d entries", max)
	}
	m := make(map[string]string, obj.Len())
	var ferr error
	obj.Visit(func(k []byte, ev *fastjson.Value) {
		if ferr != nil {
			return
		}
		if !utf8.Valid(k) {
			ferr = fieldErr(field, "key not valid UTF-8")
			return
		}
		var s string
		switch ev.Type() {
		case fastjson.TypeString:
			b, _ := ev.StringBytes()
			if len(b) > MaxValueLen || !utf8.Valid(b) {
				// The dotted name is built only for the error.
				_, ferr = str(field+"."+string(k), ev, MaxValueLen)
				return
			}
			s = d.intern(b)
		case fastjson.TypeNumber, fastjson.TypeTrue, fastjson.TypeFalse:
			start := len(d.arena)
			d.arena = ev.MarshalTo(d.arena)
			if len(d.arena)-start > MaxValueLen {
				ferr = fieldErr(field+"."+string(k), "longer than %d bytes", MaxValueLen)
				return
			}
			if ev.Type() == fastjson.TypeNumber {
				if err := strictNumber(d.arena[start:]); err != nil {
					ferr = fieldErr(field+"."+string(k), "%v", err)
					return
				}
			}
			s = unsafe.String(&d.arena[start], len(d.arena)-start)
		default:
			ferr = fieldErr(field+"."+string(k), "want a string, number or boolean, got %s", ev.Type())
			return
		}
		m[d.intern(k)] = s
	})
	return m, ferr
}

func (d *decoder) content(v *fastjson.Value) error {
	if v.Type() == fastjson.TypeNull {
		d.n.Content = nil
		return nil
	}
	obj, err := v.Object()
	if err != nil {
		return fieldErr("content", "want an object, got %s", v.Type())
	}
	c := d.n.Content // a repeated "content" key adds to the first
	if c == nil {
		if c = d.spare; c == nil {
			c = &Content{}
		}
		d.n.Content = c
	}
	var ferr error
	obj.Visit(func(k []byte, ev *fastjson.Value) {
		if ferr != nil {
			return
		}
		var b []byte
		switch string(k) {
		case "subject":
			b, ferr = str("content.subject", ev, MaxKeyLen*4)
			c.Subject = d.intern(b)
		case "body":
			b, ferr = str("content.body", ev, MaxBodyLen)
			c.Body = d.intern(b)
		default:
			ferr = fieldErr("content."+string(k), "unknown field")
		}
	})
	return ferr
}

func timestamp(field string, v *fastjson.Value) (time.Time, error) {
	if v.Type() == fastjson.TypeNull {
		return time.Time{}, nil
	}
	b, err := v.StringBytes()
	if err != nil {
		return time.Time{}, fieldErr(field, "want an RFC 3339 timestamp string, got %s", v.Type())
	}
	// time.Parse keeps its input only in the error, which is dropped here.
	t, err := time.Parse(time.RFC3339Nano, view(b))
	if err != nil || !rfc3339Shape(b) {
		return time.Time{}, fieldErr(field, "not an RFC 3339 timestamp: %q", b)
	}
	return t, nil
}

// rfc3339Shape holds a timestamp time.Parse accepted to RFC 3339's own
// grammar, where Go is looser: a one-digit hour (T1:05:00), a comma before
// the fraction, and offsets past 23:59 (+01:60 read as +02:00).
func rfc3339Shape(b []byte) bool {
	if len(b) < 20 || b[13] != ':' || b[16] != ':' {
		return false
	}
	rest := b[19:]
	if rest[0] == '.' {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		rest = rest[i:]
	}
	switch {
	case len(rest) == 1:
		return rest[0] == 'Z'
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		hh := int(rest[1]-'0')*10 + int(rest[2]-'0')
		mm := int(rest[4]-'0')*10 + int(rest[5]-'0')
		return hh <= 23 && mm <= 59
	}
	return false
}

// Validate checks the rules that hold for any notification, whether it came
// off the wire or was built in Go.
func (c *Codec) Validate(n *Notification) error {
	if n.Channel == "" {
		return fieldErr("channel", "missing")
	}
	if !c.KnownChannel(n.Channel) {
		return fieldErr("channel", "unknown channel %q", string(n.Channel))
	}
	if n.Priority == 0 {
		n.Priority = Normal
	}
	if !n.Priority.Valid() {
		return fieldErr("priority", "unknown priority %d", n.Priority)
	}
	if strings.TrimSpace(n.Recipient) == "" {
		return fieldErr("recipient", "missing")
	}
	hasBody := n.Content != nil && n.Content.Body != ""
	switch {
	case n.Template == "" && !hasBody:
		return fieldErr("template", "missing: give a template or content.body")
	case n.Template != "" && n.Content != nil:
		return fieldErr("content", "give a template or content, not both")
	case n.Template == "" && len(n.Vars) > 0:
		return fieldErr("vars", "vars need a template")
	}
	if !n.NotBefore.IsZero() && !n.ExpiresAt.IsZero() && !n.ExpiresAt.After(n.NotBefore) {
		return fieldErr("expires_at", "not after not_before")
	}
	if n.Attempts < 0 {
		return fieldErr("attempts", "negative")
	}
	return nil
}

// AppendEncode appends the wire form of n to dst (see appendWire).
func (c *Codec) AppendEncode(dst []byte, n *Notification) []byte { return appendWire(dst, n, nil) }

// AppendEncodeCached is AppendEncode with the accepted time written
// through tc: for a batch of notifications accepted at one time.
func (c *Codec) AppendEncodeCached(dst []byte, n *Notification, tc *TimeCache) []byte {
	return appendWire(dst, n, tc)
}

// Encode returns the wire form of n.
func (c *Codec) Encode(n *Notification) []byte { return c.AppendEncode(nil, n) }
