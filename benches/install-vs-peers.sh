#!/usr/bin/env bash
# The whole install of a new image into a slot, side by side on the same image pair: apply
# the delta, build the image's dm-verity tree and its FEC parity (2 roots), and check, as
#
#   keel, one pass       payload apply --hash-out --fec-out: the tree and the parity built
#                        from the blocks as they are written, the tree checked against the
#                        payload's signed root; nothing read back
#   keel, step by step   payload apply (the image read back for its digest), then
#                        verity format --fec-device, then verity verify
#   zstd + veritysetup   zstd -d --patch-from, then veritysetup format --fec-device, then
#                        veritysetup verify: the pipeline an OS builder would script
#
# For each step: seconds and peak memory (GNU time), and the bytes it read from and wrote
# to the new image, its tree and its parity, counted from its system calls in a second
# run under strace (the page cache would hide a pass from the disk's counters; on a
# device whose memory cannot hold the slot, every one of those reads goes to the disk).
# The three must leave the same image, tree and parity. The delta payloads themselves
# are made first (not timed; benches/payload-vs-peers.sh compares them).
#
#   benches/install-vs-peers.sh [OLD NEW]     # default: the corpus's ext4 and EROFS pairs
#
# Needs zstd, cryptsetup-bin (veritysetup), strace and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${KEEL_CORPUS:-/tmp/keel-corpus}
if [ $# -lt 2 ]; then
  [ -f "$CORPUS/img_B.lz4.erofs" ] || bash ../shared/corpus/build-corpus.sh "$CORPUS"
  for fs in ext4 erofs; do
    echo "== $fs: $CORPUS/img_A.$fs -> img_B.$fs"
    bash "$0" "$CORPUS/img_A.$fs" "$CORPUS/img_B.$fs"
    echo
  done
  exit 0
fi
OLD=$1 NEW=$2
SALT=5a17
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
. benches/support/payload.sh
cargo build --release --quiet --example verity
VERITY=${CARGO_TARGET_DIR:-target}/release/examples/verity
openssl pkey -in "$W/k.pem" -pubout -out "$W/k.pub"
# dm-verity takes whole blocks: both images are cut to a multiple of 4 KiB.
for v in OLD NEW; do
  src=${!v}; size=$(stat -c %s "$src")
  head -c $(( size / 4096 * 4096 )) "$src" > "$W/$v"
done
OLD=$W/OLD NEW=$W/NEW

"$PAYLOAD" generate --source "$OLD" --target "$NEW" --key "$W/k.pem" -o "$W/rooted.p" \
  --verity-salt $SALT >/dev/null
"$PAYLOAD" generate --source "$OLD" --target "$NEW" --key "$W/k.pem" -o "$W/plain.p" >/dev/null
zstd -q -f -19 --long=31 --patch-from="$OLD" "$NEW" -o "$W/z.p"

# step PIPELINE NAME CMD: time it, then count its reads and writes of the outputs.
rows=()
step() {
  local pipe=$1 name=$2 cmd=$3 t r w
  cat "$OLD" "$W"/*.p >/dev/null   # the inputs warm for everyone
  /usr/bin/time -f "%e %M" -o "$W/t" bash -c "$cmd" >"$W/out" 2>"$W/err" \
    || { echo "$pipe / $name failed: $(tail -3 "$W/err")"; exit 1; }
  t=$(tail -1 "$W/t")
  strace -f -qq -y -s 0 -e signal=none \
    -e trace=read,pread64,readv,preadv,preadv2,write,pwrite64,writev,pwritev,pwritev2,copy_file_range \
    -o "$W/trace" bash -c "$cmd" >/dev/null 2>&1
  # Bytes moved by the calls on the image (out.*), its tree (hash.*) and its parity (fec.*).
  # Calls two threads make at once come in two lines: "<unfinished ...>", then the
  # thread's "<... resumed> = N".
  read -r r w < <(awk -v dir="$W/" '
    function count(call, path, n,   f) {
      if (index(path, dir) != 1 || n !~ /^[0-9]+$/) return
      f = substr(path, length(dir) + 1)
      if (f !~ /^(out|hash|fec)\./) return
      if (call ~ /^(read|pread|readv|preadv)/) r += n; else w += n
    }
    {
      pid = $1
      if (match($0, /[a-z_0-9]+\([0-9]+<[^>]*>/)) {
        call = substr($0, RSTART, RLENGTH); path = call
        sub(/\(.*$/, "", call); sub(/^[^<]*</, "", path); sub(/>$/, "", path)
        if ($0 ~ /<unfinished \.\.\.>$/) { pc[pid] = call; pp[pid] = path; next }
        count(call, path, $NF)
      } else if ($0 ~ /resumed>/ && (pid in pc)) {
        count(pc[pid], pp[pid], $NF); delete pc[pid]; delete pp[pid]
      }
    }
    END { printf "%d %d\n", r, w }' "$W/trace")
  rows+=("$pipe|$name|${t% *}|$(( ${t#* } / 1024 ))|$(( r >> 20 ))|$(( w >> 20 ))")
}

# The outputs of each pipeline: out.X (image), hash.X (tree), fec.X (parity).
k1="$W/out.k1" k2="$W/out.k2" z="$W/out.z"
step "keel, one pass" "apply, tree, parity, check" \
  "$PAYLOAD apply --source $OLD --target $k1 --pubkey $W/k.pub --no-version-check \
   --hash-out $W/hash.k1 --fec-out $W/fec.k1 --fec-roots 2 $W/rooted.p"
root=$(awk '/^Root hash:/ { print $3 }' "$W/out")
step "keel, step by step" "apply (digest read back)" \
  "$PAYLOAD apply --source $OLD --target $k2 --pubkey $W/k.pub --no-version-check $W/plain.p"
step "keel, step by step" "verity format --fec-device" \
  "$VERITY format $k2 $W/hash.k2 --no-superblock --salt $SALT --fec-device $W/fec.k2 --fec-roots 2"
step "keel, step by step" "verity verify" \
  "$VERITY verify $k2 $W/hash.k2 $root --no-superblock --salt $SALT"
step "zstd + veritysetup" "zstd -d --patch-from" \
  "zstd -q -f -d --long=31 --patch-from=$OLD $W/z.p -o $z"
step "zstd + veritysetup" "veritysetup format --fec-device" \
  "veritysetup format $z $W/hash.z --no-superblock --salt=$SALT --fec-device=$W/fec.z --fec-roots=2"
step "zstd + veritysetup" "veritysetup verify" \
  "veritysetup verify $z $W/hash.z $root --no-superblock --salt=$SALT"

for x in k1 k2 z; do
  cmp -s "$W/out.$x" "$NEW" || { echo "WRONG IMAGE from $x"; exit 1; }
  cmp -s "$W/hash.$x" "$W/hash.z" || { echo "WRONG TREE from $x"; exit 1; }
  cmp -s "$W/fec.$x" "$W/fec.z" || { echo "WRONG PARITY from $x"; exit 1; }
done
size=$(( $(stat -c %s "$NEW") >> 20 ))
echo "image ${size} MiB, tree and parity identical from all three (root $root)"
printf '%-20s %-32s %8s %9s %9s %9s\n' pipeline step seconds "peak MiB" "read MiB" "wrote MiB"
for r in "${rows[@]}"; do
  IFS='|' read -r p n s m rd wr <<<"$r"
  printf '%-20s %-32s %8s %9s %9s %9s\n' "$p" "$n" "$s" "$m" "$rd" "$wr"
done
# Per pipeline: the sum of its steps, and each against Keel's one pass.
printf '%s\n' "${rows[@]}" | awk -F'|' '
  { s[$1] += $3; rd[$1] += $5; wr[$1] += $6; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
  END {
    base = order[1]
    printf "\n%-20s %8s %9s %9s %14s\n", "whole install", "seconds", "read MiB", "wrote MiB", "time / keel"
    for (i = 1; i <= n; i++) { p = order[i]
      printf "%-20s %8.2f %9d %9d %13.2fx\n", p, s[p], rd[p], wr[p], s[p] / s[base] }
  }'
