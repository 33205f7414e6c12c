package notification

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf16"

	"github.com/valyala/fastjson"
)

// fastjson's parser is lenient where JSON is not: it keeps an unknown
// escape (`\q`, `\x41`, a cut `\u00`) or half a surrogate pair as the
// escape's text, lets control characters through inside strings, and
// reads 01, .5, 1., NaN and Inf as numbers. A producer's mistake would
// then go out as written ("Your code is NaN") instead of coming back as a
// 400. Its validator is strict but costs more than the parse itself (305
// against 278 ns for an OTP record), so CheckJSON checks the escapes
// itself, and runs the validator only on text with control bytes, which
// compact JSON has none of. Numbers are checked where the decoder reads
// them (strictNumber), which is rare: attempts on a retry, numeric vars.

// CheckJSON reports JSON text that fastjson's parser would accept but that
// JSON does not allow (an invalid escape, a control character in a string)
// or that holds no Unicode text (half a surrogate pair). It does not check
// the rest of the syntax: the parser does.
func CheckJSON(raw []byte) error {
	if hasControl(raw) {
		// Whitespace between tokens, or a control character in a string.
		if err := fastjson.ValidateBytes(raw); err != nil {
			return err
		}
	}
	return checkEscapes(raw)
}

// checkEscapes checks every escape in raw. In text the parser accepts a
// backslash appears only in strings, each opening an escape.
func checkEscapes(raw []byte) error {
	i := bytes.IndexByte(raw, '\\')
	for i >= 0 {
		if i+1 >= len(raw) {
			return errors.New("text ends in a backslash")
		}
		switch raw[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			r, ok := hex4(raw, i+2)
			switch {
			case !ok:
				return fmt.Errorf("invalid escape %.6q", raw[i:])
			case utf16.IsSurrogate(r) && r < 0xdc00:
				// The high half of a pair: its low half must follow.
				if lo, ok := hex4(raw, i+8); !ok || raw[i+6] != '\\' || raw[i+7] != 'u' || lo < 0xdc00 || lo > 0xdfff {
					return fmt.Errorf("lone surrogate %q", raw[i:i+6])
				}
				i += 12
			case utf16.IsSurrogate(r):
				return fmt.Errorf("lone surrogate %q", raw[i:i+6])
			default:
				i += 6
			}
		default:
			return fmt.Errorf("invalid escape %q", raw[i:i+2])
		}
		j := bytes.IndexByte(raw[i:], '\\')
		if j < 0 {
			break
		}
		i += j
	}
	return nil
}

// hex4 reads the four hex digits at raw[at:].
func hex4(raw []byte, at int) (rune, bool) {
	if at+4 > len(raw) {
		return 0, false
	}
	var r rune
	for _, c := range raw[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// hasControl reports whether raw holds a byte below 0x20, eight at a time,
// four words a check.
func hasControl(raw []byte) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
		below = 0x20 * ones
	)
	// A byte below 0x20 borrows in x-below and, its own high bit clear,
	// keeps the borrow's high bit through &^x; a borrow reaches a higher
	// byte only from such a byte.
	b := raw
	for len(b) >= 32 {
		x0 := binary.LittleEndian.Uint64(b)
		x1 := binary.LittleEndian.Uint64(b[8:])
		x2 := binary.LittleEndian.Uint64(b[16:])
		x3 := binary.LittleEndian.Uint64(b[24:])
		if ((x0-below)&^x0|(x1-below)&^x1|(x2-below)&^x2|(x3-below)&^x3)&highs != 0 {
			return true
		}
		b = b[32:]
	}
	for _, c := range b {
		if c < 0x20 {
			return true
		}
	}
	return false
}

// strictNumber checks a number's text as fastjson's parser read it (its
// Value's MarshalTo) against JSON's grammar: no leading zeros, digits on
// both sides of a point, no NaN or Inf.
func strictNumber(raw []byte) error {
	if fastjson.ValidateBytes(raw) != nil {
		return fmt.Errorf("%s is not a JSON number", raw)
	}
	return nil
}
