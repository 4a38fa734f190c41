/* Looking host names up on the event loop; see resolver.h.
 *
 * A resolver base is one evdns_base, set up from dns_resolv_conf and
 * dns_hosts_file as they were when it was made. Before a lookup starts,
 * the two files are checked (stat, at most once per loop clock tick): when
 * either changed (or a reload named other files) a new base takes the next
 * lookups and the old one is freed once its own have ended, so a lookup in
 * flight is never cut short.
 *
 * evdns_getaddrinfo answers names from the hosts file (and numeric ones)
 * inside the call, before it returns; others come back from the loop. A
 * lookup is therefore on the lookups list before the call, and its evdns
 * callback takes it off and frees it whichever way it comes. A cancelled
 * lookup stays on the list, without its owner's callback, until evdns
 * delivers the cancellation (from the loop, never inside the call). */
#include "proxy/resolver.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "proxy/dlist.h"
#include "proxy/log.h"
#include "proxy/server.h"

/* What a resolv.conf may set for evdns: nameservers, search domains and
 * options (timeout:N, attempts:N, ndots:N). The hosts file is loaded from
 * dns_hosts_file, never from /etc/hosts behind the config's back. */
#define DNS_RESOLV_FLAGS (DNS_OPTION_NAMESERVERS | DNS_OPTION_SEARCH | DNS_OPTION_MISC)

/* One evdns_base and the files it was set up from. */
typedef struct resolver_base {
    struct evdns_base *base;
    int lookups;                /* lookups in flight on it */
    struct resolver_base *next; /* older bases waiting for their lookups to end */
} resolver_base;

/* One lookup in flight. */
struct resolver_lookup {
    resolver_answer_fn *fn; /* NULL once cancelled */
    void *arg;
    resolver_base *r;
    struct evdns_getaddrinfo_request *req; /* NULL when answered inside evdns_getaddrinfo */
    struct resolver_lookup *prev, *next;
};

/* A file as stat saw it, to notice it changed. */
typedef struct file_mark {
    char path[4096];
    int exists;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_mark;

static struct {
    resolver_base *current;  /* takes new lookups, NULL until the first */
    resolver_base *draining; /* older ones, freed once their lookups end */
    file_mark hosts;         /* the files current was set up from */
    file_mark resolv;
    resolver_lookup *lookups; /* every lookup in flight */
    uint64_t checked_us;      /* loop clock of the last check of the files */
} resolvers;

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

/* A base set up from the files as marked now; NULL when libevent cannot
 * make one (logged). */
static resolver_base *base_new(const file_mark *hosts, const file_mark *resolv)
{
    resolver_base *r = calloc(1, sizeof(*r));
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

static void base_free(resolver_base *r)
{
    evdns_base_free(r->base, 0);
    free(r);
}

/* The base for new lookups, made anew when dns_hosts_file or
 * dns_resolv_conf changed (checked at most once per loop clock tick). NULL
 * when none can be made. */
static resolver_base *current_base(void)
{
    if (resolvers.current && resolvers.checked_us == srv.now_us)
        return resolvers.current;
    resolvers.checked_us = srv.now_us;
    file_mark hosts, resolv;
    mark_file(&hosts, srv.cfg->dns_hosts_file);
    mark_file(&resolv, srv.cfg->dns_resolv_conf);
    if (resolvers.current && same_mark(&hosts, &resolvers.hosts) &&
        same_mark(&resolv, &resolvers.resolv))
        return resolvers.current;
    resolver_base *r = base_new(&hosts, &resolv);
    if (!r)
        return resolvers.current;
    if (resolvers.current) {
        resolvers.current->next = resolvers.draining;
        resolvers.draining = resolvers.current;
    }
    resolvers.current = r;
    resolvers.hosts = hosts;
    resolvers.resolv = resolv;
    return r;
}

static void on_answer(int result, struct evutil_addrinfo *addrs, void *arg)
{
    resolver_lookup *l = arg;
    resolver_answer_fn *fn = l->fn;
    void *fn_arg = l->arg;
    DLIST_UNLINK(resolvers.lookups, l, prev, next);
    l->r->lookups--;
    free(l);
    if (!result && !addrs)
        result = EVUTIL_EAI_NODATA;
    if (fn)
        fn(result, result ? NULL : addrs, fn_arg);
    if (addrs)
        evutil_freeaddrinfo(addrs);
}

resolver_lookup *resolver_lookup_start(const char *host, const char *service,
                                       resolver_answer_fn *fn, void *arg)
{
    resolver_base *r = current_base();
    resolver_lookup *l = r ? calloc(1, sizeof(*l)) : NULL;
    if (!l) {
        fn(EVUTIL_EAI_MEMORY, NULL, arg);
        return NULL;
    }
    l->fn = fn;
    l->arg = arg;
    l->r = r;
    r->lookups++;
    DLIST_PUSH_FRONT(resolvers.lookups, l, prev, next);
    struct evutil_addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    /* May answer (and free l) before it returns: l is not touched after
     * unless a request is still running. */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(r->base, host, service, &hints, on_answer, l);
    if (!req)
        return NULL;
    l->req = req;
    return l;
}

void resolver_cancel(resolver_lookup *l)
{
    l->fn = NULL;
    evdns_getaddrinfo_cancel(l->req);
}

/* Not called from an evdns callback: the base that runs it must outlive
 * it. */
void resolver_tick(void)
{
    for (resolver_base **link = &resolvers.draining; *link;) {
        resolver_base *r = *link;
        if (r->lookups > 0) {
            link = &r->next;
            continue;
        }
        *link = r->next;
        base_free(r);
    }
}

void resolver_shutdown(void)
{
    for (resolver_lookup *l = resolvers.lookups; l; l = l->next)
        if (l->fn)
            resolver_cancel(l);
    /* Cancelled lookups are answered (EVUTIL_EAI_CANCEL, freeing them) by
     * the loop, not inside the call. */
    if (resolvers.lookups)
        event_base_loop(srv.base, EVLOOP_NONBLOCK);
    while (resolvers.lookups) {
        resolver_lookup *l = resolvers.lookups;
        DLIST_UNLINK(resolvers.lookups, l, prev, next);
        l->r->lookups--;
        free(l);
    }
    if (resolvers.current) {
        resolvers.current->next = resolvers.draining;
        resolvers.draining = resolvers.current;
    }
    while (resolvers.draining) {
        resolver_base *r = resolvers.draining;
        resolvers.draining = r->next;
        base_free(r);
    }
    memset(&resolvers, 0, sizeof(resolvers));
}
