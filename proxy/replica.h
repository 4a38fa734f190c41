/* Replicas of shards named by address (`s1 = host:port`, or a hostname):
 * for read_from = replica | prefer_replica, the master itself says which
 * replicas it has. Every REPLICA_POLL_MS the master is asked ROLE on a
 * control connection (hiredis async, on the event loop); the first replica
 * it lists becomes the shard's read replica (backend_shard_set_replica),
 * and none when it lists none or is no master. Shards named by a Sentinel
 * master get theirs from the Sentinels (sentinel.c). */
#ifndef PROXY_REPLICA_H
#define PROXY_REPLICA_H

#include <stddef.h>

/* Periodic (maintenance timer): asks the masters that are due, ends
 * probes that take longer than connect_timeout. */
void replica_tick(void);

/* Closes every probe's connection (exit). */
void replica_shutdown(void);

#endif
