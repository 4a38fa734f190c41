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
 * proxy's own matching settings in req->own_config for the merge; SET
 * refuses a proxy key, and a Redis parameter unless allow_config_set is on.
 * Returns 1 when the request is to be sent to every shard, 0 when it has
 * been answered. */
int admin_config(request *req, const command *cmd, size_t argc, const resp_arg *argv);

#endif
