#!/bin/bash
# Lay out every file the deb and the rpm install, under one staging root, in its final place.
#
# usage: stage.sh SRC ROOT WHEELHOUSE BPF_OBJECT
# The systemd unit and the tmpfiles.d snippet are not staged here: their directories differ
# between Debian (/lib/systemd) and RPM distributions (/usr/lib/systemd), so each format adds them.
set -euo pipefail

src=$(realpath "$1")
root=$(realpath -m "$2")
wheelhouse=$3
bpf_object=$4
share=$root/usr/share/onaccess

[ -f "$bpf_object" ] || { echo "stage: BPF object $bpf_object missing (make bpf)" >&2; exit 1; }
rm -rf "$root"
mkdir -p "$root"
"$src/packaging/build-venv.sh" "$src" "$root" "$wheelhouse"

install -d -m0755 "$root/usr/bin" "$share" "$share/bpf" "$share/db" "$share/rules"
ln -s /opt/onaccess/bin/onaccess "$root/usr/bin/onaccess"
# Kept unstripped: the BTF in it is what lets one object load on every kernel (CO-RE).
install -m0644 "$bpf_object" "$share/bpf/verdict.bpf.o"
install -m0644 "$src"/db/*.sql "$share/db/"
(cd "$src/rules" && find . -type f -name '*.yar*' -print0 | sort -z |
    xargs -0 -r -I{} install -D -m0644 {} "$share/rules/{}")

install -D -m0644 "$src/packaging/onaccess.toml" "$root/etc/onaccess/onaccess.toml"
install -d -m0755 "$root/etc/onaccess/rules.d"
install -D -m0644 "$src/man/onaccess.8" "$root/usr/share/man/man8/onaccess.8"
