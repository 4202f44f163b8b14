#!/usr/bin/env bash
# Short fuzz runs of the hand-written protocol code (issue 11): each
# target alone, one package at a time, FUZZTIME each (default 15s).
# A crasher is written by go to proxy/testdata/fuzz/<Target>/ and the
# run fails; commit that file with the fix (it stays a seed).
# Longer by hand: FUZZTIME=3m .ci/fuzz.sh   (or one target: .ci/fuzz.sh FuzzH2Frames)
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-15s}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	targets=(FuzzReqHead FuzzRespHead FuzzChunked FuzzH2Frames)
fi
for t in "${targets[@]}"; do
	echo "-- $t ($fuzztime)"
	go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" -parallel 2 ./proxy/
done
