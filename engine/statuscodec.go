package engine

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// The status store keeps events in a compact binary form: the id and the
// time are in the key already, and the rest packs into ~70 bytes where the
// status topic's JSON takes ~300. The store's flushes and compactions cost
// the engine a fifth of its CPU, in proportion to the bytes written.
//
//	0x01 state attempts(uvarint) then event_id, tenant, channel, priority,
//	provider, provider_message_id, reason, duplicate_of, each a uvarint
//	length and its bytes.
//
// Stores written before it hold JSON objects (they start with '{'), and an
// event the binary form cannot carry exactly (a state this version does not
// know, a time the key cannot hold) is still written as JSON: the store
// reads both.
const storedEventV1 = 0x01

// stateCodes numbers the states for the binary form. Append only: the
// numbers are on disk.
var stateCodes = func() map[State]byte {
	m := make(map[State]byte, len(States))
	for i, st := range States {
		m[st] = byte(i)
	}
	return m
}()

func appendStoredEvent(dst []byte, ev *StatusEvent) ([]byte, error) {
	code, known := stateCodes[ev.State]
	if !known || ev.Attempts < 0 || !time.Unix(0, ev.At.UnixNano()).Equal(ev.At) {
		kept := *ev
		kept.IdempotencyKey, kept.Node = "", "" // for the other nodes, not kept (as in the binary form)
		v, err := json.Marshal(&kept)
		return append(dst, v...), err
	}
	dst = append(dst, storedEventV1, code)
	dst = binary.AppendUvarint(dst, uint64(ev.Attempts))
	for _, s := range [...]string{ev.EventID, ev.Tenant, ev.Channel, ev.Priority, ev.Provider,
		ev.ProviderMessageID, ev.Reason, ev.DuplicateOf} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	return dst, nil
}

var errStoredEvent = errors.New("engine: malformed stored status event")

// decodeStoredEvent reads the event stored under key (see statusKey) for
// id. The event's time comes back in UTC.
func decodeStoredEvent(id string, key, v []byte) (StatusEvent, error) {
	if len(key) < statusKeyTail {
		return StatusEvent{}, errStoredEvent
	}
	return decodeStoredEventAt(id, int64(binary.BigEndian.Uint64(key[len(key)-statusKeyTail:])), v)
}

// decodeStoredEventAt is decodeStoredEvent with the time (Unix ns) given
// apart from a key (a run keeps one for all its events).
func decodeStoredEventAt(id string, at int64, v []byte) (StatusEvent, error) {
	var ev StatusEvent
	if len(v) > 0 && v[0] == '{' {
		err := json.Unmarshal(v, &ev)
		return ev, err
	}
	if len(v) < 2 || v[0] != storedEventV1 || int(v[1]) >= len(States) {
		return ev, errStoredEvent
	}
	ev.ID = id
	ev.At = time.Unix(0, at).UTC()
	ev.State = States[v[1]]
	attempts, n := binary.Uvarint(v[2:])
	if n <= 0 || attempts > 1<<31 {
		return ev, errStoredEvent
	}
	ev.Attempts = int(attempts)
	rest := v[2+n:]
	for _, f := range [...]*string{&ev.EventID, &ev.Tenant, &ev.Channel, &ev.Priority, &ev.Provider,
		&ev.ProviderMessageID, &ev.Reason, &ev.DuplicateOf} {
		l, n := binary.Uvarint(rest)
		if n <= 0 || l > uint64(len(rest)-n) {
			return ev, errStoredEvent
		}
		*f = string(rest[n : n+int(l)])
		rest = rest[n+int(l):]
	}
	if len(rest) != 0 {
		return ev, fmt.Errorf("%w: %d bytes after the last field", errStoredEvent, len(rest))
	}
	return ev, nil
}
