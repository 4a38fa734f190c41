/* CLIENT PAUSE: the proxy's own clients' commands (all of them, or only
 * those that may write) wait in the proxy for a time, as Redis 7 holds its
 * clients; the shards are not touched, so other proxies and direct clients
 * go on. A paused command keeps its client's order: the client's later
 * requests wait behind it (session hold_input). */
#ifndef PROXY_PAUSE_H
#define PROXY_PAUSE_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/command.h"
#include "proxy/request.h"
#include "proxy/resp.h"
#include "proxy/server.h"

/* What a pause holds; srv.client_pause holds the one in force. */
typedef enum pause_mode {
    PAUSE_NONE = 0, /* nothing paused */
    PAUSE_WRITE,    /* commands that may write (Redis's write and may_replicate flags,
                       and EXEC) */
    PAUSE_ALL,      /* every command but CLIENT UNPAUSE */
} pause_mode;

/* Routes a paused command once the pause ends (the router's entry point):
 * argv and raw point into the request's saved bytes. */
typedef void (*pause_reroute_fn)(request *req, size_t argc, const resp_arg *argv, const char *raw,
                                 size_t raw_len);

/* CLIENT PAUSE ms mode. A pause in force is extended, never shortened or
 * weakened, as in Redis: it ends at the later of the two ends, holding
 * what the stricter mode holds. */
void pause_start(pause_mode mode, uint64_t ms);

/* CLIENT UNPAUSE, or the pause's time is up: the paused commands are
 * routed, in the order they came. */
void pause_stop(void);

/* Whether cmd must wait now. Inline: the router asks for every request,
 * and outside a pause this is one load. */
static inline int pause_holds(const command *cmd)
{
    if (__builtin_expect(srv.client_pause == PAUSE_NONE, 1))
        return 0;
    if (cmd->flags & COMMAND_FLAG_NEVER_PAUSED)
        return 0;
    return srv.client_pause == PAUSE_ALL || (cmd->flags & COMMAND_FLAG_PAUSED_BY_WRITE);
}

/* Keeps a copy of the request's multibulk bytes and holds it (and its
 * client's later requests) until the pause ends, then calls reroute
 * (every caller passes the same function). */
void pause_postpone(request *req, const char *bytes, size_t len, pause_reroute_fn reroute);

/* Exit: frees the commands still paused (their clients are gone). */
void pause_shutdown(void);

#endif
