# podscope — every set-up step is here, idempotent, for a fresh Debian 12 / Ubuntu host as root.
#   make run    install what is missing, build, start the agent on this host
#   make test   install what is missing, build, run lint and the whole test suite
SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
BUILD := build
BPF_DIR := src/podscope/bpf
CLANG ?= $(shell command -v clang-16 || command -v clang-19 || command -v clang)
LISTEN ?= 127.0.0.1:9464
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

# Debian packages and the command each one provides (checked before apt-get runs at all).
APT_PKGS := clang-16:clang-16 libbpf-dev:/usr/include/bpf/libbpf.h bpftool:bpftool make:make \
	python3-venv:/usr/share/doc/python3-venv iproute2:ip iptables:iptables \
	nginx-light:nginx wrk:wrk apache2-utils:ab procps:ps nghttp2-client:h2load \
	prometheus:prometheus prometheus-pushgateway:prometheus-pushgateway chromium:chromium \
	linux-perf:perf qemu-system-x86:qemu-system-x86_64 busybox-static:busybox kmod:depmod \
	podman:podman containerd:containerd runc:runc catatonit:catatonit golang-go:go \
	golang-github-masterminds-sprig-dev:/usr/share/gocode/src/github.com/Masterminds/sprig \
	golang-gopkg-yaml.v2-dev:/usr/share/gocode/src/gopkg.in/yaml.v2 \
	nodejs:node libssl-dev:/usr/include/openssl/ssl.h openssl:openssl curl:curl gcc:gcc \
	golang-google-grpc-dev:/usr/share/gocode/src/google.golang.org/grpc python3-dev:python3-config \
	redis-server:redis-server redis-tools:redis-benchmark memcached:memcached \
	libmemcached-tools:memcaslap postgresql:/usr/lib/postgresql/15/bin/postgres \
	mariadb-server:mariadbd mariadb-client:mariadb sysbench:sysbench \
	nats-server:/usr/sbin/nats-server fio:fio stress-ng:stress-ng
BPF_SRCS := $(wildcard $(BPF_DIR)/*.bpf.c)
BPF_OBJS := $(BPF_SRCS:.bpf.c=.bpf.o)
BPF_HDRS := $(wildcard $(BPF_DIR)/*.h $(BPF_DIR)/include/*.h)
# podscope._fast: the per-event paths in compiled code (src/podscope/native, built in place)
FAST := src/podscope/_fast$(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
FAST_SRCS := $(wildcard src/podscope/native/*.c src/podscope/native/*.h)

.PHONY: all run test lint format deps bpf clean bench kernels soak fuzz fuzz-native
all: $(VENV)/.installed bpf $(FAST)

$(FAST): $(FAST_SRCS) $(BPF_HDRS) setup.py $(VENV)/.installed
	$(VENV)/bin/python setup.py -q build_ext --force --inplace --build-temp $(BUILD)/native

run: all
	$(VENV)/bin/podscope run --listen $(LISTEN)

test: all
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -p no:cacheprovider tests
	$(VENV)/bin/python -m tests.matrix.run --kernels 6.1,5.10

# The whole kernel matrix (5.10, 6.1, 6.12 and this host) with a part of the kernel tests, and
# docs/kernels.md written from it. Under software emulation, two kernels at once: about an hour
# per kernel (the subset has 22 tests, each starting an agent: 70-110 s per start).
kernels: all
	$(VENV)/bin/python -m tests.matrix.run --subset --jobs 2 --doc docs/kernels.md

lint: all
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: all
	$(VENV)/bin/python bench/tcp_overhead.py
	$(VENV)/bin/python bench/http_overhead.py
	$(VENV)/bin/python bench/metadata_scale.py
	$(VENV)/bin/python bench/sched_overhead.py

# 30 minutes of pod churn, steady traffic and two API outages: the agent's RSS, fds, threads,
# series and scrape time sampled each minute (bench/RESULTS.md, "Soak").
soak: all
	$(VENV)/bin/python bench/soak.py --minutes $(or $(MINUTES),30)

# Both HTTP/1 paths fuzzed for MINUTES (5) each: the stream parser (escaping exceptions, hangs,
# split invariance), then the in-kernel path and the collector over real loopback sockets (agent
# health, agreement with the parser).
fuzz: all
	$(VENV)/bin/python bench/fuzz_http1.py --minutes $(or $(MINUTES),5)
	$(VENV)/bin/python bench/fuzz_http1_kernel.py --minutes $(or $(MINUTES),5)

# podscope._fast built with AddressSanitizer and UBSan, fuzzed through its Python API for
# MINUTES (5): any memory error or undefined behaviour aborts with the sanitizer's report.
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
fuzz-native: all
	rm -rf $(BUILD)/asan
	CFLAGS="$(SANITIZE) -g" LDFLAGS="$(SANITIZE)" $(VENV)/bin/python setup.py -q build_ext \
	  --build-lib $(BUILD)/asan --build-temp $(BUILD)/asan/tmp
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  $(VENV)/bin/python bench/fuzz_native.py --minutes $(or $(MINUTES),5) \
	  --module $$(ls $(BUILD)/asan/podscope/_fast*.so)

deps: $(BUILD)/.deps

$(BUILD)/.deps: Makefile
	@missing=""; for pair in $(APT_PKGS); do pkg=$${pair%%:*}; probe=$${pair#*:}; \
	  if [[ $$probe == /* ]]; then [ -e "$$probe" ] || missing="$$missing $$pkg"; \
	  else command -v $$probe >/dev/null 2>&1 || missing="$$missing $$pkg"; fi; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "podscope set-up needs root to install:$$missing" >&2; exit 2; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; fi
	@mkdir -p $(BUILD) && touch $@

$(VENV)/.installed: pyproject.toml $(BUILD)/.deps
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

$(BUILD)/vmlinux.h: | $(BUILD)/.deps
	@mkdir -p $(BUILD)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

bpf: $(BPF_OBJS)

$(BPF_DIR)/%.bpf.o: $(BPF_DIR)/%.bpf.c $(BPF_HDRS) $(BUILD)/vmlinux.h
	$(CLANG) -target bpf -D__TARGET_ARCH_$(ARCH) -g -O2 -Wall -Werror -mcpu=v3 \
	  -I$(BUILD) -I$(BPF_DIR) -I$(BPF_DIR)/include -c $< -o $@

clean:
	rm -rf $(BUILD) $(BPF_OBJS) $(FAST)
