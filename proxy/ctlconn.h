/* Control connections: a command/reply connection to a Redis server on the
 * event loop, for the modules that talk to shards outside the request path
 * (the store, the rebalancer's movers) and to Sentinels. Plain text, or
 * TLS to a shard when tls_shards is on and to a Sentinel when
 * tls_sentinels is: hiredis 0.14 (Debian's) has no
 * TLS, so the transport is a libevent bufferevent (bufferevent_openssl for
 * TLS) and hiredis only formats commands and parses replies (redisReader).
 *
 * The surface is hiredis's async API, name for name, so that code written
 * against it moves over mechanically: ctlconn for redisAsyncContext,
 * ctlconn_connect for redisAsyncConnect + redisLibeventAttach, and so on;
 * callbacks, reply objects (redisReply, freed after the callback), the
 * data pointer, err/errstr, and the order things are called in are
 * hiredis's:
 *  - replies go to their callbacks in order; a NULL callback drops one;
 *    after SUBSCRIBE or PSUBSCRIBE every later reply goes to its callback;
 *  - a failed connect calls the connect callback with CTLCONN_ERR, then
 *    every queued callback with a NULL reply, and frees the connection;
 *  - a connection lost calls every queued callback with a NULL reply, then
 *    the disconnect callback with CTLCONN_ERR, and frees it;
 *  - ctlconn_free calls every queued callback with a NULL reply, then the
 *    disconnect callback with CTLCONN_OK if it was connected; inside one
 *    of the connection's own callbacks it waits until that returns;
 *  - ctlconn_disconnect refuses new commands and frees the connection
 *    (disconnect callback CTLCONN_OK) once the replies due are in. */
#ifndef PROXY_CTLCONN_H
#define PROXY_CTLCONN_H

#include <stddef.h>

#include <hiredis/hiredis.h>

/* What the calls return and callbacks get as status: hiredis's values. */
#define CTLCONN_OK  REDIS_OK
#define CTLCONN_ERR REDIS_ERR

/* Whom a connection goes to, which says whether it is TLS (the peer's
 * certificate then checked against host), as the setting in force when
 * it is made says: a reload that changes the setting leaves connections
 * already open as they are. */
typedef enum ctlconn_peer {
    CTLCONN_SHARD,    /* TLS when tls_shards is on */
    CTLCONN_SENTINEL, /* TLS when tls_sentinels is on */
    CTLCONN_PLAIN,    /* always plain text */
} ctlconn_peer;

typedef struct ctlconn ctlconn;

/* A reply (a redisReply, NULL when the connection failed or is freed). */
typedef void ctlconn_reply_fn(ctlconn *c, void *reply, void *privdata);
/* Connected (CTLCONN_OK) or not; disconnected cleanly (OK) or not. */
typedef void ctlconn_status_fn(const ctlconn *c, int status);

struct ctlconn {
    int err;          /* non-zero once it failed */
    char errstr[256]; /* why, as hiredis's errstr */
    void *data;       /* the user's */
};

/* Starts connecting to host:port on srv.base: at once to a numeric host;
 * a host name is looked up first without blocking the loop (resolver.h),
 * commands queue meanwhile, and a lookup that fails is a failed connect
 * (errstr "cannot resolve host: ..."). NULL when out of memory; otherwise
 * a connection whose err is set when it failed at once (the caller frees
 * it then). */
ctlconn *ctlconn_connect(const char *host, int port, ctlconn_peer peer);

void ctlconn_set_connect_callback(ctlconn *c, ctlconn_status_fn *fn);
void ctlconn_set_disconnect_callback(ctlconn *c, ctlconn_status_fn *fn);

/* Queue a command; its reply goes to fn(c, reply, privdata). CTLCONN_OK,
 * or CTLCONN_ERR when the connection is failing or disconnecting, or the
 * command cannot be formatted. */
int ctlconn_command(ctlconn *c, ctlconn_reply_fn *fn, void *privdata, const char *format, ...);
int ctlconn_command_argv(ctlconn *c, ctlconn_reply_fn *fn, void *privdata, int argc,
                         const char **argv, const size_t *argvlen);
/* cmd is a whole RESP request of len bytes. */
int ctlconn_formatted_command(ctlconn *c, ctlconn_reply_fn *fn, void *privdata, const char *cmd,
                              size_t len);

/* Closes once the replies due are in; no new commands. */
void ctlconn_disconnect(ctlconn *c);

/* Closes now (see above). */
void ctlconn_free(ctlconn *c);

#endif
