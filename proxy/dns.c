/* Resolving shards named by hostname; see dns.h.
 *
 * A resolver is one evdns_base, set up from dns_resolv_conf and
 * dns_hosts_file as they were when it was made. Before lookups start, the
 * two files are checked (stat): when either changed (or a reload named
 * other files) a new resolver takes the next lookups and the old one is
 * freed once its own have ended, so a lookup in flight is never cut short.
 *
 * evdns_getaddrinfo answers names from the hosts file (and numeric ones)
 * inside the call, before it returns; others come back from the loop. A
 * lookup is therefore on the lookups list before the call, and its
 * callback takes it off and frees it whichever way it comes. A lookup names
 * its shard by id, not by pointer: a shard freed meanwhile (a reload) is
 * simply not found when the answer comes.
 *
 * One lookup per shard at a time; what each shard's name resolved to is
 * kept by shard id in names[]. */
#include "proxy/dns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "proxy/backend.h"
#include "proxy/dlist.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/server.h"
#include "proxy/store.h"

/* What a resolv.conf may set for evdns: nameservers, search domains and
 * options (timeout:N, attempts:N, ndots:N). The hosts file is loaded from
 * dns_hosts_file, never from /etc/hosts behind the config's back. */
#define DNS_RESOLV_FLAGS (DNS_OPTION_NAMESERVERS | DNS_OPTION_SEARCH | DNS_OPTION_MISC)

/* One evdns_base and the files it was set up from. */
typedef struct resolver {
    struct evdns_base *base;
    int lookups;           /* lookups in flight on it */
    struct resolver *next; /* older resolvers waiting for their lookups to end */
} resolver;

/* What is known of one shard object's name. */
typedef struct name_state {
    uint64_t shard_id;
    int started;                     /* a lookup was started (the first one is due at once) */
    int in_flight;                   /* a lookup runs */
    uint64_t next_us;                /* next periodic lookup, 0 = none planned */
    time_t resolved_at;              /* when a lookup last answered, 0 = never */
    char resolved[INET6_ADDRSTRLEN]; /* what it answered, "" = nothing yet */
    char error[128];                 /* why the last lookup failed, "" = it did not */
    int seen;                        /* its shard still lives (sweep in dns_tick) */
} name_state;

/* One lookup in flight. */
typedef struct lookup {
    uint64_t shard_id;
    resolver *r;
    struct evdns_getaddrinfo_request *req; /* NULL when answered inside evdns_getaddrinfo */
    struct lookup *prev, *next;
} lookup;

/* A file as stat saw it, to notice it changed. */
typedef struct file_mark {
    char path[4096];
    int exists;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_mark;

static struct {
    resolver *current;  /* takes new lookups, NULL until the first */
    resolver *draining; /* older ones, freed once their lookups end */
    file_mark hosts;    /* the files current was set up from */
    file_mark resolv;
    name_state *names;
    size_t nnames;
    size_t capnames;
    lookup *lookups;     /* every lookup in flight */
    uint64_t checked_us; /* loop clock of the last check of the files */
} dns;

static void mark_file(file_mark *m, const char *path)
{
    struct stat st;
    memset(m, 0, sizeof(*m));
    snprintf(m->path, sizeof(m->path), "%s", path);
    if (stat(path, &st) == 0) {
        m->exists = 1;
        m->ino = st.st_ino;
        m->size = st.st_size;
        m->mtime = st.st_mtim;
    }
}

static int same_mark(const file_mark *a, const file_mark *b)
{
    return strcmp(a->path, b->path) == 0 && a->exists == b->exists && a->ino == b->ino &&
           a->size == b->size && a->mtime.tv_sec == b->mtime.tv_sec &&
           a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* A resolver set up from the files as marked now; NULL when libevent
 * cannot make one (logged). */
static resolver *resolver_new(const file_mark *hosts, const file_mark *resolv)
{
    resolver *r = calloc(1, sizeof(*r));
    struct evdns_base *base = r ? evdns_base_new(srv.base, 0) : NULL;
    if (!base) {
        log_error("cannot set up a DNS resolver (out of memory)");
        free(r);
        return NULL;
    }
    r->base = base;
    int rc = evdns_base_resolv_conf_parse(base, DNS_RESOLV_FLAGS, resolv->path);
    if (rc == 1)
        log_warn("DNS: cannot read %s (dns_resolv_conf): asking the nameserver at 127.0.0.1",
                 resolv->path);
    else if (rc == 6)
        log_warn("DNS: %s (dns_resolv_conf) names no nameserver: asking 127.0.0.1", resolv->path);
    else if (rc != 0)
        log_warn("DNS: cannot use %s (dns_resolv_conf), error %d", resolv->path, rc);
    if (evdns_base_load_hosts(base, hosts->path) < 0)
        log_warn("DNS: cannot read %s (dns_hosts_file): names go to the nameservers", hosts->path);
    log_info("DNS: resolver set up from %s and %s", resolv->path, hosts->path);
    return r;
}

static void resolver_free(resolver *r)
{
    evdns_base_free(r->base, 0);
    free(r);
}

/* Frees the older resolvers whose lookups have all ended. Not called from
 * an evdns callback: the base that runs it must outlive it. */
static void free_drained(void)
{
    for (resolver **link = &dns.draining; *link;) {
        resolver *r = *link;
        if (r->lookups > 0) {
            link = &r->next;
            continue;
        }
        *link = r->next;
        resolver_free(r);
    }
}

/* The resolver for new lookups, made anew when dns_hosts_file or
 * dns_resolv_conf changed (checked at most once per loop clock tick). NULL
 * when none can be made. */
static resolver *current_resolver(void)
{
    if (dns.current && dns.checked_us == srv.now_us)
        return dns.current;
    dns.checked_us = srv.now_us;
    file_mark hosts, resolv;
    mark_file(&hosts, srv.cfg->dns_hosts_file);
    mark_file(&resolv, srv.cfg->dns_resolv_conf);
    if (dns.current && same_mark(&hosts, &dns.hosts) && same_mark(&resolv, &dns.resolv))
        return dns.current;
    resolver *r = resolver_new(&hosts, &resolv);
    if (!r)
        return dns.current;
    if (dns.current) {
        dns.current->next = dns.draining;
        dns.draining = dns.current;
    }
    dns.current = r;
    dns.hosts = hosts;
    dns.resolv = resolv;
    return r;
}

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

static void on_resolved(int result, struct evutil_addrinfo *res, void *arg)
{
    lookup *l = arg;
    DLIST_UNLINK(dns.lookups, l, prev, next);
    l->r->lookups--;
    uint64_t id = l->shard_id;
    free(l);
    server_clock_update();
    name_state *n = find_name(id);
    shard *s = n && result != EVUTIL_EAI_CANCEL ? find_shard(id) : NULL;
    if (n)
        n->in_flight = 0;
    if (s) {
        if (result == 0 && res)
            lookup_answered(s, n, res);
        else
            lookup_failed(s, n, result ? result : EVUTIL_EAI_NODATA);
        n->next_us = next_lookup_us(s);
    }
    if (res)
        evutil_freeaddrinfo(res);
}

/* Starts a lookup of s's name (n is its state). */
static void lookup_start(shard *s, name_state *n)
{
    resolver *r = current_resolver();
    lookup *l = r ? calloc(1, sizeof(*l)) : NULL;
    if (!l) {
        n->next_us = srv.now_us + (uint64_t)srv.cfg->reconnect_max_ms * 1000u;
        return;
    }
    l->shard_id = s->id;
    l->r = r;
    r->lookups++;
    n->started = 1;
    n->in_flight = 1;
    s->dns_wanted = 0;
    DLIST_PUSH_FRONT(dns.lookups, l, prev, next);
    struct evutil_addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    log_debug("shard %s: resolving %s", s->name, s->host);
    /* May answer (and free l) before it returns: l is not touched after
     * unless a request is still running. */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(r->base, s->host, NULL, &hints, on_resolved, l);
    if (req)
        l->req = req;
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
        if (n->in_flight)
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
        if (dns.names[i].seen || dns.names[i].in_flight) {
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
    free_drained();
}

static const char *name_state_word(const name_state *n)
{
    if (n->in_flight && !n->resolved_at)
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
    int cancelled = 0;
    for (lookup *l = dns.lookups; l; l = l->next)
        if (l->req) {
            evdns_getaddrinfo_cancel(l->req);
            cancelled = 1;
        }
    /* Cancelled lookups are answered (EVUTIL_EAI_CANCEL, freeing them) by
     * the loop, not inside the call. */
    if (cancelled)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
    while (dns.lookups) {
        lookup *l = dns.lookups;
        DLIST_UNLINK(dns.lookups, l, prev, next);
        l->r->lookups--;
        free(l);
    }
    if (dns.current) {
        dns.current->next = dns.draining;
        dns.draining = dns.current;
        dns.current = NULL;
    }
    while (dns.draining) {
        resolver *r = dns.draining;
        dns.draining = r->next;
        resolver_free(r);
    }
    free(dns.names);
    memset(&dns, 0, sizeof(dns));
}
