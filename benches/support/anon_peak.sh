#!/usr/bin/env bash
# Sourced by the shell benches.

# anon_peak PID: the largest sum of RssAnon (KiB) over PID and its descendants, sampled
# every 50 ms until PID ends. GNU time's peak (%M) also counts the pages of files a tool
# maps (Keel maps both images), which are page cache the kernel reclaims; the anonymous
# memory is what the tool itself holds.
anon_peak() {
  local root=$1 peak=0 sum p k v
  while kill -0 "$root" 2>/dev/null; do
    sum=0
    for p in $(ps -e -o pid=,ppid= | awk -v r="$root" '
        { parent[$1] = $2 }
        END { for (p in parent) { q = p; while (q in parent && q != r) q = parent[q]; if (q == r) print p } }'); do
      while read -r k v _; do
        [ "$k" = RssAnon: ] && sum=$((sum + v))
      done 2>/dev/null < /proc/"$p"/status || true
    done
    (( sum > peak )) && peak=$sum
    sleep 0.05
  done
  echo "$peak"
}
