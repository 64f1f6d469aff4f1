#!/usr/bin/env bash
# Payloads at OS-image scale, side by side with zstd and xz on the same image: time, size
# and peak memory, one table per image; then a delta between two large sparse images.
#
#   benches/payload-at-scale.sh [GIB...]        (default: 1 2 4)
#
# Each size is an image of incompressible data (as a squashfs or EROFS image largely is)
# and, when the measurement corpus is built (KEEL_CORPUS, default /tmp/keel-corpus), an
# ext4 root filesystem of that size (copies of the corpus's tree B filling three quarters
# of it), and the corpus's own 512 MiB ext4 image. Keel's generator writes the payload as it encodes it
# (keel_payload::generate_file): its own memory (anonymous pages; the image is mapped, its
# pages are the kernel's cache) must stay flat as the image grows. Keel syncs its payload
# to the disk before it renames it into place; zstd and xz leave theirs in the page cache,
# so each gets a second row with `sync FILE` after it. xz runs on images of at most
# KEEL_SCALE_XZ_GIB (default 1) GiB: it takes six minutes a GiB on data it cannot
# compress.
#
# The sparse delta: the corpus's root file system trees A and B (rootfs_A, rootfs_B) as
# ext4 images of KEEL_SPARSE_GIB (default 8) GiB, sparse files as mkfs.ext4 -d makes them;
# Keel's delta between them beside its delta between the corpus's 512 MiB images of the
# same trees (time, size, memory; as root also in a memory cgroup of KEEL_BENCH_MEMORY_MIB,
# default 1024), and the applied image: byte-identical and still sparse. Then a dense pair
# as large (incompressible data, 64 MiB of it changed), whose every block is hashed and
# indexed: the generator's memory at that size. KEEL_SCALE_PARTS picks the sections
# (default "full memory sparse dense"; memory: a random image of KEEL_SCALE_MEMORY_GIB,
# default 1, on a tmpfs, where neither tool waits for a disk). Needs zstd, xz,
# GNU time and e2fsprogs (apt-get install zstd xz-utils time e2fsprogs) and about 3x the
# largest image free in TMPDIR.
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
  run "zstd -T0 -3, then sync" "$W/z" "zstd -q -T0 -3 -c $img > $W/z && sync $W/z"
  if [ "$(stat -c %s "$img")" -le $(( ${KEEL_SCALE_XZ_GIB:-1} << 30 )) ]; then
    run "xz -T0 -3" "$W/x" "xz -q -T0 -3 -c $img > $W/x"
  fi
  printf '%-34s %9s %14s %12s %12s\n' tool "time (s)" "size (bytes)" "RSS (MiB)" "anon (MiB)"
  for r in "${rows[@]}"; do
    IFS='|' read -r n t s m a <<<"$r"
    printf '%-34s %9s %14s %12s %12s\n' "$n" "$t" "$s" "$m" "$a"
  done
}

# rootfs IMG GIB: an ext4 image of GIB GiB holding copies of the corpus's tree B (as many
# as fill three quarters of it), made as the corpus script makes its images.
rootfs() {
  local img=$1 g=$2 tree=$CORPUS/rootfs_B n i
  n=$(( (g << 30) * 3 / 4 / ($(du -sb "$tree" | cut -f1) + 1) ))
  mkdir "$W/tree"
  for i in $(seq 1 $n); do cp -a "$tree" "$W/tree/copy$i"; done
  truncate -s ${g}G "$img"
  SOURCE_DATE_EPOCH=1700000000 E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 \
    -U 4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6 \
    -E root_owner=0:0,hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0,lazy_itable_init=0,nodiscard \
    -L rootfs -d "$W/tree" "$img"
  rm -rf "$W/tree"
  echo "$n"
}

PARTS=${KEEL_SCALE_PARTS:-full memory sparse dense}
part() { [[ " $PARTS " == *" $1 "* ]]; }

for g in $SIZES; do
  part full || break
  img=$W/random-$g
  # A stream cipher's output, cut: openssl ends on the closed pipe.
  { openssl enc -aes-128-ctr -nosalt -pass pass:keel-$g -in /dev/zero 2>/dev/null || true; } \
    | head -c $(( g << 30 )) > "$img"
  echo "== $g GiB of incompressible data"
  table "$img"
  rm -f "$img"
  echo
  if [ -d "$CORPUS/rootfs_B" ]; then
    img=$W/rootfs-$g
    n=$(rootfs "$img" "$g")
    echo "== $g GiB ext4 root filesystem: $n copies of the corpus's tree B"
    table "$img"
    rm -f "$img"
    echo
  fi
done
# In memory: the image and the output on a tmpfs, where no disk is read or written and
# Keel's sync returns at once: what each tool's own work costs. Runs vary a lot on a tmpfs
# (its pages are allocated as they are written), so each tool runs five times in turn and
# the median is shown.
if part memory && [ -d /dev/shm ]; then
  g=${KEEL_SCALE_MEMORY_GIB:-1}
  M=$(mktemp -d /dev/shm/keel-scale.XXXXXX); trap 'rm -rf "$W" "$M"' EXIT
  { openssl enc -aes-128-ctr -nosalt -pass pass:keel-$g -in /dev/zero 2>/dev/null || true; } \
    | head -c $(( g << 30 )) > "$M/img"
  for i in 1 2 3 4 5; do
    /usr/bin/time -f %e -a -o "$M/keel.t" $PAYLOAD generate --full --target "$M/img" \
      --key "$W/k.pem" -o "$M/keel.p" --level 3 >/dev/null
    ksize=$(stat -c %s "$M/keel.p"); rm -f "$M/keel.p"
    /usr/bin/time -f %e -a -o "$M/zstd.t" bash -c "zstd -q -T0 -3 -c $M/img > $M/z"
    zsize=$(stat -c %s "$M/z"); rm -f "$M/z"
  done
  echo "== $g GiB of incompressible data in memory (tmpfs), median of 5 runs (all runs)"
  printf '%-34s %9s %14s   %s\n' tool "time (s)" "size (bytes)" "runs (s)"
  printf '%-34s %9s %14s   %s\n' "keel generate --full (level 3)" \
    "$(sort -n "$M/keel.t" | sed -n 3p)" "$ksize" "$(tr '\n' ' ' < "$M/keel.t")"
  printf '%-34s %9s %14s   %s\n' "zstd -T0 -3" \
    "$(sort -n "$M/zstd.t" | sed -n 3p)" "$zsize" "$(tr '\n' ' ' < "$M/zstd.t")"
  rm -rf "$M"
  echo
fi
if part full && [ -f "$CORPUS/img_B.ext4" ]; then
  echo "== the corpus's ext4 root filesystem ($(stat -c %s "$CORPUS/img_B.ext4") bytes)"
  table "$CORPUS/img_B.ext4"
  echo
fi

printf -v ROW '%-34s %9s %14s %12s %12s' images "time (s)" "size (bytes)" "RSS (MiB)" "anon (MiB)"
# delta_row NAME OLD NEW OUT: Keel's delta, one row.
delta_row() {
  local name=$1 old=$2 new=$3 out=$4 t anon pid
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$W/t" $PAYLOAD generate --source "$old" --target "$new" \
    --key "$W/k.pem" -o "$out" >/dev/null 2>"$W/err" &
  pid=$!
  anon=$(anon_peak $pid)
  wait $pid || { echo "$name: failed: $(tail -1 "$W/err")"; return 1; }
  t=$(tail -1 "$W/t")
  printf '%-34s %9s %14s %12s %12s\n' "$name" "${t% *}" "$(stat -c %s "$out")" \
    "$(( ${t#* } / 1024 ))" "$(( anon / 1024 ))"
}
. benches/support/memory_limited.sh
openssl pkey -in "$W/k.pem" -pubout -out "$W/k.pub"
GIB=${KEEL_SPARSE_GIB:-8}

if part sparse && [ -d "$CORPUS/rootfs_A" ] && [ -d "$CORPUS/rootfs_B" ] && [ -f "$CORPUS/img_A.ext4" ]; then
# As the corpus script makes its ext4 images, larger.
for d in A B; do
  truncate -s ${GIB}G "$W/sparse_$d.ext4"
  SOURCE_DATE_EPOCH=1700000000 E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 \
    -U 4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6 \
    -E root_owner=0:0,hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0,lazy_itable_init=0,nodiscard \
    -L rootfs -d "$CORPUS/rootfs_$d" "$W/sparse_$d.ext4"
done
echo "== delta between sparse ext4 images of the corpus's trees: ${GIB} GiB each," \
  "$(( $(stat -c %b "$W/sparse_B.ext4") * 512 >> 20 )) MiB of it allocated"
echo "$ROW"
delta_row "512 MiB images (the corpus's)" "$CORPUS/img_A.ext4" "$CORPUS/img_B.ext4" "$W/small.p"
rm -f "$W/small.p"
delta_row "${GIB} GiB sparse images" "$W/sparse_A.ext4" "$W/sparse_B.ext4" "$W/sparse.p"
memory_limited "$W/sparse_A.ext4" "$W/sparse_B.ext4" "$W/sparse.p"
# Applied to a new file: the image bit for bit, its zeros holes.
/usr/bin/time -f "%e %M" -o "$W/t" $PAYLOAD apply --source "$W/sparse_A.ext4" \
  --target "$W/applied" --pubkey "$W/k.pub" --no-version-check "$W/sparse.p" >/dev/null
if cmp -s "$W/applied" "$W/sparse_B.ext4"; then
  echo "applied in $(cut -d' ' -f1 "$W/t") s ($(( $(cut -d' ' -f2 "$W/t") / 1024 )) MiB peak RSS):" \
    "the image bit for bit, $(( $(stat -c %b "$W/applied") * 512 >> 20 )) MiB of its" \
    "$(( $(stat -c %s "$W/applied") >> 20 )) MiB allocated"
else
  echo "applied: WRONG RESULT"
fi
rm -f "$W"/sparse_* "$W/applied" "$W/sparse.p"
echo
fi

# A dense pair as large: GIB GiB of incompressible data and a copy with 64 MiB of it
# changed in eight places, so that every block is hashed and indexed.
if part dense; then
{ openssl enc -aes-128-ctr -nosalt -pass pass:keel-dense -in /dev/zero 2>/dev/null || true; } \
  | head -c $(( GIB << 30 )) > "$W/dense_A"
cp "$W/dense_A" "$W/dense_B"
for k in 0 1 2 3 4 5 6 7; do
  { openssl enc -aes-128-ctr -nosalt -pass pass:keel-change-$k -in /dev/zero 2>/dev/null || true; } \
    | head -c $(( 8 << 20 )) | dd of="$W/dense_B" bs=1M seek=$(( (GIB << 10) * k / 8 + 3 )) conv=notrunc status=none
done
echo "== delta between dense ${GIB} GiB images (64 MiB changed)"
echo "$ROW"
delta_row "${GIB} GiB dense images" "$W/dense_A" "$W/dense_B" "$W/dense.p"
memory_limited "$W/dense_A" "$W/dense_B" "$W/dense.p"
fi
