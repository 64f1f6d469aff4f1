#!/usr/bin/env bash
# Full payloads at OS-image scale, side by side with zstd and xz on the same image: time,
# size and peak memory, one table per image.
#
#   benches/payload-at-scale.sh [GIB...]        (default: 1 2 4)
#
# Each size is an image of incompressible data (as a squashfs or EROFS image largely is),
# and, when the measurement corpus is built (KEEL_CORPUS, default /tmp/keel-corpus), its
# ext4 root filesystem too. Keel's generator writes the payload as it encodes it
# (keel_payload::generate_file): its own memory (anonymous pages; the image is mapped, its
# pages are the kernel's cache) must stay flat as the image grows. Needs zstd, xz and GNU
# time (apt-get install zstd xz-utils time) and about 3x the largest image free in TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${*:-1 2 4}
CORPUS=${KEEL_CORPUS:-/tmp/keel-corpus}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
. benches/support/payload.sh
. benches/support/anon_peak.sh

# run NAME OUT CMD: one row (time, size, GNU time's peak RSS, peak anonymous memory).
rows=()
run() {
  local name=$1 out=$2 cmd=$3 t anon pid
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$W/t" bash -c "$cmd" >/dev/null 2>"$W/err" &
  pid=$!
  anon=$(anon_peak $pid)
  if ! wait $pid; then rows+=("$name|failed: $(tail -1 "$W/err")|||"); return; fi
  t=$(tail -1 "$W/t")
  rows+=("$name|${t% *}|$(stat -c %s "$out")|$(( ${t#* } / 1024 ))|$(( anon / 1024 ))")
  rm -f "$out"
}

table() {
  local img=$1
  rows=()
  run "keel generate --full (level 3)" "$W/keel.p" \
    "$PAYLOAD generate --full --target $img --key $W/k.pem -o $W/keel.p --level 3"
  run "zstd -T0 -3" "$W/z" "zstd -q -T0 -3 -c $img > $W/z"
  # xz is slow on data it cannot compress (6 minutes a GiB on two cores): KEEL_SCALE_XZ=0
  # leaves it out.
  if [ "${KEEL_SCALE_XZ:-1}" != 0 ]; then
    run "xz -T0 -3" "$W/x" "xz -q -T0 -3 -c $img > $W/x"
  fi
  printf '%-34s %9s %14s %12s %12s\n' tool "time (s)" "size (bytes)" "RSS (MiB)" "anon (MiB)"
  for r in "${rows[@]}"; do
    IFS='|' read -r n t s m a <<<"$r"
    printf '%-34s %9s %14s %12s %12s\n' "$n" "$t" "$s" "$m" "$a"
  done
}

for g in $SIZES; do
  img=$W/random-$g
  # A stream cipher's output, cut: openssl ends on the closed pipe.
  { openssl enc -aes-128-ctr -nosalt -pass pass:keel-$g -in /dev/zero 2>/dev/null || true; } \
    | head -c $(( g << 30 )) > "$img"
  echo "== $g GiB of incompressible data"
  table "$img"
  rm -f "$img"
  echo
done
if [ -f "$CORPUS/img_B.ext4" ]; then
  echo "== the corpus's ext4 root filesystem ($(stat -c %s "$CORPUS/img_B.ext4") bytes)"
  table "$CORPUS/img_B.ext4"
fi
