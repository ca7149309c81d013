#!/bin/bash
# Build dist/onaccess_VERSION_amd64.deb from the staging root (see stage.sh).
#
# usage: build-deb.sh SRC ROOT WORKDIR VERSION DIST
# A binary-only debhelper build in WORKDIR/onaccess-VERSION, whose debian/ directory is
# packaging/debian plus the unit, the tmpfiles.d snippet and a changelog for VERSION.
set -euo pipefail

src=$(realpath "$1")
root=$(realpath "$2")
work=$(realpath -m "$3")
version=$4
dist=$(realpath -m "$5")
tree=$work/onaccess-$version

rm -rf "$work"
mkdir -p "$tree" "$dist"
cp -a "$src/packaging/debian" "$tree/debian"
cp "$src/packaging/systemd/onaccess.service" "$tree/debian/onaccess.service"
cp "$src/packaging/tmpfiles/onaccess.conf" "$tree/debian/onaccess.tmpfiles"

# One entry for the version being built, dated from the last commit so that rebuilding a
# commit gives the same changelog (and the same SOURCE_DATE_EPOCH for file times).
epoch=$(git -C "$src" log -1 --format=%ct 2>/dev/null || true)
epoch=${epoch:-$(date +%s)}
maintainer=$(sed -n 's/^Maintainer: //p' "$tree/debian/control")
cat > "$tree/debian/changelog" <<CHANGELOG
onaccess ($version) bookworm; urgency=medium

  * Package built from the onaccess source tree, version $version.

 -- $maintainer  $(date -R -u -d "@$epoch")
CHANGELOG

cd "$tree"
ONACCESS_ROOT=$root SOURCE_DATE_EPOCH=$epoch \
    dpkg-buildpackage --build=binary --no-sign --no-pre-clean -j"$(nproc)"
mv "$work/onaccess_${version}_amd64.deb" "$dist/"
echo "built $dist/onaccess_${version}_amd64.deb ($(du -h "$dist/onaccess_${version}_amd64.deb" | cut -f1))"
