#!/bin/bash
# Build bpf/verdict.bpf.o (CO-RE, runs unchanged on 6.1 .. 6.11+ kernels).
# Needs: clang (>= 14), libbpf-dev (bpf_helpers.h), linux-libc-dev (linux/bpf.h).
# Usage: bpf/build.sh [OUTPUT]   (default: bpf/verdict.bpf.o next to this script)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/verdict.bpf.o}
CLANG=${CLANG:-clang}
command -v "$CLANG" >/dev/null || { echo "build.sh: $CLANG not found (apt-get install clang)" >&2; exit 1; }
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "build.sh: bpf/bpf_helpers.h not found (apt-get install libbpf-dev)" >&2; exit 1; }
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
tmp=$(mktemp "${out}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
"$CLANG" -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_x86 \
	-I"$here" -I/usr/include/"$multiarch" \
	-c "$here/verdict.bpf.c" -o "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "built $out"
