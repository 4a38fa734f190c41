/* Pub/sub for clients: SUBSCRIBE on the shard that owns the channel on the
 * ring (where PUBLISH sends it), PSUBSCRIBE on every shard, each over the
 * client's own subscriber connection to that shard (backend_reserve, push
 * mode). The proxy keeps the client's channels and patterns, so the counts
 * in confirmations are the client's totals, as from one Redis, and messages
 * from every shard reach the client in RESP2 push format. */
#ifndef PROXY_PUBSUB_H
#define PROXY_PUBSUB_H

#include <stddef.h>

#include "proxy/command.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* Whether the client is subscribed to anything: then only (P)SUBSCRIBE,
 * (P)UNSUBSCRIBE, PING, QUIT and RESET are allowed, as in Redis. */
int pubsub_active(const session *sess);

/* Channels and patterns the client is subscribed to (CLIENT LIST). */
void pubsub_counts(const session *sess, int *channels, int *patterns);

/* SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE. Answers req once the
 * shards involved have taken the change, so a message published after the
 * client saw its confirmation reaches it. */
void pubsub_command(request *req, command_id id, size_t argc, const resp_arg *argv);

/* PING in subscribed mode: ["pong", argument or ""]. */
void pubsub_ping(request *req, size_t argc, const resp_arg *argv);

/* RESET or the client left: every subscription and subscriber connection
 * goes. */
void pubsub_end(session *sess);

/* Periodic (the maintenance timer): a (P)(UN)SUBSCRIBE whose shard has not
 * confirmed it within request_timeout of being sent gets "-ERR shard <label>
 * timeout" and its subscriber connection closes; the client reads nothing
 * more and is closed once that error and the replies before it are written,
 * since its subscriptions on that shard are in an unknown state. Costs one
 * pointer test per client without subscriptions. */
void pubsub_tick(void);

#endif
