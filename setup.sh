#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine, as root:
#   bash setup.sh run    set everything up, then run the daemon on its embedded defaults
#   bash setup.sh test   set everything up, then run the whole test suite (host + VM kernel tests)
# Set-up is idempotent: apt packages, .venv with the project installed, the BPF object.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
REPO=$PWD

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc make            # the venv and packages that compile
  clang llvm libbpf-dev libbpf1 bpftool                 # BPF object build, loader, inspection
  qemu-system-x86 busybox-static kmod                   # the BPF-LSM VM for kernel tests
  yara util-linux e2fsprogs xfsprogs                    # test fixtures: loop/tmpfs mounts
  debootstrap dpkg-dev fakeroot rpm lintian systemd     # packaging and its tests
  debhelper rpmlint systemd-container libssl-dev python3.11-venv python3.11-dev
  linux-libc-dev groff-base
  file binutils
)

log() { printf '== %s\n' "$*" >&2; }

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
  fi
}

install_venv() {
  if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    /usr/bin/python3 -m venv .venv
  fi
  local stamp=.venv/.onaccess-installed
  if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    log "pip: installing onaccess and its test dependencies"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
  fi
}

build_bpf() {
  log "building bpf/verdict.bpf.o"
  bash bpf/build.sh
}

setup() {
  [[ $(id -u) == 0 ]] || { echo "setup.sh: run as root" >&2; exit 2; }
  install_apt
  install_venv
  build_bpf
}

case "${1:-}" in
  run)
    setup
    shift
    exec .venv/bin/onaccess run "$@"
    ;;
  test)
    setup
    shift
    log "host tests"
    rc=0
    .venv/bin/python -m pytest -m "not kernel" "$@" || rc=$?
    log "kernel tests in the BPF-LSM VM (Debian 6.1 kernel)"
    bash tests/vm/run || rc=$((rc ? rc : $?))
    log "BPF object on the 6.11+ struct inode layout (Debian 6.12 backport kernel)"
    ONACCESS_VM_KERNEL=6.12 bash tests/vm/run -k test_bpf_kernel || rc=$((rc ? rc : $?))
    exit "$rc"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: bash setup.sh run [onaccess run options] | test [pytest options] | setup" >&2
    exit 2
    ;;
esac
