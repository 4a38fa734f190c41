/* Redis Sentinel discovery and failover following; see sentinel.h.
 *
 * One poll (a query) per sentinel shard at a time: ask a Sentinel for the
 * master's address (SENTINEL get-master-addr-by-name), then, when that is
 * not the shard's address already, ask the address itself for ROLE; only
 * "master" re-addresses the shard. A Sentinel that cannot be reached, does
 * not know the master, or names an address that is not a master, is passed
 * over for the next one. A +switch-master message starts a poll at once
 * with the address it names. Reading needs no majority: the ROLE check is
 * what keeps a stale or lying Sentinel from sending writes to a replica.
 *
 * ctlconn (as hiredis) calls a connection's pending callbacks with a NULL
 * reply when the connection goes away. A query forgets its connection (q->ac = NULL)
 * before it frees it, and every callback checks ac == q->ac first, so a
 * dropped connection's callbacks do nothing; each connection carries at
 * most one callback of the query's (AUTH has none), so none can run after
 * the query is freed. */
#include "proxy/sentinel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "proxy/ack.h"
#include "proxy/backend.h"
#include "proxy/ctlconn.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/server.h"
#include "proxy/store.h"

/* A lost or refused subscription is tried again, on the next Sentinel,
 * after this: soon, since +switch-master is how a failover is seen within
 * a second, but not in a busy loop while every Sentinel is down. */
#define SENTINEL_RESUBSCRIBE_MS 200

/* What the last poll of a master found. */
typedef enum watch_state {
    WATCH_PENDING,     /* no poll has ended yet */
    WATCH_OK,          /* a Sentinel named the master and ROLE confirmed it */
    WATCH_UNVERIFIED,  /* Sentinels answered, but no address they named said ROLE master */
    WATCH_UNREACHABLE, /* no Sentinel answered: the last known address is kept */
} watch_state;

typedef struct query query;

/* A sentinel shard being followed; kept by shard name across reloads. */
typedef struct watch {
    char *shard;        /* the shard's name */
    char *master;       /* the master's name at the Sentinels */
    watch_state state;  /* of the last poll */
    uint64_t failovers; /* address changes applied after the first address */
    time_t last_switch; /* when the last one was applied, 0 = never */
    uint64_t next_poll_us;
    int again;    /* a poll was asked for while one ran: poll when it ends */
    query *query; /* the poll in flight, or NULL */
} watch;

typedef enum query_step {
    QUERY_ASK,    /* asking a Sentinel for the address */
    QUERY_VERIFY, /* asking the address it named for ROLE */
} query_step;

/* One poll of one watch. */
struct query {
    watch *w;
    size_t first;     /* the Sentinel asked first (round robin over polls) */
    size_t tried;     /* Sentinels asked so far */
    int from_message; /* verifying the address of a +switch-master message */
    query_step step;
    ctlconn *ac;          /* this step's connection, NULL between steps */
    uint64_t deadline_us; /* this step's */
    int answered;         /* some Sentinel named an address */
    char host[256];       /* the address being verified */
    int port;
    int replicas_asked;     /* SENTINEL REPLICAS was asked (read_from wants a replica) */
    char replica_host[256]; /* the first healthy replica it named, "" = none */
    int replica_port;
};

typedef struct sentinel_peer {
    char *host;
    uint16_t port;
    char failure[256]; /* why the last connection to it failed, "" = it answered since */
} sentinel_peer;

static struct {
    sentinel_peer *peers; /* a copy of srv.cfg->sentinels */
    size_t npeers;
    int tls; /* the tls_sentinels the connections to peers are made with */
    watch **watches;
    size_t nwatches;
    size_t next_first;       /* round robin of the first Sentinel asked */
    uint64_t last_answer_us; /* when a Sentinel last answered anything, 0 = never */
    ctlconn *sub;            /* subscribed (or subscribing) to +switch-master, or NULL */
    int sub_confirmed;       /* the SUBSCRIBE was answered */
    size_t sub_peer;         /* the Sentinel sub talks to */
    uint64_t sub_deadline_us;
    uint64_t sub_retry_us;
} sn;

static void query_ask(query *q);
static void query_verify(query *q);

static uint64_t step_timeout_us(void)
{
    return (uint64_t)srv.cfg->connect_timeout_ms * 1000u;
}

static shard *watch_shard(const watch *w)
{
    for (size_t i = 0; i < srv.nshards; i++) {
        shard *s = srv.shards[i];
        if (s->sentinel_master && strcmp(s->name, w->shard) == 0 &&
            strcmp(s->sentinel_master, w->master) == 0)
            return s;
    }
    return NULL;
}

static watch *find_watch_by_master(const char *master)
{
    for (size_t i = 0; i < sn.nwatches; i++)
        if (strcmp(sn.watches[i]->master, master) == 0)
            return sn.watches[i];
    return NULL;
}

/* A control connection on the event loop (TLS for a shard when tls_shards
 * is on, for a Sentinel when tls_sentinels is), or NULL with a reason. */
static ctlconn *connect_to(const char *host, int port, ctlconn_peer peer, void *data,
                           ctlconn_status_fn *on_connect, char *why, size_t whylen)
{
    ctlconn *ac = ctlconn_connect(host, port, peer);
    if (!ac) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (ac->err) {
        snprintf(why, whylen, "%s", ac->errstr);
        ctlconn_free(ac);
        return NULL;
    }
    ac->data = data;
    ctlconn_set_connect_callback(ac, on_connect);
    return ac;
}

/* Sends AUTH [user] password (without a callback: a wrong password shows
 * as NOAUTH on the command after it) when password is set; user NULL is
 * Redis's default user. */
static void send_auth(ctlconn *ac, const char *user, const char *password)
{
    if (!password)
        return;
    const char *argv[3] = {"AUTH", user ? user : password, password};
    size_t argvlen[3] = {4, strlen(argv[1]), strlen(password)};
    (void)ctlconn_command_argv(ac, NULL, NULL, user ? 3 : 2, argv, argvlen);
}

/* Forgets and frees q's connection; its callbacks see ac != q->ac and do
 * nothing. Inside one of its callbacks ctlconn frees it once that returns. */
static void query_drop_conn(query *q)
{
    ctlconn *ac = q->ac;
    if (!ac)
        return;
    q->ac = NULL;
    ctlconn_free(ac);
}

static sentinel_peer *query_peer(const query *q)
{
    return &sn.peers[(q->first + q->tried) % sn.npeers];
}

/* A connection to p failed (after_connect: it was closed after the TCP
 * connect, before an answer): logged at warn when p answered last (a
 * certificate refused, a Sentinel gone), then at debug until it answers
 * again, since every poll and resubscription may try p again (and the
 * words of a failure may change from one try to the next). */
static void peer_failed(sentinel_peer *p, const char *why, int after_connect)
{
    int repeated = p->failure[0] != '\0';
    /* What a TLS-only Sentinel does to a plain-text command. */
    int maybe_tls = !sn.tls && after_connect;
    log_at(repeated ? CONFIG_LOG_DEBUG : CONFIG_LOG_WARN, "Sentinel %s:%u: %s%s%s", p->host,
           (unsigned)p->port, why,
           maybe_tls ? " (tls_sentinels is off: is it a TLS-only Sentinel?)" : "",
           repeated || sn.npeers < 2 ? "" : "; asking the other Sentinels");
    snprintf(p->failure, sizeof(p->failure), "%s", why);
}

/* p answered: the end of any failure logged. */
static void peer_answered(sentinel_peer *p)
{
    if (!p->failure[0])
        return;
    log_info("Sentinel %s:%u: answers again", p->host, (unsigned)p->port);
    p->failure[0] = '\0';
}

/* The read_from in force for s: its shard line's, else [proxy]'s. */
static int shard_read_from(const shard *s)
{
    for (size_t i = 0; i < srv.nshards; i++)
        if (srv.shards[i] == s)
            return config_shard_read_from(srv.cfg, i);
    return CONFIG_READ_MASTER;
}

/* After a poll that asked for replicas: reads go to the one it found. */
static void apply_replica(const query *q)
{
    shard *s = watch_shard(q->w);
    if (!s || !q->replicas_asked)
        return;
    const char *host = q->replica_host[0] ? q->replica_host : NULL;
    /* mid-failover a Sentinel may still list the new master as a replica */
    if (host && s->port == q->replica_port && strcmp(s->host, host) == 0)
        host = NULL;
    if (!host && !s->replica)
        return;
    char err[400];
    if (backend_shard_set_replica(s, host, (uint16_t)q->replica_port, err, sizeof(err)) < 0) {
        log_warn("shard %s: cannot read from replica %s:%d: %s", s->name, q->replica_host,
                 q->replica_port, err);
        return;
    }
    if (host)
        log_info("shard %s: reads may go to replica %s:%d", s->name, host, q->replica_port);
}

static void query_finish(query *q, watch_state st)
{
    watch *w = q->w;
    query_drop_conn(q);
    if (st == WATCH_OK)
        apply_replica(q);
    if (st != WATCH_OK && st != w->state)
        log_warn("shard %s: %s; keeping its last known address", w->shard,
                 st == WATCH_UNREACHABLE
                     ? "no Sentinel answered for its master"
                     : "no address the Sentinels named for its master says ROLE master");
    w->state = st;
    w->query = NULL;
    w->next_poll_us = w->again ? 0 : srv.now_us + (uint64_t)srv.cfg->sentinel_poll_ms * 1000u;
    w->again = 0;
    free(q);
}

/* The current step failed: the next Sentinel, or the end of the poll. */
static void query_next(query *q)
{
    if (q->from_message)
        q->from_message = 0; /* now ask the Sentinels, from the first */
    else
        q->tried++;
    if (q->tried < sn.npeers)
        query_ask(q);
    else
        query_finish(q, q->answered ? WATCH_UNVERIFIED : WATCH_UNREACHABLE);
}

/* ROLE said master: point the shard at it. */
static void query_apply(query *q)
{
    watch *w = q->w;
    shard *s = watch_shard(w);
    if (s && (s->port != q->port || strcmp(s->host, q->host) != 0)) {
        char old[CONFIG_ADDR_MAX], now[CONFIG_ADDR_MAX], err[2 * CONFIG_ADDR_MAX + 32];
        config_format_addr(s->host, s->port, old, sizeof(old));
        config_format_addr(q->host, (uint16_t)q->port, now, sizeof(now));
        int first = s->port == 0;
        if (backend_shard_readdress(s, q->host, (uint16_t)q->port, err, sizeof(err)) < 0) {
            log_warn("shard %s: cannot use master %s: %s", w->shard, now, err);
            query_finish(q, WATCH_UNVERIFIED);
            return;
        }
        rebalance_source_readdressed(s);
        store_shard_moved(s->name, s->host, s->port);
        if (first) {
            log_notice("shard %s: master %s is at %s", w->shard, w->master, now);
        } else {
            w->failovers++;
            w->last_switch = time(NULL);
            log_notice("shard %s: master %s moved from %s to %s (failover); keys stay", w->shard,
                       w->master, old, now);
        }
    }
    query_finish(q, WATCH_OK);
}

static void on_role_reply(ctlconn *ac, void *r, void *privdata)
{
    query *q = privdata;
    redisReply *reply = r;
    if (ac != q->ac)
        return;
    if (!reply) {
        q->ac = NULL; /* ctlconn is freeing it */
        log_info("shard %s: master %s named at %s:%d: connection lost", q->w->shard, q->w->master,
                 q->host, q->port);
        query_next(q);
        return;
    }
    int master = reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
                 reply->element[0]->type == REDIS_REPLY_STRING &&
                 strcmp(reply->element[0]->str, "master") == 0;
    char role[64];
    snprintf(role, sizeof(role), "%s",
             reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
                     reply->element[0]->type == REDIS_REPLY_STRING
                 ? reply->element[0]->str
                 : (reply->type == REDIS_REPLY_ERROR ? reply->str : "?"));
    query_drop_conn(q);
    if (master) {
        query_apply(q);
        return;
    }
    if (q->from_message)
        log_warn("shard %s: +switch-master names %s:%d for %s, but its ROLE is %s: not used",
                 q->w->shard, q->host, q->port, q->w->master, role);
    else
        log_warn("shard %s: Sentinel %s:%u names %s:%d master of %s, but its ROLE is %s: not used",
                 q->w->shard, query_peer(q)->host, (unsigned)query_peer(q)->port, q->host, q->port,
                 q->w->master, role);
    query_next(q);
}

static void on_verify_connect(const ctlconn *cac, int status)
{
    query *q = cac->data;
    if (cac != q->ac)
        return;
    if (status != REDIS_OK) {
        q->ac = NULL; /* ctlconn frees it */
        log_debug("shard %s: cannot reach %s:%d, named master of %s: %s", q->w->shard, q->host,
                  q->port, q->w->master, cac->errstr);
        query_next(q);
        return;
    }
    send_auth(q->ac, srv.cfg->backend_user, srv.cfg->backend_password);
    if (ctlconn_command(q->ac, on_role_reply, q, "ROLE") != REDIS_OK) {
        query_drop_conn(q);
        query_next(q);
    }
}

/* Checks q->host:port with ROLE unless the shard is there already. */
static void query_verify(query *q)
{
    shard *s = watch_shard(q->w);
    if (s && s->port == q->port && strcmp(s->host, q->host) == 0) {
        query_finish(q, WATCH_OK);
        return;
    }
    char why[256];
    q->step = QUERY_VERIFY;
    q->deadline_us = srv.now_us + step_timeout_us();
    q->ac = connect_to(q->host, q->port, CTLCONN_SHARD, q, on_verify_connect, why, sizeof(why));
    if (!q->ac) {
        log_debug("shard %s: cannot reach %s:%d: %s", q->w->shard, q->host, q->port, why);
        query_next(q);
    }
}

/* The value of name in a flat [name, value, ...] array, or "". */
static const char *field_of(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[i]->str, name) == 0)
            return fields->element[i + 1]->str;
    return "";
}

/* SENTINEL REPLICAS: keeps the first replica in good health (flags exactly
 * "slave": not down, not disconnected; its link to the master up). The
 * command after it on this connection carries the query on. */
static void on_replicas_reply(ctlconn *ac, void *r, void *privdata)
{
    query *q = privdata;
    redisReply *reply = r;
    if (ac != q->ac || !reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    q->replica_host[0] = '\0';
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *fields = reply->element[i];
        if (fields->type != REDIS_REPLY_ARRAY || strcmp(field_of(fields, "flags"), "slave") != 0 ||
            strcmp(field_of(fields, "master-link-status"), "ok") != 0)
            continue;
        int port = atoi(field_of(fields, "port"));
        if (port <= 0 || port > 65535)
            continue;
        snprintf(q->replica_host, sizeof(q->replica_host), "%s", field_of(fields, "ip"));
        q->replica_port = port;
        return;
    }
}

static void on_ask_reply(ctlconn *ac, void *r, void *privdata)
{
    query *q = privdata;
    redisReply *reply = r;
    if (ac != q->ac)
        return;
    sentinel_peer *p = query_peer(q);
    if (!reply) {
        q->ac = NULL; /* ctlconn is freeing it */
        peer_failed(p, ac->errstr[0] ? ac->errstr : "connection lost", 1);
        query_next(q);
        return;
    }
    int named = reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
                reply->element[0]->type == REDIS_REPLY_STRING &&
                reply->element[1]->type == REDIS_REPLY_STRING;
    if (named) {
        snprintf(q->host, sizeof(q->host), "%s", reply->element[0]->str);
        q->port = atoi(reply->element[1]->str);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("Sentinel %s:%u: %s", p->host, (unsigned)p->port, reply->str);
    } else {
        log_warn("Sentinel %s:%u does not monitor a master named %s", p->host, (unsigned)p->port,
                 q->w->master);
    }
    if (reply->type != REDIS_REPLY_ERROR)
        sn.last_answer_us = srv.now_us;
    peer_answered(p);
    query_drop_conn(q);
    if (named && q->port > 0 && q->port <= 65535) {
        q->answered = 1;
        query_verify(q);
    } else {
        query_next(q);
    }
}

static void on_ask_connect(const ctlconn *cac, int status)
{
    query *q = cac->data;
    if (cac != q->ac)
        return;
    if (status != REDIS_OK) {
        q->ac = NULL; /* ctlconn frees it */
        peer_failed(query_peer(q), cac->errstr, 0);
        query_next(q);
        return;
    }
    send_auth(q->ac, NULL, srv.cfg->sentinel_password);
    q->replica_host[0] = '\0';
    /* Before the address: its callback may end the query, and nothing may
     * be left to call back then. */
    shard *s = watch_shard(q->w);
    q->replicas_asked = s && shard_read_from(s) != CONFIG_READ_MASTER &&
                        ctlconn_command(q->ac, on_replicas_reply, q, "SENTINEL REPLICAS %s",
                                        q->w->master) == REDIS_OK;
    if (ctlconn_command(q->ac, on_ask_reply, q, "SENTINEL get-master-addr-by-name %s",
                        q->w->master) != REDIS_OK) {
        query_drop_conn(q);
        query_next(q);
    }
}

/* Asks the Sentinel whose turn it is. */
static void query_ask(query *q)
{
    sentinel_peer *p = query_peer(q);
    char why[256];
    q->step = QUERY_ASK;
    q->deadline_us = srv.now_us + step_timeout_us();
    q->ac = connect_to(p->host, p->port, CTLCONN_SENTINEL, q, on_ask_connect, why, sizeof(why));
    if (!q->ac) {
        peer_failed(p, why, 0);
        query_next(q);
    }
}

/* Starts a poll of w: with host, by checking that address (from a
 * +switch-master message) first; else by asking the Sentinels. */
static void watch_poll(watch *w, const char *host, int port)
{
    if (w->query) {
        w->again = 1;
        return;
    }
    if (sn.npeers == 0)
        return;
    query *q = calloc(1, sizeof(*q));
    if (!q) {
        log_warn("shard %s: out of memory polling the Sentinels", w->shard);
        w->next_poll_us = srv.now_us + (uint64_t)srv.cfg->sentinel_poll_ms * 1000u;
        return;
    }
    q->w = w;
    q->first = sn.next_first++ % sn.npeers;
    w->query = q;
    if (host) {
        q->from_message = 1;
        snprintf(q->host, sizeof(q->host), "%s", host);
        q->port = port;
        query_verify(q);
    } else {
        query_ask(q);
    }
}

/* Ends w's poll at once, without effect (reload, exit). */
static void watch_cancel(watch *w)
{
    query *q = w->query;
    if (!q)
        return;
    query_drop_conn(q);
    w->query = NULL;
    free(q);
}

static void watch_free(watch *w)
{
    watch_cancel(w);
    free(w->shard);
    free(w->master);
    free(w);
}

/* ---- the +switch-master subscription ---- */

static void sub_drop(void)
{
    ctlconn *ac = sn.sub;
    if (!ac)
        return;
    sn.sub = NULL;
    ctlconn_free(ac);
}

/* The subscription is gone: the next Sentinel, a little later. Logged at
 * info when a working subscription ends, else at debug: with every
 * Sentinel down this repeats every SENTINEL_RESUBSCRIBE_MS. */
static void sub_lost(const char *why)
{
    const sentinel_peer *p = &sn.peers[sn.sub_peer % sn.npeers];
    log_at(sn.sub_confirmed ? CONFIG_LOG_INFO : CONFIG_LOG_DEBUG,
           "Sentinel %s:%u: +switch-master subscription: %s", p->host, (unsigned)p->port, why);
    sn.sub_confirmed = 0;
    sn.sub_peer = (sn.sub_peer + 1) % sn.npeers;
    sn.sub_retry_us = srv.now_us + SENTINEL_RESUBSCRIBE_MS * 1000u;
}

static void on_sub_message(ctlconn *ac, void *r, void *privdata)
{
    (void)privdata;
    redisReply *reply = r;
    if (ac != sn.sub || !reply)
        return;
    server_clock_update();
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    sn.last_answer_us = srv.now_us;
    const char *kind = reply->element[0]->str;
    if (strcmp(kind, "subscribe") == 0) {
        sn.sub_confirmed = 1;
        sentinel_peer *p = &sn.peers[sn.sub_peer];
        peer_answered(p);
        log_info("Sentinel %s:%u: subscribed to +switch-master", p->host, (unsigned)p->port);
        return;
    }
    if (strcmp(kind, "message") != 0 || reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    /* "<master> <old-ip> <old-port> <new-ip> <new-port>" */
    char master[128], old_ip[256], new_ip[256];
    int old_port, new_port;
    if (sscanf(reply->element[2]->str, "%127s %255s %d %255s %d", master, old_ip, &old_port, new_ip,
               &new_port) != 5)
        return;
    watch *w = find_watch_by_master(master);
    if (!w)
        return;
    log_notice("shard %s: +switch-master: %s moved from %s:%d to %s:%d", w->shard, master, old_ip,
               old_port, new_ip, new_port);
    watch_poll(w, new_ip, new_port);
}

static void on_sub_disconnect(const ctlconn *ac, int status)
{
    (void)status;
    if (ac != sn.sub)
        return;
    sn.sub = NULL; /* ctlconn frees it */
    server_clock_update();
    const char *why = ac->errstr[0] ? ac->errstr : "connection closed";
    if (!sn.sub_confirmed) /* closed before answering SUBSCRIBE: the Sentinel's doing */
        peer_failed(&sn.peers[sn.sub_peer % sn.npeers], why, 1);
    sub_lost(why);
}

static void on_sub_connect(const ctlconn *cac, int status)
{
    if (cac != sn.sub)
        return;
    server_clock_update();
    sentinel_peer *p = &sn.peers[sn.sub_peer % sn.npeers];
    if (status != REDIS_OK) {
        sn.sub = NULL; /* ctlconn frees it */
        peer_failed(p, cac->errstr, 0);
        sub_lost(cac->errstr);
        return;
    }
    send_auth(sn.sub, NULL, srv.cfg->sentinel_password);
    if (ctlconn_command(sn.sub, on_sub_message, NULL, "SUBSCRIBE +switch-master") != REDIS_OK) {
        sub_drop();
        sub_lost("cannot send SUBSCRIBE");
    }
}

static void sub_start(void)
{
    sentinel_peer *p = &sn.peers[sn.sub_peer % sn.npeers];
    char why[256];
    sn.sub_confirmed = 0;
    sn.sub_deadline_us = srv.now_us + step_timeout_us();
    sn.sub = connect_to(p->host, p->port, CTLCONN_SENTINEL, NULL, on_sub_connect, why, sizeof(why));
    if (!sn.sub) {
        peer_failed(p, why, 0);
        sub_lost(why);
        return;
    }
    ctlconn_set_disconnect_callback(sn.sub, on_sub_disconnect);
}

/* ---- the module's API ---- */

static int same_peers(const config_addr_list *list)
{
    if (list->n != sn.npeers)
        return 0;
    for (size_t i = 0; i < list->n; i++)
        if (list->addrs[i].port != sn.peers[i].port ||
            strcmp(list->addrs[i].host, sn.peers[i].host) != 0)
            return 0;
    return 1;
}

static void free_peers(void)
{
    for (size_t i = 0; i < sn.npeers; i++)
        free(sn.peers[i].host);
    free(sn.peers);
    sn.peers = NULL;
    sn.npeers = 0;
}

/* Copies the sentinels list of srv.cfg. On failure the list is empty (and
 * polls wait for the next reload). */
static void copy_peers(void)
{
    const config_addr_list *list = &srv.cfg->sentinels;
    free_peers();
    if (list->n == 0)
        return;
    sn.peers = calloc(list->n, sizeof(*sn.peers));
    if (!sn.peers) {
        log_error("out of memory copying the sentinels list");
        return;
    }
    for (size_t i = 0; i < list->n; i++) {
        sn.peers[i].host = strdup(list->addrs[i].host);
        sn.peers[i].port = list->addrs[i].port;
        if (!sn.peers[i].host) {
            log_error("out of memory copying the sentinels list");
            sn.npeers = i;
            free_peers();
            return;
        }
    }
    sn.npeers = list->n;
}

void sentinel_sync(void)
{
    /* Another list, or TLS turned on or off: every connection to the
     * Sentinels is made again (the polls in flight start over below, the
     * subscription on the next tick), so none is left with the old
     * setting. */
    int tls_changed = srv.cfg->tls_sentinels != sn.tls;
    if (!same_peers(&srv.cfg->sentinels) || tls_changed) {
        if (tls_changed && sn.npeers > 0)
            log_notice("Sentinels: connections now %s; asking them and subscribing again",
                       srv.cfg->tls_sentinels ? "use TLS" : "in plain text");
        for (size_t i = 0; i < sn.nwatches; i++)
            watch_cancel(sn.watches[i]);
        sub_drop();
        sn.sub_peer = 0;
        sn.sub_retry_us = 0;
        sn.tls = srv.cfg->tls_sentinels;
        copy_peers();
    }
    size_t n = 0;
    for (size_t i = 0; i < srv.nshards; i++)
        n += srv.shards[i]->sentinel_master != NULL;
    watch **next = calloc(n ? n : 1, sizeof(*next));
    if (!next) {
        log_error("out of memory following the Sentinels; keeping the previous list");
        return;
    }
    n = 0;
    for (size_t i = 0; i < srv.nshards; i++) {
        const shard *s = srv.shards[i];
        if (!s->sentinel_master)
            continue;
        watch *w = NULL;
        for (size_t j = 0; j < sn.nwatches && !w; j++) {
            watch *old = sn.watches[j];
            if (old && strcmp(old->shard, s->name) == 0 &&
                strcmp(old->master, s->sentinel_master) == 0) {
                w = old;
                sn.watches[j] = NULL;
            }
        }
        if (!w) {
            w = calloc(1, sizeof(*w));
            if (w && (!(w->shard = strdup(s->name)) || !(w->master = strdup(s->sentinel_master)))) {
                free(w->shard);
                free(w);
                w = NULL;
            }
            if (!w) {
                log_error("shard %s: out of memory following its master", s->name);
                continue;
            }
        }
        next[n++] = w;
    }
    for (size_t j = 0; j < sn.nwatches; j++)
        if (sn.watches[j])
            watch_free(sn.watches[j]);
    free(sn.watches);
    sn.watches = next;
    sn.nwatches = n;
    /* Start and reload ask every master's address now. */
    for (size_t i = 0; i < sn.nwatches; i++)
        watch_poll(sn.watches[i], NULL, 0);
}

void sentinel_tick(void)
{
    uint64_t now = srv.now_us;
    for (size_t i = 0; i < sn.nwatches; i++) {
        watch *w = sn.watches[i];
        shard *s = watch_shard(w);
        if (s && s->role_refused) {
            /* a connection found the master demoted: ask now */
            s->role_refused = 0;
            watch_poll(w, NULL, 0);
        }
        query *q = w->query;
        if (q && now >= q->deadline_us) {
            if (q->step == QUERY_ASK)
                log_info("Sentinel %s:%u: no answer in %d ms", query_peer(q)->host,
                         (unsigned)query_peer(q)->port, srv.cfg->connect_timeout_ms);
            else
                log_info("shard %s: %s:%d did not answer ROLE in %d ms", w->shard, q->host, q->port,
                         srv.cfg->connect_timeout_ms);
            query_drop_conn(q);
            query_next(q);
        } else if (!q && now >= w->next_poll_us) {
            watch_poll(w, NULL, 0);
        }
    }
    if (sn.nwatches == 0 || sn.npeers == 0)
        return;
    if (sn.sub && !sn.sub_confirmed && now >= sn.sub_deadline_us) {
        sub_drop();
        sub_lost("no answer to SUBSCRIBE");
    }
    if (!sn.sub && now >= sn.sub_retry_us)
        sub_start();
}

static const char *watch_state_name(watch_state st)
{
    switch (st) {
    case WATCH_PENDING:
        return "pending";
    case WATCH_OK:
        return "ok";
    case WATCH_UNVERIFIED:
        return "unverified";
    case WATCH_UNREACHABLE:
        return "unreachable";
    }
    return "?";
}

shard *sentinel_read_shard(uint32_t i, const char *bytes, size_t len)
{
    shard *s = srv.shards[i];
    shard *replica = s->replica;
    if (!replica)
        return s;
    int read_from = config_shard_read_from(srv.cfg, i);
    if (read_from == CONFIG_READ_MASTER || ack_is_write(bytes, len))
        return s;
    if (read_from == CONFIG_READ_PREFER_REPLICA && strcmp(backend_shard_state(replica), "up") != 0)
        return s;
    return replica;
}

int sentinel_shard_info(const shard *s, buf *b)
{
    char addr[CONFIG_ADDR_MAX];
    if (s->port)
        config_format_addr(s->host, s->port, addr, sizeof(addr));
    else
        snprintf(addr, sizeof(addr), "none");
    char replica[CONFIG_ADDR_MAX];
    if (s->replica)
        config_format_addr(s->replica->host, s->replica->port, replica, sizeof(replica));
    else
        snprintf(replica, sizeof(replica), "none");
    if (!s->sentinel_master) /* replica.c finds its replica; dns.c may change its address */
        return buf_printf(b, ",source=%s,master=%s,failovers=%llu,last_switch=%lld,read_replica=%s",
                          addr, addr, (unsigned long long)s->address_changes,
                          (long long)s->address_changed_at, replica);
    const watch *w = NULL;
    for (size_t i = 0; i < sn.nwatches && !w; i++)
        if (strcmp(sn.watches[i]->shard, s->name) == 0)
            w = sn.watches[i];
    return buf_printf(b,
                      ",source=sentinel:%s,master=%s,failovers=%llu,last_switch=%lld,sentinel=%s,"
                      "read_replica=%s",
                      s->sentinel_master, addr, w ? (unsigned long long)w->failovers : 0ULL,
                      w ? (long long)w->last_switch : 0LL,
                      watch_state_name(w ? w->state : WATCH_PENDING), replica);
}

int sentinel_info(buf *b)
{
    long long ago = sn.last_answer_us ? (long long)((srv.now_us - sn.last_answer_us) / 1000) : -1;
    return buf_printf(b,
                      "sentinels:%zu\r\nsentinel_subscribed:%d\r\nsentinel_last_answer_ms:%lld\r\n",
                      sn.npeers, sn.sub && sn.sub_confirmed, ago);
}

void sentinel_shutdown(void)
{
    for (size_t i = 0; i < sn.nwatches; i++)
        watch_free(sn.watches[i]);
    free(sn.watches);
    sn.watches = NULL;
    sn.nwatches = 0;
    sub_drop();
    free_peers();
}
