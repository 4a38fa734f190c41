/* Merge rules for split and fan-out replies. Each reads the fragments'
 * saved replies and answers the request once. Replies come from shards
 * (trusted, but checked): a reply of an unexpected shape is answered with
 * an error naming the shard, never passed on half-merged. */
#include "proxy/merge.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/backend.h"
#include "proxy/buf.h"
#include "proxy/command.h"
#include "proxy/log.h"
#include "proxy/resp.h"
#include "proxy/server.h"

static void merge_sum(request *req)
{
    int64_t total = 0;
    for (size_t i = 0; i < req->nfrags; i++) {
        fragment *f = &req->frags[i];
        int64_t v;
        if (resp_reply_integer(buf_head(&f->reply), buf_len(&f->reply), &v) < 0) {
            req->on_done(req, buf_head(&f->reply), buf_len(&f->reply));
            return;
        }
        total += v;
    }
    char out[32];
    int n = snprintf(out, sizeof(out), ":%lld\r\n", (long long)total);
    req->on_done(req, out, (size_t)n);
}

static void merge_all_ok(request *req)
{
    size_t failed = 0, first = 0;
    for (size_t i = 0; i < req->nfrags; i++) {
        fragment *f = &req->frags[i];
        if (buf_len(&f->reply) < 1 || buf_head(&f->reply)[0] != '+') {
            if (!failed)
                first = i;
            failed++;
        }
    }
    if (!failed) {
        req->on_done(req, "+OK\r\n", 5);
        return;
    }
    fragment *f = &req->frags[first];
    /* The shard's own error line, without '-' and CRLF. */
    const char *err = buf_head(&f->reply);
    size_t len = buf_len(&f->reply);
    if (len >= 3 && err[0] == '-') {
        err++;
        len -= 3;
    }
    if (len > 400)
        len = 400;
    if (failed == req->nfrags) {
        request_error(req, "%.*s", (int)len, err);
        return;
    }
    /* Some shards applied their part: say so, since MSET is not atomic across
     * shards and the client must know which keys were written. */
    request_error(req,
                  "ERR partial write: %zu of %zu shards failed, keys on the other shards were "
                  "written; first failure on shard %s: %.*s",
                  failed, req->nfrags, srv.shards[f->shard]->name, (int)len, err);
}

/* Length of the whole reply element at r (len bytes available), 0 when it
 * does not end there. */
static size_t element_len(const char *r, size_t len)
{
    resp_reply scan;
    resp_reply_init(&scan);
    size_t n = 0;
    return resp_reply_scan(&scan, r, len, &n) == RESP_OK ? n : 0;
}

/* Answers req with the merged reply built in out, or with an error when
 * building it ran out of memory; frees out. */
static void reply_merged(request *req, buf *out)
{
    if (buf_failed(out))
        request_error(req, "ERR out of memory merging replies");
    else
        req->on_done(req, buf_head(out), buf_len(out));
    buf_free(out);
}

static void merge_array_by_key(request *req)
{
    /* Element boundaries of each fragment's array reply. */
    size_t total = 0;
    for (size_t i = 0; i < req->nfrags; i++)
        total += req->frags[i].nkeys;
    size_t *elem_off = malloc(total * sizeof(size_t) * 2);
    if (!elem_off) {
        request_error(req, "ERR out of memory merging replies");
        return;
    }
    size_t *elem_len = elem_off + total;
    for (size_t i = 0; i < req->nfrags; i++) {
        fragment *f = &req->frags[i];
        const char *r = buf_head(&f->reply);
        size_t len = buf_len(&f->reply), pos = 0;
        int64_t count;
        int ok = resp_reply_array_at(r, len, &pos, &count) == 0 && count == (int64_t)f->nkeys;
        for (size_t k = 0; ok && k < f->nkeys; k++) {
            size_t elen = element_len(r + pos, len - pos);
            if (elen == 0) {
                ok = 0;
                break;
            }
            elem_off[f->first_key + k] = pos;
            elem_len[f->first_key + k] = elen;
            pos += elen;
        }
        if (!ok) {
            free(elem_off);
            if (len > 0 && r[0] == '-')
                req->on_done(req, r, len);
            else
                request_error(req, "ERR unexpected reply from shard %s to a split command",
                              srv.shards[f->shard]->name);
            return;
        }
    }
    buf out = {0};
    buf_append_header(&out, '*', (int64_t)req->nkeys);
    for (size_t i = 0; i < req->nkeys; i++) {
        size_t fi = req->key_order[2 * i],
               slot = req->frags[fi].first_key + req->key_order[2 * i + 1];
        buf_append(&out, buf_head(&req->frags[fi].reply) + elem_off[slot], elem_len[slot]);
    }
    free(elem_off);
    reply_merged(req, &out);
}

/* ---- arrays ---- */

/* An element of some fragment's array reply. */
typedef struct element {
    const char *ptr;
    size_t len;
} element;

/* The elements of fragment f's array reply, appended to *out (grown by
 * realloc). Returns how many, or -1 after answering req with an error when
 * the reply is an error or not an array. */
static int64_t collect(request *req, const fragment *f, element **out, size_t *n, size_t *cap)
{
    const char *r = buf_head(&f->reply);
    size_t len = buf_len(&f->reply), pos = 0;
    int64_t count;
    if (resp_reply_array_at(r, len, &pos, &count) < 0) {
        if (len > 0 && r[0] == '-')
            req->on_done(req, r, len);
        else
            request_error(req, "ERR unexpected reply from shard %s to a fan-out command",
                          srv.shards[f->shard]->name);
        return -1;
    }
    for (int64_t i = 0; i < count; i++) {
        size_t elen = element_len(r + pos, len - pos);
        if (elen == 0) {
            request_error(req, "ERR unexpected reply from shard %s to a fan-out command",
                          srv.shards[f->shard]->name);
            return -1;
        }
        if (*n == *cap) {
            size_t grown = *cap ? *cap * 2 : 64;
            element *p = realloc(*out, grown * sizeof(*p));
            if (!p) {
                request_error(req, "ERR out of memory merging replies");
                return -1;
            }
            *out = p;
            *cap = grown;
        }
        (*out)[(*n)++] = (element){r + pos, elen};
        pos += elen;
    }
    return count;
}

/* Answers req with an array of elems[0..n). */
static void reply_array(request *req, const element *elems, size_t n)
{
    buf out = {0};
    buf_append_header(&out, '*', (int64_t)n);
    for (size_t i = 0; i < n; i++)
        buf_append(&out, elems[i].ptr, elems[i].len);
    reply_merged(req, &out);
}

/* KEYS: every shard's array, one after the other. */
static void merge_concat(request *req, int unique)
{
    element *elems = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < req->nfrags; i++) {
        if (collect(req, &req->frags[i], &elems, &n, &cap) < 0) {
            free(elems);
            return;
        }
    }
    if (unique && n > 1) {
        /* PUBSUB CHANNELS: a channel with subscribers on two shards (one
         * subscribed through the proxy, one directly) is named once. */
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            int seen = 0;
            for (size_t j = 0; j < kept && !seen; j++)
                seen = elems[j].len == elems[i].len &&
                       memcmp(elems[j].ptr, elems[i].ptr, elems[i].len) == 0;
            if (!seen)
                elems[kept++] = elems[i];
        }
        n = kept;
    }
    reply_array(req, elems, n);
    free(elems);
}

/* The first fragment whose reply is an error, or NULL. */
static const fragment *first_error(const request *req)
{
    for (size_t i = 0; i < req->nfrags; i++) {
        const fragment *f = &req->frags[i];
        if (buf_len(&f->reply) == 0 || buf_head(&f->reply)[0] == '-')
            return f;
    }
    return NULL;
}

/* SCRIPT LOAD: each shard computes the same SHA1, so any difference means
 * a shard runs something else (another Redis version, a hand-loaded
 * script): say so rather than pick one. */
static void merge_same(request *req)
{
    const fragment *err = first_error(req), *first = &req->frags[0];
    if (err) {
        req->on_done(req, buf_head(&err->reply), buf_len(&err->reply));
        return;
    }
    for (size_t i = 1; i < req->nfrags; i++) {
        const fragment *f = &req->frags[i];
        if (buf_len(&f->reply) != buf_len(&first->reply) ||
            memcmp(buf_head(&f->reply), buf_head(&first->reply), buf_len(&f->reply)) != 0) {
            request_error(req, "ERR shards %s and %s gave different replies",
                          srv.shards[first->shard]->name, srv.shards[f->shard]->name);
            return;
        }
    }
    req->on_done(req, buf_head(&first->reply), buf_len(&first->reply));
}

/* Collects every shard's array reply into *elems (shard i's elements at
 * i * length), all of one length (even when pairs). Returns that length, or
 * -1 after answering the request with an error (*elems then freed). */
static int64_t collect_same_length(request *req, element **elems, int pairs)
{
    size_t n = 0, cap = 0;
    int64_t per_shard = -1;
    *elems = NULL;
    for (size_t i = 0; i < req->nfrags; i++) {
        int64_t count = collect(req, &req->frags[i], elems, &n, &cap);
        if (count < 0) {
            free(*elems);
            *elems = NULL;
            return -1;
        }
        if ((per_shard >= 0 && count != per_shard) || (pairs && count % 2)) {
            free(*elems);
            *elems = NULL;
            request_error(req,
                          "ERR shard %s answered %lld elements where the others answered "
                          "%lld",
                          srv.shards[req->frags[i].shard]->name, (long long)count,
                          (long long)(per_shard >= 0 ? per_shard : count));
            return -1;
        }
        per_shard = count;
    }
    return per_shard;
}

/* SCRIPT EXISTS: a script exists for the client when EVALSHA finds it on
 * whichever shard its keys lead to, i.e. on every shard. */
static void merge_and_array(request *req)
{
    element *elems = NULL;
    int64_t per_shard = collect_same_length(req, &elems, 0);
    if (per_shard < 0)
        return;
    buf out = {0};
    buf_append_header(&out, '*', per_shard);
    for (int64_t k = 0; k < per_shard; k++) {
        int all = 1;
        for (size_t i = 0; i < req->nfrags; i++) {
            const element *e = &elems[i * (size_t)per_shard + (size_t)k];
            int64_t v;
            all &= resp_reply_integer(e->ptr, e->len, &v) == 0 && v == 1;
        }
        buf_append_header(&out, ':', all);
    }
    free(elems);
    reply_merged(req, &out);
}

/* SCRIPT KILL: the script runs on one shard; the others answer NOTBUSY. */
static void merge_first_ok(request *req)
{
    for (size_t i = 0; i < req->nfrags; i++) {
        const fragment *f = &req->frags[i];
        if (buf_len(&f->reply) > 0 && buf_head(&f->reply)[0] != '-') {
            req->on_done(req, buf_head(&f->reply), buf_len(&f->reply));
            return;
        }
    }
    const fragment *f = &req->frags[0];
    req->on_done(req, buf_head(&f->reply), buf_len(&f->reply));
}

/* PUBSUB NUMSUB: every shard names the channels in the order asked, each
 * with its count there. */
static void merge_pair_sum(request *req)
{
    element *elems = NULL;
    int64_t per_shard = collect_same_length(req, &elems, 1);
    if (per_shard < 0)
        return;
    buf out = {0};
    buf_append_header(&out, '*', per_shard);
    for (int64_t k = 0; k + 1 < per_shard; k += 2) {
        int64_t total = 0;
        for (size_t i = 0; i < req->nfrags; i++) {
            const element *e = &elems[i * (size_t)per_shard + (size_t)k + 1];
            int64_t v;
            if (resp_reply_integer(e->ptr, e->len, &v) == 0)
                total += v;
        }
        buf_append(&out, elems[k].ptr, elems[k].len);
        buf_append_header(&out, ':', total);
    }
    free(elems);
    reply_merged(req, &out);
}

/* PUBSUB NUMPAT: a client's pattern is subscribed on every shard, so each
 * shard counts it; the largest count is the number of patterns. */
static void merge_max(request *req)
{
    int64_t best = 0;
    for (size_t i = 0; i < req->nfrags; i++) {
        const fragment *f = &req->frags[i];
        int64_t v;
        if (resp_reply_integer(buf_head(&f->reply), buf_len(&f->reply), &v) < 0) {
            req->on_done(req, buf_head(&f->reply), buf_len(&f->reply));
            return;
        }
        if (v > best)
            best = v;
    }
    char out[32];
    int n = snprintf(out, sizeof(out), ":%lld\r\n", (long long)best);
    req->on_done(req, out, (size_t)n);
}

void merge_replies(request *req)
{
    switch (req->cmd->merge) {
    case MERGE_SUM:
        merge_sum(req);
        return;
    case MERGE_ALL_OK:
        merge_all_ok(req);
        return;
    case MERGE_ARRAY_BY_KEY:
        merge_array_by_key(req);
        return;
    case MERGE_CONCAT:
        merge_concat(req, 0);
        return;
    case MERGE_UNION:
        merge_concat(req, 1);
        return;
    case MERGE_SAME:
        merge_same(req);
        return;
    case MERGE_AND_ARRAY:
        merge_and_array(req);
        return;
    case MERGE_FIRST_OK:
        merge_first_ok(req);
        return;
    case MERGE_PAIR_SUM:
        merge_pair_sum(req);
        return;
    case MERGE_MAX:
        merge_max(req);
        return;
    case MERGE_NONE:
        break;
    }
    log_error("BUG: command '%s' sent to several shards without a merge rule", req->cmd->name);
    abort();
}
