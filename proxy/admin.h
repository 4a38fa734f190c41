/* Commands the proxy answers itself: PING, ECHO, QUIT, SELECT, HELLO, AUTH,
 * CLIENT (ID, SETNAME, GETNAME, INFO, LIST of the proxy's own clients), INFO
 * and the PROXY admin commands. */
#ifndef PROXY_ADMIN_H
#define PROXY_ADMIN_H

#include <stddef.h>

#include "proxy/command.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* Answers a COMMAND_LOCAL request through req->on_done. */
void admin_execute(request *req, const command *cmd, size_t argc, const resp_arg *argv);

#endif
