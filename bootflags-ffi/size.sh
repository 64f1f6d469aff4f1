#!/usr/bin/env bash
# The library's own code size for a target: the release static library linked by
# rust-lld with only the entry points a boot loader calls as roots and every unused
# section dropped, so what is left is exactly what those calls pull in (no C library,
# no start files). Prints `size -A` of the result.
#
#   bootflags-ffi/size.sh TARGET misc+uboot|all
#
# CI runs it for x86_64 (beside the C-program measurement of the tests) and, where
# `rustup target add` could install it, for thumbv7em-none-eabihf.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?target triple}
set_=${2:-misc+uboot}

cargo build --release --quiet --target "$target"
lib="target/$target/release/libkeel_bootflags_ffi.a"
host=$(rustc -vV | sed -n 's/^host: //p')
lld="$(rustc --print sysroot)/lib/rustlib/$host/bin/rust-lld"

roots=(keel_ab_boot keel_strerror)
case "$set_" in
  misc+uboot) roots+=(keel_android_read keel_android_init keel_android_write
                      keel_uboot_read keel_uboot_write keel_uboot_current_copy keel_uboot_committed) ;;
  all) roots+=(keel_android_read keel_android_init keel_android_write
               keel_uboot_read keel_uboot_write keel_uboot_current_copy keel_uboot_committed
               keel_grubenv_read keel_grubenv_write keel_ab_set_active keel_ab_mark_good
               keel_ab_mark_bad keel_ab_slot keel_ab_next_boot keel_ab_is_bootable
               keel_uboot_from_vars keel_uboot_var keel_uboot_var_name) ;;
  *) echo "unknown set $set_" >&2; exit 2 ;;
esac
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args=()
for r in "${roots[@]}"; do args+=(-u "$r"); done
# On a hosted target memcmp/memcpy come from the C library, which this does not link:
# they are left undefined and named. On a bare-metal target compiler_builtins has them,
# and they are counted.
case "$target" in *-linux-*) args+=(--unresolved-symbols=ignore-all) ;; esac
"$lld" -flavor gnu --gc-sections -e keel_ab_boot "${args[@]}" -o "$out/lib.elf" "$lib"
undefined=$(nm -u "$out/lib.elf" | awk '{ print $2 }' | tr '\n' ' ')
[ -z "$undefined" ] || echo "from the C library (not counted): $undefined"
# What the tests prove for x86_64, checked again for this target's code generation.
syms=$(nm "$out/lib.elf")
grep -q ' keel_ab_boot$' <<<"$syms" || { echo "nm does not list keel_ab_boot: cannot check" >&2; exit 1; }
if grep -E 'panic|rust_begin_unwind|_Unwind_|__rust_alloc|__rust_dealloc|__rg_alloc|__rdl_alloc|alloc_error' <<<"$syms"; then
  echo "panic, unwinding or allocator code linked for $target" >&2
  exit 1
fi
text=$(size -A "$out/lib.elf" | awk '$1 == ".text" { print $2 }')
echo "keel-bootflags-ffi $set_ on $target: .text $text bytes ($(( (text + 1023) / 1024 )) KiB; goal 48 KiB)"
size -A "$out/lib.elf" | awk '$1 ~ /^\.(text|rodata|data|bss|eh_frame)/'
echo "no panic, unwinding or allocator symbol linked"
if [ "$text" -gt $((48 * 1024)) ]; then
  echo "over the 48 KiB goal" >&2
  exit 1
fi
