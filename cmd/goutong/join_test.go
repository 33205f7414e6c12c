package main

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func tarOf(t testing.TB, entries ...tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		body := []byte("content of " + h.Name)
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(body)
		}
	}
	tw.Close()
	return buf.Bytes()
}

// A snapshot's tar comes from another machine: its files land under the
// directory or the extraction fails, whatever the names say.
func TestExtractTarStaysInside(t *testing.T) {
	ok := tarOf(t, tar.Header{Typeflag: tar.TypeDir, Name: "status/"},
		tar.Header{Typeflag: tar.TypeReg, Name: "status/000001.sst"},
		tar.Header{Typeflag: tar.TypeReg, Name: "dedupe/write-buffer/../MANIFEST"})
	dir := t.TempDir()
	n, err := extractTar(bytes.NewReader(ok), dir)
	if err != nil || n == 0 {
		t.Fatalf("a good tar: %d bytes, %v", n, err)
	}
	for _, f := range []string{"status/000001.sst", "dedupe/MANIFEST"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s not extracted: %v", f, err)
		}
	}
	for name, h := range map[string]tar.Header{
		"parent":   {Typeflag: tar.TypeReg, Name: "../escape"},
		"absolute": {Typeflag: tar.TypeReg, Name: "/tmp/escape"},
		"deep":     {Typeflag: tar.TypeReg, Name: "status/../../escape"},
		"symlink":  {Typeflag: tar.TypeSymlink, Name: "link", Linkname: "/etc"},
		"hardlink": {Typeflag: tar.TypeLink, Name: "link", Linkname: "../x"},
	} {
		outer := t.TempDir()
		dir := filepath.Join(outer, "in")
		os.Mkdir(dir, 0o755)
		if _, err := extractTar(bytes.NewReader(tarOf(t, h)), dir); err == nil {
			t.Errorf("%s: extracted", name)
		}
		assertOnlyUnder(t, outer, dir)
	}
}

// assertOnlyUnder fails if anything but dir and its contents is in outer.
func assertOnlyUnder(t testing.TB, outer, dir string) {
	t.Helper()
	filepath.WalkDir(outer, func(path string, d fs.DirEntry, err error) error {
		if path != outer && path != dir && !strings.HasPrefix(path, dir+string(filepath.Separator)) {
			t.Fatalf("%s written outside %s", path, dir)
		}
		return nil
	})
}

// FuzzExtractTar: bytes from the network never panic the extraction nor
// write outside its directory.
func FuzzExtractTar(f *testing.F) {
	f.Add(tarOf(f, tar.Header{Typeflag: tar.TypeReg, Name: "status/x"}))
	f.Add(tarOf(f, tar.Header{Typeflag: tar.TypeReg, Name: "../x"}))
	f.Add(tarOf(f, tar.Header{Typeflag: tar.TypeDir, Name: "a/"}, tar.Header{Typeflag: tar.TypeReg, Name: "a/b"}))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		dir := filepath.Join(outer, "in")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		extractTar(bytes.NewReader(data), dir) //nolint:errcheck // refusals are expected
		assertOnlyUnder(t, outer, dir)
	})
}

// What a snapshot or a join left behind when its process ended is removed
// at the next start; the stores are not touched.
func TestRemoveLeftovers(t *testing.T) {
	data := t.TempDir()
	for _, d := range []string{".snapshot-123/s/status", ".join-456/dedupe", "status", "dedupe"} {
		if err := os.MkdirAll(filepath.Join(data, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(data, joinMarker+partSuffix+"123"), []byte(".join-4"), 0o644); err != nil {
		t.Fatal(err)
	}
	removeLeftovers(data, zap.NewNop())
	entries, _ := os.ReadDir(data)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "dedupe,status" {
		t.Fatalf("left %v, want the stores only", names)
	}
}

// A crash between moving the joined stores in leaves one store in the data
// directory and one in the download; the next start finishes the move
// rather than taking the one store for the node's own.
func TestFinishJoinAfterACrash(t *testing.T) {
	data := t.TempDir()
	tmp := filepath.Join(data, joinTmpPrefix+"1")
	for _, f := range []string{filepath.Join(tmp, "status", "MANIFEST"), filepath.Join(data, "dedupe", "MANIFEST")} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(data, joinMarker), []byte(filepath.Base(tmp)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := finishJoin(data); err != nil {
		t.Fatal(err)
	}
	removeLeftovers(data, zap.NewNop())
	for _, f := range []string{"status/MANIFEST", "dedupe/MANIFEST"} {
		if _, err := os.Stat(filepath.Join(data, f)); err != nil {
			t.Fatalf("%s after the move: %v", f, err)
		}
	}
	entries, _ := os.ReadDir(data)
	if len(entries) != 2 {
		t.Fatalf("left %d entries, want the two stores only", len(entries))
	}
	if err := finishJoin(data); err != nil {
		t.Fatalf("with no marker: %v", err)
	}
}

// A marker whose download lost a store is an error, not a start on one store.
func TestFinishJoinMissingStore(t *testing.T) {
	data := t.TempDir()
	if err := os.MkdirAll(filepath.Join(data, joinTmpPrefix+"1", "status"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, joinMarker), []byte(joinTmpPrefix+"1"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := finishJoin(data)
	if err == nil || !strings.Contains(err.Error(), "dedupe store is in neither") {
		t.Fatalf("got %v, want the missing dedupe store named", err)
	}
}

// goutong snapshot writes a whole tar or nothing: a stream cut short (the
// node stopped mid-copy) fails and leaves no file behind.
func TestSaveSnapshotRefusesACutStream(t *testing.T) {
	var whole bytes.Buffer
	tw := tar.NewWriter(&whole)
	body := bytes.Repeat([]byte("x"), 5000)
	if err := tw.WriteHeader(&tar.Header{Name: "status/000001.sst", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(body) //nolint:errcheck // into memory
	tw.Close()     //nolint:errcheck // into memory
	cut := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if cut {
			w.Write(whole.Bytes()[:2000]) //nolint:errcheck // the test's cut
			return
		}
		w.Write(whole.Bytes()) //nolint:errcheck // to the test's client
	}))
	defer srv.Close()
	dir := t.TempDir()
	out := filepath.Join(dir, "node.tar")
	c := client{server: srv.URL}
	if _, err := c.saveSnapshot(out); err == nil || !strings.Contains(err.Error(), "not a whole tar") {
		t.Fatalf("a cut stream: %v, want refused", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("a cut stream left %d files", len(entries))
	}
	cut = false
	n, err := c.saveSnapshot(out)
	if err != nil || n != int64(whole.Len()) {
		t.Fatalf("a whole stream: %d bytes, %v; want %d", n, err, whole.Len())
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, whole.Bytes()) {
		t.Fatal("the saved file differs from the stream")
	}
}
