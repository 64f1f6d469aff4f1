#!/usr/bin/env bash
# Adaptive updates, side by side on the same image pair, everything served by one nginx
# on 127.0.0.1 whose log counts the requests and body bytes each client took:
#
#   keel store     store publish (the new image's runs, leaves and signed root, nothing
#                  per source), then store install --seed OLD over HTTP range requests
#   casync         casync make (its default chunking, 64 KiB average, zstd), then
#                  casync extract --seed=OLD from the chunk store over HTTP
#   keel delta     payload generate --source OLD (per source version), fetched whole
#   keel full      payload generate --full, fetched whole
#
# Columns: what the publisher stores, the bytes and requests a device fetches, the
# install's time. Both installs must leave the new image bit for bit.
#
#   benches/adaptive-vs-casync.sh [OLD NEW]   # default: the corpus's ext4, EROFS (plain and lz4),
#                                             # squashfs pairs, and ext4 and squashfs from A
#                                             # to a C two steps on (made from B's tree)
#
# Needs casync, nginx, GNU time (apt-get install casync nginx time).
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${KEEL_CORPUS:-/tmp/keel-corpus}
if [ $# -lt 2 ]; then
  [ -f "$CORPUS/img_B.lz4.erofs" ] || bash ../shared/corpus/build-corpus.sh "$CORPUS"
  for fs in ext4 erofs lz4.erofs sqfs; do
    echo "== $fs: $CORPUS/img_A.$fs -> img_B.$fs"
    bash "$0" "$CORPUS/img_A.$fs" "$CORPUS/img_B.$fs"
    echo
  done
  # Two steps at once (A to C, skipping B): C is B with more packages installed, made
  # here once from the corpus's B tree as the corpus makes its images.
  if [ ! -f "$CORPUS/img_C.sqfs" ] && [ -d "$CORPUS/rootfs_B" ]; then
    (
      cd "$CORPUS"
      rm -rf rootfs_C; cp -a rootfs_B rootfs_C
      cp /etc/resolv.conf rootfs_C/etc/resolv.conf 2>/dev/null || true
      mount -t proc proc rootfs_C/proc 2>/dev/null || true
      chroot rootfs_C /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q &&
        apt-get install -y -q --no-install-recommends less openssh-client python3 xz-utils' > chroot_C.log 2>&1
      umount rootfs_C/proc 2>/dev/null || true
      rm -rf rootfs_C/var/cache/apt/archives/*.deb rootfs_C/var/cache/apt/*.bin rootfs_C/var/lib/apt/lists/* \
        rootfs_C/var/log/* rootfs_C/tmp/* rootfs_C/etc/resolv.conf
      export SOURCE_DATE_EPOCH=1700000000 E2FSPROGS_FAKE_TIME=1700000000
      truncate -s 512M img_C.ext4
      mkfs.ext4 -q -F -b 4096 -U 4d1c0e7a-2b3c-4d5e-8f90-a1b2c3d4e5f6 \
        -E root_owner=0:0,hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0,lazy_itable_init=0,nodiscard \
        -L rootfs -d rootfs_C img_C.ext4
      mksquashfs rootfs_C img_C.sqfs -noappend -comp zstd -Xcompression-level 19 -b 131072 \
        -all-root -quiet -no-progress > /dev/null
    ) || echo "(could not make img_C: $CORPUS/chroot_C.log)"
  fi
  for fs in ext4 sqfs; do
    [ -f "$CORPUS/img_C.$fs" ] || continue
    echo "== $fs, two steps: $CORPUS/img_A.$fs -> img_C.$fs"
    bash "$0" "$CORPUS/img_A.$fs" "$CORPUS/img_C.$fs"
    echo
  done
  exit 0
fi
W=$(mktemp -d); trap 'kill $(cat "$W/ng/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$W"' EXIT
. benches/support/payload.sh
cargo build -q --release --example store
STORE=${CARGO_TARGET_DIR:-target}/release/examples/store
openssl pkey -in "$W/k.pem" -pubout -out "$W/k.pub"
mkdir -p "$W/www" "$W/ng"
chmod 755 "$W"   # nginx's workers (nobody) read what it serves
# dm-verity (and so a store) takes whole blocks: both images cut to a multiple of 4 KiB
# (squashfs pads to 4 KiB itself).
for v in OLD NEW; do
  src=$([ $v = OLD ] && echo "$1" || echo "$2"); size=$(stat -c %s "$src")
  head -c $(( size / 4096 * 4096 )) "$src" > "$W/$v"
done

port=$(( 20000 + RANDOM % 20000 ))
cat > "$W/ng/nginx.conf" <<EOF
worker_processes 1;
pid $W/ng/nginx.pid;
error_log $W/ng/error.log;
events { worker_connections 64; }
http {
  log_format b "\$uri \$status \$body_bytes_sent";
  access_log $W/ng/access.log b;
  client_body_temp_path $W/ng; proxy_temp_path $W/ng; fastcgi_temp_path $W/ng;
  uwsgi_temp_path $W/ng; scgi_temp_path $W/ng;
  server { listen 127.0.0.1:$port; root $W/www; }
}
EOF
nginx -c "$W/ng/nginx.conf" -p "$W/ng"
BASE=http://127.0.0.1:$port

# served PREFIX: requests and bytes nginx logged for paths starting with PREFIX since
# the log was emptied.
served() { awk -v p="$1" 'index($1, p) == 1 { n++; b += $3 } END { printf "%d %d", b, n }' "$W/ng/access.log"; }
timed() { /usr/bin/time -f "%e" -o "$W/t" "$@" >"$W/out" 2>"$W/err" || { echo "failed: $*: $(tail -3 "$W/err")" >&2; exit 1; }; cat "$W/t"; }

t_pub=$(timed "$STORE" publish --image "$W/NEW" --key "$W/k.pem" --verity-salt 5a17 \
  -o "$W/www/new.store" --version 2.0)
t_mk=$(timed casync make --store="$W/www/castr" "$W/www/new.caibx" "$W/NEW")
"$PAYLOAD" generate --source "$W/OLD" --target "$W/NEW" --key "$W/k.pem" -o "$W/www/delta.p" >/dev/null
"$PAYLOAD" generate --full --target "$W/NEW" --key "$W/k.pem" -o "$W/www/full.p" >/dev/null

: > "$W/ng/access.log"
t_keel=$(timed "$STORE" install --store "$BASE/new.store" --seed "$W/OLD" --target "$W/keel.img" \
  --pubkey "$W/k.pub" --installed-version 1.0)
read -r b_keel n_keel <<<"$(served /new.store)"
cmp -s "$W/keel.img" "$W/NEW" || { echo "keel's install differs from the image"; exit 1; }

: > "$W/ng/access.log"
t_ca=$(timed casync extract --store="$BASE/castr" --seed="$W/OLD" "$BASE/new.caibx" "$W/ca.img")
read -r b_ca n_ca <<<"$(served /)"
cmp -s "$W/ca.img" "$W/NEW" || { echo "casync's extract differs from the image"; exit 1; }

size() { stat -c %s "$1"; }
store_ca=$(du -sb "$W/www/castr" | cut -f1)
delta=$(size "$W/www/delta.p")
printf '%-34s %14s %14s %9s %9s\n' "" "stored (B)" "fetched (B)" requests "time (s)"
printf '%-34s %14s %14s %9s %9s\n' "keel store (publish ${t_pub}s)" "$(size "$W/www/new.store")" "$b_keel" "$n_keel" "$t_keel"
printf '%-34s %14s %14s %9s %9s\n' "casync --seed (make ${t_mk}s)" "$((store_ca + $(size "$W/www/new.caibx")))" "$b_ca" "$n_ca" "$t_ca"
printf '%-34s %14s %14s %9s %9s\n' "keel delta (this source only)" "$delta" "$delta" 1 -
printf '%-34s %14s %14s %9s %9s\n' "keel full payload" "$(size "$W/www/full.p")" "$(size "$W/www/full.p")" 1 -
awk -v k="$b_keel" -v c="$b_ca" -v d="$delta" \
  'BEGIN { printf "keel store / casync: %.2fx bytes; keel store / keel delta: %.2fx\n", k / c, k / d }'
