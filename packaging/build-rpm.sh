#!/bin/bash
# Build dist/onaccess-VERSION-RELEASE.x86_64.rpm from the staging root (see stage.sh), with
# Debian's rpmbuild.
#
# usage: build-rpm.sh SRC ROOT WORKDIR VERSION RELEASE DIST
set -euo pipefail

src=$(realpath "$1")
root=$(realpath "$2")
work=$(realpath -m "$3")
version=$4
release=$5
dist=$(realpath -m "$6")
command -v rpmbuild >/dev/null || { echo "build-rpm: rpmbuild not found (apt-get install rpm)" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work"/{BUILD,BUILDROOT,RPMS,SPECS,SRPMS,SOURCES,tmp} "$dist"
epoch=$(git -C "$src" log -1 --format=%ct 2>/dev/null || true)
epoch=${epoch:-$(date +%s)}

SOURCE_DATE_EPOCH=$epoch rpmbuild -bb --quiet \
    --define "_topdir $work" \
    --define "_tmppath $work/tmp" \
    --define "_dbpath $work/db" \
    --define "onaccess_root $root" \
    --define "onaccess_src $src" \
    --define "onaccess_version $version" \
    --define "onaccess_release $release" \
    --define "onaccess_changelog_date $(LC_ALL=C date -u -d "@$epoch" '+%a %b %d %Y')" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    "$src/packaging/rpm/onaccess.spec"
rpm=onaccess-$version-$release.x86_64.rpm
mv "$work/RPMS/x86_64/$rpm" "$dist/"
echo "built $dist/$rpm ($(du -h "$dist/$rpm" | cut -f1))"
