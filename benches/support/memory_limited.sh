#!/usr/bin/env bash
# Sourced by the payload benches (with $W a work directory, $PAYLOAD the example built).
#
# memory_limited OLD NEW PAYLOAD: Keel's generator again, from OLD to NEW, in a memory
# cgroup of KEEL_BENCH_MEMORY_MIB (default 1024) with the page cache dropped first, so every
# image page it reads is charged to it (GNU time's peak counts the mapped images' pages,
# which the kernel reclaims under a limit): the memory the generator needs. It must make
# the same bytes as PAYLOAD. Root and a writable cgroup (v1 or v2) only.
memory_limited() {
  local old=$1 new=$2 ref=$3 mib=${KEEL_BENCH_MEMORY_MIB:-1024} cg limit procs
  if [ -w /sys/fs/cgroup/memory ]; then
    cg=/sys/fs/cgroup/memory/keel-bench limit=memory.limit_in_bytes
  elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null && [ -w /sys/fs/cgroup ]; then
    cg=/sys/fs/cgroup/keel-bench limit=memory.max
  else
    echo "keel generate in a memory cgroup: skipped (needs root and a writable cgroup)"; return
  fi
  mkdir -p "$cg" && echo $(( mib << 20 )) > "$cg/$limit" || { echo "memory cgroup: cannot set a limit"; return; }
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(page cache not dropped: cached image pages are not charged)"
  procs="$cg/cgroup.procs"
  if /usr/bin/time -f "%e" -o "$W/t" sh -c "echo \$\$ > $procs; exec $PAYLOAD generate --source $old --target $new --key $W/k.pem -o $W/keel-limited.p" >/dev/null 2>"$W/err" \
     && cmp -s "$W/keel-limited.p" "$ref"; then
    echo "keel generate in a ${mib} MiB memory cgroup (cold page cache): the same payload in $(tail -1 "$W/t") s"
  else
    echo "keel generate in a ${mib} MiB memory cgroup: FAILED ($(tail -1 "$W/err"))"
  fi
  rm -f "$W/keel-limited.p"
  rmdir "$cg" 2>/dev/null || true
}
