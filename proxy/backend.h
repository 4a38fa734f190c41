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
#include <time.h>

#include <event2/event_struct.h>

#include "config/config.h"
#include "proxy/buf.h"
#include "proxy/flushq.h"
#include "proxy/request.h"
#include "proxy/resp.h"
#include "proxy/tls.h"

/* Connection states. A pool connection cycles DOWN -> CONNECTING -> UP ->
 * DOWN until its shard is removed (CLOSED); a reserved one goes DOWN ->
 * CONNECTING -> UP and ends GONE, never reconnecting. */
typedef enum backend_state {
    BACKEND_DOWN = 0,   /* not connected: waits for the reconnect timer, requests fail fast
                           (a reserved connection: only until it starts connecting) */
    BACKEND_CONNECTING, /* connect() in flight: requests queue behind it */
    BACKEND_UP,         /* connected: requests are written as they come */
    BACKEND_CLOSED,     /* the shard is being removed: nothing is sent */
    BACKEND_GONE,       /* reserved only, final: failed or closed, its owner told; requests
                           fail fast; freed once not inside its own read callback */
} backend_state;

struct shard;

/* What a reserved connection tells its owner: push is a reply that matched
 * no request (pub/sub messages and confirmations, in push mode), or NULL
 * when the connection is gone (the shard closed it, a timeout, the shard
 * was removed): the owner then drops its handle, which is freed. */
typedef void (*backend_event_fn)(void *owner, const char *push, size_t len);

typedef struct backend_conn {
    struct shard *shard;
    int index; /* position in the shard's pool */
    int fd;    /* -1 when not connected */
    backend_state state;
    tls_conn tls;          /* tls_shards: TLS on fd (tls.ssl NULL otherwise); CONNECTING lasts until
                              its handshake is done */
    struct event ev_read;  /* persistent read interest while connected */
    struct event ev_write; /* write interest: connect completion or a full socket */
    struct event ev_timer; /* connect timeout, or reconnect delay */
    buf out;               /* request bytes not yet written */
    buf in;                /* reply bytes not yet matched */
    resp_reply scan;       /* progress through the current reply */
    fragment *head;        /* in-flight FIFO: sent or queued, awaiting replies */
    fragment *tail;
    size_t inflight;
    /* request_timeout measures the head's lack of progress: its clock is the
     * later of head->sent_us and progress_us */
    uint64_t queued_total;  /* bytes ever queued on out (AUTH and push writes too) */
    uint64_t written_total; /* of those, bytes written to the shard */
    uint64_t progress_us;   /* loop clock of the last reply bytes read, or of a write
                               while the head's request was not all written */
    int backoff_ms;         /* next reconnect delay */
    flushq_link flush;      /* on the pending-flush queue */
    int write_waiting;      /* ev_write is added: the socket was full */
    char last_error[128];   /* why it is down */
    uint64_t logged_why;    /* hash of the failure last logged, and when: the same
                               failure again within BACKEND_RELOG_US is not logged */
    uint64_t logged_us;
    char laddr[64];          /* our end, as the shard names it in CLIENT LIST (addr=) */
    fragment auth;           /* the AUTH sent first when the shards need a password */
    fragment role;           /* the ROLE sent next to a sentinel shard or a read replica */
    fragment name;           /* CLIENT SETNAME ringproxy-<ring>-<proxy>, then */
    fragment ring_check;     /* the ring check (backend.c): the shards run our ring */
    int handshake_pending;   /* answers (ROLE "master", the ring check) still awaited:
                                nothing else is written until they are in */
    int resp3;               /* speaks RESP3: HELLO 3 goes first, replies come in RESP3 */
    fragment hello;          /* that HELLO 3 */
    fragment client_id;      /* the CLIENT ID a reserved connection asks first */
    int64_t shard_client_id; /* its answer: this connection's id on the shard, 0 until known */
    /* reserved connections only (backend_reserve): owned by one client */
    int reserved;
    int push_mode;             /* every reply goes to on_event; none is matched to a request */
    backend_event_fn on_event; /* the owner's callback */
    void *owner;               /* its argument */
    fragment *barrier;         /* the PING on the shared connection that writes wait for */
    int lingering;             /* holds nothing of the owner's: may close when idle */
    uint64_t idle_since_us;    /* when it last had nothing in flight */
    int busy;                  /* inside its own read callback: freeing waits */
    struct backend_conn *prev_reserved; /* every reserved connection, for timeouts */
    struct backend_conn *next_reserved;
} backend_conn;

/* Old connections a shard remembers until it confirms they are gone: one
 * per reset with requests in flight; a shard that stays paused for minutes
 * takes one per request_timeout plus reconnect delay. */
#define BACKEND_UNCONFIRMED_MAX 64

/* A shard at run time: its connections and counters. Only what names the
 * connection (name, address) is copied from the config; placement (weight)
 * is read from srv.cfg, since a reload keeps the object and may change it. */
typedef struct shard {
    char *name;
    char *host;            /* current address; "" while a sentinel shard's is unknown */
    uint16_t port;         /* 0 while unknown */
    char *sentinel_master; /* the master's name at the Sentinels, NULL for a host:port line */
    struct shard *replica; /* a replica that read_from may send reads to, NULL = none known */
    int role_refused;      /* a connection found it no master (ROLE): the Sentinels module
                              asks again at its next tick and clears it */
    int is_replica;        /* a read replica (some shard's replica): its connections check
                              ROLE says a replica in sync, not a master */
    char label[400];       /* "s2 (127.0.0.1:7002)", for messages */
    struct sockaddr_storage addr; /* where connections go; addrlen 0 = not known yet */
    socklen_t addrlen;
    int dns_name;   /* host is a name, resolved (and again later) by dns.c, never here */
    int dns_wanted; /* a pool connection failed: dns.c resolves the name again and clears it */
    uint64_t id;    /* unique among the shard objects of this process */
    uint64_t address_changes;  /* addresses set after the first one (a name resolving anew) */
    time_t address_changed_at; /* when the last was, 0 = never */
    struct shard *prev_live;   /* every shard object not yet freed (backend_shard_live_first) */
    struct shard *next_live;
    backend_conn *conns; /* 2 * nconns: the RESP2 pool, then the RESP3 pool */
    int nconns;          /* connections per pool */
    int resp3_started;   /* a RESP3 client's request came: the RESP3 pool is connected */
    /* counters for INFO shards */
    uint64_t requests;
    uint64_t errors; /* error replies made up by the proxy (down, busy, timeout) */
    uint64_t timeouts;
    uint64_t latency_us_sum;
    uint64_t replies;
    int reserved; /* reserved connections open to it (transactions, blocking, pub/sub, kills) */
    /* Our old connections to it that were reset with requests in flight:
     * a paused or slow shard may still run those requests. Kept by address
     * until the shard says they are gone (backend_shard_confirm_gone). */
    char unconfirmed[BACKEND_UNCONFIRMED_MAX][64];
    int n_unconfirmed;
    uint64_t unconfirmed_dropped; /* forgotten for want of room (logged) */
    /* MIGRATEs in flight with it as source and as target (rebalance.c's
     * admission: never both at once) */
    int migrating_out;
    int migrating_in;
    /* set by backend_shard_retire */
    uint64_t retired_us;        /* when it was retired */
    struct shard *next_retired; /* the retired list */
} shard;

/* Creates a runtime shard with nconns connections, not yet connected. A
 * numeric address is used as is; a hostname is left unresolved (dns_name:
 * dns.c resolves it without blocking; until then requests fail fast).
 * NULL with a reason in err. */
__attribute__((warn_unused_result)) shard *backend_shard_new(const config_shard *cs, int nconns,
                                                             char *err, size_t errlen);

/* Starts connecting a new shard's connections (not those of a sentinel
 * shard whose master is not known yet: requests to it fail fast). */
void backend_shard_start(shard *s);

/* Whether s was made from a [shards] line like cs: the same host:port, or
 * the same sentinel master (whatever address it has now). */
int backend_shard_same_source(const shard *s, const config_shard *cs);

/* Points s at a new address (a failover): its connections close, their
 * requests in flight get "-ERR shard <label> unavailable: ...", reserved
 * connections end, and the pool reconnects to host:port (once dns.c has
 * resolved host, when it is a name). Keys do not move: the shard keeps
 * its name and place on the ring. 0, or -1 with a reason in err and s
 * unchanged. */
__attribute__((warn_unused_result)) int
backend_shard_readdress(shard *s, const char *host, uint16_t port, char *err, size_t errlen);

/* Points s (keeping its host name and port) at the address sa, the
 * answer of a lookup of its name. When s had another address, its
 * connections close as for backend_shard_readdress, their requests in
 * flight getting "-ERR shard <label> unavailable: <why>", and the change
 * is counted; keys do not move. Nothing happens when sa is the address s
 * has. 1 when the address changed, 0 when not, -1 (s unchanged) when sa is
 * not an IPv4 or IPv6 address. */
__attribute__((warn_unused_result)) int
backend_shard_set_address(shard *s, const struct sockaddr *sa, socklen_t len, const char *why);

/* The numeric address s connects to ("10.0.0.7", "::1"), for what must name
 * it to hiredis or to a shard (MIGRATE): its host when that is numeric or
 * not resolved yet. */
void backend_shard_ip(const shard *s, char *out, size_t outlen);

/* Every shard object not yet freed (in srv.shards or not: replicas,
 * retired ones, a migration's old ones), linked by next_live. */
shard *backend_shard_live_first(void);

/* Closes a shard's connections (in-flight requests get an error) and frees it. */
void backend_shard_free(shard *s);

/* Points s's reads (read_from) at the replica at host:port, or at none
 * when host is NULL. A replica dropped or replaced finishes what was sent
 * to it. 0, or -1 with a reason in err. */
__attribute__((warn_unused_result)) int
backend_shard_set_replica(shard *s, const char *host, uint16_t port, char *err, size_t errlen);

/* Takes a shard that a reload dropped or re-addressed out of service
 * without failing what was already sent to it: its reserved connections end
 * now (their owners are told), and the shard is freed once every request in
 * flight on its shared connections is answered or times out. Nothing new
 * may be sent to it. */
void backend_shard_retire(shard *s);

/* The shard confirmed that our old connection laddr is gone (CLIENT KILL
 * ADDR answered): nothing sent on it can run any more. */
void backend_shard_confirm_gone(shard *s, const char *laddr);

/* Applies request_timeout to s's connections: for shards that are not in
 * srv.shards but still answer (a removed shard whose keys are moving off). */
void backend_shard_check_timeouts(shard *s);

/* The retired shards still answering, linked by next_retired. */
shard *backend_retired_first(void);

/* Frees every retired shard now (exit). */
void backend_retired_free_all(void);

/* Connections in s's pools now: nconns, twice that once the RESP3 pool
 * started. Connection j of them is the one backend_pool_hint(s, j) picks. */
int backend_pool_size(const shard *s);
uint64_t backend_pool_hint(const shard *s, int j);

/* Queues a fragment with its request bytes on one of s's connections (picked
 * by hint, so one client's requests keep their order; REQUEST_HINT_RESP3 in
 * it picks the RESP3 pool, connected at its first use). When the shard cannot
 * take it, f->done is called before this returns, with an error reply. */
void backend_send(shard *s, uint64_t hint, fragment *f, const char *bytes, size_t len);

/* The bytes f was queued with by backend_send, for f's completion only
 * (the pool connection keeps what it wrote from its oldest fragment
 * awaiting a reply on), so the slow log reads a slow request there
 * instead of copying every request (REQUEST_HEAD_SENT). NULL when they
 * are no longer there. Valid until the completion returns. */
const char *backend_sent_bytes(const fragment *f, size_t *len);

/* Writes every connection's queued bytes: called once per loop iteration so
 * that requests from many clients share one write. */
int backend_flush_pending(void);

/* Periodic: fails a connection's requests when the shard has made no
 * progress on the oldest of them (read none of its reply, taken none of its
 * request's bytes) for the request timeout. */
void backend_tick(void);

/* Answers f with the error any request gets when s times out ("-ERR shard
 * <label> timeout"), counted like one (the shard's timeouts, the server's
 * errors_timeout): for a request that waits on a shard outside a
 * connection's in-flight queue, such as a pub/sub change waiting for its
 * confirmation. */
void backend_fragment_timeout(shard *s, fragment *f);

/* ---- reserved connections ----
 * A connection to one shard owned by one client, outside the pool, for
 * what cannot share a connection: a transaction (MULTI, WATCH), a blocking
 * command, subscriptions. It connects (and AUTHs) like a pool connection
 * but never reconnects: when it fails, its requests get an error and the
 * owner is told. */

/* Opens a reserved connection to s, speaking RESP3 when resp3 is set. In
 * push mode every reply goes to on_event(owner, ...) unmatched; otherwise
 * replies are matched to the fragments sent with backend_reserved_send, in
 * order, and the connection learns its id on the shard (shard_client_id:
 * CLIENT ID is its first request, for CLIENT UNBLOCK). Its writes wait for
 * a barrier (backend_reserved_barrier) when one is asked for. NULL with a
 * reason in err when no socket can be made. */
__attribute__((warn_unused_result)) backend_conn *
backend_reserve(shard *s, int push_mode, int resp3, backend_event_fn on_event, void *owner,
                char *err, size_t errlen);

/* Holds c's writes until every request queued so far on the pool
 * connection that hint picks has been answered (a PING behind them), so
 * nothing the owner sent there earlier runs after what it sends on c. */
void backend_reserved_barrier(backend_conn *c, uint64_t hint);

/* Queues a fragment on a reserved connection; as backend_send. The
 * fragment's block_us extends the request timeout for a command that
 * blocks on the shard. */
void backend_reserved_send(backend_conn *c, fragment *f, const char *bytes, size_t len);

/* Queues bytes whose replies come back through on_event (push mode). 0, or
 * -1 when the connection has gone or memory ran out. */
__attribute__((warn_unused_result)) int backend_reserved_write(backend_conn *c, const char *bytes,
                                                               size_t len);

/* Whether the owner's state still needs c: a lingering connection idle for
 * BACKEND_LINGER_MS is closed (and the owner told), so a client that ran
 * one transaction does not keep a shard connection for ever. */
void backend_reserved_linger(backend_conn *c, int lingering);

/* Fails every reserved connection (their owners are told), e.g. when the
 * ring changes and what is pinned to a shard could not follow its keys. */
void backend_reserved_close_all(const char *why);

/* Closes a reserved connection at the owner's request; its requests still
 * in flight get an error. The owner is not called back and drops c. */
void backend_reserved_close(backend_conn *c);

/* "up", "connecting", "down" for the shard as a whole. */
const char *backend_shard_state(const shard *s);

/* Total in-flight requests of a shard. */
size_t backend_shard_inflight(const shard *s);

#endif
