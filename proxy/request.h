/* A client request and the fragments it is sent to backends as. A reply
 * travels back through callbacks stored here, so backends never call client
 * code and clients never reach into backends. */
#ifndef PROXY_REQUEST_H
#define PROXY_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/buf.h"

struct request;
struct fragment;
struct command;
struct shard;
struct backend_conn;

/* Called exactly once per fragment with its whole reply (or an error reply
 * the proxy made up, e.g. for a shard that is down). */
typedef void (*fragment_done_fn)(struct fragment *f, const char *reply, size_t len);

/* One piece of a request sent to one backend connection. */
typedef struct fragment {
    struct fragment *next; /* next in the backend's in-flight FIFO */
    struct request *req;   /* the request it belongs to */
    fragment_done_fn done; /* completion, set by the router */
    uint64_t sent_us;      /* loop clock when queued, for timeouts and latency */
    uint64_t block_us;     /* a blocking command's own timeout, added to request_timeout;
                              UINT64_MAX: it may block for ever */
    uint64_t end_offset;   /* the backend connection's queued byte count just after its
                              request: the request is all written once that many are */
    uint32_t shard;        /* index of the target shard */
    uint8_t harmless;      /* changes no data (a barrier's PING, CLIENT KILL): if its
                              connection is reset, running it later cannot matter */
    uint16_t sent_len;     /* its bytes on the connection, end_offset - sent_len on (cut to
                              16 bits: exact for what the slow log reads back there,
                              REQUEST_SENT_SHORT) */
    size_t first_key;      /* split: index of its first key in the request's key list */
    size_t nkeys;          /* split, key move: number of keys it carries */
    /* What one kind of fragment keeps (a fragment is of one kind only; the
     * unions keep the request, which embeds one fragment, small: it is
     * zeroed for every request). request_free frees the buffer as reply. */
    union {
        buf reply;     /* split, fan-out: a copy of its reply, kept until all parts are in */
        buf stale_del; /* key move: DEL of the source's copies, sent when the target
                          answers BUSYKEY (its copy is newer) */
    };
    union {
        size_t shards_asked;       /* RANDOMKEY: shards asked so far (the next is asked
                                      while they answer nil) */
        struct shard *move_source; /* key move: the shard its keys leave */
        struct backend_conn *conn; /* a backend's own fragment (AUTH, barrier): its
                                      connection */
    };
} fragment;

/* CLIENT REPLY: whether the client's replies are written. */
typedef enum session_reply {
    SESSION_REPLY_ON = 0, /* every reply */
    SESSION_REPLY_OFF,    /* none, until CLIENT REPLY ON */
    SESSION_REPLY_SKIP,   /* not the next command's, then every reply */
} session_reply;

/* State of a client connection that the router and local commands read or
 * change (CLIENT SETNAME, QUIT, transactions, subscriptions). Owned by the
 * client, reached through requests. */
typedef struct session {
    uint64_t id;              /* CLIENT ID */
    char *name;               /* CLIENT SETNAME, NULL when unset */
    char *lib_name;           /* CLIENT SETINFO LIB-NAME, NULL when unset */
    char *lib_ver;            /* CLIENT SETINFO LIB-VER, NULL when unset */
    int close_after_reply;    /* QUIT: close once the replies before it are out */
    int hold_input;           /* a blocking command (or EXEC, DISCARD, UNWATCH) is in flight:
                                 the client's next requests wait for its reply, as in Redis */
    int blocked;              /* a blocking command waits on its shard (shutdown does not) */
    session_reply reply_mode; /* CLIENT REPLY */
    int proto;                /* RESP version of its replies: 2, or 3 after HELLO 3 */
    const char *addr;         /* the client's address, for CLIENT LIST */
    uint64_t created_us;      /* when it connected */
    uint64_t last_cmd_us;     /* when its last command arrived */
    const char *last_cmd;     /* name of its last command (a command table string) */
    struct txn *txn;          /* reserved connection and transaction state, NULL when none */
    struct pubsub *pubsub;    /* subscriptions, NULL when none */
    /* Delivers bytes that answer no request (a pub/sub message) after the
     * replies already due. */
    void (*push)(struct session *s, const char *bytes, size_t len);
    /* Closes the client at the next flush, with a reason for the log. */
    void (*drop)(struct session *s, const char *reason);
    /* Reads no more requests and closes the client once the replies due,
     * the last just given included, are written; the reason is logged. */
    void (*close_after_replies)(struct session *s, const char *reason);
    /* The client connection's state (reading, paused, held, closing, ...),
     * for CLIENT LIST. */
    const char *(*state)(const struct session *s);
    /* The ACL user it is authenticated as (NULL before AUTH), and whether
     * that user may run anything, so that the router checks nothing more
     * (access.c). */
    const struct access_user *user;
    int unrestricted;
    struct session *prev; /* every client's session (srv.sessions), for CLIENT LIST */
    struct session *next;
} session;

/* Set in a request's hint (the backend connection choice) when its client
 * speaks RESP3: the request then goes on the shard's RESP3 connections, so
 * its reply comes in RESP3 and passes through unchanged. Client ids never
 * reach this bit. */
#define REQUEST_HINT_RESP3 (UINT64_C(1) << 63)

/* The hint a session's requests pick shard connections by: its id, which
 * keeps its requests on one connection per shard, and its protocol. */
static inline uint64_t session_hint(const session *s)
{
    return s->id | (s->proto == 3 ? REQUEST_HINT_RESP3 : 0);
}

/* A request this short is kept whole in request.head for the slow log
 * (GET, SET of small values, most of a cache's traffic): a few stores, no
 * buffer to manage. */
#define REQUEST_HEAD_MAX 64
/* request.head_len when the bytes are in request.args instead. */
#define REQUEST_HEAD_IN_ARGS 255
/* Bytes of a request copied for the slow log at most: room for the 32
 * arguments of 128 bytes an entry shows, with their RESP headers
 * (SLOWLOG_CAPTURE_MAX, slowlog.h). */
#define REQUEST_KEEP_MAX (32 * (128 + 24) + 24)

/* request.head_len when nothing was copied: the request went whole to one
 * pool connection (backend_send), whose output buffer keeps its bytes
 * until its reply (backend_sent_bytes). 0, what request_new leaves, so
 * that the common case of route() stores nothing: every other path sets
 * another value (a copy's, or REQUEST_HEAD_NONE). */
#define REQUEST_HEAD_SENT 0
/* request.head_len when nothing was kept (the slow log was off). */
#define REQUEST_HEAD_NONE 254
/* A request forwarded whole to one shard with at most this many bytes as
 * received (inline ones grow up to 5 times when encoded) is not copied for
 * the slow log: its bytes, at most UINT16_MAX (fragment.sent_len), are
 * read where the shard connection keeps them (backend_sent_bytes). */
#define REQUEST_SENT_SHORT 8192

/* Called once when a request's whole reply is known. owner is NULL when the
 * client went away meanwhile; the callback then just frees the request. */
typedef void (*request_done_fn)(struct request *req, const char *reply, size_t len);

typedef struct request {
    struct request *next;      /* next in the client's reply-order FIFO */
    void *owner;               /* the client, NULL once it has gone */
    session *session;          /* the client's session, NULL once it has gone */
    request_done_fn on_done;   /* the client's completion */
    int done;                  /* reply known and stored in small_reply or reply */
    uint8_t small_len;         /* bytes in small_reply (0: the reply is in `reply`) */
    uint8_t silent;            /* CLIENT REPLY OFF or SKIP: answered, but nothing written */
    uint8_t head_len;          /* SLOWLOG: bytes of the request kept in head, or
                                  REQUEST_HEAD_IN_ARGS: kept in args, REQUEST_HEAD_SENT (0): kept
                                  by the shard connection, REQUEST_HEAD_NONE: not kept */
    char small_reply[64];      /* a short reply that could not be written at once */
    buf reply;                 /* a longer one */
    const struct command *cmd; /* the command, for merging; set once it counts as a call
                                  (not rejected): its time and failure are then counted
                                  when its reply is known */
    size_t pending;            /* fragments not yet answered */
    fragment single;           /* the common case: one fragment, no allocation */
    fragment *frags;           /* split/fan-out: nfrags fragments (malloc'd) */
    size_t nfrags;
    size_t *key_order; /* split: for each key of the request, its slot in the
                          fragments' key lists (malloc'd) */
    size_t nkeys;
    uint64_t hint;                 /* backend connection choice (the client's id) */
    const struct shard *served_by; /* SLOWLOG: the shard of a reserved connection (a
                                      transaction's, a blocking command's) it went to;
                                      compared with srv.shards before use */
    /* A request is one of moved, an (un)subscribe or CONFIG GET / INFO; request_free
     * frees the buffer as saved_request. */
    union {
        buf saved_request; /* rebalancing: a request whose keys must move first keeps
                              a copy of its bytes, routed again once they have moved */
        buf confirmations; /* (un)subscribe: the reply made for it, given once the
                              shards have taken their parts */
        buf local_part;    /* CONFIG GET, INFO: what the proxy answers itself (an array
                              reply, the INFO text), merged with the shards' replies */
    };
    int migrated;              /* its keys were moved: route by the new ring only */
    char *migrate_error;       /* first failure moving its keys (malloc'd) */
    struct move_job *moves;    /* its key moves, while they are sent (migrate.c) */
    struct request *next_wait; /* in the rebalance barrier's wait list */
    /* Not zeroed by request_new (it zeroes only what comes before): */
    uint64_t start_us; /* loop clock when it was dispatched, for its time in the proxy
                          (INFO commandstats and latencystats, SLOWLOG, /metrics) */
    /* SLOWLOG: the request's bytes in RESP (router.c capture), for an entry
     * should it turn out slow: a short request in head, a longer one's
     * first bytes in args (kept across reuse, so steady traffic allocates
     * nothing for it); neither when the slow log is off. */
    char head[REQUEST_HEAD_MAX];
    buf args;
} request;

/* Whether req's reply is due in RESP3: its client spoke RESP3 when it was
 * sent, so the shards answered it in RESP3 and the proxy's own replies
 * must be too. */
static inline int request_resp3(const request *req)
{
    return (req->hint & REQUEST_HINT_RESP3) != 0;
}

/* Takes a request from a free list (or allocates one), zeroed. NULL when out
 * of memory. */
request *request_new(void);

/* Copies the first REQUEST_KEEP_MAX of the request's bytes (RESP) into
 * req->args for the slow log (head_len REQUEST_HEAD_IN_ARGS). */
void request_keep_bytes(request *req, const char *bytes, size_t len);

/* Returns a request to the free list; frees its buffers and fragments. */
void request_free(request *req);

/* Releases cached free requests (memory back to the system when idle). */
void request_trim_cache(void);

/* Answers req through req->on_done with the error line "-<text>\r\n",
 * text formatted from fmt and cut at 596 bytes (the whole line stays under
 * 600); CR and LF in it (from a client-supplied name) become spaces, so the
 * reply stays one line. */
void request_error(request *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Answers req with the reply built in b, or with "-ERR out of memory" when
 * an append to b failed (buf_failed). b is not freed. */
void request_reply_buf(request *req, const buf *b);

/* Answers req with text (INFO, CLIENT LIST): a bulk string, or for a
 * RESP3 request a verbatim string of format "txt", as Redis 7 answers. */
void request_reply_text(request *req, const char *text, size_t len);

/* Appends the header of a reply of key-value pairs: a RESP3 request's is
 * a map of that many entries, a RESP2 one's a flat array twice as long.
 * 0 or -1, as buf_append_header. */
int request_append_map_header(const request *req, buf *b, int64_t pairs);

/* What request_crossslot says of keys on several shards. */
#define REQUEST_KEYS_APART "Keys in request don't hash to the same shard"

/* Answers req with Redis Cluster's CROSSSLOT error for keys on different
 * shards where one shard is needed, and counts it (INFO errors_crossslot).
 * what: REQUEST_KEYS_APART, with a suffix saying which shard it must be;
 * " (use {hash tags})" follows. */
void request_crossslot(request *req, const char *what);

#endif
