# onaccess build entry points.
#   make bpf    compile bpf/verdict.bpf.o
#   make deb    dist/onaccess_$(VERSION)_amd64.deb
#   make rpm    dist/onaccess-$(VERSION)-1.x86_64.rpm
#   make clean  remove $(BUILD) and dist/
# VERSION defaults to pyproject.toml's; override it (make deb VERSION=0.1.1) to build an upgrade.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:

VERSION ?= $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n1)
RPM_RELEASE ?= 1
PYTHON ?= /usr/bin/python3.11
BUILD ?= build/pkg
DIST ?= dist
BPF_OBJECT ?= bpf/verdict.bpf.o

ROOT := $(BUILD)/root
DEB := $(DIST)/onaccess_$(VERSION)_amd64.deb
RPM := $(DIST)/onaccess-$(VERSION)-$(RPM_RELEASE).x86_64.rpm
# Everything that ends up in the packages: the staging root is rebuilt when one of these changes.
PKG_INPUTS := pyproject.toml $(shell find scanner rules db man packaging -type f \
	-not -path '*/__pycache__/*' -not -name '*.pyc' 2>/dev/null)

.PHONY: all bpf deb rpm packages clean
all: bpf

bpf: $(BPF_OBJECT)

# The BPF helper's own build script wins; plain clang is the fallback.
bpf/verdict.bpf.o: $(wildcard bpf/*.c bpf/*.h bpf/build.sh bpf/Makefile)
	if [ -f bpf/build.sh ]; then bash bpf/build.sh; \
	elif [ -f bpf/Makefile ]; then $(MAKE) -C bpf; \
	else clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -Ibpf -c bpf/verdict.bpf.c -o $@; fi
	test -s $@

packages: deb rpm
deb: $(DEB)
rpm: $(RPM)

# A clean export of the tree, so that build leftovers in the work tree never reach a package.
$(BUILD)/src.stamp: $(PKG_INPUTS)
	packaging/export-src.sh $(BUILD)/src
	touch $@

$(BUILD)/root.stamp: $(BUILD)/src.stamp $(BPF_OBJECT)
	PYTHON=$(PYTHON) packaging/stage.sh $(BUILD)/src $(ROOT) $(BUILD)/wheelhouse $(BPF_OBJECT)
	touch $@

$(DEB): $(BUILD)/root.stamp
	packaging/build-deb.sh $(BUILD)/src $(ROOT) $(BUILD)/deb $(VERSION) $(DIST)

$(RPM): $(BUILD)/root.stamp
	packaging/build-rpm.sh $(BUILD)/src $(ROOT) $(BUILD)/rpm $(VERSION) $(RPM_RELEASE) $(DIST)

clean:
	rm -rf $(BUILD) $(DIST)
