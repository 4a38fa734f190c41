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

struct txn;

/* cross_shard = atomic: a WATCH on another shard than the reserved
 * connection's, held on a connection of its own until EXEC checks it. */
typedef struct xwatch {
    struct txn *t;
    backend_conn *conn; /* NULL once it failed */
} xwatch;

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
    /* cross_shard = atomic: the WATCHes on shards other than conn's, and
     * the check at EXEC (MULTI, PING, EXEC on every watching connection:
     * EXEC answers nil when a watched key changed). */
    xwatch **xw; /* each allocated alone: its address is its connection's owner */
    size_t nxw;
} txn;

static const char EXECABORT[] = "-EXECABORT Transaction discarded because of previous errors.\r\n";
static const char MULTI_REQUEST[] = "*1\r\n$5\r\nMULTI\r\n";
static const char DISCARD_REQUEST[] = "*1\r\n$7\r\nDISCARD\r\n";
static const char UNWATCH_REQUEST[] = "*1\r\n$7\r\nUNWATCH\r\n";
static const char EXEC_REQUEST[] = "*1\r\n$4\r\nEXEC\r\n";
static const char CHECK_REQUEST[] = "*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nPING\r\n";

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
            backend_reserved_linger(t->conn, !pinned(st) && !(st == TXN_MULTI && t->watched));
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
    case TXN_MULTI:
        if (t->watched)
            t->watch_lost = 1; /* a WATCH kept while MULTI queues in the proxy */
        return;
    case TXN_NONE:
    case TXN_BLOCKED: /* the blocked command's error reply ends it */
    case TXN_ENDING:
        return;
    }
}

/* Makes t->conn a connection to s that the client's requests may use now:
 * reuses a lingering one to s, else opens one. 0, or -1 with the reason in
 * err. */
static int pin_conn(txn *t, shard *s, char *err, size_t errlen)
{
    if (t->conn && (t->conn->shard != s || t->conn->resp3 != (t->sess->proto == 3))) {
        /* Lingering on another shard, or in the protocol the client spoke
         * before HELLO: nothing of the client's is on it. */
        backend_reserved_close(t->conn);
        t->conn = NULL;
    }
    if (!t->conn) {
        t->conn = backend_reserve(s, 0, t->sess->proto == 3, conn_event, t, err, errlen);
        if (!t->conn)
            return -1;
    }
    backend_reserved_barrier(t->conn, session_hint(t->sess));
    return 0;
}

/* pin_conn, answering req with the error. */
static int pin(txn *t, request *req, shard *s)
{
    char err[300];
    if (pin_conn(t, s, err, sizeof(err)) < 0) {
        request_error(req, "ERR %s", err);
        return -1;
    }
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

/* A WATCH's connection on another shard failed: EXEC must not run. */
static void xwatch_event(void *owner, const char *push, size_t len)
{
    (void)len;
    xwatch *x = owner;
    if (push)
        return; /* not in push mode: unreachable */
    x->conn = NULL;
    x->t->watch_lost = 1;
}

/* Closes the WATCH connections on other shards (what they hold is over). */
static void drop_xwatches(txn *t)
{
    for (size_t i = 0; i < t->nxw; i++) {
        backend_reserved_close(t->xw[i]->conn);
        free(t->xw[i]);
    }
    free(t->xw);
    t->xw = NULL;
    t->nxw = 0;
}

/* Ends a WATCH that no EXEC, DISCARD or UNWATCH ends on the shard: its
 * connections are closed, so none lingers with the client's WATCH on it. */
static void drop_watch(txn *t)
{
    if (t->watched && t->conn) {
        backend_reserved_close(t->conn);
        t->conn = NULL;
    }
    drop_xwatches(t);
    t->watched = 0;
}

/* The connection a WATCH of keys on s goes on: the reserved one (pinned
 * to s when the client watches nothing yet), or, with cross_shard =
 * atomic, one of its own to s. NULL with the reason in err. */
static backend_conn *watch_conn(txn *t, shard *s, char *err, size_t errlen)
{
    if (t->state != TXN_WATCHING) {
        if (pin_conn(t, s, err, errlen) < 0)
            return NULL;
        t->watch_lost = 0;
        t->watched = 1;
        set_state(t, TXN_WATCHING);
        return t->conn;
    }
    if (t->conn->shard == s)
        return t->conn;
    for (size_t i = 0; i < t->nxw; i++)
        if (t->xw[i]->conn && t->xw[i]->conn->shard == s)
            return t->xw[i]->conn;
    xwatch **grown = realloc(t->xw, (t->nxw + 1) * sizeof(*grown));
    if (grown)
        t->xw = grown;
    xwatch *x = grown ? calloc(1, sizeof(*x)) : NULL;
    if (!x) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    x->t = t;
    x->conn = backend_reserve(s, 0, t->sess->proto == 3, xwatch_event, x, err, errlen);
    if (!x->conn) {
        free(x);
        return NULL;
    }
    t->xw[t->nxw++] = x;
    backend_reserved_linger(x->conn, 0);
    backend_reserved_barrier(x->conn, session_hint(t->sess));
    return x->conn;
}

backend_conn *txn_conn_for(const session *sess, const shard *s)
{
    const txn *t = sess ? sess->txn : NULL;
    if (!t || !pinned(t->state))
        return NULL;
    if (t->conn && t->conn->shard == s)
        return t->conn;
    for (size_t i = 0; t->state == TXN_WATCHING && i < t->nxw; i++)
        if (t->xw[i]->conn && t->xw[i]->conn->shard == s)
            return t->xw[i]->conn;
    return NULL;
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
        request_crossslot(req, REQUEST_KEYS_APART " as the transaction's earlier keys");
        return;
    }
    t->queued_count++;
    send_on_conn(t, req, pass_done, 0, bytes, len);
}

static void cmd_multi(txn *t, request *req, const char *bytes, size_t len)
{
    if (t->state == TXN_WATCHING && srv.cfg->cross_shard != CONFIG_CROSS_ATOMIC) {
        t->aborted = 0;
        set_state(t, TXN_MULTI_BOUND);
        send_on_conn(t, req, pass_done, 0, bytes, len);
        return;
    }
    /* A WATCH whose connection failed cannot be honoured: the EXEC fails.
     * With cross_shard = atomic the WATCHes stay on their connections and
     * the commands wait in the proxy; EXEC checks the WATCHes first. */
    t->aborted = t->watch_lost;
    t->watch_lost = 0;
    set_state(t, TXN_MULTI);
    req->on_done(req, "+OK\r\n", 5);
}

/* MULTI, the commands queued in the proxy, EXEC on the reserved connection
 * to s. */
static void exec_on(txn *t, request *req, shard *s)
{
    if (bind_multi(t, req, s) < 0) {
        t->aborted = 0;
        set_state(t, TXN_NONE);
        return;
    }
    send_ending(t, req, release_done, EXEC_REQUEST, sizeof(EXEC_REQUEST) - 1);
}

/* EXEC of the commands queued in the proxy (TXN_MULTI, no WATCH left): on
 * their one shard as a MULTI there, or by two-phase commit. */
static void exec_queued(txn *t, request *req)
{
    if (t->nqueued == 0) {
        t->aborted = 0;
        set_state(t, TXN_NONE);
        req->on_done(req, "*0\r\n", 4);
        return;
    }
    if (t->several) {
        /* Keys of several shards (cross_shard = atomic): a two-phase
         * commit, with EXEC's reply. */
        (void)twopc_exec_queued(req, buf_head(&t->queued), buf_len(&t->queued), t->queued_shard,
                                t->nqueued, NULL);
        drop_queued(t);
        set_state(t, TXN_NONE);
        return;
    }
    /* One shard's keys, or only keyless commands (any shard runs them). */
    exec_on(t, req, srv.shards[t->keyed ? t->first_shard : t->sess->id % srv.nshards]);
}

/* The check of a client's WATCHes at EXEC (cross_shard = atomic): MULTI,
 * PING, EXEC on every connection holding one; Redis answers that EXEC
 * with nil when a watched key on its shard changed since the WATCH. */
typedef struct watch_check {
    request *req;
    size_t left;             /* replies still awaited (+1 while sending) */
    int dirty;               /* an EXEC answered nil */
    int failed;              /* a connection failed */
    twopc_gate_done_fn done; /* the two-phase commit waiting for it, or NULL: */
    void *ctx;               /* the check before a one-shard EXEC */
} watch_check;

typedef struct check_part {
    fragment f; /* first: the fragment's address is the part's */
    watch_check *wc;
} check_part;

/* Every check answered: the WATCHes are over. */
static void check_over(watch_check *wc)
{
    request *req = wc->req;
    txn *t = req->session ? req->session->txn : NULL;
    twopc_verdict verdict = wc->failed || !t ? TWOPC_GATE_FAIL
                            : wc->dirty      ? TWOPC_GATE_NIL
                                             : TWOPC_GATE_PASS;
    twopc_gate_done_fn done = wc->done;
    void *ctx = wc->ctx;
    free(wc);
    if (t) {
        drop_xwatches(t);
        t->watched = 0;
        t->watch_lost = 0;
        t->sess->hold_input = 0;
    }
    if (done) {
        if (t)
            set_state(t, TXN_NONE);
        done(ctx, verdict);
        return;
    }
    if (t && verdict == TWOPC_GATE_PASS) {
        exec_queued(t, req);
        return;
    }
    if (t) {
        drop_queued(t);
        t->aborted = 0;
        set_state(t, TXN_NONE);
    }
    if (verdict == TWOPC_GATE_FAIL)
        req->on_done(req, EXECABORT, sizeof(EXECABORT) - 1);
    else if (request_resp3(req))
        req->on_done(req, "_\r\n", 3);
    else
        req->on_done(req, "*-1\r\n", 5);
}

/* One check's EXEC reply (reply NULL: every check was sent). */
static void check_answered(watch_check *wc, const char *reply, size_t len)
{
    if (reply && (len == 0 || reply[0] == '-'))
        wc->failed = 1;
    else if (reply && (reply[0] != '*' || (len > 1 && reply[1] == '-')))
        wc->dirty = 1;
    if (--wc->left == 0)
        check_over(wc);
}

static void check_done(fragment *f, const char *reply, size_t len)
{
    check_part *part = (check_part *)f;
    watch_check *wc = part->wc;
    free(part);
    wc->req->pending--;
    check_answered(wc, reply, len);
}

static void send_check(watch_check *wc, backend_conn *c)
{
    check_part *part = c ? calloc(1, sizeof(*part)) : NULL;
    if (!part || send_swallowed(c, CHECK_REQUEST, sizeof(CHECK_REQUEST) - 1, 2) < 0) {
        free(part);
        wc->failed = 1;
        return;
    }
    part->wc = wc;
    part->f.req = wc->req;
    part->f.done = check_done;
    wc->req->pending++;
    wc->left++;
    backend_reserved_send(c, &part->f, EXEC_REQUEST, sizeof(EXEC_REQUEST) - 1);
}

/* Checks every WATCH of the client; the verdict goes to done(ctx, ...),
 * or, done NULL, decides the EXEC of what is queued in the proxy. */
static void check_watches(txn *t, request *req, twopc_gate_done_fn done, void *ctx)
{
    watch_check *wc = calloc(1, sizeof(*wc));
    if (!wc) {
        if (done)
            done(ctx, TWOPC_GATE_FAIL);
        else
            request_error(req, "ERR out of memory");
        return;
    }
    wc->req = req;
    wc->done = done;
    wc->ctx = ctx;
    wc->left = 1;
    t->sess->hold_input = 1;
    set_state(t, TXN_ENDING);
    send_check(wc, t->conn);
    for (size_t i = 0; i < t->nxw; i++)
        send_check(wc, t->xw[i]->conn);
    check_answered(wc, NULL, 0);
}

/* The two-phase commit of an EXEC after WATCH prepared everywhere (or,
 * done NULL, ended before): the WATCHes are checked (or dropped). */
static void exec_gate(request *req, twopc_gate_done_fn done, void *ctx)
{
    txn *t = req->session ? req->session->txn : NULL;
    if (!done) {
        if (t) {
            drop_watch(t);
            t->sess->hold_input = 0;
            set_state(t, TXN_NONE);
        }
        return;
    }
    if (!t) {
        done(ctx, TWOPC_GATE_FAIL);
        return;
    }
    check_watches(t, req, done, ctx);
}

/* EXEC after WATCH of what is queued in the proxy. Commands of several
 * shards: the two-phase commit checks the WATCHes once every participant
 * prepared (its keys locked), so that a backoff of the prepare does not
 * widen the window between check and commit. Commands of the one shard
 * watched: MULTI, commands, EXEC on the connection holding the WATCH, as
 * Redis. Else the WATCHes are checked first. */
static void exec_watched(txn *t, request *req)
{
    if (t->several) {
        t->sess->hold_input = 1;
        set_state(t, TXN_ENDING);
        int started = twopc_exec_queued(req, buf_head(&t->queued), buf_len(&t->queued),
                                        t->queued_shard, t->nqueued, exec_gate);
        drop_queued(t);
        if (!started) {
            drop_watch(t);
            t->sess->hold_input = 0;
            set_state(t, TXN_NONE);
        }
        return;
    }
    if (t->nxw == 0 && t->conn && t->conn->resp3 == (t->sess->proto == 3) &&
        (!t->keyed || srv.shards[t->first_shard] == t->conn->shard)) {
        t->watched = 0; /* the shard's EXEC ends it */
        exec_on(t, req, t->conn->shard);
        return;
    }
    check_watches(t, req, NULL, NULL);
}

static void cmd_exec(txn *t, request *req, const char *bytes, size_t len)
{
    if (t->state == TXN_MULTI) {
        if (t->aborted || t->watch_lost || (t->nqueued == 0 && !t->watched)) {
            int aborted = t->aborted || t->watch_lost;
            drop_queued(t);
            drop_watch(t);
            t->aborted = 0;
            t->watch_lost = 0;
            set_state(t, TXN_NONE);
            if (aborted)
                req->on_done(req, EXECABORT, sizeof(EXECABORT) - 1);
            else
                req->on_done(req, "*0\r\n", 4);
            return;
        }
        if (t->watched)
            exec_watched(t, req);
        else
            exec_queued(t, req);
        return;
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
        drop_watch(t);
        set_state(t, TXN_NONE);
        req->on_done(req, "+OK\r\n", 5);
        return;
    }
    send_ending(t, req, release_done, bytes, len);
}

static void cmd_watch(txn *t, request *req, shard *s, const char *bytes, size_t len)
{
    if (t->state == TXN_WATCHING && t->conn->shard != s &&
        srv.cfg->cross_shard != CONFIG_CROSS_ATOMIC) {
        request_crossslot(req, REQUEST_KEYS_APART " as the WATCHed keys");
        return;
    }
    char err[300];
    backend_conn *c = watch_conn(t, s, err, sizeof(err));
    if (!c) {
        request_error(req, "ERR %s", err);
        return;
    }
    fragment *f = &req->single;
    f->req = req;
    f->done = pass_done;
    req->pending = 1;
    backend_reserved_send(c, f, bytes, len);
}

/* One shard's part of a WATCH whose keys span shards. */
typedef struct watch_split {
    size_t left; /* parts not answered yet */
    buf err;     /* the first error answered */
} watch_split;

typedef struct watch_part {
    fragment f; /* first: the fragment's address is the part's */
    watch_split *split;
} watch_part;

/* One part answered (or, last, every part sent): req's reply once all
 * are, the first error if any. */
static void split_answered(request *req, watch_split *sp, const char *reply, size_t len)
{
    if (len > 0 && reply[0] == '-' && buf_len(&sp->err) == 0)
        (void)buf_append(&sp->err, reply, len);
    if (--sp->left > 0)
        return;
    if (buf_len(&sp->err) > 0)
        req->on_done(req, buf_head(&sp->err), buf_len(&sp->err));
    else
        req->on_done(req, "+OK\r\n", 5);
    buf_free(&sp->err);
    free(sp);
}

static void watch_part_done(fragment *f, const char *reply, size_t len)
{
    watch_part *part = (watch_part *)f;
    watch_split *sp = part->split;
    request *req = f->req;
    free(part);
    req->pending--;
    split_answered(req, sp, reply, len);
}

/* Sends WATCH with the keys of argv (at key_pos) that are on shard si on
 * c, as one part of sp. 0 or -1 (out of memory). */
static int send_watch_part(request *req, watch_split *sp, backend_conn *c, uint32_t si,
                           const resp_arg *argv, const size_t *key_pos, const uint32_t *key_shard,
                           size_t nkeys)
{
    size_t n = 0;
    for (size_t i = 0; i < nkeys; i++)
        n += key_shard[i] == si;
    buf b = {0};
    int bad =
        buf_append_header(&b, '*', (int64_t)(1 + n)) < 0 || buf_append_bulk(&b, "WATCH", 5) < 0;
    for (size_t i = 0; i < nkeys && !bad; i++)
        if (key_shard[i] == si)
            bad = buf_append_bulk(&b, argv[key_pos[i]].ptr, argv[key_pos[i]].len) < 0;
    watch_part *part = bad ? NULL : calloc(1, sizeof(*part));
    if (!part) {
        buf_free(&b);
        return -1;
    }
    part->split = sp;
    part->f.req = req;
    part->f.done = watch_part_done;
    req->pending++;
    sp->left++;
    backend_reserved_send(c, &part->f, buf_head(&b), buf_len(&b));
    buf_free(&b);
    return 0;
}

void txn_watch_across(request *req, const resp_arg *argv, const size_t *key_pos,
                      const uint32_t *key_shard, size_t nkeys)
{
    txn *t = get_txn(req->session);
    if (!t) {
        request_error(req, "ERR out of memory");
        return;
    }
    if (t->state == TXN_MULTI || t->state == TXN_MULTI_BOUND) {
        request_error(req, "ERR WATCH inside MULTI is not allowed");
        return;
    }
    /* Every shard's connection first, so that nothing is sent when one
     * cannot be had. */
    backend_conn **conns = calloc(nkeys, sizeof(*conns));
    watch_split *sp = calloc(1, sizeof(*sp));
    if (!conns || !sp) {
        free(conns);
        free(sp);
        request_error(req, "ERR out of memory");
        return;
    }
    char err[300];
    for (size_t i = 0; i < nkeys; i++) {
        conns[i] = watch_conn(t, srv.shards[key_shard[i]], err, sizeof(err));
        if (!conns[i]) {
            free(conns);
            free(sp);
            request_error(req, "ERR %s", err);
            return;
        }
    }
    req->pending = 0;
    sp->left = 1; /* until every part is sent */
    for (size_t i = 0; i < nkeys; i++) {
        int first = 1; /* the first key of its shard sends the shard's part */
        for (size_t j = 0; j < i && first; j++)
            first = key_shard[j] != key_shard[i];
        if (first &&
            send_watch_part(req, sp, conns[i], key_shard[i], argv, key_pos, key_shard, nkeys) < 0 &&
            buf_len(&sp->err) == 0)
            (void)buf_append(&sp->err, "-ERR out of memory\r\n", 20);
    }
    free(conns);
    split_answered(req, sp, "+OK\r\n", 5);
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
        drop_xwatches(t);
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
    drop_xwatches(t);
    t->aborted = 0;
    t->watch_lost = 0;
    if (!watching && !bound)
        drop_watch(t); /* a WATCH kept while MULTI queued in the proxy */
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
    drop_xwatches(t);
    buf_free(&t->queued);
    free(t->queued_shard);
    free(t);
}
