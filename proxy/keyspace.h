/* SCAN and RANDOMKEY through the proxy: one shard after the other. */
#ifndef PROXY_KEYSPACE_H
#define PROXY_KEYSPACE_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/request.h"
#include "proxy/resp.h"

/* SCAN cursor [MATCH ...] [COUNT ...] [TYPE ...]: the proxy's cursor names
 * a shard and that shard's own cursor; the reply's cursor leads to the next
 * shard once one is done, and is 0 after the last. */
void keyspace_scan(request *req, size_t argc, const resp_arg *argv, uint64_t hint);

/* RANDOMKEY: asks a random shard, and the next ones while they are empty. */
void keyspace_randomkey(request *req, uint64_t hint);

#endif
