/* Looking host names up without blocking the event loop: libevent's evdns,
 * set up from dns_resolv_conf and dns_hosts_file (never /etc/resolv.conf
 * or /etc/hosts behind the config's back) and set up again when either
 * file changes. Shards named by hostname (dns.c) and control connections
 * to a host name (ctlconn.c: Sentinels, and shards a Sentinel names by
 * hostname) look their names up here. */
#ifndef PROXY_RESOLVER_H
#define PROXY_RESOLVER_H

#include <event2/util.h>

typedef struct resolver_lookup resolver_lookup;

/* A lookup's answer: result 0 and the addresses (res, freed once the call
 * returns), or an EVUTIL_EAI_* code (evutil_gai_strerror says it) and res
 * NULL. */
typedef void resolver_answer_fn(int result, const struct evutil_addrinfo *res, void *arg);

/* Looks host up: its TCP addresses, of any family, with the port service
 * names (a number, or NULL for port 0). fn(result, res, arg) is called
 * once unless the lookup is cancelled first: inside this call when the
 * answer is at hand (a hosts-file name, a numeric address, a lookup that
 * cannot start), else from the loop. Returns the lookup while it waits
 * for the loop, NULL once fn has been called. */
resolver_lookup *resolver_lookup_start(const char *host, const char *service,
                                       resolver_answer_fn *fn, void *arg);

/* Forgets a lookup that waits (one resolver_lookup_start returned, whose
 * fn has not been called): fn is never called, and l is gone. */
void resolver_cancel(resolver_lookup *l);

/* Periodic (maintenance timer): frees the resolvers a changed file
 * replaced, once their lookups have ended. */
void resolver_tick(void);

/* At exit, after the lookups' owners have cancelled theirs: cancels any
 * left (their fn is not called), turns the loop once so that evdns
 * delivers the cancellations, and frees every resolver. */
void resolver_shutdown(void);

#endif
