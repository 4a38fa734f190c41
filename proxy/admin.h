/* Commands the proxy answers itself: PING, ECHO, QUIT, SELECT, HELLO, AUTH,
 * CLIENT (ID, SETNAME, GETNAME, INFO, LIST of the proxy's own clients), INFO
 * and the PROXY admin commands; the proxy's part of CONFIG GET and SET. */
#ifndef PROXY_ADMIN_H
#define PROXY_ADMIN_H

#include <stddef.h>

#include "proxy/command.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* Answers a COMMAND_LOCAL request through req->on_done. */
void admin_execute(request *req, const command *cmd, size_t argc, const resp_arg *argv);

/* CONFIG GET and CONFIG SET, before they go to every shard: GET keeps the
 * proxy's own matching settings in req->local_part for the merge; SET
 * refuses a proxy key, and a Redis parameter unless allow_config_set is on.
 * Returns 1 when the request is to be sent to every shard, 0 when it has
 * been answered. */
int admin_config(request *req, const command *cmd, size_t argc, const resp_arg *argv);

/* INFO: builds the proxy's own sections into req->local_part and writes to
 * sections[0..n) the sections to ask every shard for ("keyspace" for the
 * Keyspace lines, "stats" for keyspace_hits/misses: only when keyspace, all
 * or everything is asked for); returns n. With 0 nothing is asked of the
 * shards and req has been answered. */
size_t admin_info(request *req, size_t argc, const resp_arg *argv, resp_arg sections[2]);

#endif
