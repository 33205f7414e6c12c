package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/klauspost/compress/gzip"
)

// maxRequestBytes bounds a request's body below the server's default
// api.max_body_bytes (64 MiB), whatever --batch allows.
const maxRequestBytes = 16 << 20

// fileBatch is one request's worth of a file: its body and where each of
// its items is in the file (a line of NDJSON, an element of an array).
type fileBatch struct {
	body  []byte
	array bool
	at    []int // 1-based line or element number of each item
}

// fileBatches reads a file of notifications, NDJSON or one JSON array,
// and calls post with batches of at most batch items (and maxRequestBytes),
// in file order, until post fails. A single JSON object is one batch.
func fileBatches(r io.Reader, batch int, post func(fileBatch) error) error {
	br := bufio.NewReaderSize(r, 1<<20)
	first, blank, err := firstByte(br)
	if err != nil {
		return err
	}
	if first == '[' {
		return arrayBatches(br, batch, post)
	}
	var b fileBatch
	flush := func() error {
		if len(b.at) == 0 {
			return nil
		}
		err := post(b)
		b = fileBatch{body: b.body[:0]}
		return err
	}
	for line := 1 + blank; ; line++ {
		text, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(text)) > 0 {
			if len(b.at) > 0 && (len(b.at) == batch || len(b.body)+len(text) > maxRequestBytes) {
				if err := flush(); err != nil {
					return err
				}
			}
			b.body = append(b.body, text...)
			if text[len(text)-1] != '\n' {
				b.body = append(b.body, '\n')
			}
			b.at = append(b.at, line)
		}
		if err == io.EOF {
			return flush()
		}
		if err != nil {
			return err
		}
	}
}

// firstByte is the file's first byte that is not white space, left to
// read, and the lines before its own.
func firstByte(br *bufio.Reader) (c byte, lines int, err error) {
	for {
		c, err := br.ReadByte()
		if err == io.EOF {
			return 0, 0, errors.New("the file holds no notifications")
		}
		if err != nil {
			return 0, 0, err
		}
		switch c {
		case '\n':
			lines++
		case ' ', '\t', '\r':
		default:
			return c, lines, br.UnreadByte()
		}
	}
}

// arrayBatches splits one JSON array into arrays of at most batch elements,
// streaming: a campaign's file need not fit in memory twice.
func arrayBatches(br *bufio.Reader, batch int, post func(fileBatch) error) error {
	dec := json.NewDecoder(br)
	if _, err := dec.Token(); err != nil { // [
		return fmt.Errorf("the file's array: %w", err)
	}
	b := fileBatch{array: true}
	flush := func() error {
		if len(b.at) == 0 {
			return nil
		}
		b.body = append(b.body, ']')
		err := post(b)
		b = fileBatch{body: b.body[:0], array: true}
		return err
	}
	for n := 1; dec.More(); n++ {
		var item json.RawMessage
		if err := dec.Decode(&item); err != nil {
			return fmt.Errorf("the file's array, element %d: %w", n, err)
		}
		if len(b.at) > 0 && (len(b.at) == batch || len(b.body)+len(item) > maxRequestBytes) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(b.at) == 0 {
			b.body = append(b.body, '[')
		} else {
			b.body = append(b.body, ',')
		}
		b.body = append(b.body, item...)
		b.at = append(b.at, n)
	}
	if _, err := dec.Token(); err != nil { // ]
		return fmt.Errorf("the file's array: %w", err)
	}
	return flush()
}

// batchAnswer is what the server answers a batch: the counts, and the
// items, passed through as they are.
type batchAnswer struct {
	Accepted   int               `json:"accepted"`
	Duplicates int               `json:"duplicates"`
	Items      []json.RawMessage `json:"items"`
}

// sendFile posts a file of notifications in requests of at most batch
// items, one after the other, gzipped with gz, each sent again per
// postNotifications' rules. A file of one request prints the answer as it
// is; more print one JSON line per request ({"from","to","answer"}: its
// first and last line, or element of an array, and the server's answer),
// then a total. The first request refused stops it: the error names the
// file's line (or element) of each bad item, and says that what went
// before was accepted, which a resend of the whole file does not send
// again.
func (c *client) sendFile(out, log io.Writer, r io.Reader, batch int, gz bool, retries int) error {
	if gz {
		c.encoding = "gzip"
	}
	var requests, accepted, duplicates, items int
	var first []byte // the first answer, printed once it is known whether others follow
	var firstFrom, firstTo int
	err := fileBatches(r, batch, func(b fileBatch) error {
		ct := "application/x-ndjson"
		if b.array {
			ct = "application/json"
		} else if requests == 0 && len(b.at) == 1 && bytes.HasPrefix(bytes.TrimSpace(b.body), []byte("{")) {
			// One object alone: answered as one, not as a batch.
			ct = "application/json"
		}
		body := b.body
		if gz {
			var z bytes.Buffer
			zw := gzip.NewWriter(&z)
			if _, err := zw.Write(body); err != nil {
				return err
			}
			if err := zw.Close(); err != nil {
				return err
			}
			body = z.Bytes()
		}
		raw, err := c.postNotifications(log, ct, body, retries)
		if err != nil {
			return fileError(err, b, requests, items)
		}
		switch requests {
		case 0:
			first, firstFrom, firstTo = raw, b.at[0], b.at[len(b.at)-1]
		case 1:
			if err := printBatch(out, first, firstFrom, firstTo); err != nil {
				return err
			}
			fallthrough
		default:
			if err := printBatch(out, raw, b.at[0], b.at[len(b.at)-1]); err != nil {
				return err
			}
		}
		var a batchAnswer
		switch {
		case json.Unmarshal(raw, &a) == nil && a.Items != nil:
			accepted, duplicates = accepted+a.Accepted, duplicates+a.Duplicates
		case bytes.Contains(raw, []byte(`"duplicate":true`)):
			duplicates++
		default:
			accepted++
		}
		requests++
		items += len(b.at)
		return nil
	})
	switch {
	case requests == 1 && err == nil:
		return printIndented(out, first)
	case requests == 1:
		if perr := printBatch(out, first, firstFrom, firstTo); perr != nil {
			return perr
		}
	}
	if requests > 1 || err != nil && requests > 0 {
		fmt.Fprintf(log, "goutong send: %d notifications in %d requests: %d accepted, %d duplicates\n", items, requests, accepted, duplicates)
	}
	return err
}

// printBatch prints one request's answer as a JSON line with the file
// positions of its first and last item.
func printBatch(out io.Writer, answer []byte, from, to int) error {
	var compact bytes.Buffer
	if err := json.Compact(&compact, answer); err != nil {
		compact.Reset()
		b, _ := json.Marshal(strings.TrimSpace(string(answer)))
		compact.Write(b)
	}
	_, err := fmt.Fprintf(out, `{"from":%d,"to":%d,"answer":%s}`+"\n", from, to, compact.Bytes())
	return err
}

// fileError is the error of a file's request that was refused: each bad
// item named by its line (or element) in the file, and what the requests
// before it did.
func fileError(err error, b fileBatch, requests, items int) error {
	where := "line"
	if b.array {
		where = "element"
	}
	msg := err.Error()
	var he *httpError
	var body struct {
		Error  *fileAPIError  `json:"error"`
		Errors []fileAPIError `json:"errors"`
	}
	if errors.As(err, &he) && json.Unmarshal(he.body, &body) == nil && body.Error != nil {
		errs := body.Errors
		if len(errs) == 0 {
			errs = []fileAPIError{*body.Error}
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "%d %s", he.status, http.StatusText(he.status))
		for _, e := range errs {
			sb.WriteString("\n  ")
			if e.Index != nil && *e.Index >= 0 && *e.Index < len(b.at) {
				fmt.Fprintf(&sb, "%s %d: ", where, b.at[*e.Index])
			}
			sb.WriteString(e.Code)
			if e.Field != "" {
				sb.WriteString(" " + e.Field)
			}
			sb.WriteString(": " + e.Message)
		}
		msg = sb.String()
	}
	msg = fmt.Sprintf("the request of %ss %d-%d: %s", where, b.at[0], b.at[len(b.at)-1], msg)
	if requests > 0 {
		msg += fmt.Sprintf("\n%d requests before it (%d notifications) were accepted: once the file is mended, send it whole again: their idempotency keys keep them from being sent twice "+
			"(items with keys of their own answer as duplicates; keyless ones are accepted again and stopped at their sends)", requests, items)
	}
	return &fileSendError{msg: msg, err: err}
}

type fileAPIError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field"`
	Index   *int   `json:"index"`
}

// fileSendError keeps the request's error (an *httpError) under the
// message that places it in the file.
type fileSendError struct {
	msg string
	err error
}

func (e *fileSendError) Error() string { return e.msg }
func (e *fileSendError) Unwrap() error { return e.err }
