/* Finding the replicas of shards named by address; see replica.h.
 *
 * One probe per shard at a time, named by shard id (a shard freed by a
 * reload is simply not found when the answer comes). ctlconn calls a
 * connection's pending callbacks with a NULL reply when the connection is
 * freed: a probe forgets its connection (p->ac = NULL) before freeing it,
 * and every callback checks ac == p->ac first, so a dropped connection's
 * callbacks do nothing. Probes are allocated one by one, so the pointers
 * the connections hold stay valid while the list grows. */
#include "proxy/replica.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "proxy/backend.h"
#include "proxy/ctlconn.h"
#include "proxy/log.h"
#include "proxy/server.h"

/* How often a master is asked for its replicas: a replica that appears is
 * used, and one that leaves (or is promoted) is dropped, within this. A
 * replica whose link breaks is refused at its next connect (ROLE), and
 * keeps answering until then, as under Sentinel. */
#define REPLICA_POLL_MS 1000

/* One shard's probe. */
typedef struct probe {
    uint64_t shard_id;
    ctlconn *ac;          /* asking ROLE now, or NULL */
    uint64_t deadline_us; /* of the question in flight */
    uint64_t next_us;     /* when to ask next */
    int not_master;       /* the last answer said it is no master (logged once) */
    int seen;             /* its shard is still in srv.shards (sweep) */
} probe;

static struct {
    probe **probes;
    size_t n;
    size_t cap;
} rp;

static shard *running_shard(uint64_t id, size_t *index)
{
    for (size_t i = 0; i < srv.nshards; i++)
        if (srv.shards[i]->id == id) {
            *index = i;
            return srv.shards[i];
        }
    return NULL;
}

static void probe_drop_conn(probe *p)
{
    ctlconn *ac = p->ac;
    if (!ac)
        return;
    p->ac = NULL;
    ctlconn_free(ac);
}

/* Reads go to host:port (NULL: to the master only). */
static void use_replica(shard *s, const char *host, int port)
{
    if (!host && !s->replica)
        return;
    if (host && s->replica && s->replica->port == port && strcmp(s->replica->host, host) == 0)
        return;
    char err[400];
    if (backend_shard_set_replica(s, host, (uint16_t)port, err, sizeof(err)) < 0) {
        log_warn("shard %s: cannot read from replica %s:%d: %s", s->label, host, port, err);
        return;
    }
    if (host)
        log_info("shard %s: reads may go to replica %s:%d (its master's ROLE)", s->label, host,
                 port);
    else
        log_info("shard %s: no replica to read from: reads go to the master", s->label);
}

/* ROLE from a master: ["master", offset, [[ip, port, offset], ...]]. */
static void apply_role(probe *p, const redisReply *reply)
{
    size_t i;
    shard *s = running_shard(p->shard_id, &i);
    if (!s)
        return;
    int master = reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
                 reply->element[0]->type == REDIS_REPLY_STRING &&
                 strcmp(reply->element[0]->str, "master") == 0 &&
                 reply->element[2]->type == REDIS_REPLY_ARRAY;
    if (!master) {
        if (!p->not_master)
            log_warn("shard %s: ROLE does not say master: no replica reads from it", s->label);
        p->not_master = 1;
        use_replica(s, NULL, 0);
        return;
    }
    p->not_master = 0;
    const redisReply *list = reply->element[2];
    for (size_t j = 0; j < list->elements; j++) {
        const redisReply *r = list->element[j];
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING)
            continue;
        int port = atoi(r->element[1]->str);
        if (port <= 0 || port > 65535)
            continue;
        use_replica(s, r->element[0]->str, port);
        return;
    }
    use_replica(s, NULL, 0);
}

static void on_role(ctlconn *ac, void *r, void *privdata)
{
    probe *p = privdata;
    if (ac != p->ac)
        return;
    server_clock_update();
    if (!r) {
        p->ac = NULL; /* ctlconn is freeing it */
        return;
    }
    apply_role(p, r);
    probe_drop_conn(p);
}

static void on_connect(const ctlconn *cac, int status)
{
    probe *p = cac->data;
    if (cac != p->ac)
        return;
    if (status != REDIS_OK) {
        p->ac = NULL; /* ctlconn frees it; the master's own connections report why */
        return;
    }
    if (srv.cfg->backend_password) {
        const char *argv[2] = {"AUTH", srv.cfg->backend_password};
        size_t argvlen[2] = {4, strlen(srv.cfg->backend_password)};
        (void)ctlconn_command_argv(p->ac, NULL, NULL, 2, argv, argvlen);
    }
    if (ctlconn_command(p->ac, on_role, p, "ROLE") != REDIS_OK)
        probe_drop_conn(p);
}

static void probe_start(probe *p, const shard *s)
{
    char ip[CONFIG_ADDR_MAX];
    backend_shard_ip(s, ip, sizeof(ip));
    /* With TLS the name, which the shard's certificate names. */
    const char *host = srv.cfg->tls_shards ? s->host : ip;
    p->next_us = srv.now_us + REPLICA_POLL_MS * 1000u;
    p->deadline_us = srv.now_us + (uint64_t)srv.cfg->connect_timeout_ms * 1000u;
    ctlconn *ac = ctlconn_connect(host, s->port, CTLCONN_SHARD);
    if (!ac)
        return;
    if (ac->err) {
        ctlconn_free(ac);
        return;
    }
    ac->data = p;
    ctlconn_set_connect_callback(ac, on_connect);
    p->ac = ac;
}

static probe *probe_of(const shard *s)
{
    for (size_t i = 0; i < rp.n; i++)
        if (rp.probes[i]->shard_id == s->id)
            return rp.probes[i];
    if (rp.n == rp.cap) {
        size_t cap = rp.cap ? rp.cap * 2 : 8;
        probe **grown = realloc(rp.probes, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        rp.probes = grown;
        rp.cap = cap;
    }
    probe *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->shard_id = s->id;
    rp.probes[rp.n++] = p;
    return p;
}

void replica_tick(void)
{
    for (size_t i = 0; i < rp.n; i++)
        rp.probes[i]->seen = 0;
    for (size_t i = 0; i < srv.nshards; i++) {
        shard *s = srv.shards[i];
        if (s->sentinel_master)
            continue; /* the Sentinels name its replicas */
        if (config_shard_read_from(srv.cfg, i) == CONFIG_READ_MASTER) {
            use_replica(s, NULL, 0); /* a reload turned replica reads off */
            continue;
        }
        probe *p = probe_of(s);
        if (!p) {
            log_error("shard %s: out of memory probing its replicas", s->label);
            continue;
        }
        p->seen = 1;
        if (p->ac && srv.now_us >= p->deadline_us) {
            log_info("shard %s: no answer to ROLE in %d ms", s->label, srv.cfg->connect_timeout_ms);
            probe_drop_conn(p);
        }
        if (!p->ac && s->addrlen && srv.now_us >= p->next_us)
            probe_start(p, s);
    }
    for (size_t i = 0; i < rp.n;) {
        probe *p = rp.probes[i];
        if (p->seen) {
            i++;
            continue;
        }
        probe_drop_conn(p);
        free(p);
        rp.probes[i] = rp.probes[--rp.n];
    }
}

void replica_shutdown(void)
{
    for (size_t i = 0; i < rp.n; i++) {
        probe_drop_conn(rp.probes[i]);
        free(rp.probes[i]);
    }
    free(rp.probes);
    memset(&rp, 0, sizeof(rp));
}
