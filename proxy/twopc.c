/* Cross-shard transactions by two-phase commit over the store (see twopc.h
 * and docs/transactions.md). One twopc_txn per transaction drives the
 * store calls through its phases:
 *
 *   PREPARE (the prepare script on every participant: lock the keys,
 *   stage the commands) -> DECIDE (the decide script on the primary, the
 *   first participant: "commit" unless a decision is there) -> COMMIT (the
 *   commit script on every participant: apply, unlock) -> FORGET (delete
 *   the decision) -> DONE. A refusal goes to ABORT (the abort script on
 *   every participant), then DONE, or back to PREPARE after a backoff when
 *   another transaction held a key.
 *
 * Recovery is the same machine without a client: a participant's stage
 * older than txn_recovery_after found by the periodic scan starts at
 * DECIDE asking for "abort", and finishes with what the primary says. */
#include "proxy/twopc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/hiredis.h>

#include "proxy/backend.h"
#include "proxy/buf.h"
#include "proxy/command.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/store.h"

/* Record names in the store (store_db of each participant). */
#define TXN_LOCK_PREFIX     "ringproxy:txn:lock:"     /* + key: the id holding it */
#define TXN_STAGE_PREFIX    "ringproxy:txn:stage:"    /* + id: hash of the staged part */
#define TXN_DECISION_PREFIX "ringproxy:txn:decision:" /* + id, on the primary */
#define TXN_PREPARED_INDEX  "ringproxy:txn:prepared"  /* zset: id by prepare time (ms) */
#define TXN_DECIDED_INDEX   "ringproxy:txn:decided"   /* zset: "id parts" by commit time (ms) */

/* Most arguments of one transaction (keys, values and command names):
 * one participant's part goes to the store as one script call, whose
 * arguments store_eval caps at 4096, and Lua's unpack at about 8000. */
#define TWOPC_MAX_ARGS 4000
/* Buckets of the proxy's own key-lock table: a key counts as locked when
 * any held key shares its bucket (a collision only makes a request wait). */
#define TWOPC_LOCK_BUCKETS 65536u
/* How often retries, waiters' deadlines and the recovery scan are looked at. */
#define TWOPC_TICK_MS 20
/* A store call that failed (shard down, timeout) during DECIDE, COMMIT,
 * ABORT or FORGET is sent again after this long: the outcome is fixed,
 * only its delivery is pending. */
#define TWOPC_RETRY_US 100000u
/* A prepare refused because another transaction holds a key (or a
 * participant's store is not ready) is tried again after a random wait in
 * this range, until request_timeout has passed since the transaction
 * began. */
#define TWOPC_BACKOFF_MIN_US 1000u
#define TWOPC_BACKOFF_MAX_US 20000u
/* An "abort" decision is kept this many times txn_recovery_after, so that
 * a prepare delayed in the network that arrives after the abort cannot be
 * followed by a commit; "commit" is deleted once every part committed. */
#define TWOPC_ABORT_KEEP_FACTOR 10
/* The recovery scan runs this often, and asks each shard for at most
 * this many old stages at a time. */
#define TWOPC_SCAN_US    1000000u
#define TWOPC_SCAN_BATCH "64"
/* Longest the start-up recovery makes keyed requests wait (a shard whose
 * store is down cannot be scanned: its transactions are finished by the
 * background recovery once it is back). */
#define TWOPC_STARTUP_MAX_US 5000000u
/* A request waiting for locked keys gets -TRYAGAIN after request_timeout,
 * or this long when that is 0; a transaction stops retrying its prepare
 * after as long. */
#define TWOPC_WAIT_DEFAULT_MS 2000

/* KEYS: marker. ARGV: id, primary, participants, msetnx ('1': refuse when
 * a key exists in db 0), store_db, nkeys, keys..., nops, then per command
 * argc and its arguments. {1} prepared, {0, key} a key is locked by
 * another transaction, {-1, key} (MSETNX) a key exists, an error when a
 * decision for the id is already there (it was aborted by recovery). */
static store_script prepare_script = {
    .body = STORE_SCRIPT_GUARD
    "local id = ARGV[1]\n"
    "if redis.call('EXISTS', '" TXN_DECISION_PREFIX "' .. id) == 1 then\n"
    "  return redis.error_reply('TXNDECIDED the transaction was decided already') end\n"
    "local n = tonumber(ARGV[6])\n"
    "local keys = {}\n"
    "for i = 1, n do keys[i] = ARGV[6 + i] end\n"
    "for i = 1, n do\n"
    "  local h = redis.call('GET', '" TXN_LOCK_PREFIX "' .. keys[i])\n"
    "  if h and h ~= id then return {0, keys[i]} end\n"
    "end\n"
    "if ARGV[4] == '1' then\n"
    "  redis.call('SELECT', 0)\n"
    "  for i = 1, n do\n"
    "    if redis.call('EXISTS', keys[i]) == 1 then\n"
    "      redis.call('SELECT', ARGV[5]) return {-1, keys[i]} end\n"
    "  end\n"
    "  redis.call('SELECT', ARGV[5])\n"
    "end\n"
    "local p = 7 + n\n"
    "local nops = tonumber(ARGV[p]) p = p + 1\n"
    "local ops = {}\n"
    "for o = 1, nops do\n"
    "  local c = tonumber(ARGV[p]) p = p + 1\n"
    "  local op = {}\n"
    "  for a = 1, c do op[a] = ARGV[p] p = p + 1 end\n"
    "  ops[o] = op\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "for i = 1, n do redis.call('SET', '" TXN_LOCK_PREFIX "' .. keys[i], id) end\n"
    "redis.call('HSET', '" TXN_STAGE_PREFIX "' .. id, 'primary', ARGV[2], 'parts', ARGV[3],\n"
    "  'keys', cmsgpack.pack(keys), 'ops', cmsgpack.pack(ops), 'at', now)\n"
    "redis.call('ZADD', '" TXN_PREPARED_INDEX "', now, id)\n"
    "return {1}\n",
};

/* Deletes the stage, its index entry and the locks it holds; the commit
 * script then applies the staged commands. */
#define TXN_UNSTAGE                                                                                \
    "local sk = '" TXN_STAGE_PREFIX "' .. ARGV[1]\n"                                               \
    "local st = redis.call('HMGET', sk, 'keys', 'ops')\n"                                          \
    "if not st[1] then return false end\n"                                                         \
    "local keys = cmsgpack.unpack(st[1])\n"                                                        \
    "for _, k in ipairs(keys) do\n"                                                                \
    "  local lk = '" TXN_LOCK_PREFIX "' .. k\n"                                                    \
    "  if redis.call('GET', lk) == ARGV[1] then redis.call('DEL', lk) end\n"                       \
    "end\n"                                                                                        \
    "redis.call('DEL', sk)\n"                                                                      \
    "redis.call('ZREM', '" TXN_PREPARED_INDEX "', ARGV[1])\n"

/* ARGV: id, store_db. Applies the staged commands to db 0 and drops the
 * stage, in one step on this shard: the array of the commands' replies
 * (errors in place, as EXEC), or nil when nothing is staged (committed or
 * aborted already). */
static store_script commit_script = {
    .body = STORE_SCRIPT_GUARD TXN_UNSTAGE "local ops = cmsgpack.unpack(st[2])\n"
                                           "redis.call('SELECT', 0)\n"
                                           "local out = {}\n"
                                           "for i, op in ipairs(ops) do\n"
                                           "  out[i] = redis.pcall(unpack(op))\n"
                                           "end\n"
                                           "redis.call('SELECT', ARGV[2])\n"
                                           "return out\n",
};

/* ARGV: id. Drops the stage: 1, or nil when nothing was staged. */
static store_script abort_script = {
    .body = STORE_SCRIPT_GUARD TXN_UNSTAGE "return 1\n",
};

/* ARGV: id, wish ('commit' or 'abort'), ms to keep an abort, participants.
 * The decision already taken, else the wish, written. A commit needs the
 * primary's own stage: without it (aborted, and the abort forgotten) the
 * answer is 'abort'. A commit is indexed until forgotten, so that recovery
 * finds one whose coordinator died before deleting it. */
static store_script decide_script = {
    .body = STORE_SCRIPT_GUARD
    "local dk = '" TXN_DECISION_PREFIX "' .. ARGV[1]\n"
    "local d = redis.call('GET', dk)\n"
    "if d then return d end\n"
    "if ARGV[2] == 'commit' then\n"
    "  if redis.call('EXISTS', '" TXN_STAGE_PREFIX "' .. ARGV[1]) == 0 then return 'abort' end\n"
    "  local t = redis.call('TIME')\n"
    "  redis.call('SET', dk, 'commit')\n"
    "  redis.call('ZADD', '" TXN_DECIDED_INDEX "', tonumber(t[1]) * 1000 +\n"
    "    math.floor(tonumber(t[2]) / 1000), ARGV[1] .. ' ' .. ARGV[4])\n"
    "else\n"
    "  redis.call('SET', dk, 'abort', 'PX', ARGV[3])\n"
    "end\n"
    "return ARGV[2]\n",
};

/* ARGV: id, participants. Deletes a commit decision once every
 * participant committed. */
static store_script forget_script = {
    .body = STORE_SCRIPT_GUARD "redis.call('DEL', '" TXN_DECISION_PREFIX "' .. ARGV[1])\n"
                               "redis.call('ZREM', '" TXN_DECIDED_INDEX
                               "', ARGV[1] .. ' ' .. ARGV[2])\n"
                               "return 1\n",
};

/* ARGV: age in ms. Flat {id, primary, participants, ...} of stages
 * prepared, and of commit decisions taken, at least that long ago (by this
 * shard's clock). */
static store_script scan_script = {
    .body = STORE_SCRIPT_GUARD
    "local t = redis.call('TIME')\n"
    "local before = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[1])\n"
    "local out = {}\n"
    "for _, id in ipairs(redis.call('ZRANGEBYSCORE', '" TXN_PREPARED_INDEX "', '-inf', before,\n"
    "    'LIMIT', 0, " TWOPC_SCAN_BATCH ")) do\n"
    "  local s = redis.call('HMGET', '" TXN_STAGE_PREFIX "' .. id, 'primary', 'parts')\n"
    "  if s[1] then\n"
    "    out[#out + 1] = id out[#out + 1] = s[1] out[#out + 1] = s[2]\n"
    "  else redis.call('ZREM', '" TXN_PREPARED_INDEX "', id) end\n"
    "end\n"
    "for _, m in ipairs(redis.call('ZRANGEBYSCORE', '" TXN_DECIDED_INDEX "', '-inf', before,\n"
    "    'LIMIT', 0, " TWOPC_SCAN_BATCH ")) do\n"
    "  local id, parts = string.match(m, '^(%S+) (%S+)$')\n"
    "  if id and redis.call('EXISTS', '" TXN_DECISION_PREFIX "' .. id) == 1 then\n"
    "    out[#out + 1] = id out[#out + 1] = string.match(parts, '^[^,]+')\n"
    "    out[#out + 1] = parts\n"
    "  else redis.call('ZREM', '" TXN_DECIDED_INDEX "', m) end\n"
    "end\n"
    "return out\n",
};

/* Where the coordinator may stop dead, for the crash tests only
 * (RINGPROXY_TXN_CRASH_AT; docs/transactions.md). */
typedef enum crash_point {
    CRASH_NONE = 0,
    CRASH_PREPARED_ONE, /* the first participant answered its prepare */
    CRASH_PREPARED,     /* every participant prepared, no decision */
    CRASH_DECIDED,      /* the commit decision is written, nothing committed */
    CRASH_COMMITTED_ONE /* the primary committed, the others were not sent theirs */
} crash_point;

typedef enum twopc_phase {
    PHASE_PREPARE, /* the prepare script on every participant */
    PHASE_BACKOFF, /* a key was locked elsewhere: waiting to prepare again */
    PHASE_GATE,    /* every participant prepared: EXEC's WATCH check runs (txn.c) */
    PHASE_DECIDE,  /* the decide script on the primary */
    PHASE_COMMIT,  /* the commit script on every participant not yet committed */
    PHASE_ABORT,   /* the abort script on every participant not yet aborted */
    PHASE_FORGET,  /* committed everywhere: deleting the decision */
    PHASE_DONE,    /* over; freed once its calls in flight are back */
} twopc_phase;

/* One command staged on a participant: its arguments, and where its reply
 * goes in EXEC's array. */
typedef struct twopc_op {
    size_t argc;
    resp_arg *argv; /* into the transaction's blob */
    size_t slot;
} twopc_op;

typedef struct twopc_part {
    char *name;     /* shard name (participants are named, as the store's shards) */
    size_t store;   /* its index in the store */
    resp_arg *keys; /* its keys (into the blob) */
    size_t nkeys;
    twopc_op *ops;
    size_t nops;
    int busy;     /* a call to it is in flight */
    int finished; /* this phase's call succeeded on it */
} twopc_part;

typedef struct twopc_txn {
    struct twopc_txn *prev, *next;
    request *req; /* NULL once answered, and for a recovery */
    twopc_kind kind;
    twopc_phase phase;
    int recovery;
    char id[64];
    char *blob; /* every argument, copied */
    twopc_part *parts;
    size_t nparts;
    char *part_names;  /* "s1,s3" */
    size_t nops;       /* commands in all (EXEC's array) */
    buf *replies;      /* EXEC: each command's reply; DEL: unused */
    long long removed; /* DEL: keys removed */
    uint32_t *held;    /* buckets of the proxy's lock table it holds */
    size_t nheld;
    size_t outstanding;
    unsigned attempt; /* replies of an older attempt are stale */
    int conflict, exists, failed;
    int staged;          /* prepares were sent since the last abort (BACKOFF drops them) */
    int startup;         /* a recovery begun by the start-up scan */
    int decide_sent;     /* a decide call reached the primary's connection */
    char why[256];       /* the first failure */
    uint64_t start_us;   /* when it began: retries stop after request_timeout (2 s if 0) */
    uint64_t prepare_us; /* the last prepare sent: the commit must be decided before half
                            of txn_recovery_after has passed since, when recovery may start */
    uint64_t retry_at_us;
    uint64_t epoch;     /* srv.config_epoch when it began: a reload since aborts it */
    twopc_gate_fn gate; /* EXEC after WATCH: the check before DECIDE; NULL once called */
} twopc_txn;

typedef struct twopc_call {
    twopc_txn *txn;
    size_t part;
    unsigned attempt;
} twopc_call;

typedef struct waiter {
    request *req;
    twopc_reroute_fn reroute;
    uint64_t deadline_us;
} waiter;

static struct {
    twopc_txn *txns;
    uint16_t locked[TWOPC_LOCK_BUCKETS]; /* held keys per bucket */
    waiter *waiters;
    size_t nwaiters, cap_waiters;
    int wake_pending;
    struct event tick;
    struct event wake;
    int started;
    crash_point crash;
    uint64_t seq;
    uint64_t next_scan_us;
    uint64_t rng;
    char instance[40];
    resp_request rescan;
    int rescan_ready;
    /* Start-up recovery (cross_shard = atomic): until every store shard was
     * scanned for prepared transactions of any age and those were finished,
     * every keyed request waits, so that none reads half of a commit a
     * crashed proxy left. */
    int startup;
    uint8_t *startup_scanned; /* per store shard: 1 scanned, 2 scan in flight */
    size_t startup_txns;      /* recoveries the start-up scan began, not yet over */
    uint64_t startup_deadline_us;
} tp;

static void set_phase(twopc_txn *t, twopc_phase to);

static void crash_if(crash_point at)
{
    if (tp.crash != at)
        return;
    log_warn("twopc: RINGPROXY_TXN_CRASH_AT reached: exiting now (crash test)");
    _exit(77);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        abort(); /* small allocations abort, as everywhere in the proxy */
    return p;
}

/* ---- the proxy's own key locks and the requests waiting on them ---- */

/* The whole key, not its hash tag: keys that share a tag (and so a shard)
 * are still told apart. */
static uint32_t bucket_of(const char *key, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    return h % TWOPC_LOCK_BUCKETS;
}

int twopc_key_locked(const char *key, size_t len)
{
    return tp.startup || tp.locked[bucket_of(key, len)] != 0;
}

static void hold_keys(twopc_txn *t)
{
    size_t n = 0;
    for (size_t p = 0; p < t->nparts; p++)
        n += t->parts[p].nkeys;
    t->held = xcalloc(n, sizeof(*t->held));
    for (size_t p = 0; p < t->nparts; p++)
        for (size_t k = 0; k < t->parts[p].nkeys; k++) {
            uint32_t b = bucket_of(t->parts[p].keys[k].ptr, t->parts[p].keys[k].len);
            t->held[t->nheld++] = b;
            tp.locked[b]++;
        }
    if (t->nheld)
        srv.twopc_holding++;
}

/* The waiters are routed again from the wake event, not from inside the
 * store callback that released the keys. */
static void release_keys(twopc_txn *t)
{
    if (!t->held)
        return;
    for (size_t i = 0; i < t->nheld; i++)
        tp.locked[t->held[i]]--;
    if (t->nheld)
        srv.twopc_holding--;
    free(t->held);
    t->held = NULL;
    t->nheld = 0;
    if (tp.nwaiters && !tp.wake_pending) {
        tp.wake_pending = 1;
        event_active(&tp.wake, EV_TIMEOUT, 1);
    }
}

static void add_waiter(waiter w)
{
    if (tp.nwaiters == tp.cap_waiters) {
        tp.cap_waiters = tp.cap_waiters ? tp.cap_waiters * 2 : 16;
        tp.waiters = realloc(tp.waiters, tp.cap_waiters * sizeof(*tp.waiters));
        if (!tp.waiters)
            abort();
    }
    tp.waiters[tp.nwaiters++] = w;
}

void twopc_wait(request *req, const char *bytes, size_t len, twopc_reroute_fn reroute)
{
    /* A copy first: bytes may lie in the request's saved bytes already (a
     * request routed again after its keys moved). */
    buf copy = {0};
    if (buf_append(&copy, bytes, len) < 0) {
        buf_free(&copy);
        request_error(req, "ERR out of memory");
        return;
    }
    buf_free(&req->saved_request);
    req->saved_request = copy;
    int ms = srv.cfg->request_timeout_ms ? srv.cfg->request_timeout_ms : TWOPC_WAIT_DEFAULT_MS;
    add_waiter((waiter){req, reroute, srv.now_us + (uint64_t)ms * 1000u});
}

/* Routes a waiter again, from its saved bytes (taken from the request:
 * should it wait once more, it saves them anew). */
static void reroute_waiter(const waiter *w)
{
    request *req = w->req;
    if (!tp.rescan_ready) {
        resp_request_init(&tp.rescan, NULL);
        tp.rescan_ready = 1;
    }
    buf saved = req->saved_request;
    memset(&req->saved_request, 0, sizeof(req->saved_request));
    if (resp_request_scan(&tp.rescan, buf_head(&saved), buf_len(&saved)) != RESP_OK) {
        buf_free(&saved);
        request_error(req, "ERR internal error: saved request does not parse");
        return;
    }
    w->reroute(req, tp.rescan.argc, tp.rescan.argv, buf_head(&saved), buf_len(&saved));
    buf_free(&saved);
}

/* Takes the waiters out (routing one may add new ones), then routes each
 * again, or answers it when its time is up (expire) or never. */
static void wake_waiters(int only_expired)
{
    size_t n = tp.nwaiters;
    if (!n)
        return;
    waiter *list = tp.waiters;
    tp.waiters = NULL;
    tp.nwaiters = tp.cap_waiters = 0;
    for (size_t i = 0; i < n; i++) {
        waiter *w = &list[i];
        if (only_expired && srv.now_us < w->deadline_us) {
            add_waiter(*w);
            continue;
        }
        if (!w->req->owner) {
            buf_free(&w->req->saved_request);
            w->req->on_done(w->req, NULL, 0);
        } else if (only_expired) {
            buf_free(&w->req->saved_request);
            request_error(w->req, "TRYAGAIN a key of the request is held by a cross-shard "
                                  "transaction that is not over");
        } else {
            reroute_waiter(w);
        }
    }
    free(list);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    server_clock_update();
    tp.wake_pending = 0;
    wake_waiters(0);
}

/* ---- answering the client ---- */

/* A transaction answered before its WATCH check: the WATCHes are over. */
static void gate_abandoned(twopc_txn *t)
{
    twopc_gate_fn gate = t->gate;
    t->gate = NULL;
    if (gate && t->req)
        gate(t->req, NULL, NULL);
}

static void answer(twopc_txn *t, const char *bytes, size_t len)
{
    request *req = t->req;
    if (!req)
        return;
    gate_abandoned(t);
    t->req = NULL;
    req->on_done(req, bytes, len);
}

static void answer_error(twopc_txn *t, const char *fmt, const char *detail)
{
    if (!t->req)
        return;
    gate_abandoned(t);
    request *req = t->req;
    t->req = NULL;
    request_error(req, fmt, detail);
}

static void gate_done(void *ctx, twopc_verdict verdict)
{
    twopc_txn *t = ctx;
    if (t->phase != PHASE_GATE)
        return;
    static const char execabort[] =
        "-EXECABORT Transaction discarded because of previous errors.\r\n";
    switch (verdict) {
    case TWOPC_GATE_PASS:
        set_phase(t, PHASE_DECIDE);
        return;
    case TWOPC_GATE_NIL:
        if (t->req && request_resp3(t->req))
            answer(t, "_\r\n", 3);
        else
            answer(t, "*-1\r\n", 5);
        break;
    case TWOPC_GATE_FAIL:
        answer(t, execabort, sizeof(execabort) - 1);
        break;
    }
    set_phase(t, PHASE_ABORT);
}

/* Appends r as RESP to b (EXEC's array holds the commands' own replies);
 * out of memory is sticky in b, checked once by request_reply_buf. */
static void encode_reply(buf *b, const redisReply *r)
{
    switch (r->type) {
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        (void)!buf_append(b, r->type == REDIS_REPLY_STATUS ? "+" : "-", 1);
        (void)!buf_append(b, r->str, r->len);
        (void)!buf_append(b, "\r\n", 2);
        break;
    case REDIS_REPLY_INTEGER:
        buf_append_header(b, ':', r->integer);
        break;
    case REDIS_REPLY_STRING:
        buf_append_bulk(b, r->str, r->len);
        break;
    case REDIS_REPLY_ARRAY:
        buf_append_header(b, '*', (int64_t)r->elements);
        for (size_t i = 0; i < r->elements; i++)
            encode_reply(b, r->element[i]);
        break;
    default: /* NIL: Lua's false */
        (void)!buf_append(b, "$-1\r\n", 5);
        break;
    }
}

/* Every part committed: the client's reply. */
static void answer_committed(twopc_txn *t)
{
    switch (t->kind) {
    case TWOPC_MSET:
        answer(t, "+OK\r\n", 5);
        return;
    case TWOPC_MSETNX:
        answer(t, ":1\r\n", 4);
        return;
    case TWOPC_DEL: {
        char line[32];
        int n = snprintf(line, sizeof(line), ":%lld\r\n", t->removed);
        answer(t, line, (size_t)n);
        return;
    }
    case TWOPC_EXEC: {
        buf b = {0};
        buf_append_header(&b, '*', (int64_t)t->nops);
        for (size_t i = 0; i < t->nops && t->replies; i++)
            (void)!buf_append(&b, buf_head(&t->replies[i]), buf_len(&t->replies[i]));
        request *req = t->req;
        t->req = NULL;
        if (req)
            request_reply_buf(req, &b);
        buf_free(&b);
        return;
    }
    }
}

/* ---- store calls ---- */

static void on_reply(void *privdata, size_t store_shard, const redisReply *r);

static twopc_call *new_call(twopc_txn *t, size_t part)
{
    twopc_call *c = xcalloc(1, sizeof(*c));
    c->txn = t;
    c->part = part;
    c->attempt = t->attempt;
    return c;
}

static void call_failed(twopc_txn *t, size_t part, const char *why)
{
    t->failed = 1;
    if (!t->why[0])
        snprintf(t->why, sizeof(t->why), "shard %s: %s", t->parts[part].name, why);
}

static void send_prepare(twopc_txn *t, size_t pi)
{
    twopc_part *p = &t->parts[pi];
    size_t nargs = 7 + p->nkeys;
    for (size_t o = 0; o < p->nops; o++)
        nargs += 1 + p->ops[o].argc;
    const char **argv = xcalloc(nargs, sizeof(*argv));
    size_t *len = xcalloc(nargs, sizeof(*len));
    char *nums = xcalloc(p->nops + 2, 24);
    char db[16];
    snprintf(db, sizeof(db), "%d", srv.cfg->store_db);
    size_t a = 0, num = 0;
#define ARG(s, l) (argv[a] = (s), len[a] = (l), a++)
#define NUM(v)                                                                                     \
    do {                                                                                           \
        char *s = nums + 24 * num++;                                                               \
        ARG(s, (size_t)snprintf(s, 24, "%zu", (size_t)(v)));                                       \
    } while (0)
    ARG(t->id, strlen(t->id));
    ARG(t->parts[0].name, strlen(t->parts[0].name));
    ARG(t->part_names, strlen(t->part_names));
    ARG(t->kind == TWOPC_MSETNX ? "1" : "0", 1);
    ARG(db, strlen(db));
    NUM(p->nkeys);
    for (size_t k = 0; k < p->nkeys; k++)
        ARG(p->keys[k].ptr, p->keys[k].len);
    NUM(p->nops);
    for (size_t o = 0; o < p->nops; o++) {
        NUM(p->ops[o].argc);
        for (size_t i = 0; i < p->ops[o].argc; i++)
            ARG(p->ops[o].argv[i].ptr, p->ops[o].argv[i].len);
    }
#undef NUM
#undef ARG
    twopc_call *c = new_call(t, pi);
    if (store_eval(p->store, &prepare_script, on_reply, c, 0, (int)a, argv, len) == 0) {
        t->outstanding++;
        p->busy = 1;
    } else {
        free(c);
        call_failed(t, pi, "not connected");
    }
    free(argv);
    free(len);
    free(nums);
}

/* The one-argument-list scripts: commit, abort, decide. */
static void send_script(twopc_txn *t, size_t pi, store_script *s, int argc, const char **argv)
{
    size_t len[4];
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    twopc_call *c = new_call(t, pi);
    if (store_eval(t->parts[pi].store, s, on_reply, c, 0, argc, argv, len) == 0) {
        t->outstanding++;
        t->parts[pi].busy = 1;
    } else {
        free(c);
        t->failed = 1;
    }
}

static void send_phase_call(twopc_txn *t, size_t pi)
{
    char db[16], keep[32];
    snprintf(db, sizeof(db), "%d", srv.cfg->store_db);
    snprintf(keep, sizeof(keep), "%lld",
             (long long)srv.cfg->txn_recovery_after_ms * TWOPC_ABORT_KEEP_FACTOR);
    switch (t->phase) {
    case PHASE_PREPARE:
        send_prepare(t, pi);
        return;
    case PHASE_DECIDE: {
        const char *argv[4] = {t->id, t->recovery ? "abort" : "commit", keep, t->part_names};
        send_script(t, pi, &decide_script, 4, argv);
        return;
    }
    case PHASE_COMMIT: {
        const char *argv[2] = {t->id, db};
        send_script(t, pi, &commit_script, 2, argv);
        return;
    }
    case PHASE_ABORT: {
        const char *argv[1] = {t->id};
        send_script(t, pi, &abort_script, 1, argv);
        return;
    }
    case PHASE_FORGET: {
        const char *argv[2] = {t->id, t->part_names};
        send_script(t, pi, &forget_script, 2, argv);
        return;
    }
    case PHASE_BACKOFF:
    case PHASE_GATE:
    case PHASE_DONE:
        return;
    }
}

/* Sends this phase's call to every part that has not done it yet (the
 * primary only for DECIDE and FORGET). A part that cannot be reached is
 * tried again from the tick. */
static void send_pending_calls(twopc_txn *t)
{
    t->failed = 0;
    size_t n = t->phase == PHASE_DECIDE || t->phase == PHASE_FORGET ? 1 : t->nparts;
    if (t->phase == PHASE_COMMIT && tp.crash == CRASH_COMMITTED_ONE)
        n = 1; /* the crash test stops after the primary's commit */
    for (size_t i = 0; i < n; i++)
        if (!t->parts[i].finished && !t->parts[i].busy)
            send_phase_call(t, i);
    if (t->phase == PHASE_DECIDE && !t->failed)
        t->decide_sent = 1;
    if (t->failed && t->phase == PHASE_DECIDE && !t->decide_sent && !t->recovery) {
        /* The primary is not connected and no decision was ever sent to
         * it: none can exist, so aborting is safe (once one was sent, its
         * fate is unknown until the primary answers). */
        answer_error(t, "ERR cross-shard transaction aborted: shard %s: not connected",
                     t->parts[0].name);
        set_phase(t, PHASE_ABORT);
        return;
    }
    if (t->failed && t->phase != PHASE_PREPARE)
        t->retry_at_us = server_now_us() + TWOPC_RETRY_US;
}

static void txn_free(twopc_txn *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        tp.txns = t->next;
    if (t->next)
        t->next->prev = t->prev;
    if (t->startup)
        tp.startup_txns--;
    release_keys(t);
    for (size_t p = 0; p < t->nparts; p++) {
        free(t->parts[p].name);
        free(t->parts[p].keys);
        for (size_t o = 0; o < t->parts[p].nops; o++)
            free(t->parts[p].ops[o].argv);
        free(t->parts[p].ops);
    }
    if (t->replies)
        for (size_t i = 0; i < t->nops; i++)
            buf_free(&t->replies[i]);
    free(t->replies);
    free(t->parts);
    free(t->part_names);
    free(t->blob);
    free(t);
}

/* Whether every participant's store is READY (a prepare would fail). */
static int stores_ready(const twopc_txn *t)
{
    for (size_t i = 0; i < t->nparts; i++)
        if (store_shard_state(t->parts[i].store) != STORE_READY)
            return 0;
    return 1;
}

/* A prepare's reply. */
static void prepared(twopc_txn *t, size_t pi, const redisReply *r)
{
    if (!r) {
        call_failed(t, pi, "no reply (down or timed out)");
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        call_failed(t, pi, r->str);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        call_failed(t, pi, "unexpected prepare reply");
        return;
    }
    long long v = r->element[0]->integer;
    if (v == 1) {
        t->parts[pi].finished = 1;
        if (!t->recovery)
            crash_if(CRASH_PREPARED_ONE);
    } else if (v == 0) {
        t->conflict = 1;
    } else {
        t->exists = 1;
    }
}

static void committed(twopc_txn *t, size_t pi, const redisReply *r)
{
    if (!r || r->type == REDIS_REPLY_ERROR) {
        log_warn("twopc: %s: commit on %s failed (%s); retrying", t->id, t->parts[pi].name,
                 r ? r->str : "no reply");
        t->failed = 1;
        return;
    }
    t->parts[pi].finished = 1;
    if (!t->recovery)
        crash_if(CRASH_COMMITTED_ONE);
    if (r->type != REDIS_REPLY_ARRAY)
        return; /* nil: committed before (a retry whose first call got through) */
    twopc_part *p = &t->parts[pi];
    for (size_t o = 0; o < p->nops && o < r->elements; o++) {
        const redisReply *e = r->element[o];
        if (t->kind == TWOPC_DEL && e->type == REDIS_REPLY_INTEGER)
            t->removed += e->integer;
        if (t->replies)
            encode_reply(&t->replies[p->ops[o].slot], e);
    }
}

/* What a phase does once every call of it has answered. */
static void phase_over(twopc_txn *t)
{
    switch (t->phase) {
    case PHASE_PREPARE:
        if (t->failed || t->exists) {
            if (t->exists)
                answer(t, ":0\r\n", 4);
            else
                answer_error(t, "ERR cross-shard transaction aborted: %s", t->why);
            set_phase(t, PHASE_ABORT);
        } else if (t->conflict) {
            set_phase(t, PHASE_BACKOFF);
        } else {
            crash_if(CRASH_PREPARED);
            set_phase(t, t->gate && t->req ? PHASE_GATE : PHASE_DECIDE);
        }
        return;
    case PHASE_BACKOFF:
    case PHASE_GATE:
    case PHASE_DONE:
        return;
    default:
        break;
    }
    size_t n = t->phase == PHASE_DECIDE || t->phase == PHASE_FORGET ? 1 : t->nparts;
    if (t->phase == PHASE_COMMIT && tp.crash == CRASH_COMMITTED_ONE)
        n = 1;
    for (size_t i = 0; i < n; i++)
        if (!t->parts[i].finished) {
            if (!t->retry_at_us)
                t->retry_at_us = server_now_us() + TWOPC_RETRY_US;
            return; /* the tick sends it again */
        }
    switch (t->phase) {
    case PHASE_COMMIT:
        answer_committed(t);
        release_keys(t);
        set_phase(t, PHASE_FORGET);
        return;
    case PHASE_ABORT:
    case PHASE_FORGET:
        set_phase(t, PHASE_DONE);
        return;
    default:
        return;
    }
}

static void decided(twopc_txn *t, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_STRING) {
        /* The decision may or may not be written: ask again (the script
         * answers the decision already taken). */
        log_warn("twopc: %s: deciding on %s failed (%s); retrying", t->id, t->parts[0].name,
                 r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
        t->retry_at_us = server_now_us() + TWOPC_RETRY_US;
        return;
    }
    if (r->len == 6 && memcmp(r->str, "commit", 6) == 0) {
        if (!t->recovery)
            crash_if(CRASH_DECIDED);
        set_phase(t, PHASE_COMMIT);
        return;
    }
    answer_error(t, "ERR cross-shard transaction aborted: %s",
                 "recovery decided it first (the coordinator was too slow)");
    set_phase(t, PHASE_ABORT);
}

static void on_reply(void *privdata, size_t store_shard, const redisReply *r)
{
    (void)store_shard;
    twopc_call *c = privdata;
    twopc_txn *t = c->txn;
    size_t pi = c->part;
    int stale = c->attempt != t->attempt;
    free(c);
    t->outstanding--;
    t->parts[pi].busy = 0;
    if (stale || t->phase == PHASE_DONE || t->phase == PHASE_BACKOFF || t->phase == PHASE_GATE) {
        if (t->phase == PHASE_DONE && t->outstanding == 0)
            txn_free(t);
        return;
    }
    switch (t->phase) {
    case PHASE_PREPARE:
        prepared(t, pi, r);
        break;
    case PHASE_DECIDE:
        decided(t, r);
        return;
    case PHASE_COMMIT:
        committed(t, pi, r);
        break;
    case PHASE_ABORT:
    case PHASE_FORGET:
        if (r && r->type != REDIS_REPLY_ERROR)
            t->parts[pi].finished = 1;
        break;
    default:
        return;
    }
    if (t->outstanding == 0)
        phase_over(t);
}

static void enter_prepare(twopc_txn *t)
{
    t->conflict = t->exists = 0;
    t->why[0] = '\0';
    if (!stores_ready(t)) {
        /* A store just starting (or restoring): wait for it as for a key
         * held elsewhere, rather than fail at once. */
        t->conflict = 1;
        phase_over(t);
        return;
    }
    t->staged = 1;
    t->prepare_us = server_now_us();
    send_pending_calls(t);
    if (t->outstanding == 0)
        phase_over(t);
}

static void enter_backoff(twopc_txn *t)
{
    int ms = srv.cfg->request_timeout_ms ? srv.cfg->request_timeout_ms : TWOPC_WAIT_DEFAULT_MS;
    if (server_now_us() - t->start_us > (uint64_t)ms * 1000u) {
        answer_error(t, "TRYAGAIN %s",
                     stores_ready(t) ? "a key is held by another cross-shard transaction; "
                                       "retry later"
                                     : "a participant's store is not ready; retry later");
        set_phase(t, PHASE_ABORT);
        return;
    }
    /* Our own stages are dropped before the next attempt, so two
     * transactions that each hold a part of the other's keys do not wait
     * for each other. */
    for (size_t i = 0; i < t->nparts && t->staged; i++) {
        const char *argv[1] = {t->id};
        send_script(t, i, &abort_script, 1, argv);
    }
    t->staged = 0;
    t->retry_at_us = server_now_us() + TWOPC_BACKOFF_MIN_US +
                     server_xorshift(&tp.rng) % (TWOPC_BACKOFF_MAX_US - TWOPC_BACKOFF_MIN_US);
}

static void enter_decide(twopc_txn *t)
{
    if (!t->recovery &&
        server_now_us() - t->prepare_us > (uint64_t)srv.cfg->txn_recovery_after_ms * 500u) {
        /* Recovery may be deciding it by now: the coordinator gives up
         * before recovery can start (half of txn_recovery_after). */
        answer_error(t, "ERR cross-shard transaction aborted: %s",
                     "it took longer than half of txn_recovery_after");
        set_phase(t, PHASE_ABORT);
        return;
    }
    if (!t->recovery && t->epoch != srv.config_epoch) {
        /* A reload since it began may have changed the ring: its staged
         * commands may be on a shard that no longer owns their keys
         * (docs/transactions.md, rebalancing). */
        answer_error(t, "TRYAGAIN %s",
                     "the configuration was reloaded during the transaction; retry it");
        set_phase(t, PHASE_ABORT);
        return;
    }
    send_pending_calls(t);
}

/* The one place a transaction changes phase. */
static void set_phase(twopc_txn *t, twopc_phase to)
{
    t->phase = to;
    t->attempt++;
    t->retry_at_us = 0;
    t->failed = 0;
    for (size_t i = 0; i < t->nparts; i++)
        t->parts[i].finished = 0;
    switch (to) {
    case PHASE_PREPARE:
        enter_prepare(t);
        return;
    case PHASE_BACKOFF:
        enter_backoff(t);
        return;
    case PHASE_GATE: {
        /* Every participant prepared: the transaction's keys are locked
         * from here to its end. done may come at once. */
        twopc_gate_fn gate = t->gate;
        t->gate = NULL;
        gate(t->req, gate_done, t);
        return;
    }
    case PHASE_DECIDE:
        enter_decide(t);
        return;
    case PHASE_COMMIT:
    case PHASE_ABORT:
    case PHASE_FORGET:
        if (to == PHASE_ABORT)
            release_keys(t); /* nothing of it will be applied */
        send_pending_calls(t);
        if (t->outstanding == 0 && !t->failed)
            phase_over(t);
        return;
    case PHASE_DONE:
        release_keys(t);
        if (t->outstanding == 0)
            txn_free(t);
        return;
    }
    log_error("twopc: bug: unknown phase %d", (int)to);
    abort();
}

/* ---- building a transaction ---- */

static twopc_txn *txn_new(request *req, twopc_kind kind)
{
    twopc_txn *t = xcalloc(1, sizeof(*t));
    t->req = req;
    t->kind = kind;
    t->start_us = server_now_us();
    t->epoch = srv.config_epoch;
    snprintf(t->id, sizeof(t->id), "%s-%" PRIu64, tp.instance, ++tp.seq);
    t->next = tp.txns;
    if (tp.txns)
        tp.txns->prev = t;
    tp.txns = t;
    return t;
}

/* Copies the arguments of argv into one blob: out[i] points into it. */
static void copy_args(size_t argc, const resp_arg *argv, resp_arg *out, size_t *used, char *blob)
{
    for (size_t i = 0; i < argc; i++) {
        memcpy(blob + *used, argv[i].ptr, argv[i].len);
        out[i].ptr = blob + *used;
        out[i].len = argv[i].len;
        *used += argv[i].len;
    }
}

/* The part of ring shard s (created on first use). -1 when the shard is
 * not in the store (added by a reload since start). */
static int part_of(twopc_txn *t, uint32_t s, size_t *cap)
{
    const char *name = srv.shards[s]->name;
    for (size_t i = 0; i < t->nparts; i++)
        if (strcmp(t->parts[i].name, name) == 0)
            return (int)i;
    int store = store_index(name);
    if (store < 0)
        return -1;
    if (t->nparts == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        t->parts = realloc(t->parts, *cap * sizeof(*t->parts));
        if (!t->parts)
            abort();
    }
    twopc_part *p = &t->parts[t->nparts];
    memset(p, 0, sizeof(*p));
    p->name = strdup(name);
    if (!p->name)
        abort();
    p->store = (size_t)store;
    return (int)t->nparts++;
}

/* Names the participants ("s1,s3") and starts the transaction. */
static void txn_begin(twopc_txn *t)
{
    size_t len = 1;
    for (size_t i = 0; i < t->nparts; i++)
        len += strlen(t->parts[i].name) + 1;
    t->part_names = xcalloc(len, 1);
    for (size_t i = 0; i < t->nparts; i++) {
        if (i)
            strcat(t->part_names, ",");
        strcat(t->part_names, t->parts[i].name);
    }
    hold_keys(t);
    set_phase(t, PHASE_PREPARE);
}

static int too_big(request *req, size_t n)
{
    if (n <= TWOPC_MAX_ARGS)
        return 0;
    request_error(req, "ERR cross-shard transaction too large: %zu arguments, at most %d", n,
                  TWOPC_MAX_ARGS);
    return 1;
}

static int unknown_shard(request *req, twopc_txn *t, uint32_t s)
{
    t->req = NULL;
    set_phase(t, PHASE_DONE);
    request_error(req,
                  "ERR shard %s was added after start: cross-shard transactions need a restart "
                  "to use it",
                  srv.shards[s]->name);
    return -1;
}

void twopc_split(request *req, twopc_kind kind, size_t argc, const resp_arg *argv,
                 const size_t *key_pos, const uint32_t *key_shard, size_t nkeys, size_t step)
{
    if (too_big(req, argc + nkeys))
        return;
    twopc_txn *t = txn_new(req, kind);
    size_t bytes = 0;
    for (size_t i = 0; i < argc; i++)
        bytes += argv[i].len;
    t->blob = xcalloc(bytes + 8, 1);
    resp_arg *args = xcalloc(argc, sizeof(*args));
    size_t used = 0;
    copy_args(argc, argv, args, &used, t->blob);
    memcpy(t->blob + used, "MSET", 4); /* MSETNX stages MSET: the prepare checked */
    resp_arg mset = {t->blob + used, 4};
    size_t cap = 0;
    int *part_at = xcalloc(nkeys, sizeof(int));
    for (size_t i = 0; i < nkeys; i++)
        if ((part_at[i] = part_of(t, key_shard[i], &cap)) < 0) {
            uint32_t s = key_shard[i];
            free(part_at);
            free(args);
            (void)unknown_shard(req, t, s);
            return;
        }
    for (size_t pi = 0; pi < t->nparts; pi++) {
        twopc_part *p = &t->parts[pi];
        size_t n = 0;
        for (size_t i = 0; i < nkeys; i++)
            n += part_at[i] == (int)pi;
        p->keys = xcalloc(n, sizeof(*p->keys));
        p->ops = xcalloc(1, sizeof(*p->ops));
        p->nops = 1;
        twopc_op *op = &p->ops[0];
        op->argv = xcalloc(1 + n * step, sizeof(*op->argv));
        op->argv[op->argc++] = kind == TWOPC_MSETNX ? mset : args[0];
        for (size_t i = 0; i < nkeys; i++) {
            if (part_at[i] != (int)pi)
                continue;
            p->keys[p->nkeys++] = args[key_pos[i]];
            for (size_t a = 0; a < step; a++)
                op->argv[op->argc++] = args[key_pos[i] + a];
        }
    }
    free(part_at);
    free(args);
    t->nops = t->nparts;
    txn_begin(t);
}

static int exec_gated(request *req, const twopc_cmd *cmds, size_t ncmds, twopc_gate_fn gate);

void twopc_exec(request *req, const twopc_cmd *cmds, size_t ncmds)
{
    (void)exec_gated(req, cmds, ncmds, NULL);
}

/* twopc_exec, with EXEC's WATCH check before the decision. 1 when it
 * started, 0 when req was answered at once. */
static int exec_gated(request *req, const twopc_cmd *cmds, size_t ncmds, twopc_gate_fn gate)
{
    size_t total = 0, bytes = 0;
    for (size_t c = 0; c < ncmds; c++) {
        total += cmds[c].argc + 1 + cmds[c].nkeys;
        for (size_t i = 0; i < cmds[c].argc; i++)
            bytes += cmds[c].argv[i].len;
    }
    if (too_big(req, total))
        return 0;
    twopc_txn *t = txn_new(req, TWOPC_EXEC);
    t->blob = xcalloc(bytes + 1, 1);
    t->nops = ncmds;
    t->replies = xcalloc(ncmds, sizeof(*t->replies));
    size_t cap = 0, used = 0;
    for (size_t c = 0; c < ncmds; c++) {
        int pi = part_of(t, cmds[c].shard, &cap);
        if (pi < 0) {
            (void)unknown_shard(req, t, cmds[c].shard);
            return 0;
        }
        twopc_part *p = &t->parts[pi];
        p->ops = realloc(p->ops, (p->nops + 1) * sizeof(*p->ops));
        p->keys = realloc(p->keys, (p->nkeys + cmds[c].nkeys + 1) * sizeof(*p->keys));
        if (!p->ops || !p->keys)
            abort();
        twopc_op *op = &p->ops[p->nops++];
        op->argc = cmds[c].argc;
        op->argv = xcalloc(cmds[c].argc, sizeof(*op->argv));
        op->slot = c;
        copy_args(cmds[c].argc, cmds[c].argv, op->argv, &used, t->blob);
        for (size_t k = 0; k < cmds[c].nkeys; k++)
            p->keys[p->nkeys++] = op->argv[cmds[c].key_pos[k]];
    }
    t->gate = gate;
    txn_begin(t);
    return 1;
}

/* Why cmd cannot be part of a transaction across shards (its commands run
 * inside the commit's Lua script), or NULL. */
static const char *not_in_script(const command *cmd)
{
    if (cmd->id == CMD_EVAL)
        return "scripts and functions cannot run inside the commit's script";
    if (cmd->route == ROUTE_BLOCKING)
        return "a blocking command cannot run inside the commit's script";
    return NULL;
}

int twopc_exec_queued(request *req, const char *bytes, size_t len, const uint32_t *shards, size_t n,
                      twopc_gate_fn gate)
{
    int started = 0;
    resp_request scan;
    resp_request_init(&scan, NULL);
    twopc_cmd *cmds = xcalloc(n, sizeof(*cmds));
    size_t off = 0, got = 0;
    uint32_t first = TWOPC_ANY_SHARD;
    for (size_t i = 0; i < n; i++)
        if (shards[i] != TWOPC_ANY_SHARD && first == TWOPC_ANY_SHARD)
            first = shards[i];
    const char *refused = NULL, *name = "";
    for (; got < n && off < len && !refused; got++) {
        if (resp_request_scan(&scan, bytes + off, len - off) != RESP_OK)
            break;
        twopc_cmd *c = &cmds[got];
        c->argc = scan.argc;
        resp_arg *argv = xcalloc(scan.argc, sizeof(*argv));
        memcpy(argv, scan.argv, scan.argc * sizeof(*argv));
        c->argv = argv;
        c->shard = shards[got] == TWOPC_ANY_SHARD ? first : shards[got];
        off += scan.req_len;
        const command *cmd = command_lookup(argv[0].ptr, argv[0].len);
        if (cmd && cmd->nsubcommands)
            cmd = command_subcommand(cmd, c->argc, argv);
        size_t *pos = xcalloc(c->argc, sizeof(*pos));
        char err[200];
        if (!cmd || command_keys(cmd, c->argc, argv, pos, &c->nkeys, err, sizeof(err)) < 0)
            c->nkeys = 0; /* checked when queued: cannot happen */
        c->key_pos = pos;
        if (cmd && (refused = not_in_script(cmd)) != NULL)
            name = cmd->name;
    }
    if (refused)
        request_error(req,
                      "EXECABORT Transaction discarded: '%s' in a transaction across shards: %s",
                      name, refused);
    else if (got != n)
        request_error(req, "ERR internal error: queued commands do not parse");
    else
        started = exec_gated(req, cmds, n, gate);
    for (size_t i = 0; i < got; i++) {
        free((void *)cmds[i].argv);
        free((void *)cmds[i].key_pos);
    }
    free(cmds);
    resp_request_free(&scan);
    return started;
}

/* ---- recovery ---- */

static int running(const char *id)
{
    for (twopc_txn *t = tp.txns; t; t = t->next)
        if (strcmp(t->id, id) == 0)
            return 1;
    return 0;
}

/* Finishes a transaction found prepared too long ago: the primary's
 * decision, "abort" written when there is none, then every participant. */
static void recover(const char *id, size_t idlen, const char *primary, size_t plen,
                    const char *parts, size_t partslen, int startup)
{
    char name[256];
    if (idlen >= sizeof(((twopc_txn *)0)->id) || plen >= sizeof(name))
        return;
    char idbuf[64];
    memcpy(idbuf, id, idlen);
    idbuf[idlen] = '\0';
    if (running(idbuf))
        return;
    twopc_txn *t = xcalloc(1, sizeof(*t));
    memcpy(t->id, id, idlen);
    t->recovery = 1;
    t->start_us = server_now_us();
    t->part_names = xcalloc(partslen + 1, 1);
    memcpy(t->part_names, parts, partslen);
    /* The primary first: parts lists it first. */
    size_t cap = 0;
    char *save = NULL;
    char *list = strdup(t->part_names);
    if (!list)
        abort();
    for (char *n = strtok_r(list, ",", &save); n; n = strtok_r(NULL, ",", &save)) {
        int store = store_index(n);
        if (store < 0)
            continue;
        if (t->nparts == cap) {
            cap = cap ? cap * 2 : 4;
            t->parts = realloc(t->parts, cap * sizeof(*t->parts));
            if (!t->parts)
                abort();
        }
        twopc_part *p = &t->parts[t->nparts++];
        memset(p, 0, sizeof(*p));
        p->name = strdup(n);
        if (!p->name)
            abort();
        p->store = (size_t)store;
    }
    free(list);
    memcpy(name, primary, plen);
    name[plen] = '\0';
    if (t->nparts == 0 || strcmp(t->parts[0].name, name) != 0) {
        log_warn("twopc: %s: stage names primary %s, not the first of %s: left alone", t->id, name,
                 t->part_names);
        for (size_t i = 0; i < t->nparts; i++)
            free(t->parts[i].name);
        free(t->parts);
        free(t->part_names);
        free(t);
        return;
    }
    t->next = tp.txns;
    if (tp.txns)
        tp.txns->prev = t;
    tp.txns = t;
    t->startup = startup;
    tp.startup_txns += (size_t)startup;
    log_notice("twopc: recovering transaction %s over %s", t->id, t->part_names);
    set_phase(t, PHASE_DECIDE);
}

static void on_scan(void *privdata, size_t store_shard, const redisReply *r)
{
    int startup = privdata != NULL;
    if (startup && tp.startup_scanned)
        tp.startup_scanned[store_shard] = r && r->type == REDIS_REPLY_ARRAY ? 1 : 0;
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 2 < r->elements; i += 3) {
        const redisReply *id = r->element[i], *pr = r->element[i + 1], *pa = r->element[i + 2];
        if (id->type != REDIS_REPLY_STRING || pr->type != REDIS_REPLY_STRING ||
            pa->type != REDIS_REPLY_STRING)
            continue;
        recover(id->str, id->len, pr->str, pr->len, pa->str, pa->len, startup && tp.startup);
    }
}

static void scan_all(void)
{
    char age[32];
    snprintf(age, sizeof(age), "%d", srv.cfg->txn_recovery_after_ms);
    const char *argv[1] = {age};
    size_t len[1] = {strlen(age)};
    for (size_t s = 0; s < store_count(); s++)
        if (store_shard_state(s) == STORE_READY)
            (void)!store_eval(s, &scan_script, on_scan, NULL, 0, 1, argv, len);
}

/* Ends the start-up recovery: keyed requests no longer wait for it. */
static void startup_over(const char *why)
{
    if (!tp.startup)
        return;
    tp.startup = 0;
    srv.twopc_holding--;
    free(tp.startup_scanned);
    tp.startup_scanned = NULL;
    log_notice("twopc: start-up recovery %s", why);
    if (tp.nwaiters && !tp.wake_pending) {
        tp.wake_pending = 1;
        event_active(&tp.wake, EV_TIMEOUT, 1);
    }
}

/* Scans every ready store shard not scanned yet for prepared transactions
 * of any age; over once all were scanned and their recoveries are done. */
static void startup_step(uint64_t now)
{
    size_t n = store_count(), scanned = 0;
    if (!tp.startup_scanned)
        tp.startup_scanned = xcalloc(n, 1);
    const char *argv[1] = {"0"};
    size_t len[1] = {1};
    for (size_t s = 0; s < n; s++) {
        if (!tp.startup_scanned[s] && store_shard_state(s) == STORE_READY &&
            store_eval(s, &scan_script, on_scan, &tp, 0, 1, argv, len) == 0)
            tp.startup_scanned[s] = 2;
        scanned += tp.startup_scanned[s] == 1;
    }
    if (scanned == n && tp.startup_txns == 0)
        startup_over("done");
    else if (now >= tp.startup_deadline_us)
        startup_over("given up: a shard's store is not ready (reads may see a half-applied "
                     "transaction until the background recovery finishes it)");
}

/* ---- the tick ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    server_clock_update();
    uint64_t now = server_now_us();
    for (twopc_txn *t = tp.txns, *next; t; t = next) {
        next = t->next;
        if (!t->retry_at_us || now < t->retry_at_us || t->outstanding)
            continue;
        t->retry_at_us = 0;
        if (t->phase == PHASE_BACKOFF)
            set_phase(t, PHASE_PREPARE);
        else if (t->phase != PHASE_DONE)
            send_pending_calls(t);
    }
    if (tp.startup)
        startup_step(now);
    if (tp.nwaiters)
        wake_waiters(1);
    if (now >= tp.next_scan_us) {
        tp.next_scan_us = now + TWOPC_SCAN_US;
        scan_all();
    }
}

/* ---- start, stop ---- */

void twopc_start(const config *cfg)
{
    store_register_script(&prepare_script);
    store_register_script(&commit_script);
    store_register_script(&abort_script);
    store_register_script(&decide_script);
    store_register_script(&forget_script);
    store_register_script(&scan_script);
    const char *crash = getenv("RINGPROXY_TXN_CRASH_AT");
    static const char *const names[] = {"", "prepared_one", "prepared", "decided", "committed_one"};
    for (int i = 1; crash && i < (int)(sizeof(names) / sizeof(names[0])); i++)
        if (strcmp(crash, names[i]) == 0)
            tp.crash = (crash_point)i;
    if (tp.crash)
        log_warn("twopc: RINGPROXY_TXN_CRASH_AT=%s: the proxy exits there (crash tests only)",
                 crash);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(tp.instance, sizeof(tp.instance), "%lx.%lx.%x", (unsigned long)ts.tv_sec,
             (unsigned long)ts.tv_nsec, (unsigned)getpid());
    tp.rng = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    event_assign(&tp.tick, srv.base, -1, EV_PERSIST, on_tick, NULL);
    event_assign(&tp.wake, srv.base, -1, 0, on_wake, NULL);
    struct timeval tv = {0, TWOPC_TICK_MS * 1000};
    event_add(&tp.tick, &tv);
    tp.next_scan_us = 0;
    tp.started = 1;
    if (cfg->cross_shard == CONFIG_CROSS_ATOMIC) {
        tp.startup = 1;
        srv.twopc_holding++;
        tp.startup_deadline_us = server_now_us() + TWOPC_STARTUP_MAX_US;
    }
}

void twopc_shutdown(void)
{
    if (!tp.started)
        return;
    event_del(&tp.tick);
    event_del(&tp.wake);
    for (size_t i = 0; i < tp.nwaiters; i++) {
        request *req = tp.waiters[i].req;
        buf_free(&req->saved_request);
        if (req->owner)
            request_error(req, "ERR shutting down");
        else
            req->on_done(req, NULL, 0);
    }
    free(tp.waiters);
    tp.waiters = NULL;
    tp.nwaiters = tp.cap_waiters = 0;
    /* What is still running is left to recovery: its records are on the
     * shards. Clients still waiting are told. */
    for (twopc_txn *t = tp.txns, *next; t; t = next) {
        next = t->next;
        answer_error(t, "ERR %s", "shutting down: the transaction is finished by recovery");
        t->phase = PHASE_DONE;
        if (t->outstanding == 0)
            txn_free(t);
    }
    free(tp.startup_scanned);
    tp.startup_scanned = NULL;
    tp.startup = 0;
    if (tp.rescan_ready)
        resp_request_free(&tp.rescan);
    tp.rescan_ready = 0;
    tp.started = 0;
}
