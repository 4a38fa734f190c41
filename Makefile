# ringproxy build. `make` builds ./ringproxy; `make test` runs every test;
# `make asan` runs the suite under AddressSanitizer + UBSan; `make run` starts
# three local shards and the proxy in the foreground.

CC       ?= cc
PKGS     := libevent libevent_openssl hiredis inih openssl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
TEST_LIBS  := $(shell pkg-config --libs cmocka hiredis 2>/dev/null)

OPT      ?= -O2
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Werror -Wshadow \
              -Wno-missing-field-initializers -I. $(PKG_CFLAGS)
SAN_FLAGS  = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer

BUILD    ?= build
ifeq ($(SAN),1)
BUILD    := build-asan
OPT      := -O1
CFLAGS_BASE += $(SAN_FLAGS)
LDFLAGS  += $(SAN_FLAGS)
endif
CFLAGS   := $(CFLAGS_BASE) $(EXTRA_CFLAGS)

RING_SRC   := $(wildcard ring/*.c)
CONFIG_SRC := $(wildcard config/*.c)
PROXY_SRC  := $(filter-out proxy/main.c,$(wildcard proxy/*.c))
UNIT_SRC   := $(wildcard tests/unit/test_*.c)
INTEG_SRC  := $(wildcard tests/integration/test_*.c)
INTEG_LIB  := $(filter-out $(INTEG_SRC),$(wildcard tests/integration/*.c))
BENCH_SRC  := $(wildcard bench/*_bench.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))

LIBRING   := $(BUILD)/libring.a
LIBCONFIG := $(BUILD)/libconfig.a
LIBPROXY  := $(BUILD)/libproxy.a
LIBS_ALL  := $(LIBPROXY) $(LIBCONFIG) $(LIBRING)

UNIT_BINS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
INTEG_BINS := $(patsubst tests/integration/%.c,$(BUILD)/tests/%,$(INTEG_SRC))
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

PROXY_BIN := $(BUILD)/ringproxy

.PHONY: all test test-run test-clients unit integration asan clean run bench bench-instr format check-format deps check-layers
# Keep the integration helpers' objects between runs.
.SECONDARY:
.DEFAULT_GOAL := all

all: ringproxy

ringproxy: $(PROXY_BIN)
ifeq ($(SAN),1)
	@true
else
	cp $(PROXY_BIN) ringproxy.tmp && mv -f ringproxy.tmp ringproxy
endif

$(PROXY_BIN): $(call obj,proxy/main.c) $(LIBS_ALL)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS) -lm

$(BUILD)/%.o: %.c $(wildcard */*.h) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -c -o $@ $<

$(LIBRING): $(call obj,$(RING_SRC))
	@mkdir -p $(dir $@)
	rm -f $@; ar rcs $@ $^
$(LIBCONFIG): $(call obj,$(CONFIG_SRC))
	@mkdir -p $(dir $@)
	rm -f $@; ar rcs $@ $^
$(LIBPROXY): $(call obj,$(PROXY_SRC))
	@mkdir -p $(dir $@)
	rm -f $@; ar rcs $@ $^

# Unit tests link the module archives: the linker pulls in only the objects a
# test uses, so each test carries only what it tests.
$(BUILD)/tests/test_%: tests/unit/test_%.c $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIBS_ALL) $(TEST_LIBS) $(PKG_LIBS) -lm

$(BUILD)/tests/test_%: tests/integration/test_%.c $(call obj,$(INTEG_LIB)) $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -Itests/integration -o $@ $< $(call obj,$(INTEG_LIB)) $(LIBS_ALL) $(TEST_LIBS) $(PKG_LIBS) -lm

$(BUILD)/bench/%: bench/%.c $(LIBS_ALL)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIBS_ALL) $(PKG_LIBS) -lm

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: $(INTEG_BINS) ringproxy
	@set -e; for t in $(INTEG_BINS); do echo "== $$t"; RINGPROXY_BIN=$(abspath $(PROXY_BIN)) $$t; done

# make test installs what it needs first, as make run does (either may come
# first on a fresh machine), then builds with the flags pkg-config now finds.
test: deps
	@$(MAKE) --no-print-directory test-run
	@$(MAKE) --no-print-directory test-clients

# make test-clients: ioredis 5, node-redis 4 and node-redis 5 (RESP3) from
# the npm registry, run through a proxy and shards of their own
# (tests/clients/run.sh). Fails, saying why, when node, npm or the registry
# is missing: it is never skipped.
test-clients: all
	@tests/install-deps.sh clients
	tests/clients/run.sh $(abspath $(PROXY_BIN))

test-run: all $(UNIT_BINS) $(INTEG_BINS) $(BENCH_BINS)
	@tests/check-layers.sh
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

asan: deps
	@$(MAKE) --no-print-directory SAN=1 test-run

# make bench: ringproxy vs twemproxy vs direct Redis (bench/README.md), ~6 min;
# QUICK=1 for a ~1 min smoke run; BENCH_ARGS passes options to bench/run.sh.
bench: all $(BENCH_BINS)
	@tests/install-deps.sh bench
	bench/run.sh $(if $(QUICK),--quick) $(BENCH_ARGS)

# make bench-instr: user-space instructions per request under callgrind, to
# compare commits; INSTR_BASE=bench/results/<dir> prints the ratio to it.
bench-instr: all
	@tests/install-deps.sh bench
	bench/instr.sh --out bench/results/$$(date +%F-%H%M)-instr $(if $(INSTR_BASE),--compare $(INSTR_BASE)) $(INSTR_ARGS)

# deps first, in its own step: the flags above come from pkg-config, which
# needs the packages installed before this Makefile is read again.
run: deps
	@$(MAKE) --no-print-directory all
	tests/run-local.sh proxy.ini

deps:
	@tests/install-deps.sh

format:
	clang-format -i $(wildcard */*.c */*.h tests/*/*.c tests/*/*.h)

# No two modules of proxy/ may include each other, directly or not.
check-layers:
	@tests/check-layers.sh

check-format:
	clang-format --dry-run --Werror $(wildcard */*.c */*.h tests/*/*.c tests/*/*.h)

clean:
	rm -rf build build-asan build-fuzz build-valgrind ringproxy

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- fuzzing: libFuzzer targets in tests/fuzz/ (needs clang) ----
# `make fuzz` builds each target into build-fuzz/ and runs it for
# FUZZ_SECONDS; `make fuzz-smoke` (CI) runs each for FUZZ_SMOKE_SECONDS.
# New inputs are kept in build-fuzz/corpus/<target>; the seeds in
# tests/fuzz/corpus/<target> are read, never written. A crash, leak, UBSan
# report or input slower than 10 s fails the run and leaves the input in
# build-fuzz/<target>-crash-*; the full output is in build-fuzz/<target>.log.
FUZZ_CC            ?= clang
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_FLAGS         ?=
FUZZ_CFLAGS  = -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror -Wshadow \
               -Wno-missing-field-initializers -I. -fno-omit-frame-pointer \
               -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZ_TARGETS := fuzz_request fuzz_reply fuzz_config
FUZZ_DEPS    := $(wildcard */*.h) proxy/command_table.inc Makefile

build-fuzz/fuzz_request: tests/fuzz/fuzz_request.c proxy/resp.c proxy/command.c $(RING_SRC) $(FUZZ_DEPS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^)
build-fuzz/fuzz_reply: tests/fuzz/fuzz_reply.c proxy/resp.c $(FUZZ_DEPS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^)
build-fuzz/fuzz_config: tests/fuzz/fuzz_config.c $(CONFIG_SRC) $(RING_SRC) $(FUZZ_DEPS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $(filter %.c,$^) $(shell pkg-config --libs inih libcrypto 2>/dev/null)

.PHONY: fuzz fuzz-smoke
fuzz: $(addprefix build-fuzz/,$(FUZZ_TARGETS))
	@set -e; for t in $(FUZZ_TARGETS); do \
	    mkdir -p build-fuzz/corpus/$$t; \
	    echo "== $$t, $(FUZZ_SECONDS) s"; \
	    if ! UBSAN_OPTIONS=print_stacktrace=1 build-fuzz/$$t -max_total_time=$(FUZZ_SECONDS) \
	        -timeout=10 -print_final_stats=1 -dict=tests/fuzz/$${t#fuzz_}.dict \
	        -artifact_prefix=build-fuzz/$$t- $(FUZZ_FLAGS) \
	        build-fuzz/corpus/$$t tests/fuzz/corpus/$$t >build-fuzz/$$t.log 2>&1; then \
	        tail -n 60 build-fuzz/$$t.log; echo "$$t: FAILED (build-fuzz/$$t.log)"; exit 1; \
	    fi; \
	    grep -E '^#[0-9]+.*DONE|number_of_executed_units' build-fuzz/$$t.log || true; \
	done

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS)

# ---- valgrind: the integration suite with the proxy under memcheck ----
# Each ringproxy the tests start runs under valgrind (tests/valgrind-ringproxy.sh,
# logs in build-valgrind/); the harness stretches its timeouts and the tests
# their time bounds by VALGRIND_TIMEOUT_SCALE. Fails on any test failure and
# on any memcheck error or definite/indirect leak in any proxy process.
VALGRIND_TIMEOUT_SCALE ?= 10
VALGRIND_TESTS ?= $(INTEG_BINS)

.PHONY: valgrind
valgrind: all $(INTEG_BINS)
	@rm -rf build-valgrind; mkdir -p build-valgrind
	@status=0; for t in $(VALGRIND_TESTS); do echo "== $$t (ringproxy under valgrind)"; \
	    RINGPROXY_BIN=$(abspath tests/valgrind-ringproxy.sh) \
	    VALGRIND_RINGPROXY=$(abspath $(PROXY_BIN)) VALGRIND_LOG_DIR=$(abspath build-valgrind) \
	    HARNESS_TIMEOUT_SCALE=$(VALGRIND_TIMEOUT_SCALE) RINGPROXY_RANDOM_SEEDS=1 \
	    RINGPROXY_RANDOM_STEPS=6 $$t || status=1; done; \
	tests/valgrind-ringproxy.sh --summary build-valgrind || status=1; exit $$status
