#!/usr/bin/env bash
# Sourced by the payload benches (in the repository's root, with $W a work directory):
# the payload example built for release as $PAYLOAD, and a signing key $W/k.pem.
#
# Keel re-creates squashfs's zstd blocks when it links the zstd that made them: Debian's
# (libzstd-dev and pkg-config installed), in a target directory of its own so the default
# build is not rebuilt each time.
if pkg-config --exists libzstd 2>/dev/null; then
  export ZSTD_SYS_USE_PKG_CONFIG=1 CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/system-zstd}
fi
cargo build -q --release --example payload
PAYLOAD=${CARGO_TARGET_DIR:-target}/release/examples/payload
openssl genpkey -algorithm ed25519 -out "$W/k.pem" 2>/dev/null
