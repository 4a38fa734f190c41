/* The fleet's ring epoch: several proxies in front of the same shards agree
 * on one ring through a record every shard keeps in its hidden store
 * (store.h): the ring epoch, the ring's fingerprint and text, the previous
 * ring while keys move, the migration's state and progress. The first proxy
 * to load a new ring writes it as the next epoch by compare-and-set (on one
 * arbiter shard first, so that of two rings proposed at once exactly one
 * wins), fences every shard against proxies on another ring (their
 * connections are named after their ring and killed), and only then lets
 * keys move. A proxy whose file holds an older or a losing ring refuses
 * keyed requests with -TRYAGAIN until its file is updated; it never rolls
 * the ring back. The proxy holding the lease runs the mover and writes its
 * progress to the shards, so another one finishes if it dies.
 * docs/rebalancing.md ("Several proxies") has the protocol. */
#ifndef PROXY_EPOCH_H
#define PROXY_EPOCH_H

#include "proxy/buf.h"

/* Registers the record scripts with the store (before store_start) and
 * turns the fleet mode of the rebalance on. */
void epoch_register(void);

/* Starts looking at the shards (after store_start). */
void epoch_start(void);

/* Appends ring_epoch, shards_epoch, ring_fingerprint and ring_status to
 * INFO server. 0 or -1 (also kept in b). */
int epoch_info_server(buf *b);

/* Appends the fleet's migration (rebalance_fleet_*) to INFO rebalance. 0
 * or -1 (also kept in b). */
int epoch_info_rebalance(buf *b);

/* Stops the timer and forgets what was read (exit; before store_shutdown). */
void epoch_shutdown(void);

#endif
