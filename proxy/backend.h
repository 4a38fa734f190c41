/* Backend connections: per shard a small pool of connections to one Redis.
 * Requests' raw bytes are appended to a connection's output buffer (many
 * clients' requests go out in one write) and replies are matched FIFO by
 * finding each reply's end. A shard that is down answers at once with an
 * error; keys are never re-hashed elsewhere. */
#ifndef PROXY_BACKEND_H
#define PROXY_BACKEND_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event_struct.h>

#include "config/config.h"
#include "proxy/buf.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* Connection states. */
typedef enum backend_state {
    BACKEND_DOWN = 0,   /* not connected: waits for the reconnect timer, requests fail fast */
    BACKEND_CONNECTING, /* connect() in flight: requests queue behind it */
    BACKEND_UP,         /* connected: requests are written as they come */
    BACKEND_CLOSED,     /* the shard is being removed: nothing is sent */
} backend_state;

struct shard;

typedef struct backend_conn {
    struct shard *shard;
    int index; /* position in the shard's pool */
    int fd;    /* -1 when not connected */
    backend_state state;
    struct event ev_read;  /* persistent read interest while connected */
    struct event ev_write; /* write interest: connect completion or a full socket */
    struct event ev_timer; /* connect timeout, or reconnect delay */
    buf out;               /* request bytes not yet written */
    buf in;                /* reply bytes not yet matched */
    resp_reply scan;       /* progress through the current reply */
    fragment *head;        /* in-flight FIFO: sent or queued, awaiting replies */
    fragment *tail;
    size_t inflight;
    int backoff_ms; /* next reconnect delay */
    int dirty;      /* on the pending-flush list */
    struct backend_conn *next_dirty;
    char last_error[128]; /* why it is down */
    fragment auth;        /* the AUTH sent first when the shards need a password */
} backend_conn;

/* A shard at run time. */
typedef struct shard {
    char *name;
    char *host;
    uint16_t port;
    uint32_t weight;
    char label[400];              /* "s2 (127.0.0.1:7002)", for messages */
    struct sockaddr_storage addr; /* resolved once, at load or reload */
    socklen_t addrlen;
    backend_conn *conns;
    int nconns;
    /* counters for INFO shards */
    uint64_t requests;
    uint64_t errors; /* error replies made up by the proxy (down, busy, timeout) */
    uint64_t timeouts;
    uint64_t latency_us_sum;
    uint64_t replies;
} shard;

/* Creates a runtime shard (resolving its address once) with nconns
 * connections, not yet connected. NULL with a reason in err. */
__attribute__((warn_unused_result)) shard *backend_shard_new(const config_shard *cs, int nconns,
                                                             char *err, size_t errlen);

/* Starts connecting a new shard's connections. */
void backend_shard_start(shard *s);

/* Closes a shard's connections (in-flight requests get an error) and frees it. */
void backend_shard_free(shard *s);

/* Queues a fragment with its request bytes on one of s's connections (picked
 * by hint, so one client's requests keep their order). When the shard cannot
 * take it, f->done is called before this returns, with an error reply. */
void backend_send(shard *s, uint64_t hint, fragment *f, const char *bytes, size_t len);

/* Writes every connection's queued bytes: called once per loop iteration so
 * that requests from many clients share one write. */
int backend_flush_pending(void);

/* Periodic: fails requests older than the request timeout. */
void backend_tick(void);

/* "up", "connecting", "down" for the shard as a whole. */
const char *backend_shard_state(const shard *s);

/* Total in-flight requests of a shard. */
size_t backend_shard_inflight(const shard *s);

#endif
