/* Redis Sentinel: finds and follows the master of every `sentinel:NAME`
 * shard. The Sentinels of srv.cfg are asked for each master's address at
 * start, on reload and every sentinel_poll ms, and one of them is
 * subscribed to for +switch-master; an answer is believed only once the
 * address itself says ROLE master. A new master re-addresses the shard
 * (backend_shard_readdress): no key moves. Control connections are ctlconn
 * ones on the event loop, as the rebalancer's. */
#ifndef PROXY_SENTINEL_H
#define PROXY_SENTINEL_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/buf.h"

struct shard;

/* Aligns with srv.cfg and srv.shards after start or a reload: new sentinel
 * shards are looked up at once, and so are the others (a reload asks
 * again); a changed sentinels list drops the connections to the old one. */
void sentinel_sync(void);

/* Periodic (maintenance timer): due polls, timeouts, the subscription. */
void sentinel_tick(void);

/* Where a request for srv.shards[i] goes: a read-only command (bytes) to
 * the shard's replica when its read_from says so, anything else to the
 * shard itself. */
struct shard *sentinel_read_shard(uint32_t i, const char *bytes, size_t len);

/* Appends ",source=...,master=...,failovers=N,last_switch=T,sentinel=STATE"
 * for s to an INFO shards line. 0 or -1. */
int sentinel_shard_info(const struct shard *s, buf *b);

/* Appends the "sentinels:N" and "sentinels_reachable:N" lines. 0 or -1. */
int sentinel_info(buf *b);

/* Closes every Sentinel connection and frees everything (exit). */
void sentinel_shutdown(void);

#endif
