/* Quorum locks with fencing tokens over the store (see lock.h and
 * docs/locks.md). One lock_op per client request drives the store calls:
 *
 *   ACQUIRE: COUNTERS (read the name's counter on a majority) -> GRANT (the
 *   acquire script with max + 1 on every ready lock shard; granted when a
 *   majority granted within the validity window) -> done, or BACKOFF and a
 *   new attempt while WAIT allows. Grants of a failed or stale attempt are
 *   released at once.
 *   RELEASE, EXTEND, INFO: one script on every ready lock shard (CALLS).
 *
 * A shard that restarted empty is restored (restore_*) from a majority of
 * the others before it counts again. */
#include "proxy/lock.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/hiredis.h>

#include "proxy/buf.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/store.h"

/* Record names in the store. */
#define LOCK_HOLD_PREFIX  "ringproxy:lock:hold:"
#define LOCK_COUNT_PREFIX "ringproxy:lock:count:"
/* Longest lock name: names are record keys, kept short. */
#define LOCK_NAME_MAX 1024
/* Longest TTL and WAIT: a day, far beyond any lease worth a lock. */
#define LOCK_TTL_MAX_MS  86400000LL
#define LOCK_WAIT_MAX_MS 86400000LL
/* WAIT retries sleep a random time in this range (jitter spreads
 * contenders), never past the deadline. */
#define LOCK_RETRY_MIN_US 2000u
#define LOCK_RETRY_MAX_US 20000u
/* Lock shards a bitmask can name. */
#define LOCK_SHARDS_MAX 64
/* Names per restore write. */
#define LOCK_RESTORE_BATCH 256

/* KEYS: marker (added by the store), hold, counter. */
static store_script counter_script = {
    .body = STORE_SCRIPT_GUARD "return {redis.call('GET', KEYS[3]) or '0', "
                               "redis.call('PTTL', KEYS[2])}\n",
};
/* ARGV: token, ttl_ms. 1 granted, 0 held, -1 the counter is already at or
 * past the token (another attempt got there first). */
static store_script acquire_script = {
    .body = STORE_SCRIPT_GUARD "if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end\n"
                               "local c = tonumber(redis.call('GET', KEYS[3]) or '0')\n"
                               "if c >= tonumber(ARGV[1]) then return -1 end\n"
                               "redis.call('SET', KEYS[3], ARGV[1])\n"
                               "redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])\n"
                               "return 1\n",
};
static store_script release_script = {
    .body = STORE_SCRIPT_GUARD "if redis.call('GET', KEYS[2]) == ARGV[1] then\n"
                               "  redis.call('DEL', KEYS[2]) return 1 end\n"
                               "return 0\n",
};
static store_script extend_script = {
    .body = STORE_SCRIPT_GUARD "if redis.call('GET', KEYS[2]) == ARGV[1] then\n"
                               "  redis.call('PEXPIRE', KEYS[2], ARGV[2]) return 1 end\n"
                               "return 0\n",
};
static store_script info_script = {
    .body = STORE_SCRIPT_GUARD "local v = redis.call('GET', KEYS[2])\n"
                               "if not v then return false end\n"
                               "return {v, redis.call('PTTL', KEYS[2])}\n",
};
/* Every name's counter and live hold, flat: name, counter, token or '',
 * pttl. O(names): a restore is rare, and counters are few. */
static store_script dump_script = {
    .body =
        STORE_SCRIPT_GUARD "local out = {}\n"
                           "local n = #'" LOCK_COUNT_PREFIX "'\n"
                           "for _, k in ipairs(redis.call('KEYS', '" LOCK_COUNT_PREFIX "*')) do\n"
                           "  local name = string.sub(k, n + 1)\n"
                           "  local h = '" LOCK_HOLD_PREFIX "' .. name\n"
                           "  out[#out + 1] = name\n"
                           "  out[#out + 1] = redis.call('GET', k)\n"
                           "  out[#out + 1] = redis.call('GET', h) or ''\n"
                           "  out[#out + 1] = redis.call('PTTL', h)\n"
                           "end\n"
                           "return out\n",
};
/* Merges groups of (name, counter, token or '', pttl) into a shard being
 * restored: counters only grow, a hold is set where none is. No guard: the
 * marker is what is missing. */
static store_script load_script = {
    .body = "for i = 1, #ARGV, 4 do\n"
            "  local ck = '" LOCK_COUNT_PREFIX "' .. ARGV[i]\n"
            "  if tonumber(ARGV[i + 1]) > tonumber(redis.call('GET', ck) or '0') then\n"
            "    redis.call('SET', ck, ARGV[i + 1]) end\n"
            "  local hk = '" LOCK_HOLD_PREFIX "' .. ARGV[i]\n"
            "  if ARGV[i + 2] ~= '' and tonumber(ARGV[i + 3]) > 0 and "
            "redis.call('EXISTS', hk) == 0 then\n"
            "    redis.call('SET', hk, ARGV[i + 2], 'PX', ARGV[i + 3]) end\n"
            "end\n"
            "return #ARGV / 4\n",
};

/* Where one request is. */
typedef enum lock_phase {
    PHASE_COUNTERS, /* ACQUIRE: reading the name's counter and hold on the ready shards */
    PHASE_GRANT,    /* ACQUIRE: the acquire script on every ready shard */
    PHASE_BACKOFF,  /* ACQUIRE with WAIT: sleeping before the next attempt */
    PHASE_CALLS,    /* RELEASE, EXTEND, INFO: one script on every ready shard */
    PHASE_DONE,     /* answered; freed once its calls in flight are back */
} lock_phase;

typedef struct lock_op {
    struct lock_op *prev, *next; /* every op, for shutdown */
    request *req;                /* NULL once answered */
    command_id id;
    lock_phase phase;
    char *hold_key; /* record names (malloc'd) */
    char *count_key;
    long long ttl_ms;
    uint64_t token;       /* the token given (RELEASE, EXTEND) or proposed (GRANT) */
    uint64_t deadline_us; /* ACQUIRE: last moment to try (WAIT) */
    uint64_t start_us;    /* this phase's start: the validity window counts from it */
    unsigned attempt;     /* replies of an older attempt are stale */
    size_t outstanding;   /* store calls not yet answered */
    size_t sent, yes, no, failed;
    size_t held; /* COUNTERS: shards that report a live hold */
    uint64_t max_counter;
    uint64_t granted;     /* GRANT: shards (bit per lock shard) that granted this attempt */
    int won;              /* the client was granted the lock by attempt won_attempt, */
    unsigned won_attempt; /* whose late grants are part of the lock: kept */
    uint64_t *info_token; /* INFO: per lock shard, 0 = none */
    long long *info_pttl;
    int unavailable; /* the last attempt found fewer than a majority ready */
    struct event timer;
    int timer_set;
} lock_op;

/* One store call of an op. */
typedef struct lock_call {
    lock_op *op;
    unsigned attempt;
    size_t lock_index; /* position among the lock shards */
    uint64_t token;    /* GRANT: the token proposed */
} lock_call;

static struct {
    size_t *shard; /* store index of each lock shard */
    size_t n;
    size_t majority;
    lock_op *ops;
    uint64_t fresh; /* lock shards being initialised together (new cluster) */
    uint64_t rng;
    int started;
    /* the restore under way, one at a time */
    struct restore *restoring;
    /* counters for INFO locks */
    uint64_t granted, denied, unavailable, restores, restore_failures;
} lk;

/* Redlock's clock drift allowance: 1% of the TTL plus 2 ms. */
static uint64_t drift_us(long long ttl_ms)
{
    return (uint64_t)ttl_ms * 10u + 2000u;
}

static size_t ready_count(void)
{
    size_t n = 0;
    for (size_t i = 0; i < lk.n; i++)
        n += store_shard_state(lk.shard[i]) == STORE_READY;
    return n;
}

/* ---- answering ---- */

static void answer(lock_op *op, const char *bytes, size_t len)
{
    request *req = op->req;
    op->req = NULL;
    op->phase = PHASE_DONE;
    if (req)
        req->on_done(req, bytes, len);
}

static void answer_str(lock_op *op, const char *s)
{
    answer(op, s, strlen(s));
}

static void answer_int(lock_op *op, long long v)
{
    char line[32];
    int n = snprintf(line, sizeof(line), ":%lld\r\n", v);
    answer(op, line, (size_t)n);
}

static void answer_unavailable(lock_op *op)
{
    char line[160];
    int n =
        snprintf(line, sizeof(line),
                 "-LOCKUNAVAILABLE %zu of %zu lock shards ready, a majority (%zu) is needed\r\n",
                 ready_count(), lk.n, lk.majority);
    answer(op, line, (size_t)n);
}

static void op_free(lock_op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        lk.ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    if (op->timer_set)
        event_del(&op->timer);
    free(op->hold_key);
    free(op->count_key);
    free(op->info_token);
    free(op->info_pttl);
    free(op);
}

static void op_maybe_free(lock_op *op)
{
    if (op->phase == PHASE_DONE && op->outstanding == 0)
        op_free(op);
}

/* ---- store calls ---- */

static int send_script(lock_op *op, size_t li, store_script *s, store_reply_fn fn, uint64_t token,
                       long long ttl_ms, int nargs)
{
    lock_call *call = malloc(sizeof(*call));
    if (!call)
        abort();
    *call = (lock_call){op, op->attempt, li, token};
    char tok[24], ttl[24];
    snprintf(tok, sizeof(tok), "%" PRIu64, token);
    snprintf(ttl, sizeof(ttl), "%lld", ttl_ms);
    const char *argv[4] = {op->hold_key, op->count_key, tok, ttl};
    size_t argvlen[4] = {strlen(argv[0]), strlen(argv[1]), strlen(tok), strlen(ttl)};
    if (store_eval(lk.shard[li], s, fn, call, 2, 2 + nargs, argv, argvlen) < 0) {
        free(call);
        return -1;
    }
    op->outstanding++;
    return 0;
}

/* Takes a call's reply: 1 when the op is still waiting for this attempt's
 * replies in phase, 0 when the reply is stale. */
static int take_reply(lock_call *call, lock_phase phase)
{
    lock_op *op = call->op;
    op->outstanding--;
    return op->phase == phase && call->attempt == op->attempt;
}

static void on_released(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    (void)r;
    lock_call *call = privdata;
    lock_op *op = call->op;
    free(call);
    op->outstanding--;
    op_maybe_free(op);
}

/* Releases token on the lock shards in mask (a failed or stale grant). */
static void release_granted(lock_op *op, uint64_t mask, uint64_t token)
{
    for (size_t i = 0; i < lk.n; i++)
        if (mask & (1ull << i))
            (void)send_script(op, i, &release_script, on_released, token, 0, 1);
}

/* Arms the op's one timer (a phase uses at most one at a time). */
static void timer_arm(lock_op *op, uint64_t after_us, event_callback_fn fn)
{
    if (op->timer_set)
        event_del(&op->timer);
    struct timeval tv = {(time_t)(after_us / 1000000u), (suseconds_t)(after_us % 1000000u)};
    evtimer_assign(&op->timer, srv.base, fn, op);
    evtimer_add(&op->timer, &tv);
    op->timer_set = 1;
}

static void timer_cancel(lock_op *op)
{
    if (op->timer_set)
        event_del(&op->timer);
    op->timer_set = 0;
}

/* ---- ACQUIRE ---- */

static void attempt_start(lock_op *op);
static void attempt_failed(lock_op *op);

/* The grant's validity window closed before a majority granted (a shard
 * stopped answering): whatever comes later cannot make a valid lock. */
static void on_grant_expired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lock_op *op = arg;
    op->timer_set = 0;
    server_clock_update();
    if (op->phase != PHASE_GRANT)
        return;
    release_granted(op, op->granted, op->token);
    attempt_failed(op);
}

static void on_backoff(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lock_op *op = arg;
    op->timer_set = 0;
    server_clock_update();
    if (op->req && !op->req->owner) { /* the client left while we slept */
        answer_str(op, "$-1\r\n");
        op_maybe_free(op);
        return;
    }
    attempt_start(op);
}

/* The attempt failed: another one after a jittered pause while WAIT
 * allows, else nil (or the unavailability error). */
static void attempt_failed(lock_op *op)
{
    op->attempt++;
    uint64_t now = server_now_us();
    uint64_t pause =
        LOCK_RETRY_MIN_US + server_xorshift(&lk.rng) % (LOCK_RETRY_MAX_US - LOCK_RETRY_MIN_US + 1);
    timer_cancel(op);
    if (op->req && now + pause < op->deadline_us) {
        op->phase = PHASE_BACKOFF;
        timer_arm(op, pause, on_backoff);
        return;
    }
    if (op->unavailable) {
        lk.unavailable++;
        answer_unavailable(op);
    } else {
        lk.denied++;
        answer_str(op, "$-1\r\n");
    }
    op_maybe_free(op);
}

static void grant_decide(lock_op *op)
{
    if (op->yes >= lk.majority) {
        uint64_t elapsed = server_now_us() - op->start_us;
        uint64_t validity = (uint64_t)op->ttl_ms * 1000u;
        if (elapsed + drift_us(op->ttl_ms) < validity) {
            uint64_t mask = op->granted;
            op->attempt++; /* later grants of this attempt are released */
            timer_cancel(op);
            if (op->req && !op->req->owner) { /* the client left: give it back */
                release_granted(op, mask, op->token);
                answer_str(op, "$-1\r\n");
                op_maybe_free(op);
                return;
            }
            op->won = 1;
            op->won_attempt = op->attempt - 1;
            lk.granted++;
            answer_int(op, (long long)op->token);
            op_maybe_free(op);
            return;
        }
        log_info("lock: grant of token %" PRIu64 " took %" PRIu64 " us, past its validity",
                 op->token, elapsed);
    } else if (op->sent - op->no - op->failed >= lk.majority) {
        return; /* a majority may still grant */
    }
    release_granted(op, op->granted, op->token);
    attempt_failed(op);
}

static void on_grant(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    lock_call *call = privdata;
    lock_op *op = call->op;
    int granted = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    if (!take_reply(call, PHASE_GRANT)) {
        /* A grant that came too late for a failed attempt: give it back.
         * One for the attempt that won is part of the lock: kept. */
        if (granted && !(op->won && call->attempt == op->won_attempt))
            release_granted(op, 1ull << call->lock_index, call->token);
        free(call);
        op_maybe_free(op);
        return;
    }
    size_t li = call->lock_index;
    free(call);
    if (granted) {
        op->yes++;
        op->granted |= 1ull << li;
    } else if (r && r->type == REDIS_REPLY_INTEGER) {
        op->no++;
    } else {
        op->failed++;
    }
    grant_decide(op);
}

static void grant_start(lock_op *op)
{
    op->phase = PHASE_GRANT;
    op->token = op->max_counter + 1;
    op->sent = op->yes = op->no = op->failed = 0;
    op->granted = 0;
    op->start_us = server_now_us();
    for (size_t i = 0; i < lk.n; i++)
        if (store_shard_state(lk.shard[i]) == STORE_READY &&
            send_script(op, i, &acquire_script, on_grant, op->token, op->ttl_ms, 2) == 0)
            op->sent++;
    uint64_t validity = (uint64_t)op->ttl_ms * 1000u;
    uint64_t drift = drift_us(op->ttl_ms);
    if (op->sent >= lk.majority)
        timer_arm(op, validity > drift ? validity - drift : 0, on_grant_expired);
    if (op->sent < lk.majority) {
        op->unavailable = 1;
        op->attempt++; /* what was sent is released as it comes back */
        attempt_failed(op);
    }
}

static int reply_uint(const redisReply *r, uint64_t *out)
{
    if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0) {
        *out = (uint64_t)r->integer;
        return 0;
    }
    if (r->type != REDIS_REPLY_STRING)
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(r->str, &end, 10);
    if (errno || end == r->str || *end)
        return -1;
    *out = v;
    return 0;
}

static void on_counter(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    lock_call *call = privdata;
    lock_op *op = call->op;
    int current = take_reply(call, PHASE_COUNTERS);
    free(call);
    if (!current) {
        op_maybe_free(op);
        return;
    }
    uint64_t counter;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        reply_uint(r->element[0], &counter) == 0 && r->element[1]->type == REDIS_REPLY_INTEGER) {
        op->yes++;
        if (counter > op->max_counter)
            op->max_counter = counter;
        op->held += r->element[1]->integer != -2;
    } else {
        op->failed++;
    }
    if (op->yes >= lk.majority) {
        if (op->held >= lk.majority) {
            /* Held on a majority already: no token is spent trying. */
            op->unavailable = 0;
            op->attempt++;
            attempt_failed(op);
        } else {
            op->attempt++; /* the counters still to come are not needed */
            grant_start(op);
        }
    } else if (op->sent - op->failed < lk.majority) {
        op->unavailable = 1;
        op->attempt++;
        attempt_failed(op);
    }
}

static void attempt_start(lock_op *op)
{
    op->phase = PHASE_COUNTERS;
    op->sent = op->yes = op->no = op->failed = op->held = 0;
    op->max_counter = 0;
    op->unavailable = 0;
    for (size_t i = 0; i < lk.n; i++)
        if (store_shard_state(lk.shard[i]) == STORE_READY &&
            send_script(op, i, &counter_script, on_counter, 0, 0, 0) == 0)
            op->sent++;
    if (op->sent < lk.majority) {
        op->unavailable = 1;
        op->attempt++;
        attempt_failed(op);
    }
}

/* ---- RELEASE, EXTEND, INFO ---- */

/* INFO's answer: the token a majority holds, with the time a majority
 * still holds it (the majority-th largest remaining TTL). */
static void info_answer(lock_op *op)
{
    for (size_t i = 0; i < lk.n; i++) {
        uint64_t t = op->info_token[i];
        if (!t)
            continue;
        long long ttls[LOCK_SHARDS_MAX];
        size_t count = 0;
        for (size_t j = 0; j < lk.n; j++)
            if (op->info_token[j] == t)
                ttls[count++] = op->info_pttl[j];
        if (count < lk.majority)
            continue;
        /* the majority-th largest */
        for (size_t a = 0; a < count; a++)
            for (size_t b = a + 1; b < count; b++)
                if (ttls[b] > ttls[a]) {
                    long long x = ttls[a];
                    ttls[a] = ttls[b];
                    ttls[b] = x;
                }
        char out[80];
        int n =
            snprintf(out, sizeof(out), "*2\r\n:%" PRIu64 "\r\n:%lld\r\n", t, ttls[lk.majority - 1]);
        answer(op, out, (size_t)n);
        return;
    }
    answer_str(op, "$-1\r\n");
}

static void calls_done(lock_op *op)
{
    switch (op->id) {
    case CMD_LOCK_RELEASE:
        answer_int(op, op->yes >= lk.majority);
        break;
    case CMD_LOCK_EXTEND: {
        uint64_t elapsed = server_now_us() - op->start_us;
        int valid = elapsed + drift_us(op->ttl_ms) < (uint64_t)op->ttl_ms * 1000u;
        answer_int(op, op->yes >= lk.majority && valid);
        break;
    }
    case CMD_LOCK_INFO:
        info_answer(op);
        break;
    default:
        answer_str(op, "-ERR lock: unexpected command\r\n");
        break;
    }
}

static void on_call(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    lock_call *call = privdata;
    lock_op *op = call->op;
    size_t li = call->lock_index;
    int current = take_reply(call, PHASE_CALLS);
    free(call);
    if (!current) {
        op_maybe_free(op);
        return;
    }
    if (op->id == CMD_LOCK_INFO) {
        uint64_t token;
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
            reply_uint(r->element[0], &token) == 0 && r->element[1]->type == REDIS_REPLY_INTEGER) {
            op->info_token[li] = token;
            op->info_pttl[li] = r->element[1]->integer;
        }
    } else if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        op->yes++;
    }
    /* RELEASE and EXTEND are decided once a majority said yes: a shard
     * that stopped answering does not hold the reply up. */
    if (op->outstanding == 0 || (op->id != CMD_LOCK_INFO && op->yes >= lk.majority)) {
        op->attempt++;
        calls_done(op);
        op_maybe_free(op);
    }
}

static void calls_start(lock_op *op)
{
    op->phase = PHASE_CALLS;
    op->start_us = server_now_us();
    store_script *s = op->id == CMD_LOCK_RELEASE  ? &release_script
                      : op->id == CMD_LOCK_EXTEND ? &extend_script
                                                  : &info_script;
    int nargs = op->id == CMD_LOCK_RELEASE ? 1 : op->id == CMD_LOCK_EXTEND ? 2 : 0;
    size_t sent = 0;
    for (size_t i = 0; i < lk.n; i++)
        if (store_shard_state(lk.shard[i]) == STORE_READY &&
            send_script(op, i, s, on_call, op->token, op->ttl_ms, nargs) == 0)
            sent++;
    if (sent < lk.majority) {
        op->attempt++; /* what was sent comes back stale */
        answer_unavailable(op);
        op_maybe_free(op);
    }
}

/* ---- the commands ---- */

static int arg_llong(const resp_arg *a, long long *out)
{
    char text[32];
    if (a->len == 0 || a->len >= sizeof(text))
        return -1;
    memcpy(text, a->ptr, a->len);
    text[a->len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static char *record_key(const char *prefix, const resp_arg *name)
{
    size_t plen = strlen(prefix);
    char *k = malloc(plen + name->len + 1);
    if (!k)
        abort();
    memcpy(k, prefix, plen);
    memcpy(k + plen, name->ptr, name->len);
    k[plen + name->len] = '\0';
    return k;
}

static void request_err(request *req, const char *s)
{
    req->on_done(req, s, strlen(s));
}

void lock_command(request *req, const command *cmd, size_t argc, const resp_arg *argv)
{
    if (!lk.started || lk.n == 0) {
        request_err(req, "-ERR lock service not configured (lock_shards)\r\n");
        return;
    }
    if (argv[1].len == 0 || argv[1].len > LOCK_NAME_MAX || memchr(argv[1].ptr, '\0', argv[1].len)) {
        request_err(req, "-ERR lock name must be 1 to 1024 bytes, without NUL\r\n");
        return;
    }
    long long ttl = 0, wait = 0, token = 0;
    switch (cmd->id) {
    case CMD_LOCK_ACQUIRE:
        if (arg_llong(&argv[2], &ttl) < 0 || ttl <= 0 || ttl > LOCK_TTL_MAX_MS) {
            request_err(req, "-ERR ttl_ms must be an integer from 1 to 86400000\r\n");
            return;
        }
        if (argc == 5 && argv[3].len == 4 && strncasecmp(argv[3].ptr, "wait", 4) == 0) {
            if (arg_llong(&argv[4], &wait) < 0 || wait < 0 || wait > LOCK_WAIT_MAX_MS) {
                request_err(req, "-ERR WAIT must be an integer from 0 to 86400000\r\n");
                return;
            }
        } else if (argc != 3) {
            request_err(req, "-ERR syntax error: LOCK.ACQUIRE name ttl_ms [WAIT ms]\r\n");
            return;
        }
        break;
    case CMD_LOCK_EXTEND:
        if (arg_llong(&argv[3], &ttl) < 0 || ttl <= 0 || ttl > LOCK_TTL_MAX_MS) {
            request_err(req, "-ERR ttl_ms must be an integer from 1 to 86400000\r\n");
            return;
        }
        __attribute__((fallthrough)); /* EXTEND has a token too */
    case CMD_LOCK_RELEASE:
        if (arg_llong(&argv[2], &token) < 0 || token <= 0) {
            request_err(req, "-ERR token must be a positive integer\r\n");
            return;
        }
        break;
    case CMD_LOCK_INFO:
        break;
    default:
        request_err(req, "-ERR lock: unknown command\r\n");
        return;
    }
    lock_op *op = calloc(1, sizeof(*op));
    if (!op)
        abort();
    op->req = req;
    op->id = cmd->id;
    op->hold_key = record_key(LOCK_HOLD_PREFIX, &argv[1]);
    op->count_key = record_key(LOCK_COUNT_PREFIX, &argv[1]);
    op->ttl_ms = ttl;
    op->token = (uint64_t)token;
    op->deadline_us = server_now_us() + (uint64_t)wait * 1000u;
    op->next = lk.ops;
    if (lk.ops)
        lk.ops->prev = op;
    lk.ops = op;
    if (op->id == CMD_LOCK_ACQUIRE) {
        attempt_start(op);
        return;
    }
    if (op->id == CMD_LOCK_INFO) {
        op->info_token = calloc(lk.n, sizeof(*op->info_token));
        op->info_pttl = calloc(lk.n, sizeof(*op->info_pttl));
        if (!op->info_token || !op->info_pttl)
            abort();
    }
    calls_start(op);
}

/* ---- restoring a shard that lost its store ----
 * Any grant sits on a majority m of the N lock shards; the shard being
 * restored was perhaps one of them, so the others hold the grant on at
 * least m - 1 shards. Reading m of the others meets them (m + m - 1 > N -
 * 1), so the merge (the highest counter, a live hold from any) holds
 * everything the lost shard held that still matters. Until the marker is
 * back the shard counts toward nothing, so no grant meanwhile relies on
 * it. */

typedef struct restore {
    size_t target;      /* store index of the shard being restored */
    size_t outstanding; /* calls in flight */
    size_t answered;    /* dumps received */
    int failed;
    /* merged records: name, counter, token, pttl, flat */
    char **names;
    uint64_t *counters;
    uint64_t *tokens;
    long long *pttls;
    size_t count, cap;
} restore;

static void restore_free(restore *rs)
{
    for (size_t i = 0; i < rs->count; i++)
        free(rs->names[i]);
    free(rs->names);
    free(rs->counters);
    free(rs->tokens);
    free(rs->pttls);
    free(rs);
}

static void restore_finish(restore *rs)
{
    int ok = !rs->failed;
    size_t target = rs->target;
    if (lk.restoring == rs)
        lk.restoring = NULL;
    log_notice("lock: restore of shard %s %s (%zu lock names)", store_name(target),
               ok ? "done" : "failed", rs->count);
    if (ok)
        lk.restores++;
    else
        lk.restore_failures++;
    restore_free(rs);
    store_restored(target, ok);
}

static void on_loaded(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    restore *rs = privdata;
    rs->outstanding--;
    if (!r || r->type != REDIS_REPLY_INTEGER)
        rs->failed = 1;
    if (rs->outstanding == 0)
        restore_finish(rs);
}

static void restore_write(restore *rs)
{
    if (rs->count == 0) {
        restore_finish(rs);
        return;
    }
    for (size_t first = 0; first < rs->count && !rs->failed; first += LOCK_RESTORE_BATCH) {
        size_t n = rs->count - first < LOCK_RESTORE_BATCH ? rs->count - first : LOCK_RESTORE_BATCH;
        const char **argv = malloc(sizeof(*argv) * n * 4);
        size_t *argvlen = malloc(sizeof(*argvlen) * n * 4);
        char(*nums)[24] = malloc(sizeof(*nums) * n * 3);
        if (!argv || !argvlen || !nums)
            abort();
        for (size_t i = 0; i < n; i++) {
            size_t k = first + i;
            snprintf(nums[3 * i], 24, "%" PRIu64, rs->counters[k]);
            if (rs->tokens[k])
                snprintf(nums[3 * i + 1], 24, "%" PRIu64, rs->tokens[k]);
            else
                nums[3 * i + 1][0] = '\0';
            snprintf(nums[3 * i + 2], 24, "%lld", rs->pttls[k]);
            argv[4 * i] = rs->names[k];
            argv[4 * i + 1] = nums[3 * i];
            argv[4 * i + 2] = nums[3 * i + 1];
            argv[4 * i + 3] = nums[3 * i + 2];
        }
        for (size_t i = 0; i < n * 4; i++)
            argvlen[i] = strlen(argv[i]);
        if (store_eval(rs->target, &load_script, on_loaded, rs, 0, (int)(n * 4), argv, argvlen) ==
            0)
            rs->outstanding++;
        else
            rs->failed = 1;
        free(argv);
        free(argvlen);
        free(nums);
    }
    if (rs->outstanding == 0)
        restore_finish(rs);
}

static void merge_record(restore *rs, const char *name, size_t len, uint64_t counter,
                         uint64_t token, long long pttl)
{
    size_t i = 0;
    while (i < rs->count && !(strlen(rs->names[i]) == len && memcmp(rs->names[i], name, len) == 0))
        i++;
    if (i == rs->count) {
        if (rs->count == rs->cap) {
            rs->cap = rs->cap ? rs->cap * 2 : 64;
            rs->names = realloc(rs->names, sizeof(*rs->names) * rs->cap);
            rs->counters = realloc(rs->counters, sizeof(*rs->counters) * rs->cap);
            rs->tokens = realloc(rs->tokens, sizeof(*rs->tokens) * rs->cap);
            rs->pttls = realloc(rs->pttls, sizeof(*rs->pttls) * rs->cap);
            if (!rs->names || !rs->counters || !rs->tokens || !rs->pttls)
                abort();
        }
        rs->names[i] = strndup(name, len);
        if (!rs->names[i])
            abort();
        rs->counters[i] = 0;
        rs->tokens[i] = 0;
        rs->pttls[i] = 0;
        rs->count++;
    }
    if (counter > rs->counters[i])
        rs->counters[i] = counter;
    /* A live hold: the highest token wins (a lower one is a stale leftover). */
    if (token && pttl > 0 && token >= rs->tokens[i]) {
        if (token > rs->tokens[i] || pttl > rs->pttls[i])
            rs->pttls[i] = pttl;
        rs->tokens[i] = token;
    }
}

static void on_dump(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    restore *rs = privdata;
    rs->outstanding--;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements % 4 == 0) {
        rs->answered++;
        for (size_t i = 0; i + 3 < r->elements; i += 4) {
            const redisReply *name = r->element[i];
            uint64_t counter = 0, token = 0;
            if (name->type != REDIS_REPLY_STRING || reply_uint(r->element[i + 1], &counter) < 0)
                continue;
            if (r->element[i + 2]->type == REDIS_REPLY_STRING && r->element[i + 2]->len)
                (void)reply_uint(r->element[i + 2], &token);
            long long pttl =
                r->element[i + 3]->type == REDIS_REPLY_INTEGER ? r->element[i + 3]->integer : 0;
            merge_record(rs, name->str, name->len, counter, token, pttl);
        }
    }
    if (rs->outstanding)
        return;
    if (rs->answered < lk.majority) {
        rs->failed = 1;
        restore_finish(rs);
        return;
    }
    restore_write(rs);
}

static int lock_index_of(size_t shard)
{
    for (size_t i = 0; i < lk.n; i++)
        if (lk.shard[i] == shard)
            return (int)i;
    return -1;
}

static void restore_hook(size_t shard)
{
    int li = lock_index_of(shard);
    if (li < 0) {
        store_restored(shard, 1); /* no lock records live there */
        return;
    }
    if (lk.fresh & (1ull << li)) {
        lk.fresh &= ~(1ull << li);
        store_restored(shard, 1);
        return;
    }
    size_t ready = 0, unmarked = 0;
    for (size_t i = 0; i < lk.n; i++) {
        store_state s = store_shard_state(lk.shard[i]);
        ready += s == STORE_READY;
        unmarked += s == STORE_UNRESTORED || s == STORE_RESTORING;
    }
    if (ready == 0 && unmarked == lk.n) {
        /* No lock shard has ever been initialised (or every one lost its
         * store at once, when nothing can be recovered): start them all
         * fresh, counters from zero. */
        log_notice("lock: no lock shard holds a store yet: initialising all %zu", lk.n);
        for (size_t i = 0; i < lk.n; i++)
            if ((int)i != li)
                lk.fresh |= 1ull << i;
        for (size_t i = 0; i < lk.n; i++)
            if ((int)i != li && store_shard_state(lk.shard[i]) == STORE_RESTORING) {
                lk.fresh &= ~(1ull << i);
                store_restored(lk.shard[i], 1);
            }
        store_restored(shard, 1);
        return;
    }
    if (ready < lk.majority || lk.restoring) {
        /* Not enough to restore from (or a restore runs): later. */
        store_restored(shard, 0);
        return;
    }
    restore *rs = calloc(1, sizeof(*rs));
    if (!rs)
        abort();
    rs->target = shard;
    lk.restoring = rs;
    for (size_t i = 0; i < lk.n; i++) {
        if ((int)i == li || store_shard_state(lk.shard[i]) != STORE_READY)
            continue;
        if (store_eval(lk.shard[i], &dump_script, on_dump, rs, 0, 0, NULL, NULL) == 0)
            rs->outstanding++;
    }
    if (rs->outstanding == 0) {
        rs->failed = 1;
        restore_finish(rs);
    }
}

int lock_info(buf *b)
{
    size_t waiting = 0;
    for (const lock_op *op = lk.ops; op; op = op->next)
        waiting += op->req != NULL;
    (void)buf_printf(b,
                     "# Locks\r\n"
                     "lock_shards:%zu\r\n"
                     "lock_majority:%zu\r\n"
                     "lock_shards_ready:%zu\r\n"
                     "lock_shard_states:",
                     lk.n, lk.majority, ready_count());
    for (size_t i = 0; i < lk.n; i++)
        (void)buf_printf(b, "%s%s=%s", i ? "," : "", store_name(lk.shard[i]),
                         store_state_name(store_shard_state(lk.shard[i])));
    (void)buf_printf(b,
                     "\r\n"
                     "lock_requests_waiting:%zu\r\n"
                     "lock_granted:%llu\r\n"
                     "lock_denied:%llu\r\n"
                     "lock_unavailable:%llu\r\n"
                     "lock_restores:%llu\r\n"
                     "lock_restore_failures:%llu\r\n"
                     "\r\n",
                     waiting, (unsigned long long)lk.granted, (unsigned long long)lk.denied,
                     (unsigned long long)lk.unavailable, (unsigned long long)lk.restores,
                     (unsigned long long)lk.restore_failures);
    return buf_failed(b) ? -1 : 0;
}

/* ---- start and stop ---- */

int lock_start(const config *cfg, char *err, size_t errlen)
{
    lk.shard = calloc(cfg->nshards ? cfg->nshards : 1, sizeof(*lk.shard));
    if (!lk.shard) {
        snprintf(err, errlen, "lock: out of memory");
        return -1;
    }
    /* The store indexes shards in cfg->shards order. */
    for (size_t i = 0; i < cfg->nshards; i++)
        if (config_is_lock_shard(cfg, cfg->shards[i].name))
            lk.shard[lk.n++] = i;
    if (lk.n > LOCK_SHARDS_MAX) {
        snprintf(err, errlen, "lock_shards: %zu shards, at most %d", lk.n, LOCK_SHARDS_MAX);
        free(lk.shard);
        lk.shard = NULL;
        lk.n = 0;
        return -1;
    }
    lk.majority = lk.n / 2 + 1;
    if (lk.n && lk.n < 3)
        log_warn("lock_shards: %zu lock shard%s; a lost shard then stops the locks "
                 "(3 or more, an odd count, is best)",
                 lk.n, lk.n == 1 ? "" : "s");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lk.rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ 0x9e3779b97f4a7c15ull;
    store_script *scripts[] = {&counter_script, &acquire_script, &release_script, &extend_script,
                               &info_script,    &dump_script,    &load_script};
    for (size_t i = 0; i < sizeof(scripts) / sizeof(scripts[0]); i++)
        store_register_script(scripts[i]);
    store_set_restore_hook(restore_hook);
    lk.started = 1;
    return 0;
}

void lock_shutdown(void)
{
    /* Answered first (the requests are freed), then the ops are dropped as
     * the store fails their calls. */
    for (lock_op *op = lk.ops; op; op = op->next) {
        if (op->timer_set) {
            event_del(&op->timer);
            op->timer_set = 0;
        }
        if (op->req)
            answer_str(op, "-ERR proxy shutting down\r\n");
        op->phase = PHASE_DONE;
    }
    lk.started = 0;
}

void lock_free(void)
{
    while (lk.ops)
        op_free(lk.ops);
    if (lk.restoring) {
        restore_free(lk.restoring);
        lk.restoring = NULL;
    }
    free(lk.shard);
    memset(&lk, 0, sizeof(lk));
}
