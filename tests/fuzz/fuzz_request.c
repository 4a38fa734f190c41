/* libFuzzer target for the request path up to the backend queue: the RESP
 * request scanner (proxy/resp.c), then for every request scanned the command
 * table lookup, subcommand resolution, arity checks and key extraction
 * (proxy/command.c) in the order the router applies them, and the per-shard
 * split of multi-key commands over a fixed ring (ring/).
 *
 * Any byte stream must scan the same whole as when cut into reads at
 * fuzzer-chosen places, every call getting a fresh exact-size copy (so
 * AddressSanitizer sees a read past the end or a pointer kept across calls).
 * Arguments must lie inside their buffers; key positions inside argv (the
 * positions array is allocated with exactly argc entries, the capacity
 * command_keys is promised); a split command's keys and values must pair up;
 * error texts must be one line.
 *
 * Built and run by `make fuzz` / `make fuzz-smoke` (see tests/README.md).
 *
 * Input layout: byte 0 picks the limits (bit 0: tiny ones, to reach the
 * limit errors) and the key hash (bits 1-3); byte 1 seeds the read sizes;
 * the rest is the stream. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/command.h"
#include "proxy/resp.h"
#include "ring/hash.h"
#include "ring/ring.h"

/* Shards of the ring keys are split over: enough that a multi-key request
 * usually touches several. */
#define FUZZ_SHARDS 4

typedef struct outcome {
    uint64_t hash;   /* over every request scanned, its routing, and the final error */
    size_t messages; /* requests scanned */
    size_t consumed; /* bytes they covered */
    int failed;
} outcome;

static ring *shard_ring;

static void mix(uint64_t *h, const void *bytes, size_t n)
{
    const unsigned char *p = bytes;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ p[i]) * 0x100000001b3u;
}

static void mix_str(uint64_t *h, const char *s)
{
    mix(h, s, strlen(s) + 1);
}

static const resp_limits tiny_limits = {
    .max_bulk_len = 40,
    .max_args = 5,
    .max_inline_len = 30,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static const ring_shard_spec specs[FUZZ_SHARDS] = {{"s1", 1}, {"s2", 1}, {"s3", 1}, {"s4", 2}};
    char err[256];
    shard_ring = ring_build(specs, FUZZ_SHARDS, RING_DEFAULT, err, sizeof(err));
    if (shard_ring == NULL) {
        fprintf(stderr, "fuzz_request: ring_build: %s\n", err);
        abort();
    }
    command_init();
    return 0;
}

/* An error text for a client: non-empty, one line, NUL-terminated in size. */
static void check_error_text(const char *err, size_t size)
{
    size_t n = strnlen(err, size);
    if (n == 0 || n == size || strpbrk(err, "\r\n") != NULL)
        abort();
}

/* 1 when name (lower case, NUL-terminated) equals the argument, any case. */
static int same_name(const char *name, const resp_arg *arg)
{
    return strlen(name) == arg->len && strncasecmp(name, arg->ptr, arg->len) == 0;
}

/* What the router does with a multi-key command whose keys sit on several
 * shards: group the keys per shard (first-seen order) and count the
 * arguments each fragment carries. Mixes the grouping into the hash. */
static void split_model(const command *cmd, size_t argc, const resp_arg *argv,
                        const size_t *positions, size_t nkeys, hash_kind kind, uint64_t *h)
{
    size_t step = (size_t)cmd->split_step;
    if (step == 0 || cmd->merge == MERGE_NONE || nkeys == 0)
        abort();
    size_t args_per_shard[FUZZ_SHARDS] = {0};
    for (size_t i = 0; i < nkeys; i++) {
        /* The router copies argv[pos .. pos + step) for each key. */
        if (positions[i] + step > argc)
            abort();
        const resp_arg *key = &argv[positions[i]];
        uint32_t shard = ring_lookup(shard_ring, hash_key(kind, key->ptr, key->len, '{', '}'));
        if (shard >= FUZZ_SHARDS)
            abort();
        args_per_shard[shard] += step;
        mix(h, &shard, sizeof(shard));
    }
    size_t total = 0;
    for (size_t s = 0; s < FUZZ_SHARDS; s++)
        total += args_per_shard[s];
    /* Every key (with its values) goes to exactly one fragment. */
    if (total != nkeys * step)
        abort();
}

/* Routes one scanned request as proxy/router.c's route() does, without
 * sending anything; mixes the decision into the hash. */
static void route_model(size_t argc, const resp_arg *argv, hash_kind kind, uint64_t *h)
{
    const command *cmd = command_lookup(argv[0].ptr, argv[0].len);
    if (cmd == NULL) {
        mix_str(h, "unknown");
        return;
    }
    if (!same_name(cmd->name, &argv[0]))
        abort();
    mix_str(h, cmd->name);
    if (command_check_arity(cmd, argc) != 0) {
        mix_str(h, "arity");
        return;
    }
    if (cmd->nsubcommands > 0) {
        const command *sub = command_subcommand(cmd, argc, argv);
        if (sub == NULL) {
            mix_str(h, "unknown subcommand");
            return;
        }
        if (sub != cmd) {
            /* "container|sub": the part after '|' is argv[1]. */
            const char *bar = strchr(sub->name, '|');
            if (argc < 2 || bar == NULL || strncmp(sub->name, cmd->name, strlen(cmd->name)) != 0 ||
                !same_name(bar + 1, &argv[1]))
                abort();
        }
        if (command_check_arity(sub, argc) != 0) {
            mix_str(h, "subcommand arity");
            return;
        }
        cmd = sub;
        mix_str(h, cmd->name);
    }
    mix(h, &cmd->cls, sizeof(cmd->cls));

    /* command_keys is asked for every class (the router asks only for the
     * forwarded ones), for coverage of every key rule in the table. */
    size_t *positions = malloc((argc ? argc : 1) * sizeof(size_t));
    if (positions == NULL)
        abort();
    size_t nkeys = 12345;
    char err[200];
    err[0] = '\0';
    if (command_keys(cmd, argc, argv, positions, &nkeys, err, sizeof(err)) != 0) {
        check_error_text(err, sizeof(err));
        if (strncmp(err, "ERR ", 4) != 0)
            abort();
        mix_str(h, err);
        free(positions);
        return;
    }
    if (nkeys > argc || (cmd->keys == KEYS_NONE && nkeys != 0))
        abort();
    int same_shard = 1;
    uint32_t first_shard = 0;
    for (size_t i = 0; i < nkeys; i++) {
        /* argv[0] is the command name, never a key. */
        if (positions[i] == 0 || positions[i] >= argc)
            abort();
        const resp_arg *key = &argv[positions[i]];
        uint32_t shard = ring_lookup(shard_ring, hash_key(kind, key->ptr, key->len, '{', '}'));
        if (i == 0)
            first_shard = shard;
        same_shard &= shard == first_shard;
        mix(h, &positions[i], sizeof(positions[i]));
    }
    mix(h, &nkeys, sizeof(nkeys));
    if (cmd->cls == COMMAND_SPLIT && nkeys > 0 && !same_shard)
        split_model(cmd, argc, argv, positions, nkeys, kind, h);
    free(positions);
}

/* Scans one request from a fresh copy of in[0..n); returns its status. */
static resp_status step(resp_request *req, const uint8_t *in, size_t n, hash_kind kind, outcome *o,
                        size_t *used)
{
    char *copy = malloc(n ? n : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, in, n);

    resp_status st = resp_request_scan(req, copy, n);
    if (st == RESP_OK) {
        if (req->req_len == 0 || req->req_len > n)
            abort();
        *used = req->req_len;
        mix(&o->hash, &req->req_len, sizeof(req->req_len));
        mix(&o->hash, &req->is_inline, sizeof(req->is_inline));
        for (size_t i = 0; i < req->argc; i++) {
            const char *p = req->argv[i].ptr;
            size_t len = req->argv[i].len;
            const char *lo = req->is_inline ? req->scratch : copy;
            const char *hi = req->is_inline ? req->scratch + req->scratch_cap : copy + req->req_len;
            if (len > 0 && (p < lo || p + len > hi))
                abort();
            mix(&o->hash, &len, sizeof(len));
            mix(&o->hash, p, len);
        }
        if (req->argc > 0)
            route_model(req->argc, req->argv, kind, &o->hash);
    } else if (st == RESP_ERROR) {
        check_error_text(req->err, sizeof(req->err));
        mix(&o->hash, req->err, strlen(req->err));
    }
    free(copy);
    return st;
}

/* Feeds data[0..len) in reads whose sizes come from `seed` (0: whole). */
static outcome run(int tiny, hash_kind kind, const uint8_t *data, size_t len, unsigned seed)
{
    resp_request req;
    outcome o = {.hash = 0xcbf29ce484222325u};
    size_t start = 0, have = 0;
    uint32_t x = seed * 2654435761u + 1;

    resp_request_init(&req, tiny ? &tiny_limits : NULL);
    while (have < len && !o.failed) {
        if (seed == 0) {
            have = len;
        } else {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t piece = 1 + x % (x & 0x100 ? 64 : 4);
            have = have + piece < len ? have + piece : len;
        }
        for (;;) {
            size_t used = 0;
            resp_status st = step(&req, data + start, have - start, kind, &o, &used);
            if (st == RESP_OK) {
                start += used;
                o.messages++;
                /* As an idle client would between requests. */
                resp_request_shrink(&req);
                continue;
            }
            o.failed = st == RESP_ERROR;
            break;
        }
    }
    o.consumed = start;
    resp_request_free(&req);
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int tiny = data[0] & 1;
    hash_kind kind = (hash_kind)(((unsigned)data[0] >> 1) % HASH_KIND_COUNT);
    unsigned seed = data[1] ? data[1] : 1;

    outcome whole = run(tiny, kind, data + 2, size - 2, 0);
    outcome cut = run(tiny, kind, data + 2, size - 2, seed);
    if (whole.hash != cut.hash || whole.messages != cut.messages ||
        whole.consumed != cut.consumed || whole.failed != cut.failed) {
        fprintf(stderr, "whole and cut scans differ: %zu/%zu requests, %zu/%zu bytes\n",
                whole.messages, cut.messages, whole.consumed, cut.consumed);
        abort();
    }
    return 0;
}
