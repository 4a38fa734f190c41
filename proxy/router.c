/* Request routing: single-shard forwarding, multi-key split and merge,
 * cross-shard checks, local answers. */
#include "proxy/router.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/admin.h"
#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/server.h"

/* Scratch space reused by every request: key positions and their shards,
 * and an encoding buffer. Single-threaded, so one of each suffices. */
static size_t *key_pos;
static uint32_t *key_shard;
static size_t key_cap;
static buf scratch;

static void reply_error(request *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply_error(request *req, const char *fmt, ...)
{
    char msg[600];
    msg[0] = '-';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg + 1, sizeof(msg) - 3, fmt, ap);
    va_end(ap);
    size_t len = 1 + (n < 0 ? 0 : (size_t)n > sizeof(msg) - 4 ? sizeof(msg) - 4 : (size_t)n);
    /* An error reply is one line: a client-supplied name must not break it. */
    for (size_t i = 1; i < len; i++)
        if (msg[i] == '\r' || msg[i] == '\n')
            msg[i] = ' ';
    msg[len++] = '\r';
    msg[len++] = '\n';
    req->on_done(req, msg, len);
}

/* Copies a client-supplied word into out for an error message, cut short. */
static const char *word(const resp_arg *a, char *out, size_t outlen)
{
    size_t n = a->len < outlen - 1 ? a->len : outlen - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)a->ptr[i];
        out[i] = ch >= 0x20 && ch < 0x7f && ch != '\'' ? (char)ch : '?';
    }
    out[n] = '\0';
    return out;
}

static uint32_t key_hash(const resp_arg *key)
{
    const config *cfg = srv.cfg;
    return hash_key(cfg->hash, key->ptr, key->len, cfg->hash_tag_open, cfg->hash_tag_close);
}

uint32_t router_shard_of(const char *key, size_t len)
{
    const config *cfg = srv.cfg;
    uint32_t h = hash_key(cfg->hash, key, len, cfg->hash_tag_open, cfg->hash_tag_close);
    return ring_lookup(srv.ring, h);
}

static int ensure_key_cap(size_t n)
{
    if (n <= key_cap)
        return 0;
    size_t cap = key_cap ? key_cap : 64;
    while (cap < n)
        cap *= 2;
    size_t *p = realloc(key_pos, cap * sizeof(*p));
    if (!p)
        return -1;
    key_pos = p;
    uint32_t *q = realloc(key_shard, cap * sizeof(*q));
    if (!q)
        return -1;
    key_shard = q;
    key_cap = cap;
    return 0;
}

/* Multibulk encoding of argv, for requests that came inline. */
static int encode(buf *out, size_t argc, const resp_arg *argv)
{
    if (buf_append_header(out, '*', (int64_t)argc) < 0)
        return -1;
    for (size_t i = 0; i < argc; i++)
        if (buf_append_bulk(out, argv[i].ptr, argv[i].len) < 0)
            return -1;
    return 0;
}

static void single_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    req->pending = 0;
    req->on_done(req, reply, len);
}

/* Sends the whole request to one shard. */
static void forward(request *req, uint32_t shard_index, size_t argc, const resp_arg *argv,
                    const char *raw, size_t raw_len, uint64_t hint)
{
    fragment *f = &req->single;
    f->req = req;
    f->done = single_done;
    f->shard = shard_index;
    req->pending = 1;
    if (raw) {
        backend_send(srv.shards[shard_index], hint, f, raw, raw_len);
        return;
    }
    scratch.start = scratch.end = 0;
    if (encode(&scratch, argc, argv) < 0) {
        req->pending = 0;
        reply_error(req, "ERR out of memory");
        return;
    }
    backend_send(srv.shards[shard_index], hint, f, buf_head(&scratch), buf_len(&scratch));
}

/* ---- split and fan-out ---- */

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
        reply_error(req, "%.*s", (int)len, err);
        return;
    }
    /* Some shards applied their part: say so, since MSET is not atomic across
     * shards and the client must know which keys were written. */
    reply_error(req,
                "ERR partial write: %zu of %zu shards failed, keys on the other shards were "
                "written; first failure on shard %s: %.*s",
                failed, req->nfrags, srv.shards[f->shard]->name, (int)len, err);
}

static void merge_array_by_key(request *req)
{
    /* Element boundaries of each fragment's array reply. */
    size_t total = 0;
    for (size_t i = 0; i < req->nfrags; i++)
        total += req->frags[i].nkeys;
    size_t *elem_off = malloc(total * sizeof(size_t) * 2);
    if (!elem_off) {
        reply_error(req, "ERR out of memory merging replies");
        return;
    }
    size_t *elem_len = elem_off + total;
    for (size_t i = 0; i < req->nfrags; i++) {
        fragment *f = &req->frags[i];
        const char *r = buf_head(&f->reply);
        size_t len = buf_len(&f->reply), pos = 0;
        int ok = len > 0 && r[0] == '*';
        if (ok) {
            const char *crlf = memchr(r, '\r', len);
            char *end;
            long long n = crlf ? strtoll(r + 1, &end, 10) : -1;
            ok = crlf && n == (long long)f->nkeys;
            pos = crlf ? (size_t)(crlf - r) + 2 : len;
        }
        for (size_t k = 0; ok && k < f->nkeys; k++) {
            resp_reply scan;
            resp_reply_init(&scan);
            size_t elen = 0;
            if (resp_reply_scan(&scan, r + pos, len - pos, &elen) != RESP_OK) {
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
                reply_error(req, "ERR unexpected reply from shard %s to a split command",
                            srv.shards[f->shard]->name);
            return;
        }
    }
    buf out = {0};
    int fail = buf_append_header(&out, '*', (int64_t)req->nkeys) < 0;
    for (size_t i = 0; !fail && i < req->nkeys; i++) {
        size_t fi = req->key_order[2 * i],
               slot = req->frags[fi].first_key + req->key_order[2 * i + 1];
        fail =
            buf_append(&out, buf_head(&req->frags[fi].reply) + elem_off[slot], elem_len[slot]) < 0;
    }
    free(elem_off);
    if (fail)
        reply_error(req, "ERR out of memory merging replies");
    else
        req->on_done(req, buf_head(&out), buf_len(&out));
    buf_free(&out);
}

static void part_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    if (buf_append(&f->reply, reply, len) < 0) {
        buf_free(&f->reply);
        static const char oom[] = "-ERR out of memory keeping a shard reply\r\n";
        (void)!buf_append(&f->reply, oom, sizeof(oom) - 1);
    }
    if (--req->pending > 0)
        return;
    if (!req->owner) {
        /* Nobody to merge for: the client has gone. */
        req->on_done(req, NULL, 0);
        return;
    }
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
    case MERGE_NONE:
        break;
    }
    log_error("BUG: command '%s' split without a merge rule", req->cmd->name);
    abort();
}

/* Sends every fragment: pending is set first, since a fragment can complete
 * (with an error) inside backend_send. */
static void send_fragments(request *req, uint64_t hint, const buf *parts, const size_t *part_off)
{
    /* The last send may complete and free the request: use locals. */
    size_t n = req->nfrags;
    fragment *frags = req->frags;
    req->pending = n;
    for (size_t i = 0; i < n; i++)
        backend_send(srv.shards[frags[i].shard], hint, &frags[i], parts->data + part_off[i],
                     part_off[i + 1] - part_off[i]);
}

/* Splits a multi-key command per shard. key_shard[0..nkeys) are known. */
static void split(request *req, const command *cmd, size_t argc, const resp_arg *argv, size_t nkeys,
                  uint64_t hint)
{
    (void)argc;
    size_t step = (size_t)cmd->split_step;
    int *frag_of_shard = malloc(srv.nshards * sizeof(int));
    req->key_order = malloc(2 * nkeys * sizeof(size_t));
    if (!frag_of_shard || !req->key_order) {
        free(frag_of_shard);
        reply_error(req, "ERR out of memory splitting command");
        return;
    }
    for (size_t s = 0; s < srv.nshards; s++)
        frag_of_shard[s] = -1;
    size_t nfrags = 0;
    for (size_t i = 0; i < nkeys; i++)
        if (frag_of_shard[key_shard[i]] < 0)
            frag_of_shard[key_shard[i]] = (int)nfrags++;
    req->frags = calloc(nfrags, sizeof(fragment));
    size_t *part_off = malloc((nfrags + 1) * sizeof(size_t));
    if (!req->frags || !part_off) {
        free(frag_of_shard);
        free(part_off);
        reply_error(req, "ERR out of memory splitting command");
        return;
    }
    req->nfrags = nfrags;
    req->nkeys = nkeys;
    for (size_t i = 0; i < nkeys; i++) {
        size_t fi = (size_t)frag_of_shard[key_shard[i]];
        req->key_order[2 * i] = fi;
        req->key_order[2 * i + 1] = req->frags[fi].nkeys++;
        req->frags[fi].shard = key_shard[i];
    }
    size_t first = 0;
    for (size_t fi = 0; fi < nfrags; fi++) {
        req->frags[fi].first_key = first;
        first += req->frags[fi].nkeys;
        req->frags[fi].req = req;
        req->frags[fi].done = part_done;
    }
    /* Encode each fragment: the command name as the client sent it, then its
     * keys (with their values for MSET) in the client's order. */
    scratch.start = scratch.end = 0;
    int fail = 0;
    for (size_t fi = 0; fi < nfrags && !fail; fi++) {
        part_off[fi] = buf_len(&scratch);
        fail |= buf_append_header(&scratch, '*', (int64_t)(1 + req->frags[fi].nkeys * step)) < 0;
        fail |= buf_append_bulk(&scratch, argv[0].ptr, argv[0].len) < 0;
        for (size_t i = 0; i < nkeys && !fail; i++) {
            if (req->key_order[2 * i] != fi)
                continue;
            for (size_t a = 0; a < step; a++)
                fail |= buf_append_bulk(&scratch, argv[key_pos[i] + a].ptr,
                                        argv[key_pos[i] + a].len) < 0;
        }
    }
    part_off[nfrags] = buf_len(&scratch);
    free(frag_of_shard);
    if (fail) {
        free(part_off);
        reply_error(req, "ERR out of memory splitting command");
        return;
    }
    send_fragments(req, hint, &scratch, part_off);
    free(part_off);
}

/* Sends the same request to every shard (DBSIZE), merged by cmd->merge. */
static void fanout(request *req, size_t argc, const resp_arg *argv, const char *raw, size_t raw_len,
                   uint64_t hint)
{
    req->frags = calloc(srv.nshards, sizeof(fragment));
    if (!req->frags) {
        reply_error(req, "ERR out of memory");
        return;
    }
    if (!raw) {
        scratch.start = scratch.end = 0;
        if (encode(&scratch, argc, argv) < 0) {
            reply_error(req, "ERR out of memory");
            return;
        }
        raw = buf_head(&scratch);
        raw_len = buf_len(&scratch);
    }
    req->nfrags = srv.nshards;
    for (size_t i = 0; i < srv.nshards; i++) {
        req->frags[i].req = req;
        req->frags[i].done = part_done;
        req->frags[i].shard = (uint32_t)i;
    }
    /* The last send may complete and free the request: use locals. */
    size_t n = req->nfrags;
    fragment *frags = req->frags;
    req->pending = n;
    for (size_t i = 0; i < n; i++)
        backend_send(srv.shards[i], hint, &frags[i], raw, raw_len);
}

static void migrate_first(request *req, size_t argc, const resp_arg *argv, const char *raw,
                          size_t raw_len);

static void route(request *req, size_t argc, const resp_arg *argv, const char *raw, size_t raw_len,
                  uint64_t hint)
{
    char w[64];
    const command *cmd = command_lookup(argv[0].ptr, argv[0].len);
    if (!cmd) {
        srv.stats.errors_unknown++;
        char args[200];
        size_t o = 0;
        args[0] = '\0';
        for (size_t i = 1; i < argc && o < sizeof(args) - 80; i++) {
            char a[64];
            o +=
                (size_t)snprintf(args + o, sizeof(args) - o, "'%s' ", word(&argv[i], a, sizeof(a)));
        }
        reply_error(req, "ERR unknown command '%s', with args beginning with: %s",
                    word(&argv[0], w, sizeof(w)), args);
        return;
    }
    if (command_check_arity(cmd, argc) < 0) {
        srv.stats.errors_arity++;
        reply_error(req, "ERR wrong number of arguments for '%s' command", cmd->name);
        return;
    }
    const command *top = cmd;
    if (cmd->nsubcommands) {
        const command *sub = command_subcommand(cmd, argc, argv);
        if (!sub) {
            srv.stats.errors_unknown++;
            char upper[64];
            size_t n = strlen(cmd->name);
            for (size_t i = 0; i <= n && i < sizeof(upper) - 1; i++)
                upper[i] = (char)(cmd->name[i] >= 'a' && cmd->name[i] <= 'z' ? cmd->name[i] - 32
                                                                             : cmd->name[i]);
            upper[sizeof(upper) - 1] = '\0';
            reply_error(req, "ERR unknown subcommand '%s'. Try %s HELP.",
                        argc > 1 ? word(&argv[1], w, sizeof(w)) : "", upper);
            return;
        }
        if (command_check_arity(sub, argc) < 0) {
            srv.stats.errors_arity++;
            reply_error(req, "ERR wrong number of arguments for '%s' command", sub->name);
            return;
        }
        cmd = sub;
    }
    req->cmd = cmd;
    if (srv.cfg->requirepass && req->session && !req->session->authenticated &&
        cmd->id != CMD_AUTH && cmd->id != CMD_HELLO && cmd->id != CMD_QUIT) {
        srv.stats.errors_noauth++;
        reply_error(req, "NOAUTH Authentication required.");
        return;
    }
    switch (cmd->cls) {
    case COMMAND_UNSUPPORTED:
        srv.stats.errors_unsupported++;
        reply_error(req, "ERR unsupported command '%s' in ringproxy", cmd->name);
        return;
    case COMMAND_LOCAL:
        if (cmd->id == CMD_TIME || top->id == CMD_COMMAND) {
            /* Any shard knows the time and the command set. */
            forward(req, (uint32_t)(hint % srv.nshards), argc, argv, raw, raw_len, hint);
            return;
        }
        if (cmd->id == CMD_DBSIZE) {
            fanout(req, argc, argv, raw, raw_len, hint);
            return;
        }
        admin_execute(req, cmd, argc, argv);
        return;
    case COMMAND_FANOUT:
        fanout(req, argc, argv, raw, raw_len, hint);
        return;
    case COMMAND_FORWARD:
    case COMMAND_SPLIT:
    case COMMAND_SAME_SHARD:
        break;
    }
    if (ensure_key_cap(argc) < 0) {
        reply_error(req, "ERR out of memory");
        return;
    }
    size_t nkeys = 0;
    char err[200];
    if (command_keys(cmd, argc, argv, key_pos, &nkeys, err, sizeof(err)) < 0) {
        reply_error(req, "%s", err);
        return;
    }
    if (nkeys == 0) {
        forward(req, (uint32_t)(hint % srv.nshards), argc, argv, raw, raw_len, hint);
        return;
    }
    int same = 1, must_move = 0;
    int moving = rebalance_running() && !req->migrated;
    for (size_t i = 0; i < nkeys; i++) {
        uint32_t h = key_hash(&argv[key_pos[i]]);
        key_shard[i] = ring_lookup(srv.ring, h);
        same &= key_shard[i] == key_shard[0];
        if (moving) {
            shard *old = rebalance_old_owner(h);
            must_move |= old && old != srv.shards[key_shard[i]];
        }
    }
    if (!same && cmd->cls != COMMAND_SPLIT) {
        srv.stats.errors_crossslot++;
        reply_error(req,
                    "CROSSSLOT Keys in request don't hash to the same shard (use {hash tags})");
        return;
    }
    if (must_move) {
        req->hint = hint;
        migrate_first(req, argc, argv, raw, raw_len);
        return;
    }
    if (same)
        forward(req, key_shard[0], argc, argv, raw, raw_len, hint);
    else
        split(req, cmd, argc, argv, nkeys, hint);
}

void router_dispatch(request *req, size_t argc, const resp_arg *argv, const char *raw,
                     size_t raw_len, uint64_t hint)
{
    srv.stats.commands++;
    route(req, argc, argv, raw, raw_len, hint);
}

/* ---- moving keys before serving them (rebalancing) ---- */

/* Scanner for requests routed again from their saved bytes. */
static resp_request rescan;
static int rescan_ready;

/* Parses req->deferred. 0, or -1 after answering the request with an error. */
static int parse_deferred(request *req)
{
    if (!rescan_ready) {
        resp_request_init(&rescan, NULL);
        rescan_ready = 1;
    }
    if (resp_request_scan(&rescan, buf_head(&req->deferred), buf_len(&req->deferred)) != RESP_OK) {
        reply_error(req, "ERR internal error: saved request does not parse");
        return -1;
    }
    return 0;
}

static void drop_fragments(request *req)
{
    for (size_t i = 0; i < req->nfrags; i++)
        buf_free(&req->frags[i].reply);
    free(req->frags);
    req->frags = NULL;
    req->nfrags = 0;
}

/* The keys are on their new shards: route the saved request by the new ring. */
static void route_again(request *req)
{
    drop_fragments(req);
    req->migrated = 1;
    if (parse_deferred(req) < 0)
        return;
    route(req, rescan.argc, rescan.argv, buf_head(&req->deferred), buf_len(&req->deferred),
          req->hint);
}

/* The DEL of stale source copies after a BUSYKEY: counts what it deleted,
 * so a copy the mover deleted first is not counted twice. */
static void stale_del_done(fragment *f, const char *reply, size_t len)
{
    if (len > 1 && reply[0] == ':')
        rebalance_count_on_demand(0, (size_t)strtoull(reply + 1, NULL, 10));
    buf_free(&f->reply);
    free(f);
}

static void migrate_part_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    if (len >= 1 && reply[0] == '+') {
        if (len >= 3 && memcmp(reply, "+OK", 3) == 0)
            rebalance_count_on_demand(f->nkeys, 0);
    } else if (len >= 1 && reply[0] == '-' && memmem(reply, len, "BUSYKEY", 7)) {
        /* MIGRATE passes the target's RESTORE error on inside its own:
         * "-ERR Target instance replied with error: BUSYKEY ...". */
        /* The target already holds a copy written after the switch; the
         * source's is stale. Keys that did move are gone from the source, so
         * deleting them all there is safe. */
        fragment *del = calloc(1, sizeof(*del));
        if (del) {
            del->done = stale_del_done;
            backend_send(f->aux, req->hint, del, buf_head(&f->reply), buf_len(&f->reply));
        }
    } else if (!req->migrate_error) {
        size_t n = len > 2 && reply[0] == '-' ? len - 3 : len;
        req->migrate_error = strndup(reply[0] == '-' ? reply + 1 : reply, n > 300 ? 300 : n);
    }
    if (--req->pending > 0)
        return;
    if (!req->owner) {
        req->on_done(req, NULL, 0);
        return;
    }
    if (req->migrate_error) {
        reply_error(req, "ERR cannot move the key to its new shard (rebalancing): %s",
                    req->migrate_error);
        return;
    }
    route_again(req);
}

/* Appends one MIGRATE ... KEYS command for the keys of group g. */
static int encode_migrate(buf *out, const shard *target, const resp_arg *argv,
                          const size_t *group_of_key, size_t g, size_t nkeys_in_group)
{
    char port[8], timeout[16];
    int pl = snprintf(port, sizeof(port), "%u", (unsigned)target->port);
    int tl = snprintf(timeout, sizeof(timeout), "%d", srv.cfg->migrate_timeout_ms);
    const char *pass = srv.cfg->backend_password;
    int fail = buf_append_header(out, '*', (int64_t)(7 + (pass ? 2 : 0) + nkeys_in_group)) < 0;
    fail |= buf_append_bulk(out, "MIGRATE", 7) < 0;
    fail |= buf_append_bulk(out, target->host, strlen(target->host)) < 0;
    fail |= buf_append_bulk(out, port, (size_t)pl) < 0;
    fail |= buf_append_bulk(out, "", 0) < 0;
    fail |= buf_append_bulk(out, "0", 1) < 0;
    fail |= buf_append_bulk(out, timeout, (size_t)tl) < 0;
    if (pass) {
        /* The source authenticates to the target with the shards' password. */
        fail |= buf_append_bulk(out, "AUTH", 4) < 0;
        fail |= buf_append_bulk(out, pass, strlen(pass)) < 0;
    }
    fail |= buf_append_bulk(out, "KEYS", 4) < 0;
    for (size_t k = 0; !fail && group_of_key[2 * k] != (size_t)-2; k++)
        if (group_of_key[2 * k] == g)
            fail |= buf_append_bulk(out, argv[group_of_key[2 * k + 1]].ptr,
                                    argv[group_of_key[2 * k + 1]].len) < 0;
    return fail ? -1 : 0;
}

/* Sends MIGRATE for every key of the saved request whose owner changed,
 * grouped by (old owner, new owner); the request is routed again once all
 * have answered. */
static void start_migration(request *req)
{
    if (!req->owner) {
        req->on_done(req, NULL, 0);
        return;
    }
    if (parse_deferred(req) < 0)
        return;
    size_t argc = rescan.argc;
    const resp_arg *argv = rescan.argv;
    size_t nkeys = 0;
    char err[200];
    if (ensure_key_cap(argc) < 0 ||
        command_keys(req->cmd, argc, argv, key_pos, &nkeys, err, sizeof(err)) < 0) {
        reply_error(req, "ERR internal error: keys of a saved request");
        return;
    }
    /* group_of_key: pairs (group, argv index) for keys that move, ended by -2 */
    size_t *group_of_key = malloc((2 * nkeys + 2) * sizeof(size_t));
    shard **src = malloc((nkeys + 1) * sizeof(shard *)),
          **dst = malloc((nkeys + 1) * sizeof(shard *));
    size_t *count = calloc(nkeys + 1, sizeof(size_t));
    if (!group_of_key || !src || !dst || !count) {
        free(group_of_key);
        free(src);
        free(dst);
        free(count);
        reply_error(req, "ERR out of memory");
        return;
    }
    size_t ngroups = 0, nmove = 0;
    for (size_t i = 0; i < nkeys; i++) {
        uint32_t h = key_hash(&argv[key_pos[i]]);
        shard *to = srv.shards[ring_lookup(srv.ring, h)];
        shard *from = rebalance_old_owner(h);
        if (!from || from == to)
            continue;
        size_t g = 0;
        while (g < ngroups && !(src[g] == from && dst[g] == to))
            g++;
        if (g == ngroups) {
            src[g] = from;
            dst[g] = to;
            ngroups++;
        }
        count[g]++;
        group_of_key[2 * nmove] = g;
        group_of_key[2 * nmove + 1] = key_pos[i];
        nmove++;
    }
    group_of_key[2 * nmove] = (size_t)-2;
    if (ngroups == 0) {
        /* The migration ended meanwhile. */
        free(group_of_key);
        free(src);
        free(dst);
        free(count);
        route_again(req);
        return;
    }
    req->frags = calloc(ngroups, sizeof(fragment));
    size_t *part_off = malloc((ngroups + 1) * sizeof(size_t));
    int fail = !req->frags || !part_off;
    scratch.start = scratch.end = 0;
    for (size_t g = 0; g < ngroups && !fail; g++) {
        fragment *f = &req->frags[g];
        f->req = req;
        f->done = migrate_part_done;
        f->nkeys = count[g];
        f->aux = src[g];
        part_off[g] = buf_len(&scratch);
        fail |= encode_migrate(&scratch, dst[g], argv, group_of_key, g, count[g]) < 0;
        /* The DEL to send if the target answers BUSYKEY. */
        fail |= buf_append_header(&f->reply, '*', (int64_t)(1 + count[g])) < 0;
        fail |= buf_append_bulk(&f->reply, "DEL", 3) < 0;
        for (size_t k = 0; k < nmove && !fail; k++)
            if (group_of_key[2 * k] == g)
                fail |= buf_append_bulk(&f->reply, argv[group_of_key[2 * k + 1]].ptr,
                                        argv[group_of_key[2 * k + 1]].len) < 0;
    }
    if (!fail)
        part_off[ngroups] = buf_len(&scratch);
    free(group_of_key);
    free(dst);
    free(count);
    if (fail) {
        free(src);
        free(part_off);
        drop_fragments(req);
        reply_error(req, "ERR out of memory");
        return;
    }
    req->nfrags = ngroups;
    fragment *frags = req->frags;
    uint64_t hint = req->hint;
    req->pending = ngroups;
    for (size_t g = 0; g < ngroups; g++)
        backend_send(src[g], hint, &frags[g], scratch.data + part_off[g],
                     part_off[g + 1] - part_off[g]);
    free(src);
    free(part_off);
}

/* Saves the request's bytes (its argv points into the client's buffer,
 * which moves on) and moves its keys first. */
static void migrate_first(request *req, size_t argc, const resp_arg *argv, const char *raw,
                          size_t raw_len)
{
    int fail =
        raw ? buf_append(&req->deferred, raw, raw_len) < 0 : encode(&req->deferred, argc, argv) < 0;
    if (fail) {
        reply_error(req, "ERR out of memory");
        return;
    }
    if (rebalance_wait_barrier(req, start_migration))
        return;
    start_migration(req);
}
