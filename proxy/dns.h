/* Shards named by hostname (`s1 = app-redis-1:7001`): their names are
 * resolved with libevent's evdns on the event loop (resolver.h), never
 * with a blocking getaddrinfo, at start and reload, again after a
 * connection to the shard fails (before it reconnects) and every
 * dns_refresh ms. A new answer re-addresses the shard as a Sentinel switch
 * does (backend_shard_set_address): only that shard's connections close,
 * and no key moves. Lookups read dns_hosts_file and dns_resolv_conf, again
 * when either changes. */
#ifndef PROXY_DNS_H
#define PROXY_DNS_H

#include "proxy/buf.h"

struct shard;

/* Starts the lookups that are due now (after start-up and a reload: the
 * names of new shards, whose requests fail fast until they resolve). */
void dns_sync(void);

/* Periodic (maintenance timer): due refreshes, names whose shard lost a
 * connection. */
void dns_tick(void);

/* Appends ",resolved=IP,resolved_at=T,dns=STATE" for a shard named by
 * hostname to an INFO shards line (nothing for other shards). 0 or -1. */
int dns_shard_info(const struct shard *s, buf *b);

/* Cancels the lookups in flight and forgets every name (exit). */
void dns_shutdown(void);

#endif
