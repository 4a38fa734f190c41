/* SCAN and RANDOMKEY through the proxy: the keyspace is walked one shard
 * after the other, the shard's index kept in SCAN's cursor. */
#include "proxy/keyspace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/backend.h"
#include "proxy/server.h"
#include "proxy/txn.h"

/* Encoding buffer for the request sent to a shard. */
static buf scratch;

/* SCAN's cursor through the proxy is the shard's own cursor shifted left
 * by SCAN_SHARD_BITS, plus the index of the shard it is in (its position
 * in [shards]): cursor 0 is shard 0's start, and when a shard's cursor
 * comes back 0 the next cursor is the next shard's start. The bits bound
 * the shards SCAN can walk; Redis's own cursors stay far below the 54 bits
 * left (they count hash table buckets). */
#define SCAN_SHARD_BITS 10
#define SCAN_MAX_SHARDS (1u << SCAN_SHARD_BITS)

static void scan_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    req->pending = 0;
    /* [cursor, keys]: the cursor is rewritten, the keys pass as they are. */
    const char *cursor = NULL;
    size_t pos = 0, cursor_len = 0;
    int64_t count;
    int ok = resp_reply_array_at(reply, len, &pos, &count) == 0 && count == 2 &&
             resp_reply_bulk_at(reply, len, &pos, &cursor, &cursor_len) == 0 && cursor_len > 0 &&
             cursor_len < 21;
    if (!ok || !req->owner) {
        req->on_done(req, reply, len); /* an error, or nobody to answer */
        return;
    }
    char digits[24];
    memcpy(digits, cursor, cursor_len);
    digits[cursor_len] = '\0';
    unsigned long long next = strtoull(digits, NULL, 10), out;
    if (next == 0)
        out = f->shard + 1 < srv.nshards ? f->shard + 1 : 0;
    else if (next > (UINT64_MAX >> SCAN_SHARD_BITS)) {
        request_error(req, "ERR shard %s returned a SCAN cursor too large for the proxy's cursor",
                      srv.shards[f->shard]->name);
        return;
    } else
        out = (next << SCAN_SHARD_BITS) | f->shard;
    char head[48];
    int hl = snprintf(head, sizeof(head), "%llu", out);
    buf b = {0};
    buf_append(&b, "*2\r\n", 4);
    buf_append_bulk(&b, head, (size_t)hl);
    buf_append(&b, reply + pos, len - pos);
    request_reply_buf(req, &b);
    buf_free(&b);
}

void keyspace_scan(request *req, size_t argc, const resp_arg *argv, uint64_t hint)
{
    char digits[24];
    unsigned long long cursor = 0;
    int ok = argv[1].len > 0 && argv[1].len < sizeof(digits);
    for (size_t i = 0; ok && i < argv[1].len; i++)
        ok = argv[1].ptr[i] >= '0' && argv[1].ptr[i] <= '9';
    if (ok) {
        memcpy(digits, argv[1].ptr, argv[1].len);
        digits[argv[1].len] = '\0';
        errno = 0;
        cursor = strtoull(digits, NULL, 10);
        ok = errno == 0;
    }
    uint32_t shard_index = (uint32_t)(cursor & (SCAN_MAX_SHARDS - 1));
    if (!ok || shard_index >= srv.nshards) {
        request_error(req, "ERR invalid cursor");
        return;
    }
    if (srv.nshards > SCAN_MAX_SHARDS) {
        request_error(req, "ERR SCAN walks at most %u shards", SCAN_MAX_SHARDS);
        return;
    }
    /* The same request with the shard's own cursor. */
    int n = snprintf(digits, sizeof(digits), "%llu", cursor >> SCAN_SHARD_BITS);
    buf_reset(&scratch);
    buf_append_header(&scratch, '*', (int64_t)argc);
    buf_append_bulk(&scratch, argv[0].ptr, argv[0].len);
    buf_append_bulk(&scratch, digits, (size_t)n);
    for (size_t i = 2; i < argc; i++)
        buf_append_bulk(&scratch, argv[i].ptr, argv[i].len);
    if (buf_failed(&scratch)) {
        request_error(req, "ERR out of memory");
        return;
    }
    fragment *f = &req->single;
    f->req = req;
    f->done = scan_done;
    f->shard = shard_index;
    req->pending = 1;
    txn_send_to_shard(req, shard_index, hint, f, buf_head(&scratch), buf_len(&scratch));
}

static const char RANDOMKEY_REQUEST[] = "*1\r\n$9\r\nRANDOMKEY\r\n";

/* A shard answered RANDOMKEY: nil means that shard is empty, so the next
 * one is asked, until one has a key or all were asked. f->shards_asked counts the
 * shards asked so far. */
static void randomkey_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    /* nil: "$-1" in RESP2, "_" in RESP3 */
    int nil = (len == 5 && memcmp(reply, "$-1\r\n", 5) == 0) || (len == 3 && reply[0] == '_');
    if (req->owner && nil && f->shards_asked + 1 < srv.nshards) {
        f->shards_asked++;
        f->shard = (uint32_t)((f->shard + 1) % srv.nshards);
        txn_send_to_shard(req, f->shard, req->hint, f, RANDOMKEY_REQUEST,
                          sizeof(RANDOMKEY_REQUEST) - 1);
        return;
    }
    req->pending = 0;
    req->on_done(req, reply, len);
}

/* RANDOMKEY's first shard only needs to be spread out. */
static uint32_t random_shard(void)
{
    static uint64_t state;
    if (!state)
        state = (srv.now_us ^ ((uint64_t)getpid() << 32)) | 1;
    return (uint32_t)((server_xorshift(&state) >> 32) % srv.nshards);
}

void keyspace_randomkey(request *req, uint64_t hint)
{
    fragment *f = &req->single;
    f->req = req;
    f->done = randomkey_done;
    f->shard = random_shard();
    f->shards_asked = 0;
    req->hint = hint;
    req->pending = 1;
    txn_send_to_shard(req, f->shard, hint, f, RANDOMKEY_REQUEST, sizeof(RANDOMKEY_REQUEST) - 1);
}
