/* The slow log: requests whose time in the proxy (from the loop iteration
 * that dispatched them to the one their reply was known in) reached
 * slowlog_slower_than µs, kept as Redis keeps its own, with the shard that
 * answered and the time it took; SLOWLOG GET, LEN, RESET and HELP. */
#ifndef PROXY_SLOWLOG_H
#define PROXY_SLOWLOG_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "proxy/buf.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* Redis's limits on what an entry shows (SLOWLOG_ENTRY_MAX_ARGC,
 * SLOWLOG_ENTRY_MAX_STRING): at most 32 arguments, the last then saying
 * how many more there were, each at most 128 bytes. */
#define SLOWLOG_ENTRY_MAX_ARGC   32
#define SLOWLOG_ENTRY_MAX_STRING 128
/* Bytes of a request kept for its entry, should it turn out slow: room
 * for 32 arguments of 128 bytes with their RESP headers. An argument
 * beyond them is shown only by the count of those left out. */
#define SLOWLOG_CAPTURE_MAX (SLOWLOG_ENTRY_MAX_ARGC * (SLOWLOG_ENTRY_MAX_STRING + 24) + 24)

void slowlog_capture_long(request *req, size_t argc, const resp_arg *argv, const char *raw,
                          size_t raw_len);

/* Keeps a short request's bytes (16 to REQUEST_HEAD_MAX, raw not NULL)
 * for a possible entry, whole in req->head, copied as two overlapping
 * blocks of constant size (a few moves, no call: this is the slow log's
 * whole cost on the request path). slowlog_capture_long keeps a longer or
 * inline one's in req->args. */
static inline void slowlog_capture_short(request *req, const char *raw, size_t raw_len)
{
    _Static_assert(REQUEST_HEAD_MAX == 64, "two 32-byte blocks cover head");
    if (raw_len >= 32) {
        memcpy(req->head, raw, 32);
        memcpy(req->head + raw_len - 32, raw + raw_len - 32, 32);
    } else {
        memcpy(req->head, raw, 16);
        memcpy(req->head + raw_len - 16, raw + raw_len - 16, 16);
    }
    req->head_len = (uint8_t)raw_len;
}

/* Adds an entry for req, answered after took_us µs (its reply is being
 * given now: the loop clock is the reply's time). */
void slowlog_add(const request *req, uint64_t took_us);

/* Answers SLOWLOG GET [count], LEN, RESET or HELP (argv[1] the
 * subcommand). */
void slowlog_command(request *req, size_t argc, const resp_arg *argv);

/* Drops the oldest entries over slowlog_max_len (after a reload lowered
 * it), and every entry at shutdown with max 0. */
void slowlog_trim(size_t max_len);

#endif
