/* Quorum locks with fencing tokens (LOCK.ACQUIRE, LOCK.RELEASE, LOCK.EXTEND,
 * LOCK.INFO), answered by the proxy over the hidden store of the lock
 * shards (lock_shards): a lock is held when a majority of them hold it,
 * and its token comes from per-name counters on that majority, so tokens
 * only grow. docs/locks.md has the protocol and what it guarantees. */
#ifndef PROXY_LOCK_H
#define PROXY_LOCK_H

#include <stddef.h>

#include "config/config.h"
#include "proxy/buf.h"
#include "proxy/command.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* Registers the lock scripts and the restore hook with the store, and
 * picks the lock shards out of cfg. Call before store_start. 0, or -1 with
 * err (no lock shard named). */
__attribute__((warn_unused_result)) int lock_start(const config *cfg, char *err, size_t errlen);

/* Answers a COMMAND_LOCK request through req->on_done, now or later; a
 * waiting LOCK.ACQUIRE never blocks the loop. */
void lock_command(request *req, const command *cmd, size_t argc, const resp_arg *argv);

/* Appends the INFO locks section (Redis INFO format): the lock shards and
 * their store states, requests waiting, grants, denials, restores. 0 or -1; a
 * failure is also kept in b (buf_failed). */
int lock_info(buf *b);

/* Answers every lock request still waiting with an error and frees the
 * module (exit). Call before store_shutdown. */
void lock_shutdown(void);

/* Frees what is left once store_shutdown has failed every store call. */
void lock_free(void);

#endif
