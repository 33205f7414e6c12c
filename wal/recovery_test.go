package wal

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTornOrCorruptTail damages the last batch at every byte position, by
// truncation and by flipping the byte, and checks that reopening keeps every
// earlier batch, drops the damaged one, and appends continue at its offset.
func TestTornOrCorruptTail(t *testing.T) {
	for _, codec := range []Codec{CodecNone, CodecS2} {
		t.Run(codec.String(), func(t *testing.T) {
			golden := t.TempDir()
			l := mustOpen(t, golden)
			l.CreateTopic("t", TopicConfig{Partitions: 1, Codec: codec})
			appendN(t, l, "t", 0, 0, 30, 10) // three batches
			l.Close()
			seg := filepath.Join("topics", "t", "0", segmentName(0)+".log")
			full, _ := os.ReadFile(filepath.Join(golden, seg))
			// Find where the last batch starts by walking the headers.
			var lastStart int64
			for pos := int64(0); pos < int64(len(full)); {
				h, err := parseHeader(full[pos:])
				if err != nil {
					t.Fatal(err)
				}
				lastStart = pos
				pos += h.length
			}
			check := func(t *testing.T, dir string, what string) {
				l, err := Open(dir, WithRetentionInterval(0))
				if err != nil {
					t.Fatalf("%s: reopen: %v", what, err)
				}
				defer l.Close()
				got := readAll(t, l, "t", 0, 0)
				if len(got) != 20 {
					t.Fatalf("%s: %d records survive, want 20", what, len(got))
				}
				checkSeq(t, got, 0, 20)
				appendN(t, l, "t", 0, 20, 5, 5)
				checkSeq(t, readAll(t, l, "t", 0, 0), 0, 25)
			}
			for pos := lastStart; pos < int64(len(full)); pos++ {
				dir := t.TempDir()
				copyDir(t, golden, dir)
				os.Truncate(filepath.Join(dir, seg), pos)
				check(t, dir, fmt.Sprintf("truncate at %d", pos))

				dir = t.TempDir()
				copyDir(t, golden, dir)
				b := append([]byte(nil), full...)
				b[pos] ^= 0x5a
				os.WriteFile(filepath.Join(dir, seg), b, 0o644)
				check(t, dir, fmt.Sprintf("flip at %d", pos))
			}
		})
	}
}

// The helper process appends with fsync per group from many goroutines and
// prints every acknowledged append; the parent kills it with SIGKILL.
const crashEnv = "GOUTONG_WAL_CRASH_DIR"

func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9LosesNoAcknowledgedAppend")
	}
	l, err := Open(dir, WithRetentionInterval(0))
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	l.CreateTopic("t", TopicConfig{Partitions: 2, Codec: CodecS2, SegmentBytes: 32 << 10})
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				part := int32(w % 2)
				recs := []Record{{Value: fmt.Appendf(nil, "w%d-%d-a", w, i)}, {Value: fmt.Appendf(nil, "w%d-%d-b", w, i)}}
				base, err := l.Append(context.Background(), "t", part, recs)
				if err != nil {
					return
				}
				mu.Lock()
				fmt.Fprintf(out, "ack %d %d w%d-%d\n", part, base, w, i)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func TestKill9LosesNoAcknowledgedAppend(t *testing.T) {
	if testing.Short() {
		t.Skip("subprocess crash test")
	}
	dir := t.TempDir()
	for round := range 3 {
		acked := map[string][2]int64{} // append name -> partition, offset
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v=false")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n := 0
		for sc.Scan() && n < 2000+round*500 {
			f := strings.Fields(sc.Text())
			if len(f) != 4 || f[0] != "ack" {
				continue
			}
			part, _ := strconv.ParseInt(f[1], 10, 32)
			off, _ := strconv.ParseInt(f[2], 10, 64)
			acked[f[3]] = [2]int64{part, off}
			n++
		}
		cmd.Process.Signal(syscall.SIGKILL)
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		if n == 0 {
			t.Fatal("helper acknowledged nothing")
		}
		// Every acknowledged append must be there, at its offset, in order.
		l, err := Open(dir, WithRetentionInterval(0))
		if err != nil {
			t.Fatalf("reopen after kill: %v", err)
		}
		byPart := [2]map[int64]string{{}, {}}
		for p := range int32(2) {
			for _, r := range readAll(t, l, "t", p, 0) {
				byPart[p][r.Offset] = string(r.Value)
			}
		}
		l.Close()
		// Each round's helper restarts its counters, so a name can recur across
		// rounds; it must be at the offsets this round acknowledged.
		for name, po := range acked {
			a, b := byPart[po[0]][po[1]], byPart[po[0]][po[1]+1]
			if a != name+"-a" || b != name+"-b" {
				t.Fatalf("round %d: acked %s at %d/%d, found %q %q", round, name, po[0], po[1], a, b)
			}
		}
		t.Logf("round %d: %d acknowledged appends all present after SIGKILL", round, n)
	}
}
