#!/usr/bin/env bash
# Builds dstate.bpf.o from dstate.bpf.c, reproducibly: `make bpf` runs it to regenerate the
# committed object, and a test (crates/collector/src/bpf/build_test.rs) runs it into a temp file
# and compares the bytes with the committed ones. Usage: build.sh [OUT] (default: dstate.bpf.o
# here). Needs Debian's clang and libbpf-dev (bpf/bpf_helpers.h) and llvm (llvm-strip).
#
# Why the bytes only depend on the source and the compiler:
# - it compiles from this directory with a relative input path, so the only file name in the
#   object (BTF line info names the source file) is "dstate.bpf.c";
# - -fdebug-prefix-map maps the build directory to "." for the DWARF that -g produces, and
#   `llvm-strip -g` then drops all DWARF (the object keeps .BTF and .BTF.ext, which the loader
#   needs: map definitions, and line info for the verifier's messages);
# - no timestamps, build ids or host names are emitted for the BPF target.
# The compiler version is recorded beside the object (dstate.bpf.o.clang): another clang may
# emit other (equally valid) bytes, and the test says so instead of failing obscurely.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-dstate.bpf.o}"
multiarch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
clang -O2 -g -target bpf -mcpu=v3 \
    -fdebug-prefix-map="$PWD"=. \
    -I"/usr/include/$multiarch" \
    -c dstate.bpf.c -o "$tmp/dstate.bpf.o"
llvm-strip -g "$tmp/dstate.bpf.o"
cp "$tmp/dstate.bpf.o" "$out"
if [ "$#" -eq 0 ]; then
    clang --version | head -n 1 > dstate.bpf.o.clang
fi
