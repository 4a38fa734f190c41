/* Request routing: route() checks a request against the command table,
 * runs the gates its command's flags ask for (AUTH, subscribed, MULTI) and
 * calls the handler its row names (route_handlers). Handlers here forward
 * to one shard, split per shard (merged in merge.c), fan out (SCRIPT KILL
 * and FUNCTION KILL over connections of their own), or hand off
 * SCAN and RANDOMKEY (keyspace.c), transactions and blocking commands
 * (txn.c), subscriptions (pubsub.c), local answers (admin.c) and keys that
 * must move first (migrate.c). */
#include "proxy/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/access.h"
#include "proxy/admin.h"
#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/keyspace.h"
#include "proxy/lock.h"
#include "proxy/log.h"
#include "proxy/merge.h"
#include "proxy/migrate.h"
#include "proxy/pause.h"
#include "proxy/pubsub.h"
#include "proxy/rebalance.h"
#include "proxy/server.h"
#include "proxy/twopc.h"
#include "proxy/slowlog.h"
#include "proxy/txn.h"

/* Scratch space reused by every request: key positions and their shards,
 * and an encoding buffer. Single-threaded, so one of each suffices. */
static size_t *key_pos;
static uint32_t *key_shard;
static size_t key_cap;
static buf scratch;

/* One request on its way through the router: what the client sent, the
 * command it names, and (once located) where its keys are. Built once per
 * request; every step of the routing takes it. */
typedef struct routed {
    request *req;
    const command *cmd;   /* resolved to its subcommand; NULL until looked up */
    size_t argc;          /* the arguments, pointing into the client's buffer */
    const resp_arg *argv; /* (or into req->saved_request when routed again) */
    const char *raw;      /* the request's multibulk bytes as received, NULL when it came
                             inline (then encoded from argv when needed) */
    size_t raw_len;
    size_t nkeys;   /* locate_keys: keys found, at key_pos[] on key_shard[] */
    int same_shard; /* locate_keys: all keys on key_shard[0] */
    int must_move;  /* locate_keys: a key's owner changes in the running rebalance */
} routed;

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
    buf_append_header(out, '*', (int64_t)argc);
    for (size_t i = 0; i < argc; i++)
        buf_append_bulk(out, argv[i].ptr, argv[i].len);
    return buf_failed(out) ? -1 : 0;
}

/* request_bytes for a request that came inline: argv encoded into
 * scratch. Kept out of line so the common case inlines. */
static __attribute__((noinline)) const char *encode_to_scratch(const routed *r, size_t *len)
{
    buf_reset(&scratch);
    if (encode(&scratch, r->argc, r->argv) < 0)
        return NULL;
    *len = buf_len(&scratch);
    return buf_head(&scratch);
}

/* The request as multibulk bytes: raw as received, or argv encoded into
 * scratch (valid until scratch is used again). NULL when out of memory. */
static inline const char *request_bytes(const routed *r, size_t *len)
{
    if (r->raw) {
        *len = r->raw_len;
        return r->raw;
    }
    return encode_to_scratch(r, len);
}

static void single_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    req->pending = 0;
    req->on_done(req, reply, len);
}

/* Sends the whole request to one shard. */
static void forward(const routed *r, uint32_t shard_index)
{
    request *req = r->req;
    fragment *f = &req->single;
    f->req = req;
    f->done = single_done;
    f->shard = shard_index;
    size_t len;
    const char *bytes = request_bytes(r, &len);
    if (!bytes) {
        request_error(req, "ERR out of memory");
        return;
    }
    req->pending = 1;
    txn_send_to_shard(req, shard_index, req->hint, f, bytes, len);
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

/* Groups the keys of a split request by shard: one fragment per shard
 * (in the order the shards first appear), each key's slot in its
 * fragment's key list in req->key_order. key_shard[0..nkeys) are known.
 * 0, or -1 when out of memory. */
static int split_plan(request *req, size_t nkeys)
{
    int *frag_of_shard = malloc(srv.nshards * sizeof(int));
    req->key_order = malloc(2 * nkeys * sizeof(size_t));
    if (!frag_of_shard || !req->key_order) {
        free(frag_of_shard);
        return -1;
    }
    for (size_t s = 0; s < srv.nshards; s++)
        frag_of_shard[s] = -1;
    size_t nfrags = 0;
    for (size_t i = 0; i < nkeys; i++)
        if (frag_of_shard[key_shard[i]] < 0)
            frag_of_shard[key_shard[i]] = (int)nfrags++;
    req->frags = calloc(nfrags, sizeof(fragment));
    if (!req->frags) {
        free(frag_of_shard);
        return -1;
    }
    req->nfrags = nfrags;
    req->nkeys = nkeys;
    for (size_t i = 0; i < nkeys; i++) {
        size_t fi = (size_t)frag_of_shard[key_shard[i]];
        req->key_order[2 * i] = fi;
        req->key_order[2 * i + 1] = req->frags[fi].nkeys++;
        req->frags[fi].shard = key_shard[i];
    }
    free(frag_of_shard);
    size_t first = 0;
    for (size_t fi = 0; fi < nfrags; fi++) {
        req->frags[fi].first_key = first;
        first += req->frags[fi].nkeys;
        req->frags[fi].req = req;
        req->frags[fi].done = part_done;
    }
    return 0;
}

/* Encodes each fragment of a split request into scratch, fragment fi at
 * part_off[fi]: the command name as the client sent it, then its keys
 * (with their values for MSET) in the client's order. 0, or -1 when out
 * of memory. */
static int split_encode(const routed *r, size_t *part_off)
{
    const request *req = r->req;
    const resp_arg *argv = r->argv;
    size_t step = (size_t)r->cmd->split_step;
    buf_reset(&scratch);
    for (size_t fi = 0; fi < req->nfrags; fi++) {
        part_off[fi] = buf_len(&scratch);
        buf_append_header(&scratch, '*', (int64_t)(1 + req->frags[fi].nkeys * step));
        buf_append_bulk(&scratch, argv[0].ptr, argv[0].len);
        for (size_t i = 0; i < r->nkeys; i++) {
            if (req->key_order[2 * i] != fi)
                continue;
            for (size_t a = 0; a < step; a++)
                buf_append_bulk(&scratch, argv[key_pos[i] + a].ptr, argv[key_pos[i] + a].len);
        }
    }
    part_off[req->nfrags] = buf_len(&scratch);
    return buf_failed(&scratch) ? -1 : 0;
}

/* Splits a multi-key command per shard; merge.c joins the replies. */
static void split(const routed *r)
{
    request *req = r->req;
    size_t *part_off = NULL;
    if (split_plan(req, r->nkeys) < 0 || !(part_off = malloc((req->nfrags + 1) * sizeof(size_t))) ||
        split_encode(r, part_off) < 0) {
        free(part_off);
        request_error(req, "ERR out of memory splitting command");
        return;
    }
    send_fragments(req, req->hint, &scratch, part_off);
    free(part_off);
}

/* Gives req one fragment per shard, each completed by done, and sets
 * pending to their number (first: a fragment can complete inside its
 * send). The request's bytes, or NULL after answering with an error. */
static const char *frags_for_every_shard(const routed *r, fragment_done_fn done, size_t *len)
{
    request *req = r->req;
    req->frags = calloc(srv.nshards, sizeof(fragment));
    const char *bytes = req->frags ? request_bytes(r, len) : NULL;
    if (!bytes) {
        request_error(req, "ERR out of memory");
        return NULL;
    }
    req->nfrags = srv.nshards;
    for (size_t i = 0; i < srv.nshards; i++) {
        req->frags[i].req = req;
        req->frags[i].done = done;
        req->frags[i].shard = (uint32_t)i;
    }
    req->pending = req->nfrags;
    return bytes;
}

/* Sends the same request to every shard (DBSIZE, KEYS, SCRIPT LOAD ...),
 * merged by cmd->merge. */
static void fanout(const routed *r)
{
    request *req = r->req;
    size_t len;
    const char *bytes = frags_for_every_shard(r, part_done, &len);
    if (!bytes)
        return;
    /* The last send may complete and free the request: use locals. */
    size_t n = req->nfrags;
    fragment *frags = req->frags;
    uint64_t hint = req->hint;
    for (size_t i = 0; i < n; i++)
        txn_send_to_shard(req, (uint32_t)i, hint, &frags[i], bytes, len);
}

/* ---- SCRIPT KILL, FUNCTION KILL ---- */

/* A kill's fragment is answered: its connection has done its one job. */
static void kill_part_done(fragment *f, const char *reply, size_t len)
{
    /* The reply lies in the connection's read buffer, which closing it
     * frees: it is taken first (and the request, f with it, may be freed
     * then). Closing from inside the connection's own callbacks is safe:
     * backend.c frees it once they return; one already gone is left as is. */
    backend_conn *conn = f->conn;
    f->conn = NULL;
    part_done(f, reply, len);
    backend_reserved_close(conn);
}

/* Sends a kill to every shard, each over a connection opened for it alone
 * and closed on its reply: the script to stop runs on the shared
 * connection of its caller, which answers nothing behind it until the
 * script ends, so a kill sent there would wait for what it is to end.
 * request_timeout bounds each connection as any reserved one; merged by
 * cmd->merge (the shard running it answers OK, the others NOTBUSY). */
static void kill_everywhere(const routed *r)
{
    size_t len;
    const char *bytes = frags_for_every_shard(r, kill_part_done, &len);
    if (!bytes)
        return;
    /* The last part may complete and free the request: use locals. */
    size_t n = r->req->nfrags;
    fragment *frags = r->req->frags;
    for (size_t i = 0; i < n; i++) {
        char err[300];
        frags[i].conn = backend_reserve(srv.shards[i], 0, 0, NULL, NULL, err, sizeof(err));
        if (!frags[i].conn) {
            char reply[320];
            int rlen = snprintf(reply, sizeof(reply), "-ERR %.*s\r\n", 300, err);
            srv.shards[i]->errors++;
            srv.stats.errors_shard++;
            part_done(&frags[i], reply, (size_t)rlen);
            continue;
        }
        backend_reserved_send(frags[i].conn, &frags[i], bytes, len);
    }
}

/* ---- where keyed requests go ---- */

/* The shard of EVAL, EVALSHA and FCALL calls that name no key. */
static uint32_t script_shard(void)
{
    const char *name = srv.cfg->script_default_shard;
    for (size_t i = 0; name && i < srv.nshards; i++)
        if (strcmp(srv.shards[i]->name, name) == 0)
            return (uint32_t)i;
    return 0; /* unset: the first shard of the file */
}

/* A shard for a request any shard can answer: the client's hint keeps its
 * requests on one connection. */
static uint32_t any_shard(const routed *r)
{
    return (uint32_t)((r->req->hint & ~REQUEST_HINT_RESP3) % srv.nshards);
}

/* Where a request's keys are. Fills key_pos and key_shard, r->nkeys,
 * r->same_shard (all on key_shard[0]) and r->must_move (a key's owner
 * changes in the running rebalance). 0, or -1 after answering with an
 * error. */
static int locate_keys(routed *r)
{
    if (ensure_key_cap(r->argc) < 0) {
        request_error(r->req, "ERR out of memory");
        return -1;
    }
    char err[200];
    size_t nkeys = 0;
    if (command_keys(r->cmd, r->argc, r->argv, key_pos, &nkeys, err, sizeof(err)) < 0) {
        request_error(r->req, "%s", err);
        return -1;
    }
    int same = 1, must_move = 0;
    int moving = rebalance_running() && !r->req->migrated;
    for (size_t i = 0; i < nkeys; i++) {
        uint32_t h = server_key_hash(r->argv[key_pos[i]].ptr, r->argv[key_pos[i]].len);
        key_shard[i] = ring_lookup(srv.ring, h);
        same &= key_shard[i] == key_shard[0];
        if (moving) {
            shard *old = rebalance_old_owner(h);
            must_move |= old && old != srv.shards[key_shard[i]];
        }
    }
    r->nkeys = nkeys;
    r->same_shard = same;
    r->must_move = must_move;
    return 0;
}

/* locate_keys, then -CROSSSLOT when the keys are on several shards. 0, or
 * -1 after answering with an error. */
static int locate_on_one_shard(routed *r)
{
    if (locate_keys(r) < 0)
        return -1;
    if (!r->same_shard) {
        request_crossslot(r->req, REQUEST_KEYS_APART);
        return -1;
    }
    return 0;
}

static void migrate_first(const routed *r);

/* During a rebalance, a request with a key whose owner changes moves its
 * keys first and is routed again afterwards (migrate.c). 1 when that
 * happened, 0 when the request can go now. */
static int moved_first(const routed *r)
{
    if (!r->must_move)
        return 0;
    migrate_first(r);
    return 1;
}

static const char TRYAGAIN_MOVING[] =
    "TRYAGAIN a key of the request is moving to its new shard (rebalancing); retry the "
    "transaction later";

/* ---- route handlers: one per command_route, chosen by the table ---- */

/* ROUTE_KEYS: the shard of its keys; a keyless command, any shard. */
static void route_keys(routed *r)
{
    if (locate_on_one_shard(r) < 0 || moved_first(r))
        return;
    forward(r, r->nkeys ? key_shard[0] : any_shard(r));
}

/* ROUTE_SPLIT: keys on one shard go as they are, else one fragment per
 * shard. */
static void route_split(routed *r)
{
    if (locate_keys(r) < 0 || moved_first(r))
        return;
    if (r->same_shard)
        forward(r, r->nkeys ? key_shard[0] : any_shard(r));
    else
        split(r);
}

/* What kind of transaction a write that twopc can make atomic is. */
static twopc_kind atomic_kind(const command *cmd)
{
    switch (cmd->id) {
    case CMD_MSET:
        return TWOPC_MSET;
    case CMD_MSETNX:
        return TWOPC_MSETNX;
    default:
        return TWOPC_DEL; /* DEL, UNLINK */
    }
}

/* A write whose keys span shards, as cross_shard says: -CROSSSLOT, a
 * two-phase commit (twopc.c), or best_effort (split; NULL: refused, as
 * MSETNX, which cannot be split). */
static void across_shards(routed *r, void (*best_effort)(const routed *r))
{
    switch (srv.cfg->cross_shard) {
    case CONFIG_CROSS_ATOMIC:
        if (rebalance_running()) {
            /* Serialized with rebalancing: staged commands must apply on
             * the shard that owns their keys when they commit. */
            request_error(r->req, "%s", TRYAGAIN_MOVING);
            return;
        }
        twopc_split(r->req, atomic_kind(r->cmd), r->argc, r->argv, key_pos, key_shard, r->nkeys,
                    (size_t)(r->cmd->key_step ? r->cmd->key_step : 1));
        return;
    case CONFIG_CROSS_BEST_EFFORT:
        if (best_effort) {
            best_effort(r);
            return;
        }
        break;
    default:
        break;
    }
    request_crossslot(r->req, REQUEST_KEYS_APART);
}

/* ROUTE_SPLIT_WRITE: MSET, DEL, UNLINK. */
static void route_split_write(routed *r)
{
    if (locate_keys(r) < 0 || moved_first(r))
        return;
    if (r->same_shard)
        forward(r, r->nkeys ? key_shard[0] : any_shard(r));
    else
        across_shards(r, split);
}

/* ROUTE_ATOMIC_ONLY: MSETNX. */
static void route_atomic_only(routed *r)
{
    if (locate_keys(r) < 0 || moved_first(r))
        return;
    if (r->same_shard)
        forward(r, key_shard[0]);
    else
        across_shards(r, NULL);
}

/* ROUTE_SCRIPT: EVAL and FCALL without keys run on script_default_shard. */
static void route_script(routed *r)
{
    if (locate_on_one_shard(r) < 0 || moved_first(r))
        return;
    forward(r, r->nkeys ? key_shard[0] : script_shard());
}

/* ROUTE_BLOCKING: a request that may block takes a connection reserved
 * for the client, so it blocks no one else's requests (txn.c). */
static void route_blocking(routed *r)
{
    if (locate_on_one_shard(r) < 0 || moved_first(r))
        return;
    uint64_t block_us;
    if (!r->nkeys || !r->req->session || !command_blocking(r->cmd, r->argc, r->argv, &block_us)) {
        forward(r, r->nkeys ? key_shard[0] : any_shard(r));
        return;
    }
    size_t len;
    const char *bytes = request_bytes(r, &len);
    if (!bytes) {
        request_error(r->req, "ERR out of memory");
        return;
    }
    txn_blocking(r->req, srv.shards[key_shard[0]], block_us, bytes, len);
}

/* ROUTE_CHANNEL: PUBLISH goes to the shard owning its channel, where the
 * channel's subscribers are (pubsub.c). */
static void route_channel(routed *r)
{
    forward(r, server_shard_of_key(r->argv[1].ptr, r->argv[1].len));
}

static void route_any_shard(routed *r)
{
    forward(r, any_shard(r));
}

static void route_local(routed *r)
{
    admin_execute(r->req, r->cmd, r->argc, r->argv);
}

/* ROUTE_PING: a subscribed RESP2 client gets the subscriber's form of the
 * reply; a RESP3 one, as from Redis, the plain one. */
static void route_ping(routed *r)
{
    if (pubsub_active(r->req->session) && !request_resp3(r->req))
        pubsub_ping(r->req, r->argc, r->argv);
    else
        admin_execute(r->req, r->cmd, r->argc, r->argv);
}

/* ROUTE_RESET: the connection's state back to a fresh one's, as Redis
 * does: transaction, WATCH and subscriptions end, the name goes, and the
 * client is the default user again (or must AUTH when that needs a
 * password). */
static void route_reset(routed *r)
{
    request *req = r->req;
    session *sess = req->session;
    if (!sess) {
        req->on_done(req, "+RESET\r\n", 8);
        return;
    }
    pubsub_end(sess);
    free(sess->name);
    sess->name = NULL;
    sess->proto = 2; /* as Redis 7: RESET goes back to RESP2 */
    access_session_reset(sess);
    txn_reset(req);
}

static void route_fanout(routed *r)
{
    fanout(r);
}

/* ROUTE_CONFIG: CONFIG GET and SET, checked by admin.c, then every shard. */
static void route_config(routed *r)
{
    if (admin_config(r->req, r->cmd, r->argc, r->argv))
        fanout(r);
}

/* ROUTE_INFO: INFO, the proxy's own sections, and the shards' keyspace and
 * hit counts when those sections are asked for (admin.c says which). */
static void route_info(routed *r)
{
    resp_arg shard_info[3] = {{"INFO", 4}};
    routed ask = *r;
    ask.argc = 1 + admin_info(r->req, r->argc, r->argv, &shard_info[1]);
    if (ask.argc == 1)
        return; /* answered */
    ask.argv = shard_info;
    ask.raw = NULL;
    ask.raw_len = 0;
    fanout(&ask);
}

/* ROUTE_FLUSH: FLUSHDB and FLUSHALL empty every shard, unless the
 * configuration forbids it. */
static void route_flush(routed *r)
{
    if (!srv.cfg->allow_flush) {
        request_error(r->req, "ERR '%s' is disabled in ringproxy (allow_flush = no)", r->cmd->name);
        return;
    }
    if (r->argv[0].len != 8) {
        fanout(r);
        return;
    }
    /* FLUSHALL empties database 0 only, as FLUSHDB: the shards' other
     * databases hold the proxy's own records (store_db), and clients see
     * database 0 alone anyway. */
    resp_arg flushdb[3] = {{"FLUSHDB", 7}};
    routed as_flushdb = *r;
    as_flushdb.argc = r->argc < 3 ? r->argc : 3;
    for (size_t i = 1; i < as_flushdb.argc; i++)
        flushdb[i] = r->argv[i];
    as_flushdb.argv = flushdb;
    as_flushdb.raw = NULL;
    as_flushdb.raw_len = 0;
    fanout(&as_flushdb);
}
static void route_scan(routed *r)
{
    keyspace_scan(r->req, r->argc, r->argv, r->req->hint);
}

static void route_randomkey(routed *r)
{
    keyspace_randomkey(r->req, r->req->hint);
}

/* ROUTE_TRANSACTION: MULTI, EXEC, DISCARD, WATCH, UNWATCH, run by txn.c
 * on the shard of their keys (WATCH's) over the client's reserved
 * connection. */
static void route_transaction(routed *r)
{
    request *req = r->req;
    if (locate_keys(r) < 0)
        return;
    int watch_across =
        !r->same_shard && r->cmd->id == CMD_WATCH && srv.cfg->cross_shard == CONFIG_CROSS_ATOMIC;
    if (!r->same_shard && !watch_across) {
        request_crossslot(req, REQUEST_KEYS_APART);
        return;
    }
    if (!req->session) {
        request_error(req, "ERR no client");
        return;
    }
    if (r->must_move) {
        request_error(req, "%s", TRYAGAIN_MOVING);
        return;
    }
    if (watch_across) {
        txn_watch_across(req, r->argv, key_pos, key_shard, r->nkeys);
        return;
    }
    size_t len;
    const char *bytes = request_bytes(r, &len);
    if (!bytes) {
        request_error(req, "ERR out of memory");
        return;
    }
    txn_command(req, r->cmd->id, r->nkeys ? srv.shards[key_shard[0]] : NULL, bytes, len);
}

static void route_pubsub(routed *r)
{
    if (r->req->session)
        pubsub_command(r->req, r->cmd->id, r->argc, r->argv);
    else
        request_error(r->req, "ERR no client");
}

static void route_unsupported(routed *r)
{
    srv.stats.errors_unsupported++;
    command_stats[r->cmd->stat].calls--; /* counted on its way here: a rejection */
    command_stats[r->cmd->stat].rejected_calls++;
    r->req->cmd = NULL; /* not a call after all */
    request_error(r->req, "ERR unsupported command '%s' in ringproxy", r->cmd->name);
}

/* COPY with a DB option would reach another database of the shard,
 * where the proxy keeps its hidden records (store_db): clients see
 * database 0 only. */
static int copy_to_other_db(const routed *r)
{
    for (size_t i = 3; i < r->argc; i++)
        if (r->argv[i].len == 2 && strncasecmp(r->argv[i].ptr, "db", 2) == 0) {
            request_error(r->req,
                          "ERR COPY ... DB is not supported: ringproxy serves database 0 only");
            return 1;
        }
    return 0;
}

/* ROUTE_LOCK: proxy/lock.c answers, from the lock shards. */
static void route_lock(routed *r)
{
    lock_command(r->req, r->cmd, r->argc, r->argv);
}

/* ROUTE_KILL: every shard, never queued behind other requests. */
static void route_kill(routed *r)
{
    kill_everywhere(r);
}

/* ROUTE_COPY: as ROUTE_KEYS, but never into another database. */
static void route_copy(routed *r)
{
    if (!copy_to_other_db(r))
        route_keys(r);
}

/* ---- between MULTI and EXEC: the shard a queued command needs ---- */

/* The keys' shard (NULL when keyless). 0, or -1 after answering with an
 * error. */
static int queue_by_keys(routed *r, shard **target)
{
    if (locate_on_one_shard(r) < 0)
        return -1;
    if (r->must_move) {
        request_error(r->req, "%s", TRYAGAIN_MOVING);
        return -1;
    }
    *target = r->nkeys ? srv.shards[key_shard[0]] : NULL;
    return 0;
}

static int queue_by_channel(routed *r, shard **target)
{
    *target = srv.shards[server_shard_of_key(r->argv[1].ptr, r->argv[1].len)];
    return 0;
}

/* Any shard answers it (PING, ECHO, TIME, UNWATCH): the transaction's. */
static int queue_anywhere(routed *r, shard **target)
{
    (void)r;
    *target = NULL;
    return 0;
}

/* What the router does with each command_route. */
/* COPY between MULTI and EXEC: as any keyed command, never into another
 * database. */
static int queue_copy(routed *r, shard **target)
{
    return copy_to_other_db(r) ? -1 : queue_by_keys(r, target);
}

typedef struct route_handler {
    void (*run)(routed *r); /* routes the request */
    /* Between MULTI and EXEC, for rows not flagged COMMAND_FLAG_NOT_QUEUED:
     * sets the shard to queue it on (NULL: the transaction's, whichever
     * that is). 0, or -1 after answering with an error. */
    int (*queue_on)(routed *r, shard **target);
    /* Why rows flagged COMMAND_FLAG_NOT_QUEUED cannot be part of a
     * transaction; NULL: run's own error answers it (unsupported). */
    const char *not_queued;
} route_handler;

#define ANSWERED_LOCALLY  "the proxy answers it itself"
#define NEEDS_EVERY_SHARD "it needs every shard"

static const route_handler route_handlers[ROUTE_COUNT] = {
    [ROUTE_KEYS] = {route_keys, queue_by_keys, NULL},
    [ROUTE_SPLIT] = {route_split, queue_by_keys, NULL},
    [ROUTE_SCRIPT] = {route_script, queue_by_keys, NULL},
    [ROUTE_BLOCKING] = {route_blocking, queue_by_keys, NULL},
    [ROUTE_CHANNEL] = {route_channel, queue_by_channel, NULL},
    [ROUTE_ANY_SHARD] = {route_any_shard, queue_anywhere, ANSWERED_LOCALLY},
    [ROUTE_LOCAL] = {route_local, queue_anywhere, ANSWERED_LOCALLY},
    [ROUTE_PING] = {route_ping, queue_anywhere, ANSWERED_LOCALLY},
    [ROUTE_RESET] = {route_reset, NULL, ANSWERED_LOCALLY},
    [ROUTE_FANOUT] = {route_fanout, NULL, NEEDS_EVERY_SHARD},
    [ROUTE_FLUSH] = {route_flush, NULL, NEEDS_EVERY_SHARD},
    [ROUTE_SCAN] = {route_scan, NULL, NEEDS_EVERY_SHARD},
    [ROUTE_RANDOMKEY] = {route_randomkey, NULL, NEEDS_EVERY_SHARD},
    [ROUTE_TRANSACTION] = {route_transaction, queue_anywhere, NULL},
    [ROUTE_PUBSUB] = {route_pubsub, NULL, "subscriptions are not transactional"},
    [ROUTE_UNSUPPORTED] = {route_unsupported, NULL, NULL},
    [ROUTE_LOCK] = {route_lock, NULL, "locks live on a majority of the lock shards"},
    [ROUTE_COPY] = {route_copy, queue_copy, NULL},
    [ROUTE_KILL] = {route_kill, NULL, NEEDS_EVERY_SHARD},
    [ROUTE_CONFIG] = {route_config, NULL, NEEDS_EVERY_SHARD},
    [ROUTE_INFO] = {route_info, NULL, ANSWERED_LOCALLY},
    [ROUTE_SPLIT_WRITE] = {route_split_write, queue_by_keys, NULL},
    [ROUTE_ATOMIC_ONLY] = {route_atomic_only, queue_by_keys, NULL},
};

/* Routes that reach shards by the ring: refused while this proxy's ring is
 * not the shards' (epoch.c), since it would read or write a key where the
 * other proxies no longer look. */
static const uint8_t needs_the_ring[ROUTE_COUNT] = {
    [ROUTE_KEYS] = 1,      [ROUTE_SPLIT] = 1,       [ROUTE_SCRIPT] = 1, [ROUTE_BLOCKING] = 1,
    [ROUTE_CHANNEL] = 1,   [ROUTE_FANOUT] = 1,      [ROUTE_FLUSH] = 1,  [ROUTE_SCAN] = 1,
    [ROUTE_RANDOMKEY] = 1, [ROUTE_TRANSACTION] = 1, [ROUTE_PUBSUB] = 1, [ROUTE_COPY] = 1,
    [ROUTE_ANY_SHARD] = 1, [ROUTE_KILL] = 1,
};

/* A command given between MULTI and EXEC: queued on the transaction's
 * shard, or refused (and the transaction aborted, as Redis aborts one on a
 * command it cannot queue) when one shard cannot run it. */
static void route_in_multi(routed *r)
{
    request *req = r->req;
    const route_handler *h = &route_handlers[r->cmd->route];
    shard *target = NULL;
    if (r->cmd->flags & COMMAND_FLAG_NO_MULTI) {
        txn_abort(req->session);
        request_error(req, "ERR Command not allowed inside a transaction");
        return;
    }
    if (r->cmd->flags & COMMAND_FLAG_NOT_QUEUED || !h->queue_on) {
        txn_abort(req->session);
        if (h->not_queued)
            request_error(req, "ERR '%s' cannot be part of a transaction through ringproxy: %s",
                          r->cmd->name, h->not_queued);
        else
            h->run(r);
        return;
    }
    if (h->queue_on(r, &target) < 0) {
        txn_abort(req->session);
        return;
    }
    size_t len;
    const char *bytes = request_bytes(r, &len);
    if (!bytes) {
        txn_abort(req->session);
        request_error(req, "ERR out of memory");
        return;
    }
    txn_queue(req, target, bytes, len);
}

void router_session_end(session *sess)
{
    pubsub_end(sess);
    txn_end(sess);
}

/* ---- checks before routing ---- */

static void unknown_command(const routed *r)
{
    char w[64], args[200];
    size_t o = 0;
    args[0] = '\0';
    for (size_t i = 1; i < r->argc && o < sizeof(args) - 80; i++) {
        char a[64];
        o += (size_t)snprintf(args + o, sizeof(args) - o, "'%s' ", word(&r->argv[i], a, sizeof(a)));
    }
    srv.stats.errors_unknown++;
    txn_abort(r->req->session);
    request_error(r->req, "ERR unknown command '%s', with args beginning with: %s",
                  word(&r->argv[0], w, sizeof(w)), args);
}

static void unknown_subcommand(const routed *r, const command *container)
{
    char w[64], upper[64];
    size_t n = strlen(container->name);
    for (size_t i = 0; i <= n && i < sizeof(upper) - 1; i++) {
        char c = container->name[i];
        upper[i] = (char)(c >= 'a' && c <= 'z' ? c - 32 : c);
    }
    upper[sizeof(upper) - 1] = '\0';
    srv.stats.errors_unknown++;
    txn_abort(r->req->session);
    request_error(r->req, "ERR unknown subcommand '%s'. Try %s HELP.",
                  r->argc > 1 ? word(&r->argv[1], w, sizeof(w)) : "", upper);
}

/* Checks arity: 0, or -1 after answering with Redis's error. */
static int check_arity(const routed *r, const command *cmd)
{
    if (command_check_arity(cmd, r->argc) == 0)
        return 0;
    srv.stats.errors_arity++;
    command_stats[cmd->stat].rejected_calls++;
    txn_abort(r->req->session);
    request_error(r->req, "ERR wrong number of arguments for '%s' command", cmd->name);
    return -1;
}

/* Looks the command up, resolves its subcommand and checks arity, as
 * Redis does; sets r->cmd. 0, or -1 after answering with an error (an
 * error inside MULTI aborts the transaction, as in Redis). */
static int resolve(routed *r)
{
    const command *cmd = command_lookup(r->argv[0].ptr, r->argv[0].len);
    if (!cmd) {
        unknown_command(r);
        return -1;
    }
    if (check_arity(r, cmd) < 0)
        return -1;
    if (cmd->nsubcommands) {
        const command *sub = command_subcommand(cmd, r->argc, r->argv);
        if (!sub) {
            unknown_subcommand(r, cmd);
            return -1;
        }
        if (check_arity(r, sub) < 0)
            return -1;
        cmd = sub;
    }
    r->cmd = cmd;
    session *sess = r->req->session;
    if (sess) {
        sess->last_cmd = cmd->name;
        sess->last_cmd_us = srv.now_us;
    }
    return 0;
}

static void route(routed *r);

/* pause.c calls this back when the pause ends: route the saved request. */
static void route_unpaused(request *req, size_t argc, const resp_arg *argv, const char *raw,
                           size_t raw_len)
{
    routed r = {.req = req, .argc = argc, .argv = argv, .raw = raw, .raw_len = raw_len};
    route(&r);
}

/* CLIENT PAUSE holds the command, with its bytes (its argv points into the
 * client's buffer, which moves on). */
static __attribute__((noinline)) void postpone(const routed *r)
{
    size_t len;
    const char *bytes = request_bytes(r, &len);
    if (!bytes) {
        request_error(r->req, "ERR out of memory");
        return;
    }
    pause_postpone(r->req, bytes, len, route_unpaused);
}

static void route_moved(request *req, size_t argc, const resp_arg *argv, const char *raw,
                        size_t raw_len);

/* While this proxy's cross-shard transactions hold keys: a request that
 * touches one waits in twopc.c until they are over, then is routed again,
 * so that no client of this proxy sees half of a commit. 1 when it waits. */
static int waits_for_twopc(routed *r)
{
    if (r->cmd->keys == KEYS_NONE || ensure_key_cap(r->argc) < 0)
        return 0;
    char err[200];
    size_t nkeys = 0;
    if (command_keys(r->cmd, r->argc, r->argv, key_pos, &nkeys, err, sizeof(err)) < 0)
        return 0; /* the handler answers the error */
    size_t i = 0;
    while (i < nkeys && !twopc_key_locked(r->argv[key_pos[i]].ptr, r->argv[key_pos[i]].len))
        i++;
    if (i == nkeys)
        return 0;
    size_t len;
    const char *bytes = request_bytes(r, &len);
    if (!bytes) {
        request_error(r->req, "ERR out of memory");
        return 1;
    }
    twopc_wait(r->req, bytes, len, route_moved);
    return 1;
}

/* The slow log's copy of the request's bytes, should it turn out slow: a
 * short request's (the common case) here, with nothing loaded that only
 * the out-of-line copy of a long or inline one needs. */
static inline void capture(const routed *r)
{
    const char *raw = r->raw;
    size_t len = r->raw_len;
    if (__builtin_expect(raw && len - 16 <= REQUEST_HEAD_MAX - 16, 1)) {
        slowlog_capture_short(r->req, raw, len);
        return;
    }
    slowlog_capture_long(r->req, r->argc, r->argv, raw, len);
}

/* With the slow log on, the request's bytes, should it turn out slow;
 * else what says none were kept. */
static void capture_or_not(const routed *r)
{
    if (srv.cfg->slowlog_slower_than >= 0)
        capture(r);
    else
        r->req->head_len = REQUEST_HEAD_NONE;
}

/* Checks the request, runs the gates its command's flags ask for, then
 * hands it to its command's handler. */
static void route(routed *r)
{
    if (resolve(r) < 0)
        return;
    const command *cmd = r->cmd;
    session *sess = r->req->session;
    /* One load for a client whose user may do everything (the default
     * user unless [users] restricts it); access.c checks the others. A
     * refusal inside MULTI aborts the transaction, as in Redis. */
    if (sess && !sess->unrestricted && access_check(r->req, cmd, r->argc, r->argv) < 0) {
        txn_abort(sess);
        return;
    }
    /* Counted when it runs, after the pause. */
    if (pause_holds(cmd)) {
        postpone(r);
        return;
    }
    cmd->counters->calls++;
    r->req->cmd = cmd; /* a call: timed and its errors counted as failures */
    /* The common case, decided with a few loads: a one-key command from a
     * client with no transaction or subscription, while no key is moving.
     * For the slow log nothing is copied: the request goes whole to one
     * pool connection, which keeps its bytes until the reply (slowlog.h,
     * "Where an entry's arguments come from"), unless it is longer than
     * REQUEST_SENT_SHORT. */
    int plain = !sess || (!sess->txn && !sess->pubsub);
    if (plain && (cmd->flags & COMMAND_FLAG_SINGLE_KEY) && !srv.twopc_holding &&
        !rebalance_running() && !srv.ring_refusing) {
        /* head_len is REQUEST_HEAD_SENT (0) from request_new */
        if (__builtin_expect(r->raw_len > REQUEST_SENT_SHORT, 0))
            capture_or_not(r); /* too long for fragment.sent_len */
        forward(r, server_shard_of_key(r->argv[1].ptr, r->argv[1].len));
        return;
    }
    capture_or_not(r);
    if (__builtin_expect(srv.ring_refusing, 0) && needs_the_ring[cmd->route]) {
        request_error(r->req, "%s", srv.ring_refusal);
        return;
    }
    /* RESP3 lets a subscribed client send any command (its messages come
     * as push frames, told apart from replies). */
    if (!plain && pubsub_active(sess) && !(cmd->flags & COMMAND_FLAG_WHILE_SUBSCRIBED) &&
        sess->proto != 3) {
        request_error(r->req,
                      "ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / "
                      "QUIT / RESET are allowed in this context",
                      cmd->name);
        return;
    }
    if (!plain && txn_in_multi(sess) && !(cmd->flags & COMMAND_FLAG_RUNS_IN_MULTI)) {
        route_in_multi(r);
        return;
    }
    if (srv.twopc_holding && waits_for_twopc(r))
        return;
    route_handlers[cmd->route].run(r);
}

void router_dispatch(request *req, size_t argc, const resp_arg *argv, const char *raw,
                     size_t raw_len, uint64_t hint)
{
    srv.stats.commands++;
    req->hint = hint;
    req->start_us = srv.now_us;
    session *sess = req->session;
    if (sess && sess->reply_mode != SESSION_REPLY_ON) {
        req->silent = 1; /* CLIENT REPLY OFF, or the command after SKIP */
        if (sess->reply_mode == SESSION_REPLY_SKIP)
            sess->reply_mode = SESSION_REPLY_ON;
    }
    routed r = {.req = req, .argc = argc, .argv = argv, .raw = raw, .raw_len = raw_len};
    route(&r);
}

/* migrate.c calls this back once the request's keys are on their new
 * shards: route the saved request by the new ring. */
static void route_moved(request *req, size_t argc, const resp_arg *argv, const char *raw,
                        size_t raw_len)
{
    routed r = {.req = req, .argc = argc, .argv = argv, .raw = raw, .raw_len = raw_len};
    command_stats[req->cmd->stat].calls--; /* its first routing counted it */
    route(&r);
}

/* Moves the request's keys to their new shards first (migrate.c), then
 * routes it again. */
static void migrate_first(const routed *r)
{
    size_t len;
    const char *bytes = request_bytes(r, &len);
    if (!bytes) {
        request_error(r->req, "ERR out of memory");
        return;
    }
    migrate_keys_first(r->req, bytes, len, route_moved);
}
