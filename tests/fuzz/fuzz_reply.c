/* libFuzzer target for the backend reply scanner (proxy/resp.c): any byte
 * stream must be cut into replies the same way whole as when cut into reads
 * at fuzzer-chosen places (every call getting a fresh exact-size copy, so
 * AddressSanitizer sees a read past the end or a pointer kept across calls),
 * and the same way as a separate recursive reading of the RESP2/RESP3
 * grammar below, written from the protocol description rather than from the
 * scanner's loop. Integer replies must parse with resp_reply_integer.
 * resp_reply_array_at and resp_reply_bulk_at, started at every offset of
 * the stream, must stay inside it and agree with the scanner on a bulk.
 *
 * Built and run by `make fuzz` / `make fuzz-smoke` (see tests/README.md).
 *
 * Input layout: byte 0 seeds the read sizes; the rest is the stream. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/resp.h"

/* The scanner's documented bounds: a length or count line holds at most this
 * many characters ("-9223372036854775808"), and aggregates nest at most
 * RESP_MAX_DEPTH deep. */
#define NUMBER_MAX 20

typedef struct outcome {
    uint64_t hash;   /* over every reply length and integer value */
    size_t messages; /* replies found */
    size_t consumed; /* bytes they covered */
    int failed;      /* the stream ended in a protocol error */
} outcome;

static void mix(uint64_t *h, const void *bytes, size_t n)
{
    const unsigned char *p = bytes;
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ p[i]) * 0x100000001b3u;
}

/* ---- the reference reading: whole buffer, recursive ---- */

typedef enum ref_status { REF_OK, REF_INCOMPLETE, REF_ERROR } ref_status;

/* Decimal as Redis's string2ll: optional '-', no '+', no leading zero (but
 * "0"), digits only, within int64. */
static int ref_int64(const char *p, size_t n, int64_t *out)
{
    if (n == 0 || n > NUMBER_MAX)
        return 0;
    int neg = p[0] == '-';
    size_t i = (size_t)neg;
    if (i == n)
        return 0;
    if (p[i] == '0')
        return n == 1 ? (*out = 0, 1) : 0;
    __int128 v = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    if (neg)
        v = -v;
    if (v < INT64_MIN || v > INT64_MAX)
        return 0;
    *out = (int64_t)v;
    return 1;
}

/* The "<type><number>\r\n" line at buf[*pos]. */
static ref_status ref_number(const char *buf, size_t len, size_t *pos, int64_t *value)
{
    size_t start = *pos + 1;
    for (size_t i = start; i < len; i++) {
        if (buf[i] == '\r') {
            if (i - start > NUMBER_MAX)
                return REF_ERROR;
            if (i + 1 == len)
                return REF_INCOMPLETE;
            if (buf[i + 1] != '\n' || !ref_int64(buf + start, i - start, value))
                return REF_ERROR;
            *pos = i + 2;
            return REF_OK;
        }
        if (i - start == NUMBER_MAX)
            return REF_ERROR; /* 21 characters and still no '\r' */
    }
    return REF_INCOMPLETE;
}

/* One element at buf[*pos] inside `depth` open aggregates. */
static ref_status ref_element(const char *buf, size_t len, size_t *pos, int depth)
{
    if (*pos >= len)
        return REF_INCOMPLETE;
    char type = buf[*pos];
    int64_t n = 0;
    ref_status st;
    switch (type) {
    case '+':
    case '-':
    case ':':
    case ',':
    case '(': {
        /* Up to the first '\r', which must be followed by '\n'. */
        const char *cr = *pos + 1 < len ? memchr(buf + *pos + 1, '\r', len - *pos - 1) : NULL;
        if (cr == NULL || (size_t)(cr - buf) + 1 == len)
            return REF_INCOMPLETE;
        if (cr[1] != '\n')
            return REF_ERROR;
        *pos = (size_t)(cr - buf) + 2;
        return REF_OK;
    }
    case '_':
        if (len - *pos < 3)
            return REF_INCOMPLETE;
        if (memcmp(buf + *pos + 1, "\r\n", 2) != 0)
            return REF_ERROR;
        *pos += 3;
        return REF_OK;
    case '#':
        if (len - *pos < 4)
            return REF_INCOMPLETE;
        if ((buf[*pos + 1] != 't' && buf[*pos + 1] != 'f') || memcmp(buf + *pos + 2, "\r\n", 2))
            return REF_ERROR;
        *pos += 4;
        return REF_OK;
    case '$':
    case '=':
    case '!':
        if ((st = ref_number(buf, len, pos, &n)) != REF_OK)
            return st;
        if (n == -1 && type == '$')
            return REF_OK; /* RESP2 null bulk */
        if (n < 0 || n > INT64_MAX - 2)
            return REF_ERROR;
        if ((uint64_t)(len - *pos) < (uint64_t)n + 2)
            return REF_INCOMPLETE;
        if (memcmp(buf + *pos + n, "\r\n", 2) != 0)
            return REF_ERROR;
        *pos += (size_t)n + 2;
        return REF_OK;
    case '*':
    case '~':
    case '>':
    case '%':
    case '|':
        if ((st = ref_number(buf, len, pos, &n)) != REF_OK)
            return st;
        if (n == -1 && type == '*')
            return REF_OK; /* RESP2 null array */
        if (n < 0 || n > INT64_MAX / 2 - 1)
            return REF_ERROR;
        /* A map entry is two elements; an attribute is a map followed by
         * the reply it annotates. */
        if (type == '%' || type == '|')
            n *= 2;
        if (type == '|')
            n += 1;
        if (n == 0)
            return REF_OK;
        if (depth == RESP_MAX_DEPTH)
            return REF_ERROR;
        /* Every element takes at least 3 bytes: the loop ends with the data. */
        for (int64_t i = 0; i < n; i++)
            if ((st = ref_element(buf, len, pos, depth + 1)) != REF_OK)
                return st;
        return REF_OK;
    default:
        return REF_ERROR;
    }
}

/* Cuts data[0..len) into replies with the reference reading. */
static outcome ref_run(const uint8_t *data, size_t len)
{
    outcome o = {.hash = 0xcbf29ce484222325u};
    const char *buf = (const char *)data;
    size_t start = 0;
    for (;;) {
        size_t pos = 0;
        ref_status st = ref_element(buf + start, len - start, &pos, 0);
        if (st != REF_OK) {
            o.failed = st == REF_ERROR;
            break;
        }
        mix(&o.hash, &pos, sizeof(pos));
        start += pos;
        o.messages++;
    }
    o.consumed = start;
    return o;
}

/* ---- the scanner, fed whole or in pieces ---- */

/* Scans one reply from a fresh copy of in[0..n); returns its status. */
static resp_status step(resp_reply *rep, const uint8_t *in, size_t n, outcome *o, size_t *used)
{
    char *copy = malloc(n ? n : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, in, n);
    size_t reply_len = 0;
    resp_status st = resp_reply_scan(rep, copy, n, &reply_len);
    if (st == RESP_OK) {
        if (reply_len == 0 || reply_len > n)
            abort();
        *used = reply_len;
        mix(&o->hash, &reply_len, sizeof(reply_len));
        /* An integer reply parses exactly when its text is a number. */
        int64_t v = 0, w = 0;
        int parsed = resp_reply_integer(copy, reply_len, &v) == 0;
        int number = copy[0] == ':' && reply_len >= 3 && ref_int64(copy + 1, reply_len - 3, &w);
        if (parsed != number || v != w)
            abort();
    } else if (st == RESP_ERROR) {
        size_t n_err = strnlen(rep->err, sizeof(rep->err));
        if (n_err == 0 || n_err == sizeof(rep->err))
            abort();
    }
    free(copy);
    return st;
}

/* Feeds data[0..len) in reads whose sizes come from `seed` (0: whole). */
static outcome run(const uint8_t *data, size_t len, unsigned seed)
{
    resp_reply rep;
    outcome o = {.hash = 0xcbf29ce484222325u};
    size_t start = 0, have = 0;
    uint32_t x = seed * 2654435761u + 1;

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
            resp_status st = step(&rep, data + start, have - start, &o, &used);
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
    return o;
}

static void compare(const char *what, const outcome *a, const outcome *b)
{
    if (a->hash != b->hash || a->messages != b->messages || a->consumed != b->consumed ||
        a->failed != b->failed) {
        fprintf(stderr, "%s differ: %zu/%zu replies, %zu/%zu bytes, failed %d/%d\n", what,
                a->messages, b->messages, a->consumed, b->consumed, a->failed, b->failed);
        abort();
    }
}

/* The readers inside a reply, from every offset of an exact-size copy: on
 * success they move forward and stay inside; a bulk they read is one whole
 * reply to the scanner too. */
static void read_inside(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    for (size_t from = 0; from < size; from++) {
        size_t pos = from, n = 0;
        int64_t count = 0;
        const char *ptr = NULL;
        if (resp_reply_array_at(copy, size, &pos, &count) == 0 &&
            (pos <= from || pos > size || count < 0))
            abort();
        pos = from;
        if (resp_reply_bulk_at(copy, size, &pos, &ptr, &n) == 0) {
            if (pos <= from || pos > size || ptr < copy || ptr + n + 2 != copy + pos)
                abort();
            resp_reply scan;
            resp_reply_init(&scan);
            size_t len = 0;
            if (resp_reply_scan(&scan, copy + from, pos - from, &len) != RESP_OK ||
                len != pos - from)
                abort();
        }
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned seed = data[0] ? data[0] : 1;
    outcome whole = run(data + 1, size - 1, 0);
    outcome cut = run(data + 1, size - 1, seed);
    compare("whole and cut scans", &whole, &cut);
    /* The reference hashes lengths only: compare against a whole scan's
     * lengths (the integer checks above add nothing to the hash). */
    outcome ref = ref_run(data + 1, size - 1);
    compare("scanner and reference reading", &whole, &ref);
    read_inside(data + 1, size - 1);
    return 0;
}
