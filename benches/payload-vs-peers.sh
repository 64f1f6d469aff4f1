#!/usr/bin/env bash
# Delta payloads side by side on the same image pair, one table: Keel, zstd --patch-from,
# xdelta3 (default, and -B over the whole image) and bsdiff (with a time limit).
#
#   benches/payload-vs-peers.sh [OLD NEW]
#
# Without arguments it runs every pair of the measurement corpus, one table each: ext4,
# squashfs (zstd), EROFS and EROFS (lz4hc), building the corpus first
# (shared/corpus/build-corpus.sh; needs root and about 5 minutes). Needs zstd, xdelta3,
# bsdiff and GNU time (apt-get install zstd xdelta3 bsdiff time). Memory: GNU time's
# peak resident set, the peak of anonymous memory (see anon_peak), and, as root, Keel's
# generator run again inside a memory cgroup (KEEL_BENCH_MEMORY_MIB, default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${KEEL_CORPUS:-/tmp/keel-corpus}
if [ $# -lt 2 ]; then
  [ -f "$CORPUS/img_B.lz4.erofs" ] || bash ../shared/corpus/build-corpus.sh "$CORPUS"
  for fs in ext4 sqfs erofs lz4.erofs; do
    echo "== $fs: $CORPUS/img_A.$fs -> img_B.$fs"
    bash "$0" "$CORPUS/img_A.$fs" "$CORPUS/img_B.$fs"
    echo
  done
  exit 0
fi
OLD=$1 NEW=$2
BSDIFF_LIMIT=${BSDIFF_LIMIT:-420}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
. benches/support/payload.sh
openssl pkey -in "$W/k.pem" -pubout -out "$W/k.pub"

. benches/support/anon_peak.sh

# measure NAME GEN_CMD APPLY_CMD OUT RESULT: runs both under GNU time.
rows=()
measure() {
  local name=$1 gen=$2 app=$3 out=$4 result=$5
  local g a anon pid
  /usr/bin/time -f "%e %M" -o "$W/t" bash -c "$gen" >/dev/null 2>"$W/err" &
  pid=$!
  anon=$(anon_peak $pid)
  if ! wait $pid; then
    rows+=("$name|failed or timed out||||||"); return; fi
  g=$(tail -1 "$W/t")
  rm -f "$result"
  /usr/bin/time -f "%e %M" -o "$W/t" bash -c "$app" >/dev/null 2>"$W/err" || true
  a=$(tail -1 "$W/t")
  cmp -s "$result" "$NEW" || { rows+=("$name|WRONG RESULT||||||"); return; }
  rows+=("$name|$(stat -c %s "$out")|${g% *}|$(( ${g#* } / 1024 ))|$(( anon / 1024 ))|${a% *}|$(( ${a#* } / 1024 ))")
}

measure "keel (file pairing, level 19)" \
  "$PAYLOAD generate --source $OLD --target $NEW --key $W/k.pem -o $W/keel.p" \
  "$PAYLOAD apply --source $OLD --target $W/keel.out --pubkey $W/k.pub --no-version-check $W/keel.p" "$W/keel.p" "$W/keel.out"
. benches/support/memory_limited.sh
memory_limited "$OLD" "$NEW" "$W/keel.p"
# Which compressor re-created blocks, if any did (squashfs).
"$PAYLOAD" inspect --pubkey "$W/k.pub" "$W/keel.p" 2>/dev/null | grep '^recompress' || true
measure "zstd --patch-from -19 --long=31" \
  "zstd -q -f -19 --long=31 --patch-from=$OLD $NEW -o $W/z.p" \
  "zstd -q -f -d --long=31 --patch-from=$OLD $W/z.p -o $W/z.out" "$W/z.p" "$W/z.out"
# Keel's apply ends with the target durable (fdatasync), as an installer needs before it
# switches slots; zstd's decoder leaves its output in the page cache. The same decode
# followed by `sync -d` of its output, for a like-for-like apply time.
if [ -s "$W/z.p" ]; then
  rm -f "$W/z.out"
  if /usr/bin/time -f "%e %M" -o "$W/t" bash -c \
    "zstd -q -f -d --long=31 --patch-from=$OLD $W/z.p -o $W/z.out && sync -d $W/z.out" \
    >/dev/null 2>"$W/err" && cmp -s "$W/z.out" "$NEW"; then
    z=$(tail -1 "$W/t")
    rows+=("zstd -d --patch-from, then sync -d|-|-|-|-|${z% *}|$(( ${z#* } / 1024 ))")
  fi
fi
measure "xdelta3 (default)" \
  "xdelta3 -f -e -s $OLD $NEW $W/x.p" "xdelta3 -f -d -s $OLD $W/x.p $W/x.out" "$W/x.p" "$W/x.out"
measure "xdelta3 -9 -S djw -B whole image" \
  "xdelta3 -f -9 -S djw -B $(stat -c %s "$OLD") -e -s $OLD $NEW $W/xb.p" \
  "xdelta3 -f -B $(stat -c %s "$OLD") -d -s $OLD $W/xb.p $W/xb.out" "$W/xb.p" "$W/xb.out"
measure "bsdiff (limit ${BSDIFF_LIMIT}s)" \
  "timeout $BSDIFF_LIMIT bsdiff $OLD $NEW $W/b.p" "bspatch $OLD $W/b.out $W/b.p" "$W/b.p" "$W/b.out"

printf '%-34s %12s %8s %9s %9s %8s %9s\n' method bytes "gen s" "gen MiB" "anon MiB" "apply s" "apply MiB"
for r in "${rows[@]}"; do
  IFS='|' read -r n b gs gm ga as am <<<"$r"
  printf '%-34s %12s %8s %9s %9s %8s %9s\n' "$n" "$b" "$gs" "$gm" "$ga" "$as" "$am"
done
# Keel against the best peer in each column (smaller is better; below 1 Keel wins).
printf '%s\n' "${rows[@]}" | awk -F'|' '
  $2 ~ /^[0-9]+$/ { for (c = 2; c <= 7; c++) {
      if ($1 ~ /^keel/) k[c] = $c
      else if (!(c in best) || $c + 0 < best[c] + 0) best[c] = $c } }
  END { split("bytes gen-s gen-MiB gen-anon-MiB apply-s apply-MiB", name, " ")
        printf "keel / best peer:"
        for (c = 2; c <= 7; c++) if (best[c] > 0) printf " %s %.3f", name[c - 1], k[c] / best[c]
        printf "\n" }'
# Keel's apply against zstd's made durable as Keel's is.
printf '%s\n' "${rows[@]}" | awk -F'|' '
  $1 ~ /^keel/ { k = $6 } $1 ~ /then sync/ { z = $6 }
  END { if (k > 0 && z > 0) printf "keel apply / (zstd decode + sync -d): %.3f\n", k / z }'
