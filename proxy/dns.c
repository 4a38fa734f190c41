/* Resolving shards named by hostname; see dns.h.
 *
 * The lookups go through resolver.c (evdns, the two files). A lookup
 * names its shard by id, not by pointer: a shard freed meanwhile (a
 * reload) is simply not found when the answer comes.
 *
 * One lookup per shard at a time; what each shard's name resolved to is
 * kept by shard id in names[]. */
#include "proxy/dns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/util.h>

#include "proxy/backend.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/resolver.h"
#include "proxy/server.h"
#include "proxy/store.h"

/* A lookup carries its shard's id as its callback's argument. */
_Static_assert(sizeof(uintptr_t) >= sizeof(uint64_t), "a shard id fits in a pointer");

/* What is known of one shard object's name. */
typedef struct name_state {
    uint64_t shard_id;
    int started;                     /* a lookup was started (the first one is due at once) */
    resolver_lookup *lookup;         /* the lookup running, NULL = none */
    uint64_t next_us;                /* next periodic lookup, 0 = none planned */
    time_t resolved_at;              /* when a lookup last answered, 0 = never */
    char resolved[INET6_ADDRSTRLEN]; /* what it answered, "" = nothing yet */
    char error[128];                 /* why the last lookup failed, "" = it did not */
    int seen;                        /* its shard still lives (sweep in dns_tick) */
} name_state;

static struct {
    name_state *names;
    size_t nnames;
    size_t capnames;
} dns;

static name_state *find_name(uint64_t shard_id)
{
    for (size_t i = 0; i < dns.nnames; i++)
        if (dns.names[i].shard_id == shard_id)
            return &dns.names[i];
    return NULL;
}

/* The state of s's name, made on first use; NULL when out of memory. */
static name_state *name_of(const shard *s)
{
    name_state *n = find_name(s->id);
    if (n)
        return n;
    if (dns.nnames == dns.capnames) {
        size_t cap = dns.capnames ? dns.capnames * 2 : 8;
        name_state *grown = realloc(dns.names, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        dns.names = grown;
        dns.capnames = cap;
    }
    n = &dns.names[dns.nnames++];
    memset(n, 0, sizeof(*n));
    n->shard_id = s->id;
    return n;
}

static shard *find_shard(uint64_t id)
{
    for (shard *s = backend_shard_live_first(); s; s = s->next_live)
        if (s->id == id)
            return s;
    return NULL;
}

static int is_running_shard(const shard *s)
{
    for (size_t i = 0; i < srv.nshards; i++)
        if (srv.shards[i] == s)
            return 1;
    return 0;
}

/* The numeric text of an address. */
static void addr_text(const struct sockaddr *sa, char *out, size_t outlen)
{
    const void *bin = sa->sa_family == AF_INET6
                          ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                          : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (!inet_ntop(sa->sa_family, bin, out, (socklen_t)outlen))
        snprintf(out, outlen, "?");
}

/* The answer to use: the address s has now when the name still resolves
 * to it (a name with several addresses does not make the shard hop
 * between them), else the first. */
static const struct evutil_addrinfo *pick_answer(const shard *s, const struct evutil_addrinfo *res)
{
    char now[INET6_ADDRSTRLEN], ip[INET6_ADDRSTRLEN];
    if (!s->addrlen)
        return res;
    addr_text((const struct sockaddr *)&s->addr, now, sizeof(now));
    for (const struct evutil_addrinfo *ai = res; ai; ai = ai->ai_next) {
        addr_text(ai->ai_addr, ip, sizeof(ip));
        if (strcmp(ip, now) == 0)
            return ai;
    }
    return res;
}

/* When the next periodic lookup of a name is due: dns_refresh after this
 * one, or (no address yet, or no refresh) retried like a shard that is
 * down, after reconnect_max. */
static uint64_t next_lookup_us(const shard *s)
{
    int refresh = srv.cfg->dns_refresh_ms;
    if (s->addrlen && refresh == 0)
        return 0;
    int ms = s->addrlen ? refresh : srv.cfg->reconnect_max_ms;
    return srv.now_us + (uint64_t)ms * 1000u;
}

static void lookup_failed(shard *s, name_state *n, int result)
{
    char why[128];
    snprintf(why, sizeof(why), "%s", evutil_gai_strerror(result));
    if (strcmp(why, n->error) != 0)
        log_warn("shard %s: cannot resolve %s: %s; %s", s->name, s->host, why,
                 s->addrlen ? "keeping its last address" : "its requests fail until it resolves");
    snprintf(n->error, sizeof(n->error), "%s", why);
}

static void lookup_answered(shard *s, name_state *n, const struct evutil_addrinfo *res)
{
    const struct evutil_addrinfo *ai = pick_answer(s, res);
    char ip[INET6_ADDRSTRLEN], was[INET6_ADDRSTRLEN], why[400];
    addr_text(ai->ai_addr, ip, sizeof(ip));
    int had = s->addrlen != 0;
    if (had)
        backend_shard_ip(s, was, sizeof(was));
    snprintf(why, sizeof(why), "unavailable: %s now resolves to %s", s->host, ip);
    int changed = backend_shard_set_address(s, ai->ai_addr, (socklen_t)ai->ai_addrlen, why);
    if (changed < 0) {
        log_warn("shard %s: %s resolves to an address of family %d: not used", s->name, s->host,
                 ai->ai_family);
        return;
    }
    n->resolved_at = time(NULL);
    n->error[0] = '\0';
    snprintf(n->resolved, sizeof(n->resolved), "%s", ip);
    if (!changed)
        return;
    if (had)
        log_notice("shard %s: %s now resolves to %s (was %s); keys stay", s->name, s->host, ip,
                   was);
    else
        log_notice("shard %s: %s resolves to %s", s->name, s->host, ip);
    if (is_running_shard(s)) {
        rebalance_source_readdressed(s);
        store_shard_moved(s->name, ip, s->port);
    }
}

static void on_resolved(int result, const struct evutil_addrinfo *res, void *arg)
{
    uint64_t id = (uintptr_t)arg;
    server_clock_update();
    name_state *n = find_name(id);
    shard *s = n ? find_shard(id) : NULL;
    if (n)
        n->lookup = NULL;
    if (s) {
        if (result == 0)
            lookup_answered(s, n, res);
        else
            lookup_failed(s, n, result);
        n->next_us = next_lookup_us(s);
    }
}

/* Starts a lookup of s's name (n is its state). */
static void lookup_start(shard *s, name_state *n)
{
    n->started = 1;
    s->dns_wanted = 0;
    log_debug("shard %s: resolving %s", s->name, s->host);
    /* May answer (on_resolved) before it returns. */
    n->lookup = resolver_lookup_start(s->host, NULL, on_resolved, (void *)(uintptr_t)s->id);
}

/* Starts every lookup due now and forgets the names of freed shards. */
static void run_due(void)
{
    for (size_t i = 0; i < dns.nnames; i++)
        dns.names[i].seen = 0;
    for (shard *s = backend_shard_live_first(); s; s = s->next_live) {
        if (!s->dns_name)
            continue;
        name_state *n = name_of(s);
        if (!n) {
            log_error("shard %s: out of memory following its name", s->name);
            continue;
        }
        n->seen = 1;
        if (n->lookup)
            continue;
        if (s->dns_wanted || !n->started || (n->next_us && srv.now_us >= n->next_us))
            lookup_start(s, n);
        /* The store starts after the first lookups (a hosts-file name is
         * answered during start-up) and misses what they found: it is told
         * again on every tick, which costs nothing once it has the address. */
        if (n->resolved[0] && is_running_shard(s))
            store_shard_moved(s->name, n->resolved, s->port);
    }
    /* lookup_start may have answered at once and re-addressed shards, but
     * frees none: names[] entries stay valid, and the sweep below only
     * removes entries whose shard is gone. */
    for (size_t i = 0; i < dns.nnames;) {
        if (dns.names[i].seen || dns.names[i].lookup) {
            i++;
            continue;
        }
        dns.names[i] = dns.names[--dns.nnames];
    }
}

void dns_sync(void)
{
    /* A reload may have shortened dns_refresh, or turned it on: no refresh
     * waits longer than the new period. */
    int refresh = srv.cfg->dns_refresh_ms;
    uint64_t latest = srv.now_us + (uint64_t)refresh * 1000u;
    for (size_t i = 0; refresh && i < dns.nnames; i++) {
        name_state *n = &dns.names[i];
        if (n->resolved_at && (n->next_us == 0 || n->next_us > latest))
            n->next_us = latest;
    }
    run_due();
}

void dns_tick(void)
{
    run_due();
}

static const char *name_state_word(const name_state *n)
{
    if (n->lookup && !n->resolved_at)
        return "resolving";
    if (n->error[0])
        return n->resolved_at ? "stale" : "failed";
    return n->resolved_at ? "ok" : "pending";
}

int dns_shard_info(const shard *s, buf *b)
{
    if (!s->dns_name)
        return 0;
    const name_state *n = find_name(s->id);
    static const name_state none;
    if (!n)
        n = &none;
    return buf_printf(b, ",resolved=%s,resolved_at=%lld,dns=%s",
                      n->resolved[0] ? n->resolved : "none", (long long)n->resolved_at,
                      name_state_word(n));
}

void dns_shutdown(void)
{
    for (size_t i = 0; i < dns.nnames; i++)
        if (dns.names[i].lookup)
            resolver_cancel(dns.names[i].lookup);
    free(dns.names);
    memset(&dns, 0, sizeof(dns));
}
