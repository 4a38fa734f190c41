/* Request routing: single-shard forwarding, multi-key split (merged in
 * merge.c), fan-out, cross-shard checks, local answers, and the hand-off of
 * SCAN and RANDOMKEY (keyspace.c), transactions and blocking commands
 * (txn.c), subscriptions (pubsub.c) and keys that must move first
 * (migrate.c). */
#include "proxy/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/admin.h"
#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/keyspace.h"
#include "proxy/log.h"
#include "proxy/merge.h"
#include "proxy/migrate.h"
#include "proxy/pubsub.h"
#include "proxy/rebalance.h"
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
    buf_reset(&scratch);
    if (encode(&scratch, argc, argv) < 0)
        return NULL;
    *len = buf_len(&scratch);
    return buf_head(&scratch);
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
    txn_send_to_shard(req, shard_index, hint, f, bytes, len);
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
        txn_send_to_shard(req, frags[i].shard, hint, &frags[i], parts->data + part_off[i],
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
    buf_reset(&scratch);
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
        buf_reset(&scratch);
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
        txn_send_to_shard(req, (uint32_t)i, hint, &frags[i], raw, raw_len);
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
        uint32_t h = server_key_hash(argv[key_pos[i]].ptr, argv[key_pos[i]].len);
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
        target = srv.shards[server_shard_of_key(argv[1].ptr, argv[1].len)];
    } else if (cmd->cls != COMMAND_LOCAL && cmd->cls != COMMAND_TRANSACTION) {
        size_t nkeys;
        int same, must_move;
        if (locate_keys(req, cmd, argc, argv, &nkeys, &same, &must_move) < 0) {
            txn_abort(sess);
            return;
        }
        if (!same) {
            txn_abort(sess);
            request_crossslot(req, REQUEST_KEYS_APART);
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
        forward(req, server_shard_of_key(argv[1].ptr, argv[1].len), argc, argv, raw, raw_len, hint);
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
            keyspace_scan(req, argc, argv, hint);
        else
            keyspace_randomkey(req, hint);
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
        forward(req, server_shard_of_key(argv[1].ptr, argv[1].len), argc, argv, raw, raw_len, hint);
        return;
    }
    size_t nkeys;
    int same, must_move;
    if (locate_keys(req, cmd, argc, argv, &nkeys, &same, &must_move) < 0)
        return;
    if (!same && cmd->cls != COMMAND_SPLIT) {
        request_crossslot(req, REQUEST_KEYS_APART);
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

/* migrate.c calls this back once the request's keys are on their new
 * shards: route the saved request by the new ring. */
static void route_moved(request *req, size_t argc, const resp_arg *argv, const char *raw,
                        size_t raw_len)
{
    route(req, argc, argv, raw, raw_len, req->hint);
}

/* Moves the request's keys to their new shards first (migrate.c), then
 * routes it again. */
static void migrate_first(request *req, size_t argc, const resp_arg *argv, const char *raw,
                          size_t raw_len)
{
    size_t len;
    const char *bytes = request_bytes(argc, argv, raw, raw_len, &len);
    if (!bytes) {
        request_error(req, "ERR out of memory");
        return;
    }
    migrate_keys_first(req, bytes, len, route_moved);
}
