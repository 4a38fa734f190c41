/* Request routing: single-shard forwarding, multi-key split (merged in
 * merge.c), fan-out, SCAN and RANDOMKEY shard by shard, cross-shard checks,
 * local answers, and the hand-off of transactions and blocking commands
 * (txn.c) and subscriptions (pubsub.c). */
#include "proxy/router.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "proxy/ack.h"
#include "proxy/admin.h"
#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/log.h"
#include "proxy/merge.h"
#include "proxy/pubsub.h"
#include "proxy/rebalance.h"
#include "proxy/sentinel.h"
#include "proxy/server.h"
#include "proxy/txn.h"

/* Scratch space reused by every request: key positions and their shards,
 * and an encoding buffer. Single-threaded, so one of each suffices. */
static size_t *key_pos;
static uint32_t *key_shard;
static size_t key_cap;
static buf scratch;

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

/* The request as multibulk bytes: raw as received, or argv encoded into
 * scratch (valid until scratch is used again). NULL when out of memory. */
static const char *request_bytes(size_t argc, const resp_arg *argv, const char *raw, size_t raw_len,
                                 size_t *len)
{
    if (raw) {
        *len = raw_len;
        return raw;
    }
    scratch.start = scratch.end = 0;
    if (encode(&scratch, argc, argv) < 0)
        return NULL;
    *len = buf_len(&scratch);
    return buf_head(&scratch);
}

/* Sends a fragment to shard i: over the client's reserved connection while
 * its transaction or WATCH is on that shard (so it runs in the client's
 * order), else over the shared pool. */
static void send_to_shard(request *req, uint32_t i, uint64_t hint, fragment *f, const char *bytes,
                          size_t len)
{
    backend_conn *reserved = txn_conn_for(req->session, srv.shards[i]);
    if (reserved)
        backend_reserved_send(reserved, f, bytes, len);
    else {
        shard *target = sentinel_read_shard(i, bytes, len);
        if (!ack_send(target, hint, f, bytes, len))
            backend_send(target, hint, f, bytes, len);
    }
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
    size_t len;
    const char *bytes = request_bytes(argc, argv, raw, raw_len, &len);
    if (!bytes) {
        request_error(req, "ERR out of memory");
        return;
    }
    req->pending = 1;
    send_to_shard(req, shard_index, hint, f, bytes, len);
}

/* ---- split and fan-out ---- */

static void part_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    if (buf_append_msg(&f->reply, reply, len) < 0) {
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
    merge_replies(req);
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
        send_to_shard(req, frags[i].shard, hint, &frags[i], parts->data + part_off[i],
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
        request_error(req, "ERR out of memory splitting command");
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
        request_error(req, "ERR out of memory splitting command");
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
        request_error(req, "ERR out of memory splitting command");
        return;
    }
    send_fragments(req, hint, &scratch, part_off);
    free(part_off);
}

/* Sends the same request to every shard (DBSIZE, KEYS, SCRIPT LOAD ...),
 * merged by cmd->merge. */
static void fanout(request *req, size_t argc, const resp_arg *argv, const char *raw, size_t raw_len,
                   uint64_t hint)
{
    req->frags = calloc(srv.nshards, sizeof(fragment));
    if (!req->frags) {
        request_error(req, "ERR out of memory");
        return;
    }
    if (!raw) {
        scratch.start = scratch.end = 0;
        if (encode(&scratch, argc, argv) < 0) {
            request_error(req, "ERR out of memory");
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
        send_to_shard(req, (uint32_t)i, hint, &frags[i], raw, raw_len);
}

/* ---- SCAN and RANDOMKEY: the keyspace, one shard after the other ---- */

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
    if (len > 8 && memcmp(reply, "*2\r\n$", 5) == 0) {
        const char *crlf = memchr(reply + 5, '\r', len - 5);
        long long n = crlf ? strtoll(reply + 5, NULL, 10) : -1;
        size_t body = crlf ? (size_t)(crlf - reply) + 2 : len;
        if (n > 0 && n < 21 && body + (size_t)n + 2 <= len) {
            cursor = reply + body;
            cursor_len = (size_t)n;
            pos = body + (size_t)n + 2;
        }
    }
    if (!cursor || !req->owner) {
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
    int fail = buf_append(&b, "*2\r\n", 4) < 0 || buf_append_bulk(&b, head, (size_t)hl) < 0 ||
               buf_append(&b, reply + pos, len - pos) < 0;
    if (fail)
        request_error(req, "ERR out of memory");
    else
        req->on_done(req, buf_head(&b), buf_len(&b));
    buf_free(&b);
}

static void scan(request *req, size_t argc, const resp_arg *argv, uint64_t hint)
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
    scratch.start = scratch.end = 0;
    int fail = buf_append_header(&scratch, '*', (int64_t)argc) < 0 ||
               buf_append_bulk(&scratch, argv[0].ptr, argv[0].len) < 0 ||
               buf_append_bulk(&scratch, digits, (size_t)n) < 0;
    for (size_t i = 2; i < argc && !fail; i++)
        fail = buf_append_bulk(&scratch, argv[i].ptr, argv[i].len) < 0;
    if (fail) {
        request_error(req, "ERR out of memory");
        return;
    }
    fragment *f = &req->single;
    f->req = req;
    f->done = scan_done;
    f->shard = shard_index;
    req->pending = 1;
    send_to_shard(req, shard_index, hint, f, buf_head(&scratch), buf_len(&scratch));
}

static const char RANDOMKEY_REQUEST[] = "*1\r\n$9\r\nRANDOMKEY\r\n";

/* A shard answered RANDOMKEY: nil means that shard is empty, so the next
 * one is asked, until one has a key or all were asked. f->nkeys counts the
 * shards asked so far. */
static void randomkey_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    if (req->owner && len == 5 && memcmp(reply, "$-1\r\n", 5) == 0 && f->nkeys + 1 < srv.nshards) {
        f->nkeys++;
        f->shard = (uint32_t)((f->shard + 1) % srv.nshards);
        send_to_shard(req, f->shard, req->hint, f, RANDOMKEY_REQUEST,
                      sizeof(RANDOMKEY_REQUEST) - 1);
        return;
    }
    req->pending = 0;
    req->on_done(req, reply, len);
}

/* xorshift64*: RANDOMKEY's first shard only needs to be spread out. */
static uint32_t random_shard(void)
{
    static uint64_t state;
    if (!state)
        state = (srv.now_us ^ ((uint64_t)getpid() << 32)) | 1;
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (uint32_t)(((state * 2685821657736338717ull) >> 32) % srv.nshards);
}

static void randomkey(request *req, uint64_t hint)
{
    fragment *f = &req->single;
    f->req = req;
    f->done = randomkey_done;
    f->shard = random_shard();
    f->nkeys = 0;
    req->hint = hint;
    req->pending = 1;
    send_to_shard(req, f->shard, hint, f, RANDOMKEY_REQUEST, sizeof(RANDOMKEY_REQUEST) - 1);
}

/* ---- commands whose class alone does not say where they go ---- */

/* The shard of EVAL, EVALSHA and FCALL calls that name no key. */
static uint32_t script_shard(void)
{
    const char *name = srv.cfg->script_default_shard;
    for (size_t i = 0; name && i < srv.nshards; i++)
        if (strcmp(srv.shards[i]->name, name) == 0)
            return (uint32_t)i;
    return 0; /* unset: the first shard of the file */
}

/* Where a request's keys are. Fills key_pos and key_shard, *nkeys, *same
 * (all on key_shard[0]) and *must_move (a key's owner changes in the
 * running rebalance). 0, or -1 after answering req with an error. */
static int locate_keys(request *req, const command *cmd, size_t argc, const resp_arg *argv,
                       size_t *nkeys, int *same, int *must_move)
{
    if (ensure_key_cap(argc) < 0) {
        request_error(req, "ERR out of memory");
        return -1;
    }
    char err[200];
    *nkeys = 0;
    if (command_keys(cmd, argc, argv, key_pos, nkeys, err, sizeof(err)) < 0) {
        request_error(req, "%s", err);
        return -1;
    }
    *same = 1;
    *must_move = 0;
    int moving = rebalance_running() && !req->migrated;
    for (size_t i = 0; i < *nkeys; i++) {
        uint32_t h = key_hash(&argv[key_pos[i]]);
        key_shard[i] = ring_lookup(srv.ring, h);
        *same &= key_shard[i] == key_shard[0];
        if (moving) {
            shard *old = rebalance_old_owner(h);
            *must_move |= old && old != srv.shards[key_shard[i]];
        }
    }
    return 0;
}

/* A command whose only key is argv[1] and that the router needs to know
 * nothing more about: not blocking, not a script, not PUBLISH. */
static inline int is_single_key(const command *cmd)
{
    return cmd->cls == COMMAND_FORWARD && cmd->id == CMD_OTHER && cmd->keys == KEYS_RANGE &&
           cmd->first_key == 1 && cmd->last_key == 1;
}

/* Commands a subscribed client may send, as in Redis. */
static int allowed_subscribed(const command *cmd)
{
    switch (cmd->id) {
    case CMD_SUBSCRIBE:
    case CMD_PSUBSCRIBE:
    case CMD_UNSUBSCRIBE:
    case CMD_PUNSUBSCRIBE:
    case CMD_PING:
    case CMD_QUIT:
    case CMD_RESET:
        return 1;
    default:
        return 0;
    }
}

/* Commands that run at once inside MULTI rather than being queued. */
static int runs_in_multi(const command *cmd)
{
    switch (cmd->id) {
    case CMD_EXEC:
    case CMD_DISCARD:
    case CMD_MULTI:
    case CMD_WATCH:
    case CMD_QUIT:
    case CMD_RESET:
        return 1;
    default:
        return 0;
    }
}

static const char TRYAGAIN_MOVING[] =
    "TRYAGAIN a key of the request is moving to its new shard (rebalancing); retry the "
    "transaction later";

/* A command given between MULTI and EXEC: queued on the transaction's
 * shard, or refused (and the transaction aborted, as Redis aborts one on a
 * command it cannot queue) when one shard cannot run it. */
static void route_in_multi(request *req, const command *cmd, size_t argc, const resp_arg *argv,
                           const char *raw, size_t raw_len)
{
    session *sess = req->session;
    const char *why = NULL;
    switch (cmd->cls) {
    case COMMAND_UNSUPPORTED:
        srv.stats.errors_unsupported++;
        txn_abort(sess);
        request_error(req, "ERR unsupported command '%s' in ringproxy", cmd->name);
        return;
    case COMMAND_LOCAL:
        if (cmd->id != CMD_PING && cmd->id != CMD_ECHO && cmd->id != CMD_TIME)
            why = "the proxy answers it itself";
        break;
    case COMMAND_FANOUT:
    case COMMAND_ITERATE:
        why = "it needs every shard";
        break;
    case COMMAND_PUBSUB:
        why = "subscriptions are not transactional";
        break;
    case COMMAND_TRANSACTION: /* UNWATCH: queued, as Redis does */
    case COMMAND_FORWARD:
    case COMMAND_SPLIT:
    case COMMAND_SAME_SHARD:
        break;
    }
    if (why) {
        txn_abort(sess);
        request_error(req, "ERR '%s' cannot be part of a transaction through ringproxy: %s",
                      cmd->name, why);
        return;
    }
    shard *target = NULL;
    if (cmd->id == CMD_PUBLISH) {
        target = srv.shards[router_shard_of(argv[1].ptr, argv[1].len)];
    } else if (cmd->cls != COMMAND_LOCAL && cmd->cls != COMMAND_TRANSACTION) {
        size_t nkeys;
        int same, must_move;
        if (locate_keys(req, cmd, argc, argv, &nkeys, &same, &must_move) < 0) {
            txn_abort(sess);
            return;
        }
        if (!same) {
            txn_abort(sess);
            srv.stats.errors_crossslot++;
            request_error(
                req, "CROSSSLOT Keys in request don't hash to the same shard (use {hash tags})");
            return;
        }
        if (must_move) {
            txn_abort(sess);
            request_error(req, "%s", TRYAGAIN_MOVING);
            return;
        }
        if (nkeys)
            target = srv.shards[key_shard[0]];
    }
    size_t len;
    const char *bytes = request_bytes(argc, argv, raw, raw_len, &len);
    if (!bytes) {
        txn_abort(sess);
        request_error(req, "ERR out of memory");
        return;
    }
    txn_queue(req, target, bytes, len);
}

/* RESET: the connection's state back to a fresh one's, as Redis does:
 * transaction, WATCH and subscriptions end, the name goes, and with
 * requirepass set the client must AUTH again. */
static void reset(request *req)
{
    session *sess = req->session;
    if (!sess) {
        req->on_done(req, "+RESET\r\n", 8);
        return;
    }
    pubsub_end(sess);
    free(sess->name);
    sess->name = NULL;
    if (srv.cfg->requirepass)
        sess->authenticated = 0;
    txn_reset(req);
}

void router_session_end(session *sess)
{
    pubsub_end(sess);
    txn_end(sess);
}

static void migrate_first(request *req, size_t argc, const resp_arg *argv, const char *raw,
                          size_t raw_len);

static void route(request *req, size_t argc, const resp_arg *argv, const char *raw, size_t raw_len,
                  uint64_t hint)
{
    char w[64];
    session *sess = req->session;
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
        txn_abort(sess);
        request_error(req, "ERR unknown command '%s', with args beginning with: %s",
                      word(&argv[0], w, sizeof(w)), args);
        return;
    }
    if (command_check_arity(cmd, argc) < 0) {
        srv.stats.errors_arity++;
        txn_abort(sess);
        request_error(req, "ERR wrong number of arguments for '%s' command", cmd->name);
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
            txn_abort(sess);
            request_error(req, "ERR unknown subcommand '%s'. Try %s HELP.",
                          argc > 1 ? word(&argv[1], w, sizeof(w)) : "", upper);
            return;
        }
        if (command_check_arity(sub, argc) < 0) {
            srv.stats.errors_arity++;
            txn_abort(sess);
            request_error(req, "ERR wrong number of arguments for '%s' command", sub->name);
            return;
        }
        cmd = sub;
    }
    req->cmd = cmd;
    if (sess) {
        sess->last_cmd = cmd->name;
        sess->last_cmd_us = srv.now_us;
    }
    if (srv.cfg->requirepass && sess && !sess->authenticated && cmd->id != CMD_AUTH &&
        cmd->id != CMD_HELLO && cmd->id != CMD_QUIT && cmd->id != CMD_RESET) {
        srv.stats.errors_noauth++;
        request_error(req, "NOAUTH Authentication required.");
        return;
    }
    /* The common case, decided with a few loads: a one-key command from a
     * client with no transaction or subscription, while no key is moving. */
    int plain = !sess || (!sess->txn && !sess->pubsub);
    if (plain && is_single_key(cmd) && !rebalance_running()) {
        forward(req, ring_lookup(srv.ring, key_hash(&argv[1])), argc, argv, raw, raw_len, hint);
        return;
    }
    if (!plain && pubsub_active(sess) && !allowed_subscribed(cmd)) {
        request_error(req,
                      "ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                      "QUIT / RESET are allowed in this context",
                      cmd->name);
        return;
    }
    if (!plain && txn_in_multi(sess) && !runs_in_multi(cmd)) {
        route_in_multi(req, cmd, argc, argv, raw, raw_len);
        return;
    }
    switch (cmd->cls) {
    case COMMAND_UNSUPPORTED:
        srv.stats.errors_unsupported++;
        request_error(req, "ERR unsupported command '%s' in ringproxy", cmd->name);
        return;
    case COMMAND_LOCAL:
        if (cmd->id == CMD_TIME || top->id == CMD_COMMAND) {
            /* Any shard knows the time and the command set. */
            forward(req, (uint32_t)(hint % srv.nshards), argc, argv, raw, raw_len, hint);
            return;
        }
        if (cmd->id == CMD_RESET) {
            reset(req);
            return;
        }
        if (cmd->id == CMD_PING && pubsub_active(sess)) {
            pubsub_ping(req, argc, argv);
            return;
        }
        admin_execute(req, cmd, argc, argv);
        return;
    case COMMAND_FANOUT:
        if (cmd->id == CMD_FLUSH && !srv.cfg->allow_flush) {
            request_error(req, "ERR '%s' is disabled in ringproxy (allow_flush = no)", cmd->name);
            return;
        }
        fanout(req, argc, argv, raw, raw_len, hint);
        return;
    case COMMAND_ITERATE:
        if (cmd->id == CMD_SCAN)
            scan(req, argc, argv, hint);
        else
            randomkey(req, hint);
        return;
    case COMMAND_PUBSUB:
        if (sess)
            pubsub_command(req, cmd->id, argc, argv);
        else
            request_error(req, "ERR no client");
        return;
    case COMMAND_TRANSACTION:
    case COMMAND_FORWARD:
    case COMMAND_SPLIT:
    case COMMAND_SAME_SHARD:
        break;
    }
    if (cmd->id == CMD_PUBLISH) {
        forward(req, router_shard_of(argv[1].ptr, argv[1].len), argc, argv, raw, raw_len, hint);
        return;
    }
    size_t nkeys;
    int same, must_move;
    if (locate_keys(req, cmd, argc, argv, &nkeys, &same, &must_move) < 0)
        return;
    if (!same && cmd->cls != COMMAND_SPLIT) {
        srv.stats.errors_crossslot++;
        request_error(req,
                      "CROSSSLOT Keys in request don't hash to the same shard (use {hash tags})");
        return;
    }
    if (cmd->cls == COMMAND_TRANSACTION) {
        if (!sess) {
            request_error(req, "ERR no client");
            return;
        }
        if (must_move) {
            request_error(req, "%s", TRYAGAIN_MOVING);
            return;
        }
        size_t len;
        const char *bytes = request_bytes(argc, argv, raw, raw_len, &len);
        if (!bytes) {
            request_error(req, "ERR out of memory");
            return;
        }
        txn_command(req, cmd->id, nkeys ? srv.shards[key_shard[0]] : NULL, bytes, len);
        return;
    }
    if (must_move) {
        req->hint = hint;
        migrate_first(req, argc, argv, raw, raw_len);
        return;
    }
    if (nkeys == 0) {
        uint32_t target = cmd->id == CMD_EVAL ? script_shard() : (uint32_t)(hint % srv.nshards);
        forward(req, target, argc, argv, raw, raw_len, hint);
        return;
    }
    uint64_t block_us;
    if (sess && command_blocking(cmd, argc, argv, &block_us)) {
        size_t len;
        const char *bytes = request_bytes(argc, argv, raw, raw_len, &len);
        if (!bytes) {
            request_error(req, "ERR out of memory");
            return;
        }
        txn_blocking(req, srv.shards[key_shard[0]], block_us, bytes, len);
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
        request_error(req, "ERR internal error: saved request does not parse");
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
        request_error(req, "ERR cannot move the key to its new shard (rebalancing): %s",
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
        request_error(req, "ERR internal error: keys of a saved request");
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
        request_error(req, "ERR out of memory");
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
        request_error(req, "ERR out of memory");
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
        request_error(req, "ERR out of memory");
        return;
    }
    if (rebalance_wait_barrier(req, start_migration))
        return;
    start_migration(req);
}
