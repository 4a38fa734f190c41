/* libFuzzer target for proxy/resp.c: any byte stream must scan the same
 * whole as when cut into reads at fuzzer-chosen places, with every call given
 * a fresh exact-size copy (so AddressSanitizer sees any read past the end or
 * pointer kept across calls), and results must stay inside their buffers.
 *
 * Not built by `make`. Run from the repository root:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
 *         -I. tests/fuzz/fuzz_resp.c proxy/resp.c -o build/fuzz_resp
 *   mkdir -p build/fuzz-corpus && build/fuzz_resp -max_total_time=300 build/fuzz-corpus
 *
 * Input layout: byte 0 picks the scanner (bit 0: replies) and the limits
 * (bit 1: tiny ones, to reach the limit errors); byte 1 seeds the read sizes;
 * the rest is the stream. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/resp.h"

typedef struct outcome {
    uint64_t hash;   /* over every message scanned and the final error */
    size_t messages; /* messages scanned */
    size_t consumed; /* bytes they covered */
    int failed;
} outcome;

static void mix(uint64_t *h, const void *bytes, size_t n)
{
    const unsigned char *p = bytes;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ p[i]) * 0x100000001b3u;
}

static const resp_limits tiny_limits = {
    .max_bulk_len = 40,
    .max_args = 5,
    .max_inline_len = 30,
};

/* Scans one message from a fresh copy of in[0..n); returns its status. */
static resp_status step(int replies, resp_request *req, resp_reply *rep, const uint8_t *in,
                        size_t n, outcome *o, size_t *used)
{
    char *copy = malloc(n ? n : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, in, n);

    resp_status st;
    if (replies) {
        size_t reply_len = 0;
        st = resp_reply_scan(rep, copy, n, &reply_len);
        if (st == RESP_OK) {
            if (reply_len == 0 || reply_len > n)
                abort();
            *used = reply_len;
            mix(&o->hash, &reply_len, sizeof(reply_len));
        } else if (st == RESP_ERROR) {
            mix(&o->hash, rep->err, strlen(rep->err));
        }
    } else {
        st = resp_request_scan(req, copy, n);
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
                const char *hi =
                    req->is_inline ? req->scratch + req->scratch_cap : copy + req->req_len;
                if (len > 0 && (p < lo || p + len > hi))
                    abort();
                mix(&o->hash, &len, sizeof(len));
                mix(&o->hash, p, len);
            }
        } else if (st == RESP_ERROR) {
            mix(&o->hash, req->err, strlen(req->err));
        }
    }
    free(copy);
    return st;
}

/* Feeds data[0..len) in reads whose sizes come from `seed` (0: whole). */
static outcome run(int replies, int tiny, const uint8_t *data, size_t len, unsigned seed)
{
    resp_request req;
    resp_reply rep;
    outcome o = {.hash = 0xcbf29ce484222325u};
    size_t start = 0, have = 0;
    uint32_t x = seed * 2654435761u + 1;

    resp_request_init(&req, tiny ? &tiny_limits : NULL);
    resp_reply_init(&rep);
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
            resp_status st = step(replies, &req, &rep, data + start, have - start, &o, &used);
            if (st == RESP_OK) {
                start += used;
                o.messages++;
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
    int replies = data[0] & 1;
    int tiny = (data[0] >> 1) & 1;
    unsigned seed = data[1] ? data[1] : 1;

    outcome whole = run(replies, tiny, data + 2, size - 2, 0);
    outcome cut = run(replies, tiny, data + 2, size - 2, seed);
    if (whole.hash != cut.hash || whole.messages != cut.messages ||
        whole.consumed != cut.consumed || whole.failed != cut.failed) {
        fprintf(stderr, "whole and cut scans differ: %zu/%zu messages, %zu/%zu bytes\n",
                whole.messages, cut.messages, whole.consumed, cut.consumed);
        abort();
    }
    return 0;
}
