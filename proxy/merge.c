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
    /* In RESP3 the shards answer a map: the client gets one too. */
    const char *first = buf_head(&req->frags[0].reply);
    if (first[0] == '%')
        buf_append_header(&out, '%', per_shard / 2);
    else
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

/* The number after "\n<name>:" in an INFO text (len bytes, not
 * NUL-terminated but followed by CR LF), or 0 when it has none. */
static long long info_field(const char *text, size_t len, const char *name, const char **after)
{
    char key[64];
    int n = snprintf(key, sizeof(key), "\n%s:", name);
    const char *at = memmem(text, len, key, (size_t)n);
    *after = at ? at + n : NULL;
    return at ? strtoll(at + n, NULL, 10) : 0;
}

/* Reads "keys=K,expires=E,avg_ttl=T" at p (before end) into v. 0, or -1
 * when the line has another form. */
static int db_line(const char *p, const char *end, long long v[3])
{
    static const char *const names[] = {"keys=", "expires=", "avg_ttl="};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(names[i]);
        if ((size_t)(end - p) < n + 1 || memcmp(p, names[i], n) != 0)
            return -1;
        char *next;
        v[i] = strtoll(p + n, &next, 10);
        if (next == p + n || next >= end || (i < 2 && *next != ','))
            return -1;
        p = next + 1;
    }
    return 0;
}

/* INFO: the proxy's own sections (req->local_part), the shards'
 * keyspace_hits and keyspace_misses summed into its Stats section, and a
 * Keyspace section with db0's keys and expires summed over the shards and
 * avg_ttl averaged over the keys with a ttl. A shard that answers with an
 * error counts for nothing: INFO works while a shard is down (the Shards
 * section says which). */
static void merge_info(request *req)
{
    long long hits = 0, misses = 0, keys = 0, expires = 0, ttl_sum = 0;
    int keyspace = 0;
    for (size_t i = 0; i < req->nfrags; i++) {
        const fragment *f = &req->frags[i];
        const char *text, *after;
        size_t len, pos = 0;
        if (resp_reply_bulk_at(buf_head(&f->reply), buf_len(&f->reply), &pos, &text, &len) < 0)
            continue;
        hits += info_field(text, len, "keyspace_hits", &after);
        misses += info_field(text, len, "keyspace_misses", &after);
        keyspace |= memmem(text, len, "# Keyspace", 10) != NULL;
        (void)info_field(text, len, "db0", &after);
        long long v[3];
        if (after && db_line(after, text + len, v) == 0) {
            keys += v[0];
            expires += v[1];
            ttl_sum += v[2] * v[1];
        }
    }
    /* INFO keyspace alone has no section of the proxy's own: empty. */
    size_t own_len = buf_len(&req->local_part);
    const char *own = own_len ? buf_head(&req->local_part) : "";
    /* The Stats section ends at the first blank line after its title. */
    const char *stats = own_len ? memmem(own, own_len, "# Stats\r\n", 9) : NULL;
    const char *stats_end =
        stats ? memmem(stats, own_len - (size_t)(stats - own), "\r\n\r\n", 4) : NULL;
    buf out = {0};
    if (stats_end) {
        size_t head = (size_t)(stats_end - own) + 2;
        buf_append(&out, own, head);
        buf_printf(&out, "keyspace_hits:%lld\r\nkeyspace_misses:%lld\r\n", hits, misses);
        buf_append(&out, own + head, own_len - head);
    } else if (own_len) {
        buf_append(&out, own, own_len);
    }
    if (keyspace) {
        buf_printf(&out, "# Keyspace\r\n");
        if (keys)
            buf_printf(&out, "db0:keys=%lld,expires=%lld,avg_ttl=%lld\r\n", keys, expires,
                       expires ? ttl_sum / expires : 0);
        buf_printf(&out, "\r\n");
    }
    if (buf_len(&out) >= 2)
        out.end -= 2; /* Redis ends INFO without the last blank line */
    if (buf_failed(&out))
        request_error(req, "ERR out of memory merging replies");
    else
        request_reply_text(req, buf_len(&out) ? buf_head(&out) : "", buf_len(&out));
    buf_free(&out);
}

static int same_element(const element *a, const element *b)
{
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

/* The bytes of a bulk string element ("" when it is not one). */
static void element_text(const element *e, const char **ptr, size_t *len)
{
    size_t pos = 0;
    if (resp_reply_bulk_at(e->ptr, e->len, &pos, ptr, len) < 0) {
        *ptr = "";
        *len = 0;
    }
}

/* Whether the bulk string element e holds text. */
static int element_is(const element *e, const char *text)
{
    const char *p;
    size_t n;
    element_text(e, &p, &n);
    return n == strlen(text) && memcmp(p, text, n) == 0;
}

/* A shard parameter holding a password: shown as "(hidden)" when set. */
static int secret_parameter(const element *name)
{
    return element_is(name, "masterauth") || element_is(name, "requirepass");
}

/* CONFIG GET: the proxy's own settings (req->local_part), then the first
 * shard's parameters. A parameter set differently on another shard is
 * named, with every shard's value, in one extra pair
 * "ringproxy-shards-differ" (only when some differ), so that a tool shows
 * the difference rather than one shard's value as the whole truth. A
 * parameter named like a proxy setting (requirepass) is the proxy's. */
/* The value paired with name in shard s's part (elements start[s] to
 * start[s + 1]), or NULL. */
static const element *config_value_of(const element *elems, const size_t *start, size_t s,
                                      const element *name)
{
    for (size_t j = start[s]; j + 1 < start[s + 1]; j += 2)
        if (same_element(&elems[j], name))
            return &elems[j + 1];
    return NULL;
}

/* When the shards disagree on name's value, appends "name: s1=v s2=v ..."
 * to differ (secrets as "(none)"). */
static void note_config_difference(const request *req, const element *elems, const size_t *start,
                                   const element *name, const element *value, buf *differ)
{
    size_t i = 1;
    for (; i < req->nfrags; i++) {
        const element *other = config_value_of(elems, start, i, name);
        if (!other || !same_element(other, value))
            break;
    }
    if (i == req->nfrags)
        return;
    const char *np;
    size_t nl;
    element_text(name, &np, &nl);
    buf_printf(differ, "%s%.*s:", buf_len(differ) ? "; " : "", (int)nl, np);
    for (size_t sh = 0; sh < req->nfrags; sh++) {
        const element *v = config_value_of(elems, start, sh, name);
        const char *vp = "(none)";
        size_t vl = 6;
        if (v && !secret_parameter(name))
            element_text(v, &vp, &vl);
        buf_printf(differ, " %s=%.*s", srv.shards[req->frags[sh].shard]->name, (int)vl, vp);
    }
}

static void merge_config_get(request *req)
{
    element *elems = NULL;
    size_t n = 0, cap = 0;
    size_t *start = calloc(req->nfrags + 1, sizeof(size_t));
    if (!start) {
        request_error(req, "ERR out of memory merging replies");
        return;
    }
    for (size_t i = 0; i < req->nfrags; i++) {
        start[i] = n;
        if (collect(req, &req->frags[i], &elems, &n, &cap) < 0) {
            free(elems);
            free(start);
            return;
        }
    }
    start[req->nfrags] = n;
    const char *own = buf_head(&req->local_part);
    size_t own_len = buf_len(&req->local_part), pos = 0;
    int64_t own_count;
    if (buf_failed(&req->local_part) || resp_reply_array_at(own, own_len, &pos, &own_count) < 0) {
        free(elems);
        free(start);
        request_error(req, "ERR out of memory merging replies");
        return;
    }
    buf pairs = {0}, differ = {0};
    int64_t count = own_count;
    for (size_t k = 0; k + 1 < start[1]; k += 2) {
        const element *name = &elems[k], *value = &elems[k + 1];
        const char *np;
        size_t nl;
        element_text(name, &np, &nl);
        if (nl == 11 && memcmp(np, "requirepass", 11) == 0)
            continue; /* the proxy's own, listed above when asked for */
        note_config_difference(req, elems, start, name, value, &differ);
        buf_append(&pairs, name->ptr, name->len);
        const char *vp;
        size_t vl;
        element_text(value, &vp, &vl);
        if (secret_parameter(name) && vl)
            buf_append_bulk(&pairs, "(hidden)", 8);
        else
            buf_append(&pairs, value->ptr, value->len);
        count += 2;
    }
    if (buf_len(&differ)) {
        buf_append_bulk(&pairs, "ringproxy-shards-differ", 23);
        buf_append_bulk(&pairs, buf_head(&differ), buf_len(&differ));
        count += 2;
    }
    buf out = {0};
    request_append_map_header(req, &out, count / 2);
    buf_append(&out, own + pos, own_len - pos);
    if (buf_len(&pairs))
        buf_append(&out, buf_head(&pairs), buf_len(&pairs));
    if (buf_failed(&pairs) || buf_failed(&differ))
        out.err = 1; /* answered as out of memory */
    buf_free(&pairs);
    buf_free(&differ);
    free(elems);
    free(start);
    reply_merged(req, &out);
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
    case MERGE_INFO:
        merge_info(req);
        return;
    case MERGE_CONFIG_GET:
        merge_config_get(req);
        return;
    case MERGE_NONE:
        break;
    }
    log_error("BUG: command '%s' sent to several shards without a merge rule", req->cmd->name);
    abort();
}
