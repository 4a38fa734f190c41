/* min_replicas_to_ack: a write sent over a shard's pool is followed, on the
 * same connection, by WAIT <min_replicas_to_ack> <min_replicas_timeout>,
 * and its reply is given only once WAIT says that many replicas have it;
 * else the client gets -NOREPLICAS (the write was done on the master, but a
 * failover may lose it). Redis replicates asynchronously: this is how a
 * client learns that a write survives the loss of its master. */
#ifndef PROXY_ACK_H
#define PROXY_ACK_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/backend.h"
#include "proxy/request.h"

/* Whether the command in bytes (a multibulk request) may write: every
 * command but the read-only ones. */
int ack_is_write(const char *bytes, size_t len);

/* When min_replicas_to_ack is set and bytes is a write: sends it and its
 * WAIT to s (as backend_send, picked by hint), f is answered once WAIT is,
 * and 1 is returned. Otherwise 0: nothing was sent. */
int ack_send(shard *s, uint64_t hint, fragment *f, const char *bytes, size_t len);

#endif
