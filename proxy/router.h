/* The router: looks a request up in the command table, finds its keys'
 * shards on the ring, and forwards it whole, split per shard, or answers it
 * locally. Replies come back through the request's on_done callback. */
#ifndef PROXY_ROUTER_H
#define PROXY_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/request.h"
#include "proxy/resp.h"

/* Routes one parsed request. raw/raw_len are its bytes as received when it
 * came as multibulk (forwarded unchanged), or NULL for an inline command
 * (re-encoded). hint keeps one client's requests on one backend connection,
 * so they run in the order sent. req->on_done may run before this returns. */
void router_dispatch(request *req, size_t argc, const resp_arg *argv, const char *raw,
                     size_t raw_len, uint64_t hint);

/* The client left: its subscriptions, transaction and reserved
 * connections end. Called with its requests already orphaned. */
void router_session_end(session *sess);

#endif
