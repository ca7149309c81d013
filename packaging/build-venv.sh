#!/bin/bash
# Build the self-contained virtualenv that the deb and the rpm ship as /opt/onaccess.
#
# usage: build-venv.sh SRC ROOT WHEELHOUSE
#   SRC         a clean export of the source tree (pip builds the onaccess wheel from it)
#   ROOT        staging root: the venv is built at ROOT/opt/onaccess, then made to point at
#               /opt/onaccess so it runs once the package manager puts it there
#   WHEELHOUSE  cache for wheels built here from source (yara-python), kept between builds
#
# Everything is fetched from PyPI now, at build time: installing the package needs no network.
set -euo pipefail

src=$(realpath "$1")
root=$(realpath -m "$2")
wheelhouse=$(realpath -m "$3")
python=${PYTHON:-/usr/bin/python3.11}
prefix=/opt/onaccess
venv=$root$prefix
constraints=$src/packaging/constraints.txt

die() { echo "build-venv: $*" >&2; exit 1; }
[ -x "$python" ] || die "$python not found (apt-get install python3.11-venv)"
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' ||
    die "$python is not Python 3.11: the venv ABI must match the declared python3 (>= 3.11, << 3.12)"
pin() { grep -i "^$1==" "$constraints" || die "$1 is not pinned in $constraints"; }

rm -rf "$venv"
mkdir -p "$(dirname "$venv")" "$wheelhouse"
# /usr/bin/python3.11 rather than /usr/bin/python3: the venv's compiled modules are cp311, so it
# must keep running 3.11 even where python3 points elsewhere (an RPM distro with python3.11 added).
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input -q)

# yara-python from source against the distribution's libcrypto: PyPI's manylinux wheel carries its
# own OpenSSL 1.1 (end of life) which would then parse attacker-supplied PE signatures as root
# with no security updates. Built once, then reused from the wheelhouse.
yara=$(pin yara-python)
if ! ls "$wheelhouse"/yara_python-"${yara#*==}"-cp311-*.whl >/dev/null 2>&1; then
    echo "build-venv: compiling $yara against the system libcrypto (once)" >&2
    "${pip[@]}" wheel --use-pep517 --no-deps --no-binary yara-python -w "$wheelhouse" "$yara"
fi
"${pip[@]}" install --no-compile --no-index --no-deps --find-links "$wheelhouse" "$yara"

# The application and the rest of its dependencies; versions pinned by the constraints file so
# two builds of one commit ship the same code.
"${pip[@]}" install --no-compile -c "$constraints" "$src"
"${pip[@]}" check

# What a running scanner does not need: the installers, the activate scripts.
"${pip[@]}" uninstall -y pip setuptools
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
# Console scripts of the dependencies (sqlite-utils, tabulate): the scanner only imports them.
for f in "$venv"/bin/*; do
    case ${f##*/} in onaccess|python|python3|python3.11) ;; *) rm -f "$f" ;; esac
done
rmdir "$venv/include/python3.11" "$venv/include"
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +

# Relocate: scripts and pyvenv.cfg name the staging path; make them name /opt/onaccess.
for f in "$venv"/bin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if head -n1 "$f" | grep -q "^#!$venv/bin/"; then
        sed -i "1s|^#!$venv/bin/|#!$prefix/bin/|" "$f"
    fi
done
sed -i "s|^command = .*|command = $python -m venv $prefix|" "$venv/pyvenv.cfg"
# direct_url.json records the build directory the onaccess wheel came from: meaningless on the
# target, and it would leak the build path into the package.
for d in "$venv"/lib/python3.11/site-packages/onaccess-*.dist-info; do
    rm -f "$d/direct_url.json"
    sed -i '/direct_url\.json,/d' "$d/RECORD"
done

if leaks=$(grep -rl --fixed-strings "$root" "$venv"); then
    die "staging path $root still named in: $leaks"
fi

# Debug symbols of the extension modules are of no use on the target (and triple their size).
find "$venv" -type f -name '*.so' -exec strip --strip-unneeded {} +

# Package-manager friendly permissions: no group/world write, shared objects not executable.
chmod -R u=rwX,go=rX "$venv"
find "$venv" -type f -name '*.so*' -exec chmod 0644 {} +
find "$venv/bin" -type f -exec chmod 0755 {} +
echo "build-venv: $(du -sh "$venv" | cut -f1) in $venv" >&2
