/* On-demand key moves during a rebalance: a request that touches a key whose
 * owner changed waits for the rebalance barrier, MIGRATEs its keys from
 * their old shards over the data path, and is then routed again by the new
 * ring. The background mover is rebalance.c. */
#ifndef PROXY_MIGRATE_H
#define PROXY_MIGRATE_H

#include <stddef.h>

#include "proxy/request.h"
#include "proxy/resp.h"

/* Routes a request whose keys have moved (the router's entry point): argv
 * and raw point into the request's saved bytes. */
typedef void (*migrate_reroute_fn)(request *req, size_t argc, const resp_arg *argv, const char *raw,
                                   size_t raw_len);

/* Keeps a copy of the request's multibulk bytes (its argv points into the
 * client's buffer, which moves on), moves the keys of req->cmd whose owner
 * changed, then calls reroute (every caller passes the same function) or
 * answers the request with an error. req->hint must be set. */
void migrate_keys_first(request *req, const char *bytes, size_t len, migrate_reroute_fn reroute);

#endif
