package engine

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestWatermarkDataDriven replays testdata/watermark.txt: commands and the
// committable offset expected after each.
func TestWatermarkDataDriven(t *testing.T) {
	f, err := os.Open("testdata/watermark.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var w *Watermark
	var result string
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if fields[0] == "->" {
			want := strings.Join(fields[1:], " ")
			got := strings.TrimSpace(result + " " + strconv.FormatInt(w.Committable(), 10))
			if got != want {
				t.Fatalf("line %d: got %q, want %q", line, got, want)
			}
			continue
		}
		result = ""
		var nums []int64
		for _, s := range fields[1:] {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatalf("line %d: %v", line, err)
			}
			nums = append(nums, n)
		}
		switch fields[0] {
		case "start":
			w = NewWatermark(nums[0])
		case "track":
			for _, n := range nums {
				if w.Track(n) != nil {
					result = "error"
				}
			}
		case "done":
			for _, n := range nums {
				if !w.Done(n) {
					result = "refused"
				}
			}
		default:
			t.Fatalf("line %d: unknown command %q", line, fields[0])
		}
	}
}

// Random completion order over many records: the commit point never passes
// an unfinished record and ends at the end; memory is compacted.
func TestWatermarkRandomOrder(t *testing.T) {
	w := NewWatermark(0)
	const n = 50_000
	for i := range int64(n) {
		if err := w.Track(i); err != nil {
			t.Fatal(err)
		}
	}
	finished := make([]bool, n)
	order := make([]int, n)
	for i := range order {
		order[i] = (i * 7919) % n // a permutation: 7919 is prime and does not divide n
	}
	for k, i := range order {
		if !w.Done(int64(i)) {
			t.Fatalf("Done(%d) refused", i)
		}
		finished[i] = true
		c := w.Committable()
		for j := int64(0); j < c; j += 997 {
			if !finished[j] {
				panic(fmt.Sprintf("commit point %d passes unfinished %d after %d completions", c, j, k))
			}
		}
		if c < int64(n) && finished[c] {
			t.Fatalf("commit point %d stops at a finished record", c)
		}
	}
	if w.Committable() != n || w.InFlight() != 0 || len(w.offs) > 1024 {
		t.Fatalf("end: committable %d, in flight %d, kept %d", w.Committable(), w.InFlight(), len(w.offs))
	}
}
