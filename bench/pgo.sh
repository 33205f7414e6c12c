#!/usr/bin/env bash
# Refreshes cmd/goutong/default.pgo, the CPU profile `go build` and `go run`
# of the goutong binary optimise for (profile-guided optimisation). It is
# `serve`'s two hot paths, merged: the engine draining a 1M-record burst
# through the mock provider, and the API accepting NDJSON batches and single
# objects. Run it from the repository's root after a change to a hot path
# (~2 minutes on 2 cores); `go test` builds without it (PGO applies to main
# packages only), so benchmarks measure a profile with -pgo=<file>.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test ./engine -run '^$' -bench 'EngineEndToEnd/wal$' -benchtime 1000000x -pgo=off \
  -o "$tmp/engine.test" -args -drainprofile="$tmp/drain.pprof" >/dev/null
go test ./api -run '^$' -bench 'Ingest' -benchtime 3000x -pgo=off \
  -o "$tmp/api.test" -cpuprofile "$tmp/api.pprof" >/dev/null
go tool pprof -proto "$tmp/drain.pprof" "$tmp/api.pprof" > cmd/goutong/default.pgo
echo "wrote cmd/goutong/default.pgo ($(wc -c < cmd/goutong/default.pgo) bytes)"
