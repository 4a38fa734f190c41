/* Transactions and blocking commands on a connection reserved for the
 * client. Order is kept at both ends of the reserved connection's use:
 * - starting: its writes wait for a PING sent behind the client's earlier
 *   requests on the shared connection to the same shard (a barrier);
 * - ending: EXEC, DISCARD, UNWATCH and blocking commands hold the client's
 *   next requests until their reply, so nothing else is in flight on the
 *   reserved connection when the client's requests go back to the shared
 *   ones (Redis itself runs nothing of a blocked client meanwhile).
 * A connection that holds nothing of the client's stays open (lingering)
 * for its next transaction or blocking command to the same shard. */
#include "proxy/txn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/ack.h"
#include "proxy/buf.h"
#include "proxy/log.h"
#include "proxy/sentinel.h"
#include "proxy/server.h"
#include "proxy/twopc.h"

/* The transaction state of one client. */
typedef enum txn_state {
    TXN_NONE = 0,    /* no transaction; a reserved connection, if any, holds nothing */
    TXN_WATCHING,    /* WATCH ran on the reserved connection: the client's requests to
                        its shard go there */
    TXN_MULTI,       /* MULTI answered by the proxy, no shard yet: keyless commands wait
                        in the proxy */
    TXN_MULTI_BOUND, /* MULTI sent on the reserved connection: commands queue there */
    TXN_BLOCKED,     /* a blocking command waits on the reserved connection */
    TXN_ENDING,      /* EXEC, DISCARD or UNWATCH in flight on the reserved connection */
} txn_state;

typedef struct txn {
    txn_state state;
    session *sess;
    backend_conn *conn; /* reserved connection, NULL when none */
    int aborted;        /* MULTI: an error was answered while queuing -> EXECABORT */
    int watched;        /* WATCH ran and was not undone by EXEC, DISCARD, UNWATCH */
    int watch_lost;     /* the connection holding the WATCH failed: EXEC must not run */
    int queued_count;   /* MULTI: commands queued, for CLIENT LIST */
    buf queued;         /* TXN_MULTI: bytes of the keyless commands queued in the proxy */
    size_t nqueued;
    /* cross_shard = atomic: every command of a MULTI without WATCH waits in
     * queued, bound to no shard until EXEC: one shard runs it as above, several
     * run it as a cross-shard transaction (twopc.c). */
    uint32_t *queued_shard; /* each queued command's shard; TWOPC_ANY_SHARD: keyless */
    size_t queued_cap;
    uint32_t first_shard; /* the first keyed command's shard */
    int keyed;            /* a keyed command is queued */
    int several;          /* keyed commands of more than one shard are queued */
} txn;

static const char EXECABORT[] = "-EXECABORT Transaction discarded because of previous errors.\r\n";
static const char MULTI_REQUEST[] = "*1\r\n$5\r\nMULTI\r\n";
static const char DISCARD_REQUEST[] = "*1\r\n$7\r\nDISCARD\r\n";
static const char UNWATCH_REQUEST[] = "*1\r\n$7\r\nUNWATCH\r\n";

static const char *state_name(txn_state st)
{
    switch (st) {
    case TXN_NONE:
        return "none";
    case TXN_WATCHING:
        return "watching";
    case TXN_MULTI:
        return "multi";
    case TXN_MULTI_BOUND:
        return "multi-bound";
    case TXN_BLOCKED:
        return "blocked";
    case TXN_ENDING:
        return "ending";
    }
    return "?";
}

/* Whether the client's requests to the connection's shard must go on it. */
static int pinned(txn_state st)
{
    return st == TXN_WATCHING || st == TXN_MULTI_BOUND || st == TXN_BLOCKED || st == TXN_ENDING;
}

/* The one place a transaction changes state. A reserved connection lingers
 * (may close when idle) exactly while nothing of the client's is on it. */
static void set_state(txn *t, txn_state st)
{
    log_debug("client %llu: transaction %s -> %s", (unsigned long long)t->sess->id,
              state_name(t->state), state_name(st));
    switch (st) {
    case TXN_NONE:
    case TXN_MULTI:
        t->queued_count = 0;
        /* fall through */
    case TXN_WATCHING:
    case TXN_MULTI_BOUND:
    case TXN_BLOCKED:
    case TXN_ENDING:
        t->state = st;
        if (t->conn)
            backend_reserved_linger(t->conn, !pinned(st));
        return;
    }
    log_error("BUG: client %llu: unknown transaction state %d", (unsigned long long)t->sess->id,
              (int)st);
    abort();
}

static txn *get_txn(session *sess)
{
    if (!sess->txn) {
        sess->txn = calloc(1, sizeof(txn));
        if (sess->txn)
            sess->txn->sess = sess;
    }
    return sess->txn;
}

/* The reserved connection failed (or lingered out): what was pinned to it
 * is lost, and a transaction on it must not commit. */
static void conn_event(void *owner, const char *push, size_t len)
{
    (void)len;
    txn *t = owner;
    if (push)
        return; /* not in push mode: unreachable */
    t->conn = NULL;
    switch (t->state) {
    case TXN_WATCHING:
        t->watch_lost = 1;
        set_state(t, TXN_NONE);
        return;
    case TXN_MULTI_BOUND:
        t->aborted = 1;
        return;
    case TXN_NONE:
    case TXN_MULTI:
    case TXN_BLOCKED: /* the blocked command's error reply ends it */
    case TXN_ENDING:
        return;
    }
}

/* Makes t->conn a connection to s that the client's requests may use now:
 * reuses a lingering one to s, else opens one. 0, or -1 after answering
 * req with an error. */
static int pin(txn *t, request *req, shard *s)
{
    if (t->conn && (t->conn->shard != s || t->conn->resp3 != (t->sess->proto == 3))) {
        /* Lingering on another shard, or in the protocol the client spoke
         * before HELLO: nothing of the client's is on it. */
        backend_reserved_close(t->conn);
        t->conn = NULL;
    }
    if (!t->conn) {
        char err[300];
        t->conn = backend_reserve(s, 0, t->sess->proto == 3, conn_event, t, err, sizeof(err));
        if (!t->conn) {
            request_error(req, "ERR %s", err);
            return -1;
        }
    }
    backend_reserved_barrier(t->conn, session_hint(t->sess));
    return 0;
}

static void swallow_done(fragment *f, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    free(f);
}

/* Sends bytes whose replies nobody waits for: one swallowed reply per
 * command in them (ncommands). 0 or -1 (out of memory). */
static int send_swallowed(backend_conn *c, const char *bytes, size_t len, size_t ncommands)
{
    for (size_t i = 0; i < ncommands; i++) {
        fragment *f = calloc(1, sizeof(*f));
        if (!f)
            return -1;
        f->done = swallow_done;
        /* All the bytes go with the first fragment; each fragment stands
         * for one reply. */
        backend_reserved_send(c, f, i == 0 ? bytes : "", i == 0 ? len : 0);
    }
    return 0;
}

static void pass_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    req->pending = 0;
    req->on_done(req, reply, len);
}

/* Sends req on the reserved connection, its reply passed on by done. */
static void send_on_conn(txn *t, request *req, fragment_done_fn done, uint64_t block_us,
                         const char *bytes, size_t len)
{
    fragment *f = &req->single;
    f->req = req;
    f->done = done;
    f->block_us = block_us;
    req->pending = 1;
    backend_reserved_send(t->conn, f, bytes, len);
}

/* The reply that ends a blocking command or a transaction: the client's
 * requests may flow again, and the connection holds nothing of its. */
static void release_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    req->pending = 0;
    session *sess = req->session;
    if (sess) {
        sess->hold_input = 0;
        sess->blocked = 0;
        txn *t = sess->txn;
        if (t && (t->state == TXN_BLOCKED || t->state == TXN_ENDING)) {
            t->watched = 0;
            set_state(t, TXN_NONE);
        }
    }
    req->on_done(req, reply, len);
}

/* A blocking command while WATCHing: the watch stays. */
static void unhold_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    req->pending = 0;
    if (req->session) {
        req->session->hold_input = 0;
        req->session->blocked = 0;
    }
    req->on_done(req, reply, len);
}

/* An aborted transaction's DISCARD: the client gets EXECABORT. */
static void execabort_done(fragment *f, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    release_done(f, EXECABORT, sizeof(EXECABORT) - 1);
}

/* RESET of a client whose WATCH or MULTI is on the shard: undone there
 * (not with RESET, which would also undo the connection's AUTH). */
static void reset_done(fragment *f, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    release_done(f, "+RESET\r\n", 8);
}

/* Ends an EXEC, DISCARD or UNWATCH on the reserved connection: the
 * client's next requests wait for the reply. */
static void send_ending(txn *t, request *req, fragment_done_fn done, const char *bytes, size_t len)
{
    t->sess->hold_input = 1;
    set_state(t, TXN_ENDING);
    send_on_conn(t, req, done, 0, bytes, len);
}

/* The shard index of s among srv.shards (TWOPC_ANY_SHARD for NULL). */
static uint32_t shard_index(const shard *s)
{
    for (size_t i = 0; s && i < srv.nshards; i++)
        if (srv.shards[i] == s)
            return (uint32_t)i;
    return TWOPC_ANY_SHARD;
}

/* Notes the shard of a command queued in the proxy. 0 or -1 (out of
 * memory). */
static int remember_shard(txn *t, const shard *s)
{
    if (t->nqueued == t->queued_cap) {
        size_t cap = t->queued_cap ? t->queued_cap * 2 : 16;
        uint32_t *p = realloc(t->queued_shard, cap * sizeof(*p));
        if (!p)
            return -1;
        t->queued_shard = p;
        t->queued_cap = cap;
    }
    uint32_t i = shard_index(s);
    t->queued_shard[t->nqueued] = i;
    if (i != TWOPC_ANY_SHARD) {
        if (t->keyed && t->first_shard != i)
            t->several = 1;
        if (!t->keyed)
            t->first_shard = i;
        t->keyed = 1;
    }
    return 0;
}

/* Forgets the commands queued in the proxy. */
static void drop_queued(txn *t)
{
    buf_free(&t->queued);
    t->nqueued = 0;
    t->keyed = t->several = 0;
}

/* MULTI, then what waited in the proxy, on the reserved connection to s.
 * 0, or -1 after answering req. */
static int bind_multi(txn *t, request *req, shard *s)
{
    if (pin(t, req, s) < 0) {
        t->aborted = 1;
        return -1;
    }
    if (send_swallowed(t->conn, MULTI_REQUEST, sizeof(MULTI_REQUEST) - 1, 1) < 0 ||
        (t->nqueued &&
         send_swallowed(t->conn, buf_head(&t->queued), buf_len(&t->queued), t->nqueued) < 0)) {
        /* The shard may hold half a transaction: drop the connection. */
        backend_reserved_close(t->conn);
        t->conn = NULL;
        t->aborted = 1;
        request_error(req, "ERR out of memory");
        return -1;
    }
    drop_queued(t);
    set_state(t, TXN_MULTI_BOUND);
    return 0;
}

backend_conn *txn_conn_for(const session *sess, const shard *s)
{
    const txn *t = sess ? sess->txn : NULL;
    if (!t || !t->conn || !pinned(t->state) || t->conn->shard != s)
        return NULL;
    return t->conn;
}

void txn_send_to_shard(request *req, uint32_t i, uint64_t hint, fragment *f, const char *bytes,
                       size_t len)
{
    backend_conn *reserved = txn_conn_for(req->session, srv.shards[i]);
    if (reserved) {
        backend_reserved_send(reserved, f, bytes, len);
        return;
    }
    shard *target = sentinel_read_shard(i, bytes, len);
    if (!ack_send(target, hint, f, bytes, len))
        backend_send(target, hint, f, bytes, len);
}

int txn_in_multi(const session *sess)
{
    return sess && sess->txn &&
           (sess->txn->state == TXN_MULTI || sess->txn->state == TXN_MULTI_BOUND);
}

int txn_multi_count(const session *sess)
{
    return txn_in_multi(sess) ? sess->txn->queued_count : -1;
}

int txn_watching(const session *sess)
{
    return sess && sess->txn && sess->txn->watched;
}

backend_conn *txn_blocked_conn(const session *sess)
{
    return sess && sess->blocked && sess->txn ? sess->txn->conn : NULL;
}

void txn_abort(session *sess)
{
    if (txn_in_multi(sess))
        sess->txn->aborted = 1;
}

void txn_queue(request *req, shard *s, const char *bytes, size_t len)
{
    txn *t = req->session->txn;
    if (t->aborted && t->state == TXN_MULTI_BOUND && !t->conn) {
        request_error(req, "ERR the transaction's shard connection was lost; it is aborted");
        return;
    }
    int atomic = srv.cfg->cross_shard == CONFIG_CROSS_ATOMIC;
    if (t->state == TXN_MULTI && s && !atomic) {
        if (bind_multi(t, req, s) < 0)
            return;
    } else if (t->state == TXN_MULTI) {
        /* No shard yet: answer as the shard will, and send it with MULTI. */
        if (remember_shard(t, s) < 0 || buf_append(&t->queued, bytes, len) < 0) {
            t->aborted = 1;
            request_error(req, "ERR out of memory");
            return;
        }
        t->nqueued++;
        t->queued_count++;
        req->on_done(req, "+QUEUED\r\n", 9);
        return;
    } else if (s && t->conn && t->conn->shard != s) {
        t->aborted = 1;
        request_crossslot(req, atomic ? REQUEST_KEYS_APART " as the WATCHed keys (a transaction "
                                                           "across shards cannot WATCH)"
                                      : REQUEST_KEYS_APART " as the transaction's earlier keys");
        return;
    }
    t->queued_count++;
    send_on_conn(t, req, pass_done, 0, bytes, len);
}

static void cmd_multi(txn *t, request *req, const char *bytes, size_t len)
{
    if (t->state == TXN_WATCHING) {
        t->aborted = 0;
        set_state(t, TXN_MULTI_BOUND);
        send_on_conn(t, req, pass_done, 0, bytes, len);
        return;
    }
    /* A WATCH whose connection failed cannot be honoured: the EXEC fails. */
    t->aborted = t->watch_lost;
    t->watch_lost = 0;
    set_state(t, TXN_MULTI);
    req->on_done(req, "+OK\r\n", 5);
}

static void cmd_exec(txn *t, request *req, const char *bytes, size_t len)
{
    if (t->state == TXN_MULTI) {
        if (t->aborted || t->nqueued == 0) {
            int aborted = t->aborted;
            drop_queued(t);
            t->aborted = 0;
            set_state(t, TXN_NONE);
            if (aborted)
                req->on_done(req, EXECABORT, sizeof(EXECABORT) - 1);
            else
                req->on_done(req, "*0\r\n", 4);
            return;
        }
        if (t->several) {
            /* Keys of several shards (cross_shard = atomic): a two-phase
             * commit, with EXEC's reply. */
            twopc_exec_queued(req, buf_head(&t->queued), buf_len(&t->queued), t->queued_shard,
                              t->nqueued);
            drop_queued(t);
            set_state(t, TXN_NONE);
            return;
        }
        /* One shard's keys, or only keyless commands (any shard runs them). */
        shard *s = srv.shards[t->keyed ? t->first_shard : t->sess->id % srv.nshards];
        if (bind_multi(t, req, s) < 0) {
            t->aborted = 0;
            set_state(t, TXN_NONE);
            return;
        }
    }
    if (!t->conn) {
        t->aborted = 0;
        t->watched = 0;
        set_state(t, TXN_NONE);
        req->on_done(req, EXECABORT, sizeof(EXECABORT) - 1);
        return;
    }
    int aborted = t->aborted;
    t->aborted = 0;
    if (aborted)
        send_ending(t, req, execabort_done, DISCARD_REQUEST, sizeof(DISCARD_REQUEST) - 1);
    else
        send_ending(t, req, release_done, bytes, len);
}

static void cmd_discard(txn *t, request *req, const char *bytes, size_t len)
{
    t->aborted = 0;
    if (t->state == TXN_MULTI || !t->conn) {
        drop_queued(t);
        t->watched = 0;
        set_state(t, TXN_NONE);
        req->on_done(req, "+OK\r\n", 5);
        return;
    }
    send_ending(t, req, release_done, bytes, len);
}

static void cmd_watch(txn *t, request *req, shard *s, const char *bytes, size_t len)
{
    if (t->state == TXN_WATCHING) {
        if (t->conn->shard != s) {
            request_crossslot(req, REQUEST_KEYS_APART " as the WATCHed keys");
            return;
        }
    } else {
        if (pin(t, req, s) < 0)
            return;
        t->watch_lost = 0;
        t->watched = 1;
        set_state(t, TXN_WATCHING);
    }
    send_on_conn(t, req, pass_done, 0, bytes, len);
}

void txn_command(request *req, command_id id, shard *s, const char *bytes, size_t len)
{
    txn *t = get_txn(req->session);
    if (!t) {
        request_error(req, "ERR out of memory");
        return;
    }
    int in_multi = t->state == TXN_MULTI || t->state == TXN_MULTI_BOUND;
    switch (id) {
    case CMD_MULTI:
        if (in_multi)
            request_error(req, "ERR MULTI calls can not be nested");
        else
            cmd_multi(t, req, bytes, len);
        return;
    case CMD_EXEC:
        if (in_multi)
            cmd_exec(t, req, bytes, len);
        else
            request_error(req, "ERR EXEC without MULTI");
        return;
    case CMD_DISCARD:
        if (in_multi)
            cmd_discard(t, req, bytes, len);
        else
            request_error(req, "ERR DISCARD without MULTI");
        return;
    case CMD_WATCH:
        if (in_multi)
            request_error(req, "ERR WATCH inside MULTI is not allowed");
        else
            cmd_watch(t, req, s, bytes, len);
        return;
    case CMD_UNWATCH:
        t->watch_lost = 0;
        if (t->state == TXN_WATCHING)
            send_ending(t, req, release_done, bytes, len);
        else
            req->on_done(req, "+OK\r\n", 5);
        return;
    default:
        break;
    }
    log_error("BUG: '%s' is not a transaction command", req->cmd ? req->cmd->name : "?");
    request_error(req, "ERR internal error: not a transaction command");
}

void txn_blocking(request *req, shard *s, uint64_t block_us, const char *bytes, size_t len)
{
    txn *t = get_txn(req->session);
    if (!t) {
        request_error(req, "ERR out of memory");
        return;
    }
    if (t->state == TXN_WATCHING) {
        if (t->conn->shard != s) {
            request_crossslot(req, "a blocking command on another shard than the WATCHed keys");
            return;
        }
        req->session->hold_input = 1;
        req->session->blocked = 1;
        send_on_conn(t, req, unhold_done, block_us, bytes, len);
        return;
    }
    if (t->state != TXN_NONE) {
        /* MULTI queues blocking commands as any other; BLOCKED and ENDING
         * hold the client's input, so nothing arrives then. */
        log_error("BUG: blocking command in transaction state %s", state_name(t->state));
        request_error(req, "ERR internal error: blocking command in a transaction");
        return;
    }
    if (pin(t, req, s) < 0)
        return;
    req->session->hold_input = 1;
    req->session->blocked = 1;
    set_state(t, TXN_BLOCKED);
    send_on_conn(t, req, release_done, block_us, bytes, len);
}

void txn_reset(request *req)
{
    txn *t = req->session->txn;
    if (!t) {
        req->on_done(req, "+RESET\r\n", 8);
        return;
    }
    int watching = t->state == TXN_WATCHING, bound = t->state == TXN_MULTI_BOUND && t->conn;
    drop_queued(t);
    t->aborted = 0;
    t->watch_lost = 0;
    if (watching) {
        send_ending(t, req, reset_done, UNWATCH_REQUEST, sizeof(UNWATCH_REQUEST) - 1);
    } else if (bound) {
        send_ending(t, req, reset_done, DISCARD_REQUEST, sizeof(DISCARD_REQUEST) - 1);
    } else {
        t->watched = 0;
        set_state(t, TXN_NONE);
        req->on_done(req, "+RESET\r\n", 8);
    }
}

void txn_end(session *sess)
{
    txn *t = sess->txn;
    if (!t)
        return;
    sess->txn = NULL;
    sess->hold_input = 0;
    sess->blocked = 0;
    /* Requests still on the connection belong to this client: they fail
     * and find no txn. */
    backend_reserved_close(t->conn);
    buf_free(&t->queued);
    free(t->queued_shard);
    free(t);
}
