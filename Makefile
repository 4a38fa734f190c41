# ringproxy build. `make` builds ./ringproxy; `make test` runs every test;
# `make asan` runs the suite under AddressSanitizer + UBSan; `make run` starts
# three local shards and the proxy in the foreground.

CC       ?= cc
PKGS     := libevent hiredis inih
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

.PHONY: all test unit integration asan clean run bench format check-format deps
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

test: all $(UNIT_BINS) $(INTEG_BINS) $(BENCH_BINS)
	@$(MAKE) --no-print-directory unit
	@$(MAKE) --no-print-directory integration

asan:
	@$(MAKE) --no-print-directory SAN=1 test

bench: all $(BENCH_BINS)
	bench/run.sh

# deps first, in its own step: the flags above come from pkg-config, which
# needs the packages installed before this Makefile is read again.
run: deps
	@$(MAKE) --no-print-directory all
	tests/run-local.sh proxy.ini

deps:
	@tests/install-deps.sh

format:
	clang-format -i $(wildcard */*.c */*.h tests/*/*.c tests/*/*.h)

check-format:
	clang-format --dry-run --Werror $(wildcard */*.c */*.h tests/*/*.c tests/*/*.h)

clean:
	rm -rf build build-asan ringproxy

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
