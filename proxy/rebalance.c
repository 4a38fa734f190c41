/* Online rebalancing with stock MIGRATE. See rebalance.h for the model and
 * docs/rebalancing.md for the protocol in full; the guarantees it keeps
 * (docs/semantics.md, "Rebalancing"):
 *  - no acknowledged write is lost: a request that touches a key whose owner
 *    changed first MIGRATEs it (atomic on the source), then goes to the new
 *    owner; requests sent under the old ring are all answered (the barrier)
 *    before anything moves, so none of them lands on a source afterwards;
 *  - a key lives on one shard: MIGRATE deletes the source copy, and a BUSYKEY
 *    answer (the target already has a newer copy) deletes the stale one;
 *  - no false misses: a key is read from the new owner only after its move.
 * The background mover uses a control connection (ctlconn) of its own
 * to each source; on-demand moves use the data path (migrate.c). */
#include "proxy/rebalance.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "proxy/ctlconn.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/workers.h"

/* A batch that failed is retried after this. */
#define REBALANCE_RETRY_US 1000000u
/* A mover connection silent this long past the MIGRATE timeout is reset. */
#define REBALANCE_STALL_GRACE_US 5000000u
/* Progress is logged this often while a migration runs. */
#define REBALANCE_LOG_US 5000000u

/* Where one source shard's SCAN pass is. A batch is one SCAN and the
 * MIGRATEs (and DELs of stale copies) for the keys it returned. */
typedef enum mover_state {
    MOVER_DISCONNECTED = 0, /* no control connection: one is opened once next_at_us has
                               passed */
    MOVER_CONNECTING,       /* the control connection is being opened */
    MOVER_READY,            /* connected, no batch: the next SCAN goes once the barrier is
                               down and next_at_us (rate limit, retry) has passed */
    MOVER_SCANNING,         /* a batch's SCAN is in flight */
    MOVER_MIGRATING,        /* a batch's MIGRATE and DEL replies are awaited
                               (migrates_pending of them) */
    MOVER_DONE,             /* final: a complete pass over the source ended */
} mover_state;

/* One source shard's SCAN pass. */
typedef struct mover {
    shard *source;
    mover_state state;
    ctlconn *ac;            /* control connection, NULL when DISCONNECTED (or DONE and
                                         closed) */
    char cursor[32];        /* where the next SCAN starts */
    char next_cursor[32];   /* where the batch in flight leads */
    int migrates_pending;   /* MIGRATE/DEL replies the batch waits for */
    int batch_failed;       /* the batch in flight hit an error (rb.last_error): it is
                               retried from its cursor once over */
    uint64_t next_at_us;    /* not before: rate limit or retry */
    uint64_t busy_since_us; /* when the batch in flight started, for stalls */
    uint64_t estimate;      /* DBSIZE at start */
} mover;

/* One MIGRATE sent by the mover, with its keys kept for per-key retries. */
typedef struct migrate_call {
    mover *m;
    shard *target;
    size_t nkeys;
    char **keys;
    size_t *lens;
    int retry; /* one key of a batch that failed with BUSYKEY */
    buf cmd;   /* the MIGRATE, while it waits for admission */
} migrate_call;

/* Shards a barrier can wait on to confirm old connections gone. */
#define REBALANCE_CONFIRM_MAX 256

static struct {
    int running;
    /* Several proxies (epoch.c): the barrier also waits for the fleet's
     * fence, and the mover runs only on the proxy holding the lease. */
    int fleet;                 /* the fleet mode is on (the proxy runs epoch.c) */
    int fleet_hold;            /* the barrier's hold for the fleet's fence is up */
    int mover_on;              /* this proxy may SCAN and MIGRATE (always without fleet) */
    char old_fp[24];           /* the ring moved from, by fingerprint */
    char *old_text;            /* and as proxy.ini text (reload_ring_text) */
    void (*on_finished)(void); /* the movers completed their passes */
    ring *old_ring;
    shard **old_shards; /* old ring order */
    size_t n_old;
    mover *movers;
    size_t n_movers;
    shard **closing; /* removed shards, freed once nothing is in flight */
    size_t n_closing;
    int barrier;               /* PINGs still out on the old ring's connections, plus one
                                  per shard in confirming[] */
    int fleet_wait;            /* this worker's barrier is down, another worker's is not
                                  (workers = N): keys do not move yet */
    uint64_t ring_fp;          /* fingerprint of the ring keys move to */
    uint64_t migration_id;     /* old and new ring fingerprints mixed: names this
                                  migration to the other workers */
    uint64_t barrier_since_us; /* when the barrier went up */
    uint64_t barrier_gen;      /* counts barriers: a late reply to an earlier one is ignored */
    /* Old shards that must confirm our reset connections are gone before
     * keys move (their PING failed, or they had such connections). */
    shard *confirming[REBALANCE_CONFIRM_MAX];
    int kills_in_flight[REBALANCE_CONFIRM_MAX];
    size_t n_confirming;
    request *wait_head; /* requests waiting for the barrier */
    request *wait_tail;
    request *held; /* waiters of a move abandoned for the one the shards
                      record, until that one starts (rebalance_adopt_held) */
    void (*resume)(request *req);
    int reload_queued;
    int abandoned; /* the move ends unfinished (rebalance_abort): not counted as done */
    uint64_t started_us;
    uint64_t last_log_us;
    uint64_t keys_scanned;
    uint64_t keys_moved; /* by the mover */
    uint64_t keys_moved_on_demand;
    uint64_t busykey_deleted;
    uint64_t failures;
    uint64_t migrations_done;
    char last_error[200];
    char drained[400]; /* removed shards that may be shut down */
    char state_path[4200];
} rb;

static void mover_step(mover *m);
static void finish(void);
static workers_mover_progress own_progress(void);

void rebalance_state_path(const char *config_path, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s.rebalance", config_path);
}

int rebalance_running(void)
{
    return rb.running;
}

shard *rebalance_old_owner(uint32_t hash)
{
    if (!rb.running)
        return NULL;
    return rb.old_shards[ring_lookup(rb.old_ring, hash)];
}

void rebalance_count_on_demand(size_t moved, size_t busykey_deleted)
{
    rb.keys_moved_on_demand += moved;
    rb.busykey_deleted += busykey_deleted;
}

void rebalance_queue_reload(void)
{
    rb.reload_queued = 1;
}

int rebalance_take_queued_reload(void)
{
    if (rb.running || srv.fleet_moving || !rb.reload_queued)
        return 0;
    rb.reload_queued = 0;
    return 1;
}

static int shard_in_new_set(const shard *s)
{
    for (size_t i = 0; i < srv.nshards; i++)
        if (srv.shards[i] == s)
            return 1;
    return 0;
}

/* ---- the barrier ----
 * Before keys move, every request sent under the old ring must have run,
 * or be sure never to run: a PING behind everything queued on each
 * connection of each old shard proves the first. A connection that was
 * reset with requests in flight (a request or the PING timed out) proves
 * nothing: a paused shard still holds those requests in its socket and runs
 * them when it resumes, possibly after their key moved away; a later move
 * back would then take that stale copy for the newer one. So such a
 * shard's old connections must be gone, which CLIENT KILL ADDR on the
 * shard confirms (it answers how many it closed, 0 or 1), before the
 * barrier falls. */

/* A barrier fragment and the shard it was sent to. */
typedef struct barrier_frag {
    fragment f; /* first: the done callback gets it */
    shard *s;
    uint64_t gen;   /* the barrier it belongs to */
    char laddr[64]; /* CLIENT KILL: the connection to confirm gone */
} barrier_frag;

static void barrier_release(void)
{
    request *req = rb.wait_head;
    rb.wait_head = rb.wait_tail = NULL;
    while (req) {
        request *next = req->next_wait;
        req->next_wait = NULL;
        rb.resume(req);
        req = next;
    }
    for (size_t i = 0; i < rb.n_movers; i++)
        mover_step(&rb.movers[i]);
}

/* This worker has nothing in flight routed by the old ring. Keys move
 * once every worker can say the same (workers_all_drained): a worker still
 * on the old ring would write a key to its old owner after it moved. */
static void barrier_down(void)
{
    workers_publish_ring(rb.ring_fp, rb.ring_fp);
    if (!workers_all_drained(rb.ring_fp)) {
        log_info("rebalance: every request this worker sent under the old ring is answered; "
                 "waiting for the other workers");
        rb.fleet_wait = 1;
        return;
    }
    rb.fleet_wait = 0;
    log_info("rebalance: every request sent under the old ring is answered, moving keys");
    barrier_release();
}

static void barrier_lower(void)
{
    if (--rb.barrier == 0 && rb.running)
        barrier_down();
}

/* Puts s among the shards whose old connections must be confirmed gone
 * (once). */
static void confirm_needed(shard *s)
{
    for (size_t i = 0; i < rb.n_confirming; i++)
        if (rb.confirming[i] == s)
            return;
    if (rb.n_confirming == REBALANCE_CONFIRM_MAX) {
        log_error("rebalance: more than %d shards to confirm; %s is not waited for",
                  REBALANCE_CONFIRM_MAX, s->label);
        return;
    }
    log_warn("rebalance: shard %s may still run requests sent under the old ring; keys move "
             "once it confirms its old connections gone",
             s->label);
    rb.kills_in_flight[rb.n_confirming] = 0;
    rb.confirming[rb.n_confirming++] = s;
    rb.barrier++;
}

static void barrier_ping_done(fragment *f, const char *reply, size_t len)
{
    barrier_frag *bf = (barrier_frag *)f;
    int current = rb.running && bf->gen == rb.barrier_gen;
    if (current && !(len >= 5 && memcmp(reply, "+PONG", 5) == 0))
        confirm_needed(bf->s);
    free(bf);
    if (current)
        barrier_lower();
}

static void barrier_kill_done(fragment *f, const char *reply, size_t len)
{
    barrier_frag *bf = (barrier_frag *)f;
    /* CLIENT KILL ADDR answers how many it closed: either way, none is
     * left with that address. */
    if (len >= 1 && reply[0] == ':')
        backend_shard_confirm_gone(bf->s, bf->laddr);
    for (size_t i = 0; bf->gen == rb.barrier_gen && i < rb.n_confirming; i++) {
        if (rb.confirming[i] != bf->s)
            continue;
        if (--rb.kills_in_flight[i] == 0 && bf->s->n_unconfirmed == 0) {
            log_notice("rebalance: shard %s confirmed its old connections gone", bf->s->label);
            rb.confirming[i] = rb.confirming[--rb.n_confirming];
            rb.kills_in_flight[i] = rb.kills_in_flight[rb.n_confirming];
            free(bf);
            barrier_lower();
            return;
        }
        break;
    }
    free(bf);
}

/* Asks each confirming shard with nothing in flight to drop the old
 * connections it may still run requests from (again after a failure). */
static void confirm_tick(void)
{
    for (size_t i = 0; i < rb.n_confirming; i++) {
        shard *s = rb.confirming[i];
        if (rb.kills_in_flight[i] > 0)
            continue;
        if (s->n_unconfirmed == 0) {
            rb.confirming[i] = rb.confirming[--rb.n_confirming];
            rb.kills_in_flight[i] = rb.kills_in_flight[rb.n_confirming];
            barrier_lower();
            return; /* the arrays changed: the next tick goes on */
        }
        for (int k = 0; k < s->n_unconfirmed; k++) {
            barrier_frag *bf = calloc(1, sizeof(*bf));
            buf cmd = {0};
            buf_append_header(&cmd, '*', 4);
            buf_append_bulk(&cmd, "CLIENT", 6);
            buf_append_bulk(&cmd, "KILL", 4);
            buf_append_bulk(&cmd, "ADDR", 4);
            buf_append_bulk(&cmd, s->unconfirmed[k], strlen(s->unconfirmed[k]));
            if (!bf || buf_failed(&cmd)) {
                free(bf);
                buf_free(&cmd);
                continue;
            }
            bf->s = s;
            bf->gen = rb.barrier_gen;
            snprintf(bf->laddr, sizeof(bf->laddr), "%s", s->unconfirmed[k]);
            bf->f.done = barrier_kill_done;
            bf->f.harmless = 1;
            rb.kills_in_flight[i]++;
            backend_send(s, (uint64_t)k, &bf->f, buf_head(&cmd), buf_len(&cmd));
            buf_free(&cmd);
        }
    }
}

/* Requests that waited for the barrier longer than request_timeout get a
 * retryable error: a source that stays paused must not hold them for ever. */
static void barrier_wait_tick(uint64_t now)
{
    int timeout_ms = srv.cfg->request_timeout_ms;
    if ((rb.barrier == 0 && !rb.fleet_wait) || !rb.wait_head || timeout_ms <= 0 ||
        now - rb.barrier_since_us < (uint64_t)timeout_ms * 1000)
        return;
    request *req = rb.wait_head;
    rb.wait_head = rb.wait_tail = NULL;
    while (req) {
        request *next = req->next_wait;
        req->next_wait = NULL;
        static const char tryagain[] =
            "-TRYAGAIN ring changed: a shard has not yet answered every request sent under "
            "the old ring; retry\r\n";
        req->on_done(req, tryagain, sizeof(tryagain) - 1);
        req = next;
    }
}

int rebalance_wait_barrier(request *req, void (*resume)(request *req))
{
    if (!rb.running || (rb.barrier == 0 && !rb.fleet_wait))
        return 0;
    rb.resume = resume;
    req->next_wait = NULL;
    if (rb.wait_tail)
        rb.wait_tail->next_wait = req;
    else
        rb.wait_head = req;
    rb.wait_tail = req;
    return 1;
}

/* ---- the mover ---- */

static const char *mover_state_name(mover_state st)
{
    switch (st) {
    case MOVER_DISCONNECTED:
        return "disconnected";
    case MOVER_CONNECTING:
        return "connecting";
    case MOVER_READY:
        return "ready";
    case MOVER_SCANNING:
        return "scanning";
    case MOVER_MIGRATING:
        return "migrating";
    case MOVER_DONE:
        return "done";
    }
    return "?";
}

/* The one place a mover changes state. DONE is final: leaving it is a
 * bug. */
static void mover_set_state(mover *m, mover_state st)
{
    if (m->state == st)
        return;
    log_debug("rebalance: shard %s: mover %s -> %s", m->source->label, mover_state_name(m->state),
              mover_state_name(st));
    switch (st) {
    case MOVER_DISCONNECTED:
    case MOVER_CONNECTING:
    case MOVER_READY:
    case MOVER_SCANNING:
    case MOVER_MIGRATING:
    case MOVER_DONE:
        if (m->state == MOVER_DONE)
            break;
        m->state = st;
        return;
    default:
        break;
    }
    log_error("BUG: rebalance: shard %s: mover %s (%d) -> %s (%d)", m->source->label,
              mover_state_name(m->state), (int)m->state, mover_state_name(st), (int)st);
    abort();
}

/* Whether a batch is in flight. */
static int mover_busy(const mover *m)
{
    return m->state == MOVER_SCANNING || m->state == MOVER_MIGRATING;
}

/* The batch's last reply is in. Its connection may be gone already: a
 * stalled one is freed with the batch in flight, which then fails. */
static void batch_end(mover *m)
{
    uint64_t now = server_now_us();
    if (mover_busy(m))
        mover_set_state(m, MOVER_READY);
    if (m->batch_failed) {
        rb.failures++;
        m->next_at_us = now + REBALANCE_RETRY_US;
        m->batch_failed = 0;
        log_warn("rebalance: shard %s: batch failed (%s), retrying from the same cursor",
                 m->source->label, rb.last_error);
        return;
    }
    snprintf(m->cursor, sizeof(m->cursor), "%s", m->next_cursor);
    if (strcmp(m->cursor, "0") == 0) {
        mover_set_state(m, MOVER_DONE);
        log_info("rebalance: shard %s: complete pass done", m->source->label);
        for (size_t i = 0; i < rb.n_movers; i++)
            if (rb.movers[i].state != MOVER_DONE)
                return;
        finish();
        if (rb.on_finished)
            rb.on_finished();
        return;
    }
    mover_step(m);
}

static void call_free(migrate_call *call)
{
    for (size_t i = 0; i < call->nkeys; i++)
        free(call->keys[i]);
    free(call->keys);
    free(call->lens);
    buf_free(&call->cmd);
    free(call);
}

/* ---- MIGRATE admission (see rebalance.h) ---- */

typedef struct migrate_waiter {
    struct migrate_waiter *next;
    int (*retry)(void *arg);
    void *arg;
} migrate_waiter;

static migrate_waiter *waiters;
static int waking, wake_again;

int rebalance_migrate_admit(shard *from, shard *to)
{
    if (from->migrating_in > 0 || to->migrating_out > 0)
        return 0;
    from->migrating_out++;
    to->migrating_in++;
    return 1;
}

void rebalance_migrate_wait(int (*retry)(void *arg), void *arg)
{
    migrate_waiter *w = calloc(1, sizeof(*w));
    if (!w) {
        /* A few bytes short: nothing sensible is left to do (as Redis does
         * for small allocations). */
        log_error("out of memory queueing a MIGRATE for admission");
        abort();
    }
    w->retry = retry;
    w->arg = arg;
    migrate_waiter **tail = &waiters;
    while (*tail)
        tail = &(*tail)->next;
    *tail = w;
}

/* Gives every waiter, first come first served, a chance to send. A retry
 * may release a MIGRATE itself (a send that fails at once): the walk is
 * then made again rather than nested. */
static void wake_waiters(void)
{
    if (waking) {
        wake_again = 1;
        return;
    }
    waking = 1;
    do {
        wake_again = 0;
        for (migrate_waiter **link = &waiters; *link;) {
            migrate_waiter *w = *link;
            if (w->retry(w->arg)) {
                *link = w->next;
                free(w);
            } else {
                link = &w->next;
            }
        }
    } while (wake_again);
    waking = 0;
}

void rebalance_migrate_release(shard *from, shard *to)
{
    from->migrating_out--;
    to->migrating_in--;
    wake_waiters();
}

/* Forgets the waiters whose argument is gone (movers being freed). */
static void drop_waiters(int (*retry)(void *arg))
{
    for (migrate_waiter **link = &waiters; *link;) {
        migrate_waiter *w = *link;
        if (w->retry == retry) {
            *link = w->next;
            free(w);
        } else {
            link = &w->next;
        }
    }
}

static void send_migrate(mover *m, shard *target, char **keys, size_t *lens, size_t nkeys,
                         int retry);

static void on_del_reply(ctlconn *ac, void *reply, void *privdata)
{
    mover *m = privdata;
    redisReply *r = reply;
    if (!ac->data)
        return; /* the context is being freed (exit, or a new start) */
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(rb.last_error, sizeof(rb.last_error), "DEL of a stale copy on %s: %s",
                 m->source->name, r ? r->str : "connection lost");
        m->batch_failed = 1;
    } else {
        rb.busykey_deleted += (uint64_t)r->integer;
    }
    if (--m->migrates_pending == 0)
        batch_end(m);
}

static void on_migrate_reply(ctlconn *ac, void *reply, void *privdata)
{
    migrate_call *call = privdata;
    mover *m = call->m;
    redisReply *r = reply;
    rebalance_migrate_release(m->source, call->target);
    if (!ac->data) {
        call_free(call); /* the context is being freed (exit, or a new start) */
        return;
    }
    if (!r) {
        snprintf(rb.last_error, sizeof(rb.last_error), "MIGRATE from %s: connection lost",
                 m->source->name);
        m->batch_failed = 1;
    } else if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0) {
        rb.keys_moved += call->nkeys;
    } else if (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "NOKEY") == 0) {
        /* Moved on demand meanwhile, or deleted by a client; or, retried
         * after its batch failed with BUSYKEY, moved by that batch: MIGRATE
         * moves every key the target takes before it reports the error. */
        if (call->retry)
            rb.keys_moved++;
    } else if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "BUSYKEY") != NULL) {
        /* MIGRATE passes the target's RESTORE error on inside its own:
         * "ERR Target instance replied with error: BUSYKEY ...". */
        if (call->nkeys > 1) {
            /* Keys that moved are gone from the source; retry the rest one by
             * one to find the ones the target already holds. */
            for (size_t i = 0; i < call->nkeys; i++) {
                send_migrate(m, call->target, &call->keys[i], &call->lens[i], 1, 1);
                call->keys[i] = NULL;
            }
        } else if (ac) {
            /* The target holds a copy written after the switch: the source's
             * is stale. */
            const char *argv[2] = {"DEL", call->keys[0]};
            size_t argvlen[2] = {3, call->lens[0]};
            if (ctlconn_command_argv(ac, on_del_reply, m, 2, argv, argvlen) == REDIS_OK)
                m->migrates_pending++;
            else
                m->batch_failed = 1;
        }
    } else {
        snprintf(rb.last_error, sizeof(rb.last_error), "MIGRATE from %s to %s: %s", m->source->name,
                 call->target->name, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        m->batch_failed = 1;
    }
    call_free(call);
    if (--m->migrates_pending == 0)
        batch_end(m);
}

void rebalance_migrate_head(buf *out, const shard *target, size_t nkeys)
{
    char port[8], timeout[16];
    int pl = snprintf(port, sizeof(port), "%u", (unsigned)target->port);
    int tl = snprintf(timeout, sizeof(timeout), "%d", srv.cfg->migrate_timeout_ms);
    const char *pass = srv.cfg->backend_password, *user = srv.cfg->backend_user;
    /* The address the proxy resolved: the shard may not know the name, or
     * resolve it elsewhere. */
    char host[CONFIG_ADDR_MAX];
    backend_shard_ip(target, host, sizeof(host));
    buf_append_header(out, '*', (int64_t)(7 + (pass ? (user ? 3 : 2) : 0) + nkeys));
    buf_append_bulk(out, "MIGRATE", 7);
    buf_append_bulk(out, host, strlen(host));
    buf_append_bulk(out, port, (size_t)pl);
    buf_append_bulk(out, "", 0);
    buf_append_bulk(out, "0", 1);
    buf_append_bulk(out, timeout, (size_t)tl);
    if (pass && user) {
        /* The source authenticates to the target as the shards' ACL user. */
        buf_append_bulk(out, "AUTH2", 5);
        buf_append_bulk(out, user, strlen(user));
        buf_append_bulk(out, pass, strlen(pass));
    } else if (pass) {
        /* The source authenticates to the target with the shards' password. */
        buf_append_bulk(out, "AUTH", 4);
        buf_append_bulk(out, pass, strlen(pass));
    }
    buf_append_bulk(out, "KEYS", 4);
}

/* Sends MIGRATE for keys (ownership of the key copies passes to the call). */
/* Sends a mover's MIGRATE once admitted (counted in migrates_pending
 * already). Returns 0 while it must wait, 1 once sent or failed. */
static int mover_call_send(void *arg)
{
    migrate_call *call = arg;
    mover *m = call->m;
    if (m->ac && !rebalance_migrate_admit(m->source, call->target))
        return 0;
    int sent =
        m->ac && ctlconn_formatted_command(m->ac, on_migrate_reply, call, buf_head(&call->cmd),
                                           buf_len(&call->cmd)) == REDIS_OK;
    buf_free(&call->cmd);
    if (sent)
        return 1;
    if (m->ac)
        rebalance_migrate_release(m->source, call->target);
    snprintf(rb.last_error, sizeof(rb.last_error), "MIGRATE from %s: %s", m->source->name,
             m->ac ? "cannot send" : "connection lost");
    m->batch_failed = 1;
    call_free(call);
    if (--m->migrates_pending == 0)
        batch_end(m);
    return 1;
}

static void send_migrate(mover *m, shard *target, char **keys, size_t *lens, size_t nkeys,
                         int retry)
{
    migrate_call *call = calloc(1, sizeof(*call));
    if (call) {
        call->keys = malloc(nkeys * sizeof(char *));
        call->lens = malloc(nkeys * sizeof(size_t));
    }
    buf cmd = {0};
    rebalance_migrate_head(&cmd, target, nkeys);
    for (size_t i = 0; i < nkeys; i++)
        buf_append_bulk(&cmd, keys[i], lens[i]);
    if (!call || !call->keys || !call->lens || !m->ac || buf_failed(&cmd)) {
        for (size_t i = 0; i < nkeys; i++)
            free(keys[i]);
        if (call) {
            free(call->keys);
            free(call->lens);
            free(call);
        }
        buf_free(&cmd);
        snprintf(rb.last_error, sizeof(rb.last_error), "%s",
                 m->ac ? "out of memory" : "connection lost");
        m->batch_failed = 1;
        return;
    }
    call->m = m;
    call->target = target;
    call->nkeys = nkeys;
    call->retry = retry;
    for (size_t i = 0; i < nkeys; i++) {
        call->keys[i] = keys[i];
        call->lens[i] = lens[i];
    }
    call->cmd = cmd;
    m->migrates_pending++;
    if (!mover_call_send(call))
        rebalance_migrate_wait(mover_call_send, call);
}

/* Sends MIGRATEs for the keys of a SCAN reply whose owner changed,
 * grouped by their new shard. Returns how many keys are moving. */
static size_t migrate_scanned(mover *m, const redisReply *keys)
{
    /* Group the keys whose owner changed by their new shard. */
    size_t n = srv.nshards;
    char ***group = calloc(n, sizeof(char **));
    size_t **group_len = calloc(n, sizeof(size_t *));
    size_t *count = calloc(n, sizeof(size_t));
    int oom = !group || !group_len || !count;
    for (size_t i = 0; !oom && i < keys->elements; i++) {
        redisReply *k = keys->element[i];
        if (k->type != REDIS_REPLY_STRING)
            continue;
        uint32_t t = server_shard_of_key(k->str, k->len);
        if (srv.shards[t] == m->source)
            continue;
        if (!group[t]) {
            group[t] = malloc(keys->elements * sizeof(char *));
            group_len[t] = malloc(keys->elements * sizeof(size_t));
            if (!group[t] || !group_len[t]) {
                oom = 1;
                break;
            }
        }
        group[t][count[t]] = malloc(k->len + 1);
        if (!group[t][count[t]]) {
            oom = 1;
            break;
        }
        memcpy(group[t][count[t]], k->str, k->len + 1);
        group_len[t][count[t]] = k->len;
        count[t]++;
    }
    for (size_t t = 0; t < n && group; t++) {
        if (!oom && count[t])
            send_migrate(m, srv.shards[t], group[t], group_len[t], count[t], 0);
        else
            for (size_t i = 0; i < (count ? count[t] : 0); i++)
                free(group[t][i]);
        free(group[t]);
        if (group_len)
            free(group_len[t]);
    }
    free(group);
    free(group_len);
    if (oom) {
        snprintf(rb.last_error, sizeof(rb.last_error), "out of memory");
        m->batch_failed = 1;
    }
    size_t moving = 0;
    for (size_t t = 0; count && t < n; t++)
        moving += count[t];
    free(count);
    return moving;
}

static void on_scan_reply(ctlconn *ac, void *reply, void *privdata)
{
    mover *m = privdata;
    redisReply *r = reply;
    if (!ac->data)
        return; /* the context is being freed (exit, or a new start) */
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
        snprintf(rb.last_error, sizeof(rb.last_error), "SCAN on %s: %s", m->source->name,
                 !r                             ? "connection lost"
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "bad reply");
        m->batch_failed = 1;
        if (m->migrates_pending == 0)
            batch_end(m);
        return;
    }
    mover_set_state(m, MOVER_MIGRATING);
    snprintf(m->next_cursor, sizeof(m->next_cursor), "%s", r->element[0]->str);
    rb.keys_scanned += r->element[1]->elements;
    size_t moving = migrate_scanned(m, r->element[1]);
    /* Rate limit: space batches so that keys moved stay under migrate_rate.
     * Scanning is not limited: a source that keeps growing under client
     * writes (new keys it still owns) must not make the pass endless. */
    int rate = srv.cfg->migrate_rate;
    if (rate > 0 && moving > 0)
        m->next_at_us = server_now_us() + moving * 1000000u / (uint64_t)rate;
    if (m->migrates_pending == 0)
        batch_end(m);
}

static void mover_step(mover *m)
{
    if (!rb.running || m->state != MOVER_READY || rb.barrier > 0 || rb.fleet_wait || !rb.mover_on)
        return;
    uint64_t now = server_now_us();
    if (now < m->next_at_us)
        return;
    char count[16];
    snprintf(count, sizeof(count), "%d", srv.cfg->migrate_batch);
    const char *argv[4] = {"SCAN", m->cursor, "COUNT", count};
    size_t argvlen[4] = {4, strlen(m->cursor), 5, strlen(count)};
    if (ctlconn_command_argv(m->ac, on_scan_reply, m, 4, argv, argvlen) != REDIS_OK)
        return;
    mover_set_state(m, MOVER_SCANNING);
    m->busy_since_us = now;
}

static void on_dbsize_reply(ctlconn *ac, void *reply, void *privdata)
{
    (void)ac;
    mover *m = privdata;
    redisReply *r = reply;
    if (r && r->type == REDIS_REPLY_INTEGER)
        m->estimate = (uint64_t)r->integer;
}

static void on_mover_connect(const ctlconn *ac, int status)
{
    mover *m = ac->data;
    if (status != REDIS_OK) {
        log_warn("rebalance: shard %s: control connection failed: %s", m->source->label,
                 ac->errstr);
        m->ac = NULL; /* ctlconn frees it */
        mover_set_state(m, MOVER_DISCONNECTED);
        m->next_at_us = server_now_us() + REBALANCE_RETRY_US;
        return;
    }
    mover_set_state(m, MOVER_READY);
    if (srv.cfg->backend_password) {
        /* Replies come in order: a failed AUTH shows as NOAUTH errors on the
         * commands after it, which fail the batch with that reason. */
        const char *user = srv.cfg->backend_user, *pass = srv.cfg->backend_password;
        const char *argv[3] = {"AUTH", user ? user : pass, pass};
        size_t argvlen[3] = {4, strlen(argv[1]), strlen(pass)};
        ctlconn_command_argv(m->ac, NULL, NULL, user ? 3 : 2, argv, argvlen);
    }
    if (!m->estimate)
        ctlconn_command(m->ac, on_dbsize_reply, m, "DBSIZE");
    mover_step(m);
}

static void on_mover_disconnect(const ctlconn *ac, int status)
{
    mover *m = ac->data;
    (void)status;
    if (!m)
        return; /* freed by free_movers, which forgets it itself */
    m->ac = NULL;
    /* A mover that is done keeps its connection until the whole
     * migration ends (finish closes them). */
    if (m->state != MOVER_DONE)
        mover_set_state(m, MOVER_DISCONNECTED);
}

static void mover_connect(mover *m)
{
    /* Numeric, so that nothing resolves a name in the loop; with TLS the
     * name, which the shard's certificate names. */
    char ip[CONFIG_ADDR_MAX];
    backend_shard_ip(m->source, ip, sizeof(ip));
    const char *host = srv.cfg->tls_shards ? m->source->host : ip;
    ctlconn *ac = ctlconn_connect(host, m->source->port, CTLCONN_SHARD);
    if (!ac)
        return;
    if (ac->err) {
        log_warn("rebalance: shard %s: control connection failed: %s", m->source->label,
                 ac->errstr);
        ctlconn_free(ac);
        return;
    }
    ac->data = m;
    ctlconn_set_connect_callback(ac, on_mover_connect);
    ctlconn_set_disconnect_callback(ac, on_mover_disconnect);
    m->ac = ac;
    mover_set_state(m, MOVER_CONNECTING);
}

/* ---- state file ---- */

static int write_state(const char *text, char *err, size_t errlen)
{
    char tmp[4300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", rb.state_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) < 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, rb.state_path) < 0) {
        snprintf(err, errlen, "cannot rename %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* ---- start and finish ---- */

static void free_movers(void)
{
    /* MIGRATEs still waiting for admission belong to these movers. */
    for (migrate_waiter *w = waiters; w; w = w->next)
        if (w->retry == mover_call_send)
            call_free(w->arg);
    drop_waiters(mover_call_send);
    for (size_t i = 0; i < rb.n_movers; i++)
        if (rb.movers[i].ac) {
            rb.movers[i].ac->data = NULL;
            ctlconn_free(rb.movers[i].ac);
        }
    free(rb.movers);
    rb.movers = NULL;
    rb.n_movers = 0;
}

/* For each old shard (old_ring order), whether it loses keys to the new
 * ring: it owned a range that changed hands, or it is removed. NULL when
 * out of memory. */
static int *find_sources(ring *old_ring, shard **old_shards, size_t n_old)
{
    ring_range *ranges = NULL;
    size_t nranges = 0;
    if (ring_diff(old_ring, srv.ring, &ranges, &nranges) < 0)
        return NULL;
    int *is_source = calloc(n_old ? n_old : 1, sizeof(int));
    if (!is_source) {
        free(ranges);
        return NULL;
    }
    /* Shards matched by name: a range moves only when its owner's object
     * changed. ring_diff compares names, so use it as is. */
    for (size_t i = 0; i < nranges; i++)
        is_source[ranges[i].from] = 1;
    free(ranges);
    for (size_t i = 0; i < n_old; i++)
        if (!shard_in_new_set(old_shards[i]))
            is_source[i] = 1;
    return is_source;
}

/* Sends the barrier's PING behind everything queued on each connection of s. */
static void barrier_ping(shard *s)
{
    for (int j = 0; j < backend_pool_size(s); j++) {
        barrier_frag *bf = calloc(1, sizeof(*bf));
        if (!bf)
            continue;
        bf->s = s;
        bf->gen = rb.barrier_gen;
        bf->f.done = barrier_ping_done;
        bf->f.harmless = 1;
        rb.barrier++;
        backend_send(s, backend_pool_hint(s, j), &bf->f, RESP_PING_REQUEST, RESP_PING_REQUEST_LEN);
    }
}

/* The barrier: one PING behind everything already queued on every
 * connection of every old shard; released when the last is answered. A
 * shard just re-addressed still answers what was sent to its old address:
 * that too was routed by the old ring. */
static void raise_barrier(shard **old_shards, size_t n_old)
{
    rb.barrier = 1;
    rb.barrier_gen++;
    rb.barrier_since_us = server_now_us();
    rb.n_confirming = 0;
    for (size_t i = 0; i < n_old; i++) {
        barrier_ping(old_shards[i]);
        if (old_shards[i]->n_unconfirmed > 0)
            confirm_needed(old_shards[i]);
    }
    for (shard *s = backend_retired_first(); s; s = s->next_retired)
        barrier_ping(s);
}

int rebalance_start(ring *old_ring, shard **old_shards, size_t n_old, const char *state_text,
                    char *err, size_t errlen)
{
    int *is_source = find_sources(old_ring, old_shards, n_old);
    if (!is_source) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    free_movers();
    size_t n_sources = 0;
    for (size_t i = 0; i < n_old; i++)
        n_sources += (size_t)is_source[i];
    /* With several workers, worker 0 alone keeps the state file. Without
     * the fleet's ring record (epoch.c) it alone moves keys in the
     * background too, and the others move keys on demand and end when it
     * says it is done; with it, the worker holding the fleet's lease moves
     * them, as any proxy of the fleet would. */
    if (!workers_runs_mover()) {
        state_text = NULL;
        if (!rb.fleet)
            n_sources = 0;
    }
    rebalance_state_path(srv.cfg->path, rb.state_path, sizeof(rb.state_path));
    if (state_text && write_state(state_text, err, errlen) < 0) {
        free(is_source);
        return -1;
    }
    rb.movers = calloc(n_sources ? n_sources : 1, sizeof(mover));
    if (!rb.movers) {
        free(is_source);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rb.old_ring = old_ring;
    rb.old_shards = old_shards;
    rb.n_old = n_old;
    rb.running = 1;
    rb.started_us = rb.last_log_us = server_now_us();
    rb.keys_scanned = rb.keys_moved = rb.keys_moved_on_demand = 0;
    rb.busykey_deleted = rb.failures = 0;
    rb.last_error[0] = '\0';
    rb.drained[0] = '\0';
    uint64_t old_fp = workers_ring_fingerprint(old_ring);
    rb.ring_fp = workers_ring_fingerprint(srv.ring);
    rb.migration_id = old_fp * 31u + rb.ring_fp;
    rb.fleet_wait = 0;
    workers_publish_ring(rb.ring_fp, 0);
    for (size_t i = 0; i < n_old && n_sources > 0; i++) {
        if (!is_source[i])
            continue;
        mover *m = &rb.movers[rb.n_movers++];
        m->source = old_shards[i];
        snprintf(m->cursor, sizeof(m->cursor), "0");
        mover_connect(m);
    }
    free(is_source);
    rb.mover_on = !rb.fleet;
    rb.old_fp[0] = '\0';
    raise_barrier(old_shards, n_old);
    if (rb.fleet) {
        /* Keys move only once every shard is fenced (epoch.c). */
        rb.fleet_hold = 1;
        rb.barrier++;
    }
    if (workers_runs_mover())
        log_notice("rebalance started: %zu source shard%s, state in %s", rb.n_movers,
                   rb.n_movers == 1 ? "" : "s", rb.state_path);
    else
        log_notice("rebalance started: keys move on demand here, in the background in worker 0");
    if (--rb.barrier == 0)
        barrier_down();
    if (rb.n_movers == 0 && workers_runs_mover() && !rb.fleet_wait && !rb.fleet)
        finish();
    return 0;
}

static void finish(void)
{
    uint64_t secs = (server_now_us() - rb.started_us) / 1000000u;
    rb.drained[0] = '\0';
    size_t o = 0;
    for (size_t i = 0; i < rb.n_old; i++) {
        shard *s = rb.old_shards[i];
        if (shard_in_new_set(s))
            continue;
        o +=
            (size_t)snprintf(rb.drained + o, sizeof(rb.drained) - o, "%s%s", o ? "," : "", s->name);
        if (o >= sizeof(rb.drained))
            o = sizeof(rb.drained) - 1;
        shard **grown = realloc(rb.closing, (rb.n_closing + 1) * sizeof(*grown));
        if (grown) {
            rb.closing = grown;
            rb.closing[rb.n_closing++] = s;
        }
    }
    log_notice("rebalance done in %llus: %llu keys scanned, %llu moved (+%llu on demand), "
               "%llu stale copies deleted, %llu failed batches retried%s%s",
               (unsigned long long)secs, (unsigned long long)rb.keys_scanned,
               (unsigned long long)rb.keys_moved, (unsigned long long)rb.keys_moved_on_demand,
               (unsigned long long)rb.busykey_deleted, (unsigned long long)rb.failures,
               rb.drained[0] ? "; drained, safe to shut down: " : "", rb.drained);
    rb.running = 0;
    rb.fleet_hold = 0;
    /* A migration the shards' record asked for between rings that give
     * every key the same owner (a weight change on a lone shard) moved
     * nothing and is not counted, as a reload of such a ring starts none. */
    if ((rb.n_movers > 0 || !rb.fleet) && !rb.abandoned)
        rb.migrations_done++;
    rb.abandoned = 0;
    ring_free(rb.old_ring);
    rb.old_ring = NULL;
    free(rb.old_shards);
    rb.old_shards = NULL;
    rb.n_old = 0;
    /* Movers are disconnected here and freed by the next start or exit: this
     * may run inside one of their callbacks. One still connecting has no
     * disconnect callback to forget it: it is freed now. */
    for (size_t i = 0; i < rb.n_movers; i++) {
        mover *m = &rb.movers[i];
        if (m->ac && m->state == MOVER_CONNECTING) {
            m->ac->data = NULL;
            ctlconn_free(m->ac);
            m->ac = NULL;
        } else if (m->ac) {
            ctlconn_disconnect(m->ac);
        }
    }
    if (!workers_runs_mover())
        return;
    workers_mover_progress progress = own_progress();
    workers_publish_mover(&progress);
    if (unlink(rb.state_path) < 0 && errno != ENOENT)
        log_warn("rebalance: cannot remove %s: %s", rb.state_path, strerror(errno));
    workers_migration_finished(rb.migration_id);
}

/* ---- several proxies (epoch.c drives these) ---- */

void rebalance_fleet_enable(void (*on_finished)(void))
{
    rb.fleet = 1;
    rb.on_finished = on_finished;
}

void rebalance_set_old_ring(const char *fp, const char *text)
{
    snprintf(rb.old_fp, sizeof(rb.old_fp), "%s", fp);
    free(rb.old_text);
    rb.old_text = text ? strdup(text) : NULL;
}

const char *rebalance_old_fp(void)
{
    return rb.running ? rb.old_fp : "";
}

const char *rebalance_old_text(void)
{
    return rb.running && rb.old_text ? rb.old_text : "";
}

void rebalance_fleet_ready(void)
{
    if (!rb.running || !rb.fleet_hold)
        return;
    rb.fleet_hold = 0;
    log_notice("rebalance: every shard is fenced against proxies on another ring");
    barrier_lower();
}

int rebalance_fleet_ready_seen(void)
{
    return rb.running && !rb.fleet_hold;
}

void rebalance_set_mover(int on)
{
    if (rb.mover_on == on)
        return;
    rb.mover_on = on;
    if (!rb.running)
        return;
    log_notice("rebalance: this proxy %s the moving of keys", on ? "takes on" : "leaves");
    if (!on)
        return;
    int all_done = rb.n_movers > 0;
    for (size_t i = 0; i < rb.n_movers; i++) {
        all_done &= rb.movers[i].state == MOVER_DONE;
        mover_step(&rb.movers[i]);
    }
    if (all_done || rb.n_movers == 0) {
        finish();
        if (rb.on_finished)
            rb.on_finished();
    }
}

size_t rebalance_progress(char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen)
        out[0] = '\0';
    for (size_t i = 0; rb.running && i < rb.n_movers && o < outlen; i++) {
        const mover *m = &rb.movers[i];
        o += (size_t)snprintf(out + o, outlen - o, "%s%s=%s", o ? "," : "", m->source->name,
                              m->state == MOVER_DONE ? "done" : m->cursor);
    }
    return o < outlen ? o : outlen;
}

void rebalance_resume_progress(const char *progress)
{
    for (size_t i = 0; rb.running && i < rb.n_movers; i++) {
        mover *m = &rb.movers[i];
        size_t nl = strlen(m->source->name);
        for (const char *p = progress; p && *p;) {
            const char *end = strchr(p, ',');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            if (len > nl && memcmp(p, m->source->name, nl) == 0 && p[nl] == '=') {
                char value[32];
                snprintf(value, sizeof(value), "%.*s", (int)(len - nl - 1), p + nl + 1);
                if (strcmp(value, "done") == 0 && !mover_busy(m)) {
                    mover_set_state(m, MOVER_DONE);
                } else if (m->state != MOVER_DONE && !mover_busy(m)) {
                    snprintf(m->cursor, sizeof(m->cursor), "%s", value);
                }
            }
            p = end ? end + 1 : NULL;
        }
    }
}

void rebalance_fleet_done(void)
{
    if (!rb.running)
        return;
    log_notice("rebalance: the shards say the move to this ring is complete");
    finish();
}

void rebalance_abort(const char *why)
{
    if (!rb.running)
        return;
    log_warn("rebalance: abandoned: %s", why);
    rb.abandoned = 1;
    request *req = rb.wait_head;
    rb.wait_head = rb.wait_tail = NULL;
    while (req) {
        request *next = req->next_wait;
        req->next_wait = NULL;
        char reply[600];
        int n = snprintf(reply, sizeof(reply), "-TRYAGAIN %s\r\n", why);
        if (n < 0 || (size_t)n >= sizeof(reply))
            n = (int)sizeof(reply) - 1;
        req->on_done(req, reply, (size_t)n);
        req = next;
    }
    finish();
}

void rebalance_abandon_holding(const char *why)
{
    if (!rb.running)
        return;
    log_notice("rebalance: %s", why);
    rb.abandoned = 1;
    request **end = &rb.held;
    while (*end)
        end = &(*end)->next_wait;
    *end = rb.wait_head;
    rb.wait_head = rb.wait_tail = NULL;
    finish();
}

void rebalance_adopt_held(void)
{
    request *req = rb.held;
    rb.held = NULL;
    while (req) {
        request *next = req->next_wait;
        req->next_wait = NULL;
        /* Waits again at the new move's barrier, or is routed now; with no
         * move (it could not start) its keys may be anywhere: retry. */
        static const char retry[] = "-TRYAGAIN ring changed: the move of keys could not start; "
                                    "retry\r\n";
        if (!rb.running)
            req->on_done(req, retry, sizeof(retry) - 1);
        else if (!rebalance_wait_barrier(req, rb.resume))
            rb.resume(req);
        req = next;
    }
}

void rebalance_tick(void)
{
    uint64_t now = server_now_us();
    /* Shards removed from the ring are in no list backend_tick walks: a
     * request on one that stops answering must still time out. */
    for (size_t i = 0; rb.running && i < rb.n_old; i++)
        if (!shard_in_new_set(rb.old_shards[i]))
            backend_shard_check_timeouts(rb.old_shards[i]);
    for (size_t i = 0; i < rb.n_closing; i++)
        backend_shard_check_timeouts(rb.closing[i]);
    for (size_t i = 0; i < rb.n_closing;) {
        shard *s = rb.closing[i];
        if (backend_shard_inflight(s) == 0) {
            log_notice("shard %s: drained and removed", s->label);
            backend_shard_free(s);
            rb.closing[i] = rb.closing[--rb.n_closing];
            continue;
        }
        i++;
    }
    if (!rb.running)
        return;
    confirm_tick();
    barrier_wait_tick(now);
    if (rb.fleet_wait && workers_all_drained(rb.ring_fp)) {
        rb.fleet_wait = 0;
        log_info("rebalance: every worker routes by the new ring, moving keys");
        barrier_release();
        if (rb.n_movers == 0 && workers_runs_mover() && !rb.fleet) {
            finish();
            return;
        }
    }
    if (!rb.fleet && !workers_runs_mover() && rb.barrier == 0 && !rb.fleet_wait &&
        workers_migration_is_finished(rb.migration_id)) {
        finish();
        return;
    }
    uint64_t stall = (uint64_t)srv.cfg->migrate_timeout_ms * 2000u + REBALANCE_STALL_GRACE_US;
    for (size_t i = 0; i < rb.n_movers; i++) {
        mover *m = &rb.movers[i];
        if (m->state == MOVER_DONE)
            continue;
        if (m->state == MOVER_DISCONNECTED && now >= m->next_at_us) {
            mover_connect(m);
            continue;
        }
        if (mover_busy(m) && now - m->busy_since_us > stall) {
            snprintf(rb.last_error, sizeof(rb.last_error), "shard %s: no reply for %llus",
                     m->source->name, (unsigned long long)((now - m->busy_since_us) / 1000000u));
            log_warn("rebalance: %s, resetting the control connection", rb.last_error);
            /* Free, not disconnect: a disconnect waits for the replies a
             * hung source never sends. Pending callbacks get NULL (the batch
             * fails and is retried from its cursor on a new connection). */
            ctlconn *ac = m->ac;
            m->ac = NULL;
            mover_set_state(m, MOVER_DISCONNECTED);
            m->next_at_us = now + REBALANCE_RETRY_US;
            ctlconn_free(ac);
            continue;
        }
        mover_step(m);
    }
    if (workers_enabled() && workers_runs_mover()) {
        workers_mover_progress progress = own_progress();
        workers_publish_mover(&progress);
    }
    if (now - rb.last_log_us >= REBALANCE_LOG_US) {
        rb.last_log_us = now;
        log_notice("rebalance: %llu keys scanned, %llu moved (+%llu on demand), %llu failures",
                   (unsigned long long)rb.keys_scanned, (unsigned long long)rb.keys_moved,
                   (unsigned long long)rb.keys_moved_on_demand, (unsigned long long)rb.failures);
    }
}

void rebalance_source_readdressed(const shard *s)
{
    if (!rb.running)
        return;
    for (size_t i = 0; i < rb.n_movers; i++) {
        mover *m = &rb.movers[i];
        /* A pass that ended on the old master is kept (DONE is final):
         * MIGRATE wrote each key to its target before deleting it, so a
         * delete the new master did not get leaves a stale copy, not a
         * lost key. */
        if (m->source != s || m->state == MOVER_DONE)
            continue;
        log_notice("rebalance: shard %s has a new address: scanning it again from the start",
                   s->label);
        snprintf(m->cursor, sizeof(m->cursor), "0");
        m->next_at_us = server_now_us();
        /* As for a stall: pending callbacks get NULL and the batch is
         * retried, from cursor 0, on a connection to the new address. */
        ctlconn *ac = m->ac;
        m->ac = NULL;
        mover_set_state(m, MOVER_DISCONNECTED);
        if (ac)
            ctlconn_free(ac);
    }
}

/* rebalance_source_states: each source's mover while a migration runs
 * ("s2=migrating,s4=done"), "none" when idle: afterwards a removed source
 * may be freed already. */
static int movers_info(buf *b)
{
    if (buf_printf(b, "rebalance_source_states:") < 0)
        return -1;
    if (!rb.running || rb.n_movers == 0)
        return buf_printf(b, "none\r\n");
    for (size_t i = 0; i < rb.n_movers; i++)
        if (buf_printf(b, "%s%s=%s", i ? "," : "", rb.movers[i].source->name,
                       mover_state_name(rb.movers[i].state)) < 0)
            return -1;
    return buf_printf(b, "\r\n");
}

/* This worker's mover: what INFO rebalance shows, and what worker 0
 * publishes for the others. */
static workers_mover_progress own_progress(void)
{
    workers_mover_progress p = {.sources = rb.n_movers,
                                .keys_scanned = rb.keys_scanned,
                                .keys_moved = rb.keys_moved,
                                .failures = rb.failures};
    for (size_t i = 0; i < rb.n_movers; i++) {
        p.estimate += rb.movers[i].estimate;
        p.sources_done += rb.movers[i].state == MOVER_DONE;
    }
    return p;
}

int rebalance_info(buf *b)
{
    /* A worker without the mover shows worker 0's: the proxy's progress. */
    workers_mover_progress p = workers_runs_mover() ? own_progress() : workers_mover();
    uint64_t estimate = p.estimate;
    uint64_t elapsed = rb.running ? server_now_us() - rb.started_us : 0;
    uint64_t rate = elapsed > 0 ? p.keys_scanned * 1000000u / elapsed : 0;
    /* The estimate is DBSIZE at the start: keys moved or deleted on demand
     * before the mover reached them are never scanned, so once idle nothing
     * remains whatever the difference says. */
    uint64_t remaining = rb.running && estimate > p.keys_scanned ? estimate - p.keys_scanned : 0;
    int percent = !rb.running ? 100
                  : estimate  ? (int)(p.keys_scanned * 100 / (estimate ? estimate : 1))
                              : 0;
    if (rb.running && percent > 99)
        percent = 99;
    long long eta = rb.running && rate ? (long long)(remaining / rate) : 0;
    int fail = buf_printf(
        b,
        "# Rebalance\r\n"
        "rebalance_state:%s\r\n"
        "rebalance_sources:%zu\r\n"
        "rebalance_sources_done:%zu\r\n"
        "rebalance_keys_scanned:%llu\r\n"
        "rebalance_keys_moved:%llu\r\n"
        "rebalance_keys_moved_on_demand:%llu\r\n"
        "rebalance_keys_remaining:%llu\r\n"
        "rebalance_stale_copies_deleted:%llu\r\n"
        "rebalance_failed_batches:%llu\r\n"
        "rebalance_keys_per_sec:%llu\r\n"
        "rebalance_percent:%d\r\n"
        "rebalance_eta_seconds:%lld\r\n"
        "rebalance_last_error:%s\r\n"
        "rebalance_completed:%llu\r\n"
        "rebalance_drained_shards:%s\r\n"
        "rebalance_queued_reload:%d\r\n"
        "rebalance_waiting_for_workers:%d\r\n",
        rb.running ? "running" : "idle", (size_t)p.sources, (size_t)p.sources_done,
        (unsigned long long)p.keys_scanned, (unsigned long long)p.keys_moved,
        (unsigned long long)rb.keys_moved_on_demand, (unsigned long long)remaining,
        (unsigned long long)rb.busykey_deleted, (unsigned long long)p.failures,
        (unsigned long long)rate, percent, eta, rb.last_error[0] ? rb.last_error : "none",
        (unsigned long long)rb.migrations_done, rb.drained[0] ? rb.drained : "none",
        rb.reload_queued, rb.fleet_wait);
    if (fail < 0 || movers_info(b) < 0)
        return -1;
    return buf_printf(b, "\r\n");
}

void rebalance_shutdown(void)
{
    free_movers();
    free(rb.old_text);
    rb.old_text = NULL;
    for (size_t i = 0; i < rb.n_closing; i++)
        backend_shard_free(rb.closing[i]);
    free(rb.closing);
    rb.closing = NULL;
    rb.n_closing = 0;
    if (rb.running) {
        /* Old shards that are not in the new set live only here. */
        for (size_t i = 0; i < rb.n_old; i++)
            if (!shard_in_new_set(rb.old_shards[i]))
                backend_shard_free(rb.old_shards[i]);
        ring_free(rb.old_ring);
        free(rb.old_shards);
        rb.running = 0;
    }
    request *req = rb.wait_head; /* rb.held is empty: it lives within one call */
    rb.wait_head = rb.wait_tail = NULL;
    while (req) {
        request *next = req->next_wait;
        req->next_wait = NULL;
        req->on_done(req, "-ERR proxy shutting down\r\n", 26);
        req = next;
    }
}
