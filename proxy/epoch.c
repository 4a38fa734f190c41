/* The fleet's ring epoch (see epoch.h; docs/rebalancing.md, "Several
 * proxies"). Everything here goes through the store's control connections
 * on the event loop; nothing is on the request path but srv.ring_refusing,
 * which the router reads once per request.
 *
 * The record, in every shard's store (hash ringproxy:ring):
 *   epoch, fp         the ring in force and its fingerprint (reload.c)
 *   text              that ring as proxy.ini text (what a proxy rebuilds it from)
 *   prev_fp, prev_text the ring keys move from, while state is not idle
 *   state             fencing | migrating | idle
 *   owner             the proxy that wrote the epoch
 *   progress          the movers' cursors, "s1=<cursor>,s2=done"
 * ringproxy:ring:history maps every fingerprint ever in force to its epoch
 * (an older file is recognised as such), and ringproxy:ring:lease names the
 * proxy that moves keys, with an expiry (on the arbiter shard only). */
#include "proxy/epoch.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/hiredis.h>

#include "config/config.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/reload.h"
#include "proxy/server.h"
#include "proxy/store.h"

#define EPOCH_RECORD  "ringproxy:ring"
#define EPOCH_HISTORY "ringproxy:ring:history"
#define EPOCH_LEASE   "ringproxy:ring:lease"
/* How often the proxies look at the shards' record while something is
 * under way (a new ring, a fence, a migration). Otherwise only when
 * something happens: a reload, a connection refused by the ring check, a
 * store connection coming back (a shard restarted): reads of the record
 * count in the shards' keyspace_hits, which monitoring reads. */
#define EPOCH_TICK_MS      50
#define EPOCH_BUSY_POLL_US 200000u
/* The mover's lease: renewed at every busy poll, taken over by another
 * proxy at the epoch once it expires (the holder died or lost the shards). */
#define EPOCH_LEASE_MS 3000
/* Shards the record is kept on, and rings remembered in the history. */
#define EPOCH_MAX_SHARDS  256
#define EPOCH_MAX_HISTORY 128

typedef struct ring_record {
    unsigned long long epoch; /* 0: none */
    char fp[24];
    char prev_fp[24];
    char state[16];
    char owner[40];
    char lease[40]; /* the lease's holder, "" when free */
    char *text;
    char *prev_text;
    char progress[2048];
} ring_record;

/* This proxy against the shards' record. */
typedef enum epoch_state {
    EPOCH_UNKNOWN = 0, /* not read yet: requests are served (the ring check guards) */
    EPOCH_CURRENT,     /* runs the shards' ring */
    EPOCH_ADVANCING,   /* writing its ring as the next epoch */
    EPOCH_BEHIND,      /* the shards run another ring: keyed requests get -TRYAGAIN */
} epoch_state;

static struct {
    int started;
    struct event tick;
    epoch_state state;
    unsigned long long epoch; /* of the ring this proxy runs; 0 unknown */
    char last_fp[24];         /* srv.ring_fp when last looked at */
    ring_record fleet;        /* the newest record read */
    /* the poll under way */
    uint64_t poll_gen;
    size_t poll_pending;
    int poll_answers;
    uint64_t next_poll_us;
    ring_record best;
    char poll_lease[40];  /* the lease's holder as the poll read it */
    ring_record proposal; /* the record this proxy is writing as the next epoch */
    unsigned long long shard_epoch[EPOCH_MAX_SHARDS]; /* per store shard; ~0 = no answer */
    char history_fp[EPOCH_MAX_HISTORY][24];
    unsigned long long history_epoch[EPOCH_MAX_HISTORY];
    size_t nhistory;
    /* writes under way (advance, repair, state, progress, lease) */
    int writes_pending;
    int advance_lost;
    /* the fence under way */
    uint64_t fence_gen;
    size_t fence_pending;
    int fence_failed;
    int leader;                      /* holds the lease */
    int lease_pending;               /* a lease call is out */
    int finishing;                   /* the movers ended: writing state idle */
    unsigned long long adopt_failed; /* the epoch whose ring this proxy could not run */
    unsigned long long idle_written; /* the epoch this proxy's movers ended, and whose
                                        record it set idle (before a poll reads it back) */
    uint64_t fences_done, kills;
    unsigned store_ready;           /* store shards READY at the last tick */
    unsigned long long config_seen; /* srv.config_epoch + 1 whose shards the store has */
} ep;

/* ---- scripts (KEYS[1] is the store marker) ---- */

static store_script poll_script = {
    .body =
        STORE_SCRIPT_GUARD "return {redis.call('HGETALL', KEYS[2]), "
                           "redis.call('HGETALL', KEYS[3]), redis.call('GET', KEYS[4]) or ''}\n",
};

/* ARGV: expected epoch, new epoch, strict, lease owner ('' none), lease ms,
 * fp, then field/value pairs. Strict (the arbiter): only over the expected
 * epoch; otherwise over any older one (the other shards, a repair). */
static store_script advance_script = {
    .body = STORE_SCRIPT_GUARD
    "local e = tonumber(redis.call('HGET', KEYS[2], 'epoch') or '0')\n"
    "local n = tonumber(ARGV[2])\n"
    "if e == n and redis.call('HGET', KEYS[2], 'fp') == ARGV[6] then return 1 end\n"
    "if e >= n or (ARGV[3] == '1' and e ~= tonumber(ARGV[1])) then return 0 end\n"
    "redis.call('DEL', KEYS[2])\n"
    "redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'fp', ARGV[6])\n"
    "for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end\n"
    "redis.call('HSET', KEYS[3], ARGV[6], ARGV[2])\n"
    "if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5]) end\n"
    "return 1\n",
};

/* ARGV: epoch, then field/value pairs set when the record is at epoch. */
static store_script update_script = {
    .body =
        STORE_SCRIPT_GUARD "if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then return 0 end\n"
                           "for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], "
                           "ARGV[i + 1]) end\n"
                           "return 1\n",
};

/* ARGV: epoch, owner, ms, release. Takes, renews or releases the lease. */
static store_script lease_script = {
    .body =
        STORE_SCRIPT_GUARD "if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[1] then return 0 end\n"
                           "local cur = redis.call('GET', KEYS[3])\n"
                           "if cur and cur ~= ARGV[2] then return 0 end\n"
                           "if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) return 1 end\n"
                           "redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])\n"
                           "return 1\n",
};

static const char *state_name(epoch_state s)
{
    switch (s) {
    case EPOCH_UNKNOWN:
        return "unknown";
    case EPOCH_CURRENT:
        return "current";
    case EPOCH_ADVANCING:
        return "advancing";
    case EPOCH_BEHIND:
        return "behind";
    }
    return "?";
}

static void record_clear(ring_record *r)
{
    free(r->text);
    free(r->prev_text);
    memset(r, 0, sizeof(*r));
}

static void record_copy(ring_record *to, const ring_record *from)
{
    record_clear(to);
    *to = *from;
    to->text = from->text ? strdup(from->text) : NULL;
    to->prev_text = from->prev_text ? strdup(from->prev_text) : NULL;
    if ((from->text && !to->text) || (from->prev_text && !to->prev_text))
        abort();
}

static void poll_soon(void)
{
    ep.next_poll_us = 0;
}

/* ---- this proxy's standing ---- */

/* The epoch this proxy runs; the ring check on new shard connections
 * learns it only while the proxy is not behind. */
static void set_epoch(uint64_t epoch)
{
    ep.epoch = epoch;
    srv.ring_epoch_run = ep.state == EPOCH_CURRENT || ep.state == EPOCH_ADVANCING ? epoch : 0;
}

/* Whether the fleet's move is this proxy's own: it proposes its ring, or
 * runs the ring the shards still fence or move keys to. A ring edit then
 * waits for the move to end, as it does for a move of one proxy (reload.c):
 * applied at once, it would leave that move to nobody. */
static void publish_moving(void)
{
    /* The fleet's first epoch moves nothing, and an edit made while it is
     * written or fenced is proposed right after it (decide). */
    int first = ep.fleet.epoch == 0 || !ep.fleet.prev_fp[0];
    srv.fleet_moving =
        (ep.state == EPOCH_ADVANCING && ep.fleet.epoch != 0) ||
        (ep.state == EPOCH_CURRENT && !first && strcmp(ep.fleet.fp, srv.ring_fp) == 0 &&
         strcmp(ep.fleet.state, "idle") != 0 && ep.idle_written != ep.fleet.epoch);
}

/* The one place the standing changes; refusing follows BEHIND. */
static void set_state(epoch_state to, const char *refusal)
{
    if (to == EPOCH_BEHIND) {
        char line[sizeof(srv.ring_refusal)];
        snprintf(line, sizeof(line), "TRYAGAIN ring changed: %s", refusal);
        if (ep.state != EPOCH_BEHIND || strcmp(line, srv.ring_refusal) != 0)
            log_warn("refusing keyed requests: %s", refusal);
        snprintf(srv.ring_refusal, sizeof(srv.ring_refusal), "%s", line);
        srv.ring_refusing = 1;
        /* A migration this proxy started toward a ring that did not win
         * moves nothing: its barrier never fell. */
        rebalance_abort("ring changed: this proxy's ring is not the shards'; retry");
        rebalance_set_mover(0);
        ep.leader = 0;
    } else if (srv.ring_refusing) {
        log_notice("serving again: this proxy runs the shards' ring (epoch %llu)", ep.epoch);
        srv.ring_refusing = 0;
    }
    if (to != EPOCH_ADVANCING)
        srv.ring_fp_prev[0] = '\0'; /* only a proposal in progress keeps it */
    if (ep.state != to)
        log_info("ring epoch: %s -> %s", state_name(ep.state), state_name(to));
    ep.state = to;
    set_epoch(ep.epoch);
    publish_moving();
}

/* ---- rings named in a record's text ---- */

/* Writes to out the store index of each shard named in the [shards] of
 * text and other that the store knows (once each); their number. */
static size_t ring_store_shards(const char *text, const char *other, size_t *out, size_t cap)
{
    size_t n = 0;
    const char *texts[2] = {text, other};
    for (int t = 0; t < 2; t++) {
        const char *p = texts[t] ? strstr(texts[t], "[shards]") : NULL;
        while (p && (p = strchr(p, '\n')) != NULL) {
            p++;
            if (*p == '[')
                break;
            size_t len = strcspn(p, " =\r\n");
            char name[128];
            if (len == 0 || *p == ';' || *p == '#' || len >= sizeof(name))
                continue;
            memcpy(name, p, len);
            name[len] = '\0';
            int idx = store_index(name);
            int seen = idx < 0;
            for (size_t i = 0; !seen && i < n; i++)
                seen = out[i] == (size_t)idx;
            if (!seen && n < cap)
                out[n++] = (size_t)idx;
        }
    }
    return n;
}

/* The arbiter of a ring: its shard with the lowest name. Every proxy
 * picks the same one, since the store knows every shard of the records it
 * read (store_learn). -1 if none. */
static int arbiter_of(const char *text)
{
    size_t idx[EPOCH_MAX_SHARDS];
    size_t n = ring_store_shards(text, NULL, idx, EPOCH_MAX_SHARDS);
    int best = -1;
    for (size_t i = 0; i < n; i++)
        if (best < 0 || strcmp(store_name(idx[i]), store_name((size_t)best)) < 0)
            best = (int)idx[i];
    return best;
}

/* Makes the store know every shard of a ring text (a proxy whose file
 * lacks one still reads, writes and fences it). */
static void store_learn(const char *text, const char *fp)
{
    static char learnt[2][24]; /* the rings (by fingerprint) learnt last */
    static int next;
    if (!text || !text[0] || strcmp(fp, learnt[0]) == 0 || strcmp(fp, learnt[1]) == 0)
        return;
    config *cfg = NULL;
    char err[300];
    if (config_load_string(text, "the shards' ring record", &cfg, err, sizeof(err)) < 0) {
        log_warn("ring epoch: the shards' ring record does not load: %s", err);
        return;
    }
    for (size_t i = 0; i < cfg->nshards; i++)
        (void)store_add_shard(&cfg->shards[i]);
    config_free(cfg);
    snprintf(learnt[next], sizeof(learnt[0]), "%s", fp);
    next = 1 - next;
}

/* The shards the record of r must be on and fenced: its ring's and, while
 * keys move, the previous ring's. */
static size_t record_shards(const ring_record *r, size_t *out)
{
    return ring_store_shards(r->text, r->prev_text, out, EPOCH_MAX_SHARDS);
}

/* ---- writes ---- */

static void on_write(void *privdata, size_t si, const redisReply *r)
{
    (void)privdata;
    (void)si;
    (void)r;
    if (ep.writes_pending > 0 && --ep.writes_pending == 0)
        poll_soon();
}

/* Runs script s on shard with args; counted in writes_pending. */
static int write_record(size_t si, store_script *s, store_reply_fn fn, int argc, const char **argv)
{
    size_t lens[32];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (store_eval(si, s, fn, NULL, s == &update_script ? 1 : 3, argc, argv, lens) < 0)
        return -1;
    ep.writes_pending++;
    return 0;
}

/* Writes the whole record w on shard si with the advance script: strict
 * (the arbiter: only over epoch expected, taking the lease for this proxy)
 * or over any older epoch (the other shards, a repair). */
static int write_whole(size_t si, const ring_record *w, unsigned long long expected, int strict,
                       store_reply_fn fn)
{
    char from[24], epoch[24], lease_ms[16];
    snprintf(from, sizeof(from), "%llu", expected);
    snprintf(epoch, sizeof(epoch), "%llu", w->epoch);
    snprintf(lease_ms, sizeof(lease_ms), "%d", EPOCH_LEASE_MS);
    const char *argv[] = {EPOCH_RECORD,
                          EPOCH_HISTORY,
                          EPOCH_LEASE,
                          from,
                          epoch,
                          strict ? "1" : "0",
                          strict ? srv.instance_id : "",
                          lease_ms,
                          w->fp,
                          "text",
                          w->text ? w->text : "",
                          "prev_fp",
                          w->prev_fp,
                          "prev_text",
                          w->prev_text ? w->prev_text : "",
                          "state",
                          w->state,
                          "owner",
                          w->owner,
                          "progress",
                          w->progress};
    return write_record(si, &advance_script, fn, (int)(sizeof(argv) / sizeof(argv[0])), argv);
}

/* Copies r to shard si (over an older epoch only). */
static void repair(size_t si, const ring_record *r)
{
    if (write_whole(si, r, 0, 0, on_write) == 0)
        log_notice("ring epoch: shard %s lacks epoch %llu (restarted empty, or was down): "
                   "writing it back",
                   store_name(si), r->epoch);
}

/* Sets fields of the record at r's epoch on every shard of r. */
static void update_all(const ring_record *r, int npairs, const char **pairs)
{
    char epoch[24];
    snprintf(epoch, sizeof(epoch), "%llu", r->epoch);
    const char *argv[16] = {EPOCH_RECORD, epoch};
    int argc = 2;
    for (int i = 0; i < npairs * 2 && argc < 16; i++)
        argv[argc++] = pairs[i];
    size_t idx[EPOCH_MAX_SHARDS];
    size_t n = record_shards(r, idx);
    for (size_t i = 0; i < n; i++)
        (void)write_record(idx[i], &update_script, on_write, argc, argv);
}

/* ---- advancing the epoch ---- */

static void on_advance_arbiter(void *privdata, size_t si, const redisReply *r)
{
    (void)privdata;
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        /* Ours: the other shards take it over any older epoch. */
        ring_record *w = &ep.proposal;
        size_t idx[EPOCH_MAX_SHARDS];
        size_t n = record_shards(w, idx);
        for (size_t i = 0; i < n; i++)
            if (idx[i] != si)
                (void)write_whole(idx[i], w, 0, 0, on_write);
        /* This proxy ran the ring it proposed (its own, or the one it
         * moves from when the first epoch is written during a move), even
         * if a reload has changed its ring since: its base for the next. */
        set_epoch(w->epoch);
        log_notice("ring epoch %llu: ring %s (was %s) written; fencing the shards", w->epoch, w->fp,
                   w->prev_fp[0] ? w->prev_fp : "none");
    } else {
        ep.advance_lost = 1;
    }
    on_write(NULL, si, r);
}

/* Proposes a ring (fp, text: taken) as epoch cur->epoch + 1, on the
 * arbiter of the ring in force first. */
static void advance(const ring_record *cur, const char *fp, char *text)
{
    set_state(EPOCH_ADVANCING, NULL); /* polls go on until it is written */
    if (!text)
        return;
    int arbiter = arbiter_of(cur->epoch ? cur->text : text);
    if (arbiter < 0 || store_shard_state((size_t)arbiter) != STORE_READY) {
        free(text);
        return; /* the next poll tries again */
    }
    ring_record *w = &ep.proposal;
    ring_record next = {0};
    next.epoch = cur->epoch + 1;
    snprintf(next.fp, sizeof(next.fp), "%s", fp);
    snprintf(next.state, sizeof(next.state), "fencing");
    snprintf(next.owner, sizeof(next.owner), "%s", srv.instance_id);
    next.text = text;
    if (cur->epoch && cur->text) {
        snprintf(next.prev_fp, sizeof(next.prev_fp), "%s", cur->fp);
        next.prev_text = strdup(cur->text);
    }
    record_clear(w);
    *w = next;
    ep.advance_lost = 0;
    if (write_whole((size_t)arbiter, w, cur->epoch, 1, on_advance_arbiter) == 0)
        log_notice("ring epoch: proposing ring %s as epoch %llu (shards at %llu, ring %s)", w->fp,
                   w->epoch, cur->epoch, cur->epoch ? cur->fp : "none");
}

/* ---- the fence ---- */

typedef struct kill_call {
    uint64_t gen;
} kill_call;

static void fence_answered(void)
{
    if (--ep.fence_pending > 0)
        return;
    if (ep.fence_failed) {
        poll_soon();
        return;
    }
    ep.fences_done++;
    ring_record *r = &ep.fleet;
    const char *next = r->prev_fp[0] ? "migrating" : "idle";
    log_notice("ring epoch %llu: every shard fenced against other rings; %s", r->epoch,
               r->prev_fp[0] ? "keys move" : "nothing to move");
    const char *pairs[] = {"state", next};
    update_all(r, 1, pairs);
}

static void on_kill(void *privdata, size_t si, const redisReply *r)
{
    kill_call *k = privdata;
    (void)si;
    int current = k->gen == ep.fence_gen;
    free(k);
    if (!current)
        return;
    if (!r || (r->type == REDIS_REPLY_ERROR && !strstr(r->str, "No such client")))
        ep.fence_failed = 1;
    fence_answered();
}

/* CLIENT LIST's answer: kills every connection named after another ring,
 * other than this proxy's own (its requests sent under the old ring are
 * the barrier's business). */
static void on_client_list(void *privdata, size_t si, const redisReply *r)
{
    kill_call *k = privdata;
    if (k->gen != ep.fence_gen) {
        free(k);
        return;
    }
    if (!r || r->type != REDIS_REPLY_STRING) {
        free(k);
        ep.fence_failed = 1;
        fence_answered();
        return;
    }
    const char *fp = ep.fleet.fp;
    size_t fplen = strlen(fp);
    for (const char *line = r->str; line && *line;) {
        const char *end = strchr(line, '\n');
        const char *name = strstr(line, " name=ringproxy-");
        if (name && (!end || name < end)) {
            const char *ringname = name + 16;
            const char *dash = strchr(ringname, '-');
            const char *inst = dash ? dash + 1 : "";
            size_t instlen = strcspn(inst, " \r\n");
            int ours =
                instlen == strlen(srv.instance_id) && memcmp(inst, srv.instance_id, instlen) == 0;
            int same_ring =
                dash && (size_t)(dash - ringname) == fplen && memcmp(ringname, fp, fplen) == 0;
            unsigned long long id = 0;
            if (!ours && !same_ring && sscanf(line, "id=%llu", &id) == 1) {
                char ids[24];
                snprintf(ids, sizeof(ids), "%llu", id);
                const char *argv[4] = {"CLIENT", "KILL", "ID", ids};
                size_t lens[4] = {6, 4, 2, strlen(ids)};
                kill_call *kk = malloc(sizeof(*kk));
                if (!kk)
                    abort();
                kk->gen = ep.fence_gen;
                if (store_call(si, on_kill, kk, 4, argv, lens) == 0) {
                    ep.fence_pending++;
                    ep.kills++;
                    log_notice("ring epoch %llu: shard %s: closing connection %llu of a proxy on "
                               "ring %.*s",
                               ep.fleet.epoch, store_name(si), id, (int)(dash - ringname),
                               ringname);
                } else {
                    free(kk);
                    ep.fence_failed = 1;
                }
            }
        }
        line = end ? end + 1 : NULL;
    }
    free(k);
    fence_answered();
}

/* Fences every shard of the record: lists its connections and kills those
 * of proxies on another ring. Needs the record on each of them. */
static void fence(void)
{
    if (ep.fence_pending > 0)
        return;
    size_t idx[EPOCH_MAX_SHARDS];
    size_t n = record_shards(&ep.fleet, idx);
    for (size_t i = 0; i < n; i++)
        if (ep.shard_epoch[idx[i]] != ep.fleet.epoch)
            return; /* repaired first */
    ep.fence_gen++;
    ep.fence_failed = 0;
    ep.fence_pending = 1; /* held until every list is sent */
    for (size_t i = 0; i < n; i++) {
        const char *argv[2] = {"CLIENT", "LIST"};
        size_t lens[2] = {6, 4};
        kill_call *k = malloc(sizeof(*k));
        if (!k)
            abort();
        k->gen = ep.fence_gen;
        if (store_call(idx[i], on_client_list, k, 2, argv, lens) == 0) {
            ep.fence_pending++;
        } else {
            free(k);
            ep.fence_failed = 1;
        }
    }
    fence_answered();
}

/* ---- the lease and the migration ---- */

static void on_lease(void *privdata, size_t si, const redisReply *r)
{
    (void)privdata;
    (void)si;
    ep.lease_pending = 0;
    int held = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    if (held && !ep.leader) {
        log_notice("ring epoch %llu: this proxy holds the lease: it %s", ep.fleet.epoch,
                   strcmp(ep.fleet.state, "fencing") == 0 ? "fences the shards" : "moves the keys");
        /* Taking over: go on from where the last holder's movers were. */
        if (ep.fleet.progress[0])
            rebalance_resume_progress(ep.fleet.progress);
    }
    ep.leader = held;
    if (!held) {
        rebalance_set_mover(0);
        return;
    }
    if (strcmp(ep.fleet.state, "fencing") == 0) {
        fence();
    } else if (strcmp(ep.fleet.state, "migrating") == 0 && rebalance_fleet_ready_seen()) {
        char progress[sizeof(ep.fleet.progress)];
        rebalance_progress(progress, sizeof(progress));
        const char *pairs[] = {"progress", progress, "owner", srv.instance_id};
        if (progress[0])
            update_all(&ep.fleet, 2, pairs);
        rebalance_set_mover(1);
    }
}

static void lease_call(int release)
{
    const ring_record *r = &ep.fleet;
    int arbiter = arbiter_of(r->prev_text ? r->prev_text : r->text);
    if (arbiter < 0 || ep.lease_pending)
        return;
    char epoch[24], ms[16];
    snprintf(epoch, sizeof(epoch), "%llu", r->epoch);
    snprintf(ms, sizeof(ms), "%d", EPOCH_LEASE_MS);
    const char *argv[] = {EPOCH_RECORD,    EPOCH_LEASE, epoch,
                          srv.instance_id, ms,          release ? "1" : "0"};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(argv[i]);
    if (store_eval((size_t)arbiter, &lease_script, release ? on_write : on_lease, NULL, 2, 6, argv,
                   lens) == 0) {
        if (release)
            ep.writes_pending++;
        else
            ep.lease_pending = 1;
    }
}

/* This proxy's movers completed their passes: the fleet's move is done. */
static void on_movers_finished(void)
{
    if (!ep.leader || strcmp(ep.fleet.state, "migrating") != 0)
        return;
    log_notice("ring epoch %llu: keys moved; the shards' record says idle", ep.fleet.epoch);
    const char *pairs[] = {"state", "idle", "progress", "", "prev_text", ""};
    update_all(&ep.fleet, 3, pairs);
    ep.idle_written = ep.fleet.epoch;
    publish_moving();
    lease_call(1);
    ep.leader = 0;
}

/* Takes or renews the lease when it is free or ours: its holder fences
 * the shards, then moves the keys. Under workers = N each worker is one
 * more proxy of the fleet here (its own instance id). */
static void take_lease(const ring_record *r)
{
    if (!r->lease[0] || strcmp(r->lease, srv.instance_id) == 0) {
        lease_call(0);
    } else if (ep.leader) {
        ep.leader = 0;
        rebalance_set_mover(0);
    }
}

/* Runs the shards' migration of this proxy's ring, from the ring they
 * record as previous. */
static void follow_migration(const ring_record *r)
{
    if (strcmp(r->state, "idle") == 0) {
        rebalance_set_mover(0);
        if (rebalance_running())
            rebalance_fleet_done();
        ep.leader = 0;
        return;
    }
    if (r->prev_fp[0] && r->prev_text && r->prev_text[0] &&
        (!rebalance_running() || strcmp(rebalance_old_fp(), r->prev_fp) != 0)) {
        char err[600];
        log_notice("ring epoch %llu: moving keys from ring %s, as the shards record", r->epoch,
                   r->prev_fp);
        if (reload_fleet_rebalance(r->prev_text, err, sizeof(err)) < 0) {
            log_error("ring epoch %llu: %s", r->epoch, err);
            return;
        }
    }
    if (strcmp(r->state, "migrating") == 0)
        rebalance_fleet_ready();
    take_lease(r);
}

/* ---- reading the shards ---- */

static unsigned long long history_epoch(const char *fp)
{
    for (size_t i = 0; i < ep.nhistory; i++)
        if (strcmp(ep.history_fp[i], fp) == 0)
            return ep.history_epoch[i];
    return 0;
}

/* A ring the shards never had while they move keys (an edit, or a proxy
 * restarted with a file edited during the move): runs theirs until the
 * move ends, helping it, then proposes this one (reload.c queues the
 * file). If theirs cannot run here, refuses until the move ends. */
static void run_theirs_first(const ring_record *r)
{
    char err[600] = "the record has no ring text";
    if (ep.adopt_failed != r->epoch && r->text &&
        reload_adopt_ring(r->text, err, sizeof(err)) == 0 && strcmp(r->fp, srv.ring_fp) == 0) {
        ep.epoch = r->epoch;
        set_state(EPOCH_CURRENT, NULL);
        follow_migration(r);
        return;
    }
    if (ep.adopt_failed != r->epoch)
        log_warn("ring epoch %llu: cannot run the shards' ring: %s", r->epoch, err);
    ep.adopt_failed = r->epoch; /* tried once per epoch */
    char why[400];
    snprintf(why, sizeof(why),
             "the shards still move keys to epoch %llu (ring %s); ring %s is applied after",
             r->epoch, r->fp, srv.ring_fp);
    set_state(EPOCH_BEHIND, why);
}

/* What the shards say, and what this proxy does about it. */
static void decide(void)
{
    ring_record *r = &ep.best;
    if (ep.poll_answers == 0 || ep.writes_pending > 0)
        return;
    snprintf(r->lease, sizeof(r->lease), "%s", ep.poll_lease);
    if (r->epoch > srv.shards_epoch_seen)
        srv.shards_epoch_seen = r->epoch;
    record_copy(&ep.fleet, r);
    r = &ep.fleet;
    publish_moving();
    store_learn(r->text, r->fp);
    store_learn(r->prev_text, r->prev_fp);
    if (r->epoch == 0) {
        /* The first proxy of a fleet writes epoch 1: the ring the keys
         * are on, which is the one it moves from if a move runs. */
        if (rebalance_running() && rebalance_old_text()[0])
            advance(r, rebalance_old_fp(), strdup(rebalance_old_text()));
        else
            advance(r, srv.ring_fp, reload_ring_text(srv.cfg));
        return;
    }
    /* Shards that missed the epoch (down, or restarted empty) get it back. */
    size_t idx[EPOCH_MAX_SHARDS];
    size_t n = record_shards(r, idx);
    for (size_t i = 0; i < n; i++)
        if (ep.shard_epoch[idx[i]] != ~0ull && ep.shard_epoch[idx[i]] < r->epoch)
            repair(idx[i], r);
    if (strcmp(r->fp, srv.ring_fp) == 0) {
        ep.epoch = r->epoch;
        set_state(EPOCH_CURRENT, NULL);
        follow_migration(r);
        return;
    }
    char why[400];
    unsigned long long mine = history_epoch(srv.ring_fp);
    int ran_current = ep.epoch == r->epoch && !ep.advance_lost;
    if (ran_current && strcmp(r->state, "idle") == 0) {
        /* This proxy ran the shards' ring and its file changed: an edit,
         * even back to a ring the fleet had before (an undo). */
        advance(r, srv.ring_fp, reload_ring_text(srv.cfg));
    } else if (mine && mine < r->epoch && !ran_current) {
        snprintf(why, sizeof(why),
                 "this proxy runs epoch %llu (ring %s), the shards epoch %llu (ring %s); reload "
                 "its proxy.ini",
                 mine, srv.ring_fp, r->epoch, r->fp);
        set_state(EPOCH_BEHIND, why);
    } else if ((ep.epoch && ep.epoch < r->epoch) || ep.advance_lost) {
        snprintf(why, sizeof(why),
                 "the shards took ring %s as epoch %llu; this proxy's ring %s (from epoch %llu) "
                 "lost; make its proxy.ini the same as the others' and reload it",
                 r->fp, r->epoch, srv.ring_fp, ep.epoch);
        set_state(EPOCH_BEHIND, why);
    } else if (strcmp(r->state, "idle") != 0 && ep.epoch == r->epoch && !r->prev_fp[0]) {
        /* This proxy wrote the fleet's first epoch and its file changed
         * since: the first fence ends (nothing moves in it), then the new
         * ring is proposed. Requests wait at the barrier meanwhile. */
        set_state(EPOCH_ADVANCING, NULL);
        take_lease(r);
    } else if (strcmp(r->state, "idle") != 0) {
        run_theirs_first(r);
    } else {
        advance(r, srv.ring_fp, reload_ring_text(srv.cfg));
    }
}

static void parse_record(ring_record *r, const redisReply *h)
{
    for (size_t i = 0; h && h->type == REDIS_REPLY_ARRAY && i + 1 < h->elements; i += 2) {
        const redisReply *k = h->element[i], *v = h->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "epoch") == 0)
            r->epoch = strtoull(v->str, NULL, 10);
        else if (strcmp(k->str, "fp") == 0)
            snprintf(r->fp, sizeof(r->fp), "%s", v->str);
        else if (strcmp(k->str, "prev_fp") == 0)
            snprintf(r->prev_fp, sizeof(r->prev_fp), "%s", v->str);
        else if (strcmp(k->str, "state") == 0)
            snprintf(r->state, sizeof(r->state), "%s", v->str);
        else if (strcmp(k->str, "owner") == 0)
            snprintf(r->owner, sizeof(r->owner), "%s", v->str);
        else if (strcmp(k->str, "progress") == 0)
            snprintf(r->progress, sizeof(r->progress), "%s", v->str);
        else if (strcmp(k->str, "text") == 0 && !r->text)
            r->text = strdup(v->str);
        else if (strcmp(k->str, "prev_text") == 0 && !r->prev_text && v->len)
            r->prev_text = strdup(v->str);
    }
}

static void on_poll(void *privdata, size_t si, const redisReply *r)
{
    uint64_t gen = (uint64_t)(uintptr_t)privdata;
    if (gen != ep.poll_gen)
        return;
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 && si < EPOCH_MAX_SHARDS) {
        ep.poll_answers++;
        ring_record got = {0};
        parse_record(&got, r->element[0]);
        ep.shard_epoch[si] = got.epoch;
        const redisReply *h = r->element[1];
        for (size_t i = 0; h->type == REDIS_REPLY_ARRAY && i + 1 < h->elements; i += 2) {
            const char *fp = h->element[i]->str;
            unsigned long long e = strtoull(h->element[i + 1]->str, NULL, 10);
            if (!fp || history_epoch(fp) || ep.nhistory == EPOCH_MAX_HISTORY)
                continue;
            snprintf(ep.history_fp[ep.nhistory], sizeof(ep.history_fp[0]), "%s", fp);
            ep.history_epoch[ep.nhistory++] = e;
        }
        if (got.epoch > ep.best.epoch) {
            record_clear(&ep.best);
            ep.best = got;
        } else {
            record_clear(&got);
        }
        /* The lease lives on the arbiter: whichever shard has it says. */
        if (r->element[2]->type == REDIS_REPLY_STRING && r->element[2]->len)
            snprintf(ep.poll_lease, sizeof(ep.poll_lease), "%s", r->element[2]->str);
    }
    if (--ep.poll_pending == 0)
        decide();
}

static void poll_shards(void)
{
    if (ep.poll_pending > 0 || ep.writes_pending > 0 || ep.fence_pending > 0 || ep.lease_pending)
        return;
    ep.poll_gen++;
    ep.poll_answers = 0;
    record_clear(&ep.best);
    ep.nhistory = 0;
    ep.poll_lease[0] = '\0';
    ep.poll_pending = 1; /* held until every read is sent */
    for (size_t i = 0; i < store_count() && i < EPOCH_MAX_SHARDS; i++) {
        ep.shard_epoch[i] = ~0ull;
        if (store_shard_state(i) != STORE_READY)
            continue;
        const char *argv[3] = {EPOCH_RECORD, EPOCH_HISTORY, EPOCH_LEASE};
        size_t lens[3] = {strlen(argv[0]), strlen(argv[1]), strlen(argv[2])};
        if (store_eval(i, &poll_script, on_poll, (void *)(uintptr_t)ep.poll_gen, 3, 3, argv,
                       lens) == 0)
            ep.poll_pending++;
    }
    if (--ep.poll_pending == 0)
        decide();
}

static int busy(void)
{
    return ep.state != EPOCH_CURRENT || rebalance_running() ||
           strcmp(ep.fleet.state, "idle") != 0 || ep.leader;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    uint64_t now = server_now_us();
    if (strcmp(ep.last_fp, srv.ring_fp) != 0) {
        /* A reload changed the ring (or this is the start). */
        snprintf(ep.last_fp, sizeof(ep.last_fp), "%s", srv.ring_fp);
        ep.advance_lost = 0;
        if (ep.state != EPOCH_CURRENT)
            srv.ring_fp_prev[0] = '\0'; /* it did not run the shards' ring */
        poll_soon();
    }
    if (srv.ring_check_refused) {
        srv.ring_check_refused = 0;
        poll_soon();
    }
    /* A shard a reload brought in carries the record too (the next ring
     * change must fence it). */
    if (ep.config_seen != srv.config_epoch + 1) {
        ep.config_seen = srv.config_epoch + 1;
        for (size_t i = 0; i < srv.cfg->nshards; i++)
            if (store_index(srv.cfg->shards[i].name) < 0)
                (void)store_add_shard(&srv.cfg->shards[i]);
    }
    unsigned ready = 0;
    for (size_t i = 0; i < store_count(); i++)
        ready += store_shard_state(i) == STORE_READY;
    if (ready != ep.store_ready) {
        ep.store_ready = ready; /* a shard (re)connected or restored: repair it */
        poll_soon();
    }
    if (ep.next_poll_us == UINT64_MAX || now < ep.next_poll_us)
        return;
    ep.next_poll_us = busy() ? now + EPOCH_BUSY_POLL_US : UINT64_MAX;
    poll_shards();
}

/* ---- start, stop, INFO ---- */

void epoch_register(void)
{
    store_register_script(&poll_script);
    store_register_script(&advance_script);
    store_register_script(&update_script);
    store_register_script(&lease_script);
    rebalance_fleet_enable(on_movers_finished);
}

void epoch_start(void)
{
    event_assign(&ep.tick, srv.base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, EPOCH_TICK_MS * 1000};
    event_add(&ep.tick, &tv);
    ep.started = 1;
}

void epoch_shutdown(void)
{
    if (ep.started)
        event_del(&ep.tick);
    ep.started = 0;
    record_clear(&ep.fleet);
    record_clear(&ep.best);
    record_clear(&ep.proposal);
}

int epoch_info_server(buf *b)
{
    unsigned long long shards =
        ep.fleet.epoch > srv.shards_epoch_seen ? ep.fleet.epoch : srv.shards_epoch_seen;
    return buf_printf(b,
                      "ring_epoch:%llu\r\n"
                      "shards_epoch:%llu\r\n"
                      "ring_fingerprint:%s\r\n"
                      "ring_status:%s\r\n"
                      "ring_check_refusals:%llu\r\n",
                      ep.state == EPOCH_CURRENT ? ep.epoch : history_epoch(srv.ring_fp), shards,
                      srv.ring_fp, state_name(ep.state),
                      (unsigned long long)srv.stats.ring_check_refusals);
}

int epoch_info_rebalance(buf *b)
{
    const ring_record *r = &ep.fleet;
    return buf_printf(b,
                      "rebalance_fleet_epoch:%llu\r\n"
                      "rebalance_fleet_state:%s\r\n"
                      "rebalance_fleet_ring:%s\r\n"
                      "rebalance_fleet_previous_ring:%s\r\n"
                      "rebalance_fleet_owner:%s\r\n"
                      "rebalance_fleet_progress:%s\r\n"
                      "rebalance_fleet_mover:%d\r\n"
                      "rebalance_fleet_connections_closed:%llu\r\n"
                      "rebalance_fleet_refusal:%s\r\n",
                      r->epoch, r->state[0] ? r->state : "none", r->fp[0] ? r->fp : "none",
                      r->prev_fp[0] ? r->prev_fp : "none", r->lease[0] ? r->lease : "none",
                      r->progress[0] ? r->progress : "none", ep.leader,
                      (unsigned long long)ep.kills,
                      srv.ring_refusing ? srv.ring_refusal + 9 : "none");
}
