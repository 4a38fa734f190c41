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
_Static_assert(SLOWLOG_CAPTURE_MAX == REQUEST_KEEP_MAX, "request_keep_bytes keeps as much");

/* Where an entry's arguments come from. A request's bytes live in the
 * client's read buffer, shared by all clients and overwritten by the next
 * read, long before its reply; most requests are never slow, so copying
 * them all would cost every request for the few that are.
 *
 * - Not copied (REQUEST_HEAD_SENT): the common case of route() in router.c,
 *   a one-key command of a client in no transaction or subscription while
 *   no key moves and the ring is served, at most REQUEST_SENT_SHORT bytes,
 *   forwarded whole to one pool connection. That connection keeps what it
 *   wrote from its oldest fragment awaiting a reply on (backend.c), so at
 *   reply time the entry reads the bytes there (backend_sent_bytes), in
 *   the completion of that fragment: its reply, or the error of a failed
 *   connection or of a send that failed at once (then the caller's bytes).
 *   A big request taking the connection's buffer over (buf_append_big)
 *   first copies those bytes into their requests (request_keep_bytes).
 *   Held so: the bytes of the requests in flight on the connection (at
 *   most backend_max_inflight, each client's share bounded by what it may
 *   have in flight), written but not answered; dropped when room is
 *   needed or all is answered.
 * - Copied at dispatch (slowlog_capture_short, _long) whenever the bytes
 *   the shard gets are not the client's command as sent to one pool
 *   connection: every other path of route() (split and fan-out commands,
 *   commands the proxy answers, transactions and reserved connections,
 *   requests that wait for a pause, a move or a cross-shard commit), a
 *   longer request (a big one may be handed over to the connection whole,
 *   buf_append_big), and one that waits for replicas (ack.c sends it with
 *   fragments of its own, and copies). The test in route() is the branch
 *   that picks the common case, plus the length. */
void slowlog_capture_long(request *req, size_t argc, const resp_arg *argv, const char *raw,
                          size_t raw_len);

/* Keeps a short request's bytes (16 to REQUEST_HEAD_MAX, raw not NULL)
 * for a possible entry, whole in req->head, copied as two overlapping
 * blocks of constant size (a few moves, no call). slowlog_capture_long
 * keeps a longer or inline one's in req->args. */
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

/* The largest latency histogram bucket (histogram_slot) all of whose
 * values are below slowlog_slower_than, at most HISTOGRAM_BUCKETS - 2:
 * a value whose histogram_slot_raw is not above it is neither slow nor
 * a histogram edge, so account() in client.c tests both with one
 * comparison. Set by slowlog_configure. */
extern uint64_t slowlog_fast_slots;

/* Sets slowlog_fast_slots for slowlog_slower_than = slower_than (-1: off);
 * called whenever srv.cfg changes. */
void slowlog_configure(int64_t slower_than);

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
