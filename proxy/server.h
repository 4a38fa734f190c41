/* The one process-wide struct: event base, the current config and ring, the
 * shards, counters. Config is reached through srv.cfg, which a reload swaps. */
#ifndef PROXY_SERVER_H
#define PROXY_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>

#include "config/config.h"
#include "ring/hash.h"
#include "ring/ring.h"

struct event_base;
struct shard;
struct access_set;
struct session;

#define RINGPROXY_VERSION "0.1.0"
/* The Redis version reported to clients that check it (HELLO, INFO): the
 * command set ringproxy understands. */
#define RINGPROXY_REDIS_COMPAT "7.0.0"

/* Kinds of error counted apart in INFO errorstats, as Redis's
 * ERROR_STATS_NUMBER: more kinds (a misbehaving client can invent them)
 * are counted in errorstats_dropped only. */
#define SERVER_ERRORSTATS_MAX 128
/* Longest error kind kept (the first word of the error reply). */
#define SERVER_ERROR_KIND_MAX 32

/* One kind of error reply (ERR, WRONGTYPE, NOAUTH ...) and how many were
 * given: INFO errorstats. */
typedef struct server_errorstat {
    char kind[SERVER_ERROR_KIND_MAX + 1];
    uint64_t count;
} server_errorstat;

/* Counters shown by INFO stats. */
typedef struct server_stats {
    uint64_t connections_received;
    uint64_t connections_rejected;
    uint64_t commands;
    uint64_t net_input_bytes;
    uint64_t net_output_bytes;
    uint64_t errors_protocol;    /* malformed requests (client closed) */
    uint64_t errors_unknown;     /* unknown commands */
    uint64_t errors_unsupported; /* known but not supported by the proxy */
    uint64_t errors_arity;       /* wrong number of arguments */
    uint64_t errors_crossslot;   /* keys on several shards where one is needed */
    uint64_t errors_noauth;      /* commands before AUTH when requirepass is set */
    uint64_t auth_failures;      /* AUTH with a wrong password */
    uint64_t errors_shard;       /* shard unavailable or busy */
    uint64_t errors_timeout;     /* shard timeouts */
    uint64_t clients_dropped;    /* closed for a limit (output, idle, query buffer) */
    uint64_t error_replies;      /* every error reply (total_error_replies) */
    server_errorstat errorstats[SERVER_ERRORSTATS_MAX]; /* by kind, in order first seen */
    size_t nerrorstats;
    uint64_t errorstats_dropped;  /* error replies of kinds beyond SERVER_ERRORSTATS_MAX */
    uint64_t reloads;             /* reloads applied (PROXY RELOAD, SIGHUP, file change) */
    uint64_t reload_failures;     /* reloads refused, the running config kept */
    uint64_t ring_check_refusals; /* shard connections whose ring check found another ring */
    /* instantaneous ops/sec: sampled by the maintenance timer */
    uint64_t ops_sample_commands;
    uint64_t ops_sample_us;
    uint64_t ops_per_sec;
} server_stats;

typedef struct server {
    struct event_base *base;
    config *cfg;           /* current config; swapped whole by a reload */
    ring *ring;            /* ring over shards[], same order */
    struct shard **shards; /* runtime shards, in cfg->shards order */
    size_t nshards;
    /* cfg's ACL users, compiled (access.c); swapped with cfg by a reload. */
    struct access_set *access;
    time_t start_time;
    uint64_t now_us;          /* loop clock, refreshed by server_clock_update() */
    uint64_t loop_iteration;  /* bumped before each event loop iteration */
    uint64_t clock_iteration; /* the iteration now_us was read in */
    int listen_port;          /* actual port (for INFO) */
    int tls_listen_port;      /* actual TLS port, 0 = none */
    int nclients;             /* connected clients */
    struct session *sessions; /* every client's session, newest first */
    uint64_t next_client_id;
    uint64_t config_epoch; /* bumped by every applied reload */
    time_t last_reload_time;
    char last_reload_error[512];
    int stopping;         /* SIGTERM seen: no new clients */
    int client_pause;     /* CLIENT PAUSE in force: a pause_mode (pause.h), 0 when none */
    size_t twopc_holding; /* cross-shard transactions of this proxy holding key locks: while
                             not 0, a request touching a held key waits (twopc.c) */
    int workers;          /* worker processes of this proxy (workers = N); 0 or 1: one process */
    int worker_index;     /* this worker's index, 0 .. workers - 1 (0 alone) */
    int supervisor_pid;   /* the supervisor's pid, 0 with one process */
    int worker_listen_fd; /* a worker's listen socket, opened by the supervisor */
    /* The fleet's ring (docs/rebalancing.md, "Several proxies"). */
    char ring_fp[24];           /* fingerprint of the running ring: hash, hash tags,
                                   names and weights; set by reload.c */
    char ring_fp_prev[24];      /* the ring ran before a reload changed it: the ring
                                   check accepts it too until the shards take the
                                   new one (epoch.c clears it) */
    char instance_id[32];       /* this process among the proxies, in connection names */
    uint64_t shards_epoch_seen; /* newest ring epoch a shard connection's check read */
    uint64_t ring_epoch_run;    /* epoch of the ring this proxy runs (or moves from while
                                   it proposes the next); 0 when unknown or behind: the
                                   ring check passes a shard whose record is older */
    int ring_check_refused;     /* a connection's check found another ring on the
                                   shards: epoch.c looks at the shards again */
    int ring_refusing;          /* keyed requests are answered ring_refusal (epoch.c) */
    int fleet_moving;           /* this proxy proposes its ring, or the shards still fence
                                   or move keys to it: a reload that changes the ring is
                                   queued until they are done (epoch.c sets it) */
    char ring_refusal[512];     /* "-TRYAGAIN ring changed: ...\r\n" */
    server_stats stats;
} server;

extern server srv;

/* The clock in microseconds (CLOCK_MONOTONIC: intervals only, never steps
 * back). Read through the vDSO (no system call, tens of nanoseconds), once
 * per loop iteration by server_clock_update. Not libevent's cached time:
 * that comes from CLOCK_MONOTONIC_COARSE, which moves in steps of 1-4 ms,
 * too coarse to time requests (INFO commandstats, latencystats, SLOWLOG)
 * that take tens of microseconds. */
static inline uint64_t server_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* xorshift64* over *state (never 0): for jitter and spreading only,
 * nothing depends on its quality. */
static inline uint64_t server_xorshift(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 2685821657736338717ull;
}

/* Refreshes srv.now_us; called at the top of each callback so that
 * per-request code reads a field instead of reading the clock: it is read
 * once per loop iteration, when the iteration's first event is handled. */
static inline void server_clock_update(void)
{
    if (srv.clock_iteration != srv.loop_iteration) {
        srv.clock_iteration = srv.loop_iteration;
        srv.now_us = server_now_us();
    }
}

/* A key's hash under the current config (hash function and hash tags):
 * what the ring places and what the rebalance looks up old owners by. */
static inline uint32_t server_key_hash(const char *key, size_t len)
{
    const config *cfg = srv.cfg;
    return hash_key(cfg->hash, key, len, cfg->hash_tag_open, cfg->hash_tag_close);
}

/* The index in srv.shards of the shard owning a key under the current ring.
 * Inline: every keyed request asks. */
static inline uint32_t server_shard_of_key(const char *key, size_t len)
{
    return ring_lookup(srv.ring, server_key_hash(key, len));
}

#endif
