/* On-demand key moves: see migrate.h. A request's keys are grouped by
 * (old owner, new owner); each group is one MIGRATE sent on the old owner's
 * shared connection, and the request is routed again once all answered. */
#include "proxy/migrate.h"

#include <stdlib.h>
#include <string.h>

#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/rebalance.h"
#include "proxy/server.h"

/* Scanner for requests routed again from their saved bytes. */
static resp_request rescan;
static int rescan_ready;
/* The router's entry point for requests whose keys have moved. */
static migrate_reroute_fn reroute_fn;

/* The keys of one request that move, grouped by (source, target). */
typedef struct move_plan {
    size_t *group_of_key; /* nmove pairs (group, argv index), one per key that moves */
    shard **src;          /* per group: the old owner */
    shard **dst;          /* per group: the new owner */
    size_t *count;        /* per group: its number of keys */
    size_t ngroups;
    size_t nmove;
} move_plan;

/* A request's key moves while they are sent: each group's MIGRATE waits
 * for admission (rebalance_migrate_admit), so groups of one request may go
 * out at different times. */
typedef struct move_job {
    buf bytes;        /* every group's MIGRATE */
    size_t *part_off; /* group g's MIGRATE is bytes[part_off[g], part_off[g + 1]) */
    shard **src;      /* per group: the old owner */
    shard **dst;      /* per group: the new owner */
    char *sent;       /* per group: admitted and sent */
    size_t ngroups;
    size_t unsent;
} move_job;

static void job_free(move_job *job)
{
    if (!job)
        return;
    buf_free(&job->bytes);
    free(job->part_off);
    free(job->src);
    free(job->dst);
    free(job->sent);
    free(job);
}

/* Parses req->saved_request. 0, or -1 after answering the request with an error. */
static int parse_saved_request(request *req)
{
    if (!rescan_ready) {
        resp_request_init(&rescan, NULL);
        rescan_ready = 1;
    }
    if (resp_request_scan(&rescan, buf_head(&req->saved_request), buf_len(&req->saved_request)) !=
        RESP_OK) {
        request_error(req, "ERR internal error: saved request does not parse");
        return -1;
    }
    return 0;
}

static void drop_fragments(request *req)
{
    job_free(req->moves);
    req->moves = NULL;
    for (size_t i = 0; i < req->nfrags; i++)
        buf_free(&req->frags[i].stale_del);
    free(req->frags);
    req->frags = NULL;
    req->nfrags = 0;
}

/* The keys are on their new shards: route the saved request by the new ring. */
static void route_again(request *req)
{
    drop_fragments(req);
    req->migrated = 1;
    if (parse_saved_request(req) < 0)
        return;
    reroute_fn(req, rescan.argc, rescan.argv, buf_head(&req->saved_request),
               buf_len(&req->saved_request));
}

/* The DEL of stale source copies after a BUSYKEY: counts what it deleted,
 * so a copy the mover deleted first is not counted twice. */
static void stale_del_done(fragment *f, const char *reply, size_t len)
{
    if (len > 1 && reply[0] == ':')
        rebalance_count_on_demand(0, (size_t)strtoull(reply + 1, NULL, 10));
    free(f);
}

static void migrate_part_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    size_t g = (size_t)(f - req->frags);
    rebalance_migrate_release(req->moves->src[g], req->moves->dst[g]);
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
            backend_send(f->move_source, req->hint, del, buf_head(&f->stale_del),
                         buf_len(&f->stale_del));
        }
    } else if (!req->migrate_error) {
        size_t n = len > 2 && reply[0] == '-' ? len - 3 : len;
        req->migrate_error = strndup(reply[0] == '-' ? reply + 1 : reply, n > 300 ? 300 : n);
    }
    if (--req->pending > 0)
        return;
    job_free(req->moves);
    req->moves = NULL;
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

/* Appends the keys of group g (of the plan), as bulks. */
static void encode_group_keys(buf *out, const move_plan *p, const resp_arg *argv, size_t g)
{
    for (size_t k = 0; k < p->nmove; k++)
        if (p->group_of_key[2 * k] == g)
            buf_append_bulk(out, argv[p->group_of_key[2 * k + 1]].ptr,
                            argv[p->group_of_key[2 * k + 1]].len);
}

static void plan_free(move_plan *p)
{
    free(p->group_of_key);
    free(p->src);
    free(p->dst);
    free(p->count);
}

/* Groups the keys at key_pos[0..nkeys) whose owner changed by (old owner,
 * new owner). 0, or -1 when out of memory. */
static int plan_moves(move_plan *p, const resp_arg *argv, const size_t *key_pos, size_t nkeys)
{
    memset(p, 0, sizeof(*p));
    p->group_of_key = malloc((2 * nkeys + 2) * sizeof(size_t));
    p->src = malloc((nkeys + 1) * sizeof(shard *));
    p->dst = malloc((nkeys + 1) * sizeof(shard *));
    p->count = calloc(nkeys + 1, sizeof(size_t));
    if (!p->group_of_key || !p->src || !p->dst || !p->count) {
        plan_free(p);
        return -1;
    }
    for (size_t i = 0; i < nkeys; i++) {
        const resp_arg *key = &argv[key_pos[i]];
        uint32_t h = server_key_hash(key->ptr, key->len);
        shard *to = srv.shards[ring_lookup(srv.ring, h)];
        shard *from = rebalance_old_owner(h);
        if (!from || from == to)
            continue;
        size_t g = 0;
        while (g < p->ngroups && !(p->src[g] == from && p->dst[g] == to))
            g++;
        if (g == p->ngroups) {
            p->src[g] = from;
            p->dst[g] = to;
            p->ngroups++;
        }
        p->count[g]++;
        p->group_of_key[2 * p->nmove] = g;
        p->group_of_key[2 * p->nmove + 1] = key_pos[i];
        p->nmove++;
    }
    return 0;
}

/* One fragment per group, its MIGRATE encoded into the job's bytes at
 * part_off[g] and the DEL to send if the target answers BUSYKEY kept in
 * its stale_del. 0, or -1 when out of memory. */
static int encode_moves(request *req, const move_plan *p, const resp_arg *argv, move_job *job)
{
    int fail = 0;
    for (size_t g = 0; g < p->ngroups; g++) {
        fragment *f = &req->frags[g];
        f->req = req;
        f->done = migrate_part_done;
        f->nkeys = p->count[g];
        f->move_source = p->src[g];
        job->src[g] = p->src[g];
        job->dst[g] = p->dst[g];
        job->part_off[g] = buf_len(&job->bytes);
        rebalance_migrate_head(&job->bytes, p->dst[g], p->count[g]);
        encode_group_keys(&job->bytes, p, argv, g);
        /* The DEL to send if the target answers BUSYKEY. */
        buf_append_header(&f->stale_del, '*', (int64_t)(1 + p->count[g]));
        buf_append_bulk(&f->stale_del, "DEL", 3);
        encode_group_keys(&f->stale_del, p, argv, g);
        fail |= buf_failed(&f->stale_del);
    }
    job->part_off[p->ngroups] = buf_len(&job->bytes);
    return fail || buf_failed(&job->bytes) ? -1 : 0;
}

/* Sends the groups whose MIGRATE is admitted now. Returns 1 once every
 * group is sent, 0 while some wait. */
static int send_admitted(void *arg)
{
    request *req = arg;
    move_job *job = req->moves;
    uint64_t hint = req->hint;
    for (size_t g = 0; g < job->ngroups && job->unsent > 0; g++) {
        if (job->sent[g] || !rebalance_migrate_admit(job->src[g], job->dst[g]))
            continue;
        job->sent[g] = 1;
        int last = --job->unsent == 0;
        /* The reply may come at once (a shard that is down), and the last
         * one ends the request: nothing of it is touched after that. */
        backend_send(job->src[g], hint, &req->frags[g], job->bytes.data + job->part_off[g],
                     job->part_off[g + 1] - job->part_off[g]);
        if (last)
            return 1;
    }
    return job->unsent == 0;
}

/* Sends a MIGRATE per group of the plan, each once admitted; the request
 * is routed again once all have answered. */
static void send_moves(request *req, const move_plan *p, const resp_arg *argv)
{
    move_job *job = calloc(1, sizeof(*job));
    req->frags = calloc(p->ngroups, sizeof(fragment));
    if (req->frags)
        req->nfrags = p->ngroups; /* so drop_fragments frees their DEL buffers */
    req->moves = job;
    if (job) {
        job->ngroups = job->unsent = p->ngroups;
        job->part_off = malloc((p->ngroups + 1) * sizeof(size_t));
        job->src = malloc(p->ngroups * sizeof(shard *));
        job->dst = malloc(p->ngroups * sizeof(shard *));
        job->sent = calloc(p->ngroups, 1);
    }
    if (!req->frags || !job || !job->part_off || !job->src || !job->dst || !job->sent ||
        encode_moves(req, p, argv, job) < 0) {
        drop_fragments(req);
        request_error(req, "ERR out of memory");
        return;
    }
    req->pending = p->ngroups;
    if (!send_admitted(req))
        rebalance_migrate_wait(send_admitted, req);
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
    if (parse_saved_request(req) < 0)
        return;
    size_t argc = rescan.argc;
    const resp_arg *argv = rescan.argv;
    size_t nkeys = 0;
    char err[200];
    size_t *key_pos = malloc((argc + 1) * sizeof(size_t));
    if (!key_pos || command_keys(req->cmd, argc, argv, key_pos, &nkeys, err, sizeof(err)) < 0) {
        free(key_pos);
        request_error(req, "ERR internal error: keys of a saved request");
        return;
    }
    move_plan plan;
    int fail = plan_moves(&plan, argv, key_pos, nkeys);
    free(key_pos);
    if (fail) {
        request_error(req, "ERR out of memory");
        return;
    }
    if (plan.ngroups == 0)
        route_again(req); /* the migration ended meanwhile */
    else
        send_moves(req, &plan, argv);
    plan_free(&plan);
}

void migrate_keys_first(request *req, const char *bytes, size_t len, migrate_reroute_fn reroute)
{
    reroute_fn = reroute;
    if (buf_append(&req->saved_request, bytes, len) < 0) {
        request_error(req, "ERR out of memory");
        return;
    }
    if (rebalance_wait_barrier(req, start_migration))
        return;
    start_migration(req);
}
