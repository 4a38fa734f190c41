/* Client connections. Each request gets a reply slot in a FIFO; a reply that
 * completes at the head of the FIFO is copied straight to the output buffer,
 * a later one waits in its slot, so replies leave in request order whichever
 * shard answers first. A big request or reply (BUF_HANDOFF_MIN) is handed
 * over between buffers instead of copied, so it is held once. */
#include "proxy/client.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "proxy/access.h"
#include "proxy/buf.h"
#include "proxy/command.h"
#include "proxy/dlist.h"
#include "proxy/flushq.h"
#include "proxy/log.h"
#include "proxy/pubsub.h"
#include "proxy/request.h"
#include "proxy/resp.h"
#include "proxy/router.h"
#include "proxy/server.h"
#include "proxy/tls.h"
#include "proxy/slowlog.h"

/* Largest single read while a big request is arriving. */
#define CLIENT_MAX_READ (4 * 1024 * 1024)
/* Requests of one client waiting on shards at once: reading the client
 * pauses at this many and resumes at half. It bounds what one client can
 * make the shards produce before any of its replies is back: without it, a
 * client pipelining GETs of a big value and reading nothing has every GET
 * of each read forwarded, and a shard builds gigabytes of replies (in its
 * own memory) before client_output_pause or max_client_output can act. */
#define CLIENT_MAX_INFLIGHT 256
/* The cap a new client starts with (inflight_cap). A client's requests
 * share its shard's connection with every other client there, and a
 * shard answers them in order: a reply nobody reads (the client stopped
 * reading, or was dropped and its replies are orphans) still crosses that
 * connection ahead of the replies queued behind it. So a client may have
 * in flight only what client_output_pause can hold of replies as big as
 * its last big one; a new client, whose reply sizes are not known yet,
 * starts with this many and gains one per small reply, as TCP's slow
 * start, so a client pipelining small requests is soon at
 * CLIENT_MAX_INFLIGHT. */
#define CLIENT_START_INFLIGHT 16

/* What a client connection may do with its input. The output side, a
 * socket too full to take the replies (write_waiting), is independent of
 * it: any state may have to wait for that. */
typedef enum client_state {
    CLIENT_ACCEPTED = 0, /* just accepted, no event set up: becomes READING at once */
    CLIENT_READING,      /* reads, scans and dispatches requests */
    CLIENT_PAUSED,       /* takes no requests: reply bytes the client has not read are
                            over client_output_pause, or inflight_cap requests wait on
                            shards; resumes once both are down to half. Its input is still
                            read and held (bound_held_input): a client that writes a whole
                            pipeline before it reads a reply (hiredis, redis-py) would
                            otherwise never finish writing, and never read */
    CLIENT_HELD,         /* a blocking command (or EXEC, DISCARD, UNWATCH) is in flight
                            (sess.hold_input): like Redis with a blocked client, later
                            requests wait in `in` for its reply; reading goes on so that
                            a client closing is seen */
    CLIENT_CLOSING,      /* takes no more requests (QUIT, a protocol error, a failed
                            subscription): closes once the replies due are written */
    CLIENT_DROPPING,     /* broke a limit (drop_reason): closed at the next flush without
                            waiting for its replies */
} client_state;

typedef struct client {
    int fd;
    char addr[64]; /* peer, for log lines */
    client_state state;
    struct event ev_read;  /* read interest: added exactly in READING and HELD */
    struct event ev_write; /* write interest while the socket is full */
    int write_waiting;     /* ev_write is added */
    buf in;                /* request bytes not yet scanned */
    resp_request scan;     /* progress through the current request */
    request *head;         /* reply-order FIFO */
    request *tail;
    size_t waiting_bytes; /* reply bytes held in slots behind the head */
    size_t inflight;      /* requests whose reply is not known yet */
    size_t inflight_cap;  /* inflight that pauses reading (CLIENT_START_INFLIGHT) */
    buf out;              /* reply bytes ready to write */
    session sess;
    const char *drop_reason; /* DROPPING: why, for the log */
    uint64_t last_active_us; /* last whole request (or the accept), by srv.now_us */
    flushq_link flush;       /* on the pending-flush queue */
    tls_conn tls;            /* a tls_listen client's TLS; tls.ssl NULL for plain text */
    struct client *prev;     /* all clients */
    struct client *next;
} client;

static client *clients;
/* Clients with replies to write, in the order their replies came. */
static flushq pending = FLUSHQ_INIT(pending);

static void on_read(evutil_socket_t fd, short what, void *arg);
static void on_write(evutil_socket_t fd, short what, void *arg);

static void mark_dirty(client *c)
{
    flushq_push(&pending, &c->flush);
}

static const char *state_name(client_state st)
{
    switch (st) {
    case CLIENT_ACCEPTED:
        return "accepted";
    case CLIENT_READING:
        return "reading";
    case CLIENT_PAUSED:
        return "paused";
    case CLIENT_HELD:
        return "held";
    case CLIENT_CLOSING:
        return "closing";
    case CLIENT_DROPPING:
        return "dropping";
    }
    return "?";
}

/* Whether the socket's read interest is on in this state. */
static int state_reads(client_state st)
{
    return st == CLIENT_READING || st == CLIENT_PAUSED || st == CLIENT_HELD;
}

static void state_bug(const client *c, client_state st)
{
    log_error("BUG: client %s: state %s (%d) -> %s (%d)", c->addr, state_name(c->state),
              (int)c->state, state_name(st), (int)st);
    abort();
}

/* The one place a client changes state; read interest follows it. CLOSING
 * only ever gives way to DROPPING, and DROPPING is final. */
static void set_state(client *c, client_state st)
{
    client_state from = c->state;
    if (from == st)
        return;
    log_debug("client %s: %s -> %s", c->addr, state_name(from), state_name(st));
    switch (st) {
    case CLIENT_READING:
    case CLIENT_PAUSED:
    case CLIENT_HELD:
        if (from == CLIENT_CLOSING || from == CLIENT_DROPPING)
            state_bug(c, st);
        break;
    case CLIENT_CLOSING:
        if (from == CLIENT_DROPPING)
            state_bug(c, st);
        break;
    case CLIENT_DROPPING:
        break;
    default: /* nothing goes back to ACCEPTED */
        state_bug(c, st);
    }
    c->state = st;
    if (state_reads(st) && !state_reads(from))
        event_add(&c->ev_read, NULL);
    else if (!state_reads(st) && state_reads(from))
        event_del(&c->ev_read);
}

/* Stops taking requests for a while (replies pile up); the state it
 * resumes in is worked out when it does. */
static void pause_requests(client *c)
{
    if (c->state == CLIENT_READING || c->state == CLIENT_HELD)
        set_state(c, CLIENT_PAUSED);
}

/* Takes no more requests and closes once the replies due are out, unless
 * it is being dropped already. */
static void close_after_replies(client *c)
{
    if (c->state != CLIENT_DROPPING)
        set_state(c, CLIENT_CLOSING);
}

static void client_free(client *c, const char *reason)
{
    if (reason)
        log_info("client %s: closed: %s", c->addr, reason);
    else
        log_debug("client %s: closed", c->addr);
    event_del(&c->ev_read);
    event_del(&c->ev_write);
    tls_conn_close(&c->tls);
    close(c->fd);
    /* Requests still waiting on a backend become orphans: their replies are
     * dropped when they arrive. */
    request *req = c->head;
    while (req) {
        request *next = req->next;
        if (req->done) {
            request_free(req);
        } else {
            req->owner = NULL;
            req->session = NULL;
            req->next = NULL;
        }
        req = next;
    }
    /* Its transaction, subscriptions and reserved connections go; what was
     * in flight on them answers the orphans above. */
    router_session_end(&c->sess);
    DLIST_UNLINK(srv.sessions, &c->sess, prev, next);
    flushq_remove(&pending, &c->flush);
    DLIST_UNLINK(clients, c, prev, next);
    buf_free(&c->in);
    buf_free(&c->out);
    resp_request_free(&c->scan);
    free(c->sess.name);
    free(c->sess.lib_name);
    free(c->sess.lib_ver);
    free(c);
    srv.nclients--;
}

/* Drops a client that broke a limit, at the next flush (it may be in the
 * middle of a callback now). */
static void drop_later(client *c, const char *reason)
{
    if (c->state != CLIENT_DROPPING) {
        c->drop_reason = reason;
        srv.stats.clients_dropped++;
        set_state(c, CLIENT_DROPPING);
    }
    mark_dirty(c);
}

static size_t queued_bytes(const client *c)
{
    return buf_len(&c->out) + c->waiting_bytes;
}

/* A paused client's requests wait in c->in, read but not taken: with its
 * unread replies they are held for it, and max_client_output bounds both
 * (a client that writes and never reads is dropped there, as one whose
 * replies alone reach it). */
static void bound_held_input(client *c)
{
    if (c->state == CLIENT_PAUSED &&
        (int64_t)(queued_bytes(c) + buf_len(&c->in)) > srv.cfg->max_client_output)
        drop_later(c, "requests held and replies unread over max_client_output (client not "
                      "reading its replies)");
}

/* Counts an error reply given to req (reply starts with '-'): INFO
 * errorstats by its first word, total_error_replies, and the command's
 * failed_calls when req was a call (req->cmd set) rather than a rejection. */
static void count_error(const request *req, const char *reply, size_t len)
{
    server_stats *st = &srv.stats;
    st->error_replies++;
    if (req->cmd)
        command_stats[req->cmd->stat].failed_calls++;
    size_t n = 1;
    while (n < len && n <= SERVER_ERROR_KIND_MAX && reply[n] != ' ' && reply[n] != '\r')
        n++;
    const char *kind = reply + 1;
    size_t kind_len = n - 1;
    for (size_t i = 0; i < st->nerrorstats; i++)
        if (strncmp(st->errorstats[i].kind, kind, kind_len) == 0 &&
            st->errorstats[i].kind[kind_len] == '\0') {
            st->errorstats[i].count++;
            return;
        }
    if (st->nerrorstats == SERVER_ERRORSTATS_MAX) {
        st->errorstats_dropped++;
        return;
    }
    server_errorstat *e = &st->errorstats[st->nerrorstats++];
    memcpy(e->kind, kind, kind_len);
    e->kind[kind_len] = '\0';
    e->count = 1;
}

/* What account() leaves out of line: an error reply, a slow call. */
static __attribute__((noinline)) void account_rare(request *req, const char *reply, size_t len,
                                                   uint64_t took)
{
    if (len && reply[0] == '-')
        count_error(req, reply, len);
    if (req->cmd && took >= (uint64_t)srv.cfg->slowlog_slower_than)
        slowlog_add(req, took);
}

/* account() for a call whose time's histogram slot may be an edge or
 * slow (above slowlog_fast_slots). */
static __attribute__((noinline)) void account_slow_slot(request *req, const char *reply, size_t len,
                                                        uint64_t took, histogram *h)
{
    histogram_record(h, took);
    /* -1 (off) is the largest uint64_t: one comparison. */
    if (took >= (uint64_t)srv.cfg->slowlog_slower_than || (len && reply[0] == '-'))
        account_rare(req, reply, len, took);
}

/* Counts a request whose reply is known: for a call (not a rejection) its
 * time in the proxy (commandstats, latencystats); errors by kind (INFO
 * errorstats) and a slow log entry when it was slow. The time runs from
 * the loop iteration that dispatched it to the one its reply came in; the
 * reply is written in that iteration unless the client's socket is full. */
static inline void account(request *req, const char *reply, size_t len, int may_be_empty)
{
    const command *cmd = req->cmd;
    if (cmd) {
        uint64_t took = srv.now_us - req->start_us;
        command_counters *k = cmd->counters;
        k->usec += took;
        /* One comparison for a slow call and the histogram's edges (0 µs,
         * 2^32 µs and more): slowlog_fast_slots. */
        uint64_t slot = histogram_slot_raw(took);
        if (__builtin_expect(slot > slowlog_fast_slots, 0)) {
            account_slow_slot(req, reply, len, took, &k->latency);
            return;
        }
        k->latency.count[slot]++;
    }
    /* Empty (len 0, reply NULL) only for a request whose client went away:
     * a command always gets a reply. */
    if (__builtin_expect((!may_be_empty || len) && reply[0] == '-', 0))
        account_rare(req, reply, len, 0);
}

/* account() for a request whose client went away. */
static __attribute__((noinline)) void account_gone(request *req, const char *reply, size_t len)
{
    account(req, reply, len, 1);
}

/* The completion stored in every request of this client. */
static void request_finished(request *req, const char *reply, size_t len)
{
    client *c = req->owner;
    if (__builtin_expect(!c, 0)) {
        account_gone(req, reply, len);
        request_free(req);
        return;
    }
    account(req, reply, len, 0);
    c->inflight--;
    /* What the next requests may have in flight: see CLIENT_START_INFLIGHT.
     * The division is for big replies only. */
    if ((int64_t)len * CLIENT_MAX_INFLIGHT > srv.cfg->client_output_pause) {
        int64_t fit = srv.cfg->client_output_pause / (int64_t)len;
        c->inflight_cap = fit > 1 ? (size_t)fit : 1;
    } else if (c->inflight_cap < CLIENT_MAX_INFLIGHT) {
        c->inflight_cap++;
    }
    if (req->silent)
        len = 0; /* CLIENT REPLY OFF or SKIP: keeps its place, writes nothing */
    /* A RESP3 request's reply never holds RESP2's nulls: the shards answer
     * it on RESP3 connections (which send '_'), and the proxy's own null
     * replies (CLIENT GETNAME, a lock not held, ...) are written '_' here,
     * the one place they all pass. */
    if (__builtin_expect(request_resp3(req), 0) && len == 5 &&
        (memcmp(reply, "$-1\r\n", 5) == 0 || memcmp(reply, "*-1\r\n", 5) == 0)) {
        reply = "_\r\n";
        len = 3;
    }
    if (req != c->head) {
        /* Most replies are a few bytes: keep them in the request itself. A
         * big one offered by its shard connection is taken, not copied. */
        if (len <= sizeof(req->small_reply)) {
            memcpy(req->small_reply, reply, len);
            req->small_len = (uint8_t)len;
        } else if (buf_append_msg(&req->reply, reply, len) < 0) {
            drop_later(c, "out of memory holding a reply");
            return;
        }
        req->done = 1;
        c->waiting_bytes += len;
    } else {
        /* A big reply offered by its shard connection (buf_offer) becomes
         * the output buffer when that is empty: it is not copied. */
        int fail = buf_append_msg(&c->out, reply, len) < 0;
        c->head = req->next;
        request_free(req);
        /* Later replies that were waiting for this one can go now. */
        while (!fail && c->head && c->head->done) {
            request *r = c->head;
            const char *bytes = r->small_len ? r->small_reply : buf_head(&r->reply);
            size_t n = r->small_len ? r->small_len : buf_len(&r->reply);
            fail = buf_append(&c->out, bytes, n) < 0;
            c->waiting_bytes -= n;
            c->head = r->next;
            request_free(r);
        }
        if (!c->head)
            c->tail = NULL;
        if (fail) {
            drop_later(c, "out of memory queueing replies");
            return;
        }
        mark_dirty(c);
    }
    if ((int64_t)queued_bytes(c) > srv.cfg->max_client_output)
        drop_later(c, "reply bytes over max_client_output (client not reading its replies)");
    else if ((int64_t)queued_bytes(c) > srv.cfg->client_output_pause)
        pause_requests(c);
}

static client *client_of(session *s)
{
    return (client *)(void *)((char *)s - offsetof(client, sess));
}

static request *enqueue(client *c);

/* Bytes that answer no request (a pub/sub message) take a slot at the tail
 * of the FIFO: they leave after the replies already due. A subscriber that
 * stops reading is closed at max_pubsub_output, Redis's pub/sub output
 * class: client_output_pause cannot help it (it sends nothing to stop
 * reading), and max_client_output is sized for pipelined replies, so
 * without this the messages published meanwhile would pile up in the
 * proxy. Checked here, where messages come in, so requests pay nothing. */
static void session_push(session *s, const char *bytes, size_t len)
{
    client *c = client_of(s);
    if (c->state == CLIENT_DROPPING)
        return;
    request *req = enqueue(c);
    if (!req) {
        drop_later(c, "out of memory queueing a message");
        return;
    }
    request_finished(req, bytes, len);
    if ((int64_t)queued_bytes(c) > srv.cfg->max_pubsub_output)
        drop_later(c, "unread messages over max_pubsub_output (subscriber not reading)");
}

static void session_drop(session *s, const char *reason)
{
    drop_later(client_of(s), reason);
}

static void session_close_after_replies(session *s, const char *reason)
{
    client *c = client_of(s);
    if (c->state == CLIENT_CLOSING || c->state == CLIENT_DROPPING)
        return;
    log_info("client %s: closing once its replies are out: %s", c->addr, reason);
    set_state(c, CLIENT_CLOSING);
    mark_dirty(c);
}

static const char *session_state(const session *s)
{
    const client *c = (const client *)(const void *)((const char *)s - offsetof(client, sess));
    return state_name(c->state);
}

static request *enqueue(client *c)
{
    request *req = request_new();
    if (!req)
        return NULL;
    req->owner = c;
    req->session = &c->sess;
    req->on_done = request_finished;
    c->inflight++;
    if (c->tail)
        c->tail->next = req;
    else
        c->head = req;
    c->tail = req;
    return req;
}

/* Answers a protocol error after the replies already due, then closes. */
static void protocol_error(client *c, const char *input, size_t input_len)
{
    char dump[80];
    log_escape(input, input_len < 40 ? input_len : 40, dump, sizeof(dump));
    log_info("client %s: %s, closing (input %s)", c->addr, c->scan.err, dump);
    srv.stats.errors_protocol++;
    request *req = enqueue(c);
    close_after_replies(c);
    if (!req) {
        drop_later(c, "out of memory");
        return;
    }
    char line[160];
    int len = snprintf(line, sizeof(line), "-%s\r\n", c->scan.err);
    request_finished(req, line, (size_t)len);
    mark_dirty(c);
}

/* After a request is dispatched: what it asked of the connection (QUIT,
 * a blocking command) and the cap on requests in flight. A reply given at
 * once may have paused or dropped the client already; a paused one finds
 * out whether it is held when it resumes. */
static inline void after_dispatch(client *c)
{
    if (c->sess.close_after_reply)
        close_after_replies(c);
    else if (c->state != CLIENT_READING)
        return;
    else if (c->inflight >= c->inflight_cap)
        set_state(c, CLIENT_PAUSED);
    else if (c->sess.hold_input)
        set_state(c, CLIENT_HELD);
}

/* A held client whose blocking reply is in (the transaction module cleared
 * sess.hold_input) takes requests again: seen at its next read or write. */
static inline void end_hold_if_released(client *c)
{
    if (c->state == CLIENT_HELD && !c->sess.hold_input)
        set_state(c, CLIENT_READING);
}

/* Dispatches a big request just scanned at offset done of c->in, used
 * bytes long, without a copy where it is queued: the requests before it
 * (dispatched already) are dropped, the request is split off c->in into a
 * buffer of its own and offered (buf_offer), so the shard connection's
 * output buffer can take it. c->in is left holding the bytes after the
 * request. 0, or -1 when the client is dropped (out of memory). */
static int dispatch_big(client *c, size_t done, size_t used)
{
    request *req = enqueue(c);
    if (!req) {
        drop_later(c, "out of memory");
        return -1;
    }
    buf_consume(&c->in, done);
    buf msg = {0};
    if (buf_split(&c->in, used, &msg) < 0) {
        /* The bytes after it outnumber it: copied from c->in as usual. */
        router_dispatch(req, c->scan.argc, c->scan.argv, buf_head(&c->in), used,
                        session_hint(&c->sess));
        buf_consume(&c->in, used);
    } else {
        buf *outer = buf_offer(&msg);
        router_dispatch(req, c->scan.argc, c->scan.argv, buf_head(&msg), used,
                        session_hint(&c->sess));
        buf_offer(outer);
        buf_free(&msg);
    }
    after_dispatch(c);
    return 0;
}

/* Scans and dispatches every whole request in data[0..len), which is
 * either the head of c->in or bytes just read into shared_in. Returns the
 * bytes used: whole requests, or everything once the client is closing;
 * from c->in, counted from its head as it is on return (a big request's
 * hand-off replaces the buffer). */
static size_t process_bytes(client *c, const char *data, size_t len)
{
    size_t done = 0;
    end_hold_if_released(c);
    while (done < len && c->state == CLIENT_READING) {
        resp_status st = resp_request_scan(&c->scan, data + done, len - done);
        if (st == RESP_INCOMPLETE)
            break;
        if (st == RESP_ERROR) {
            protocol_error(c, data + done, len - done);
            return len;
        }
        size_t used = c->scan.req_len;
        /* Activity for idle_timeout is a whole request, not a byte: a client
         * trickling a request byte by byte (slowloris) stays idle. */
        c->last_active_us = srv.now_us;
        /* A request this big is only ever in c->in (shared_in holds
         * BUF_IO_CHUNK bytes), and never inline. It is handed over, and the
         * scan goes on from the new head of c->in. */
        if (used >= BUF_HANDOFF_MIN && c->scan.argc > 0 && !c->scan.is_inline &&
            buf_len(&c->in) > 0 && data == buf_head(&c->in)) {
            if (dispatch_big(c, done, used) < 0)
                return len;
            return buf_len(&c->in) ? process_bytes(c, buf_head(&c->in), buf_len(&c->in)) : 0;
        }
        if (c->scan.argc > 0) {
            request *req = enqueue(c);
            if (!req) {
                drop_later(c, "out of memory");
                return len;
            }
            router_dispatch(req, c->scan.argc, c->scan.argv, c->scan.is_inline ? NULL : data + done,
                            used, session_hint(&c->sess));
            after_dispatch(c);
        }
        done += used;
    }
    return done;
}

/* Processes what waits in the client's own input buffer. */
static void process_input(client *c)
{
    buf_consume(&c->in, process_bytes(c, buf_head(&c->in), buf_len(&c->in)));
    if (buf_len(&c->in) == 0)
        buf_shrink_if_empty(&c->in, BUF_KEEP_IDLE);
}

/* Reads into one buffer shared by all clients when the client has nothing
 * pending, and keeps only a partial request's bytes: whole requests (the
 * common case) are scanned and forwarded from there, and an idle client
 * holds no input buffer at all. */
static char shared_in[BUF_IO_CHUNK];

/* read(2) on the client's socket, through TLS for a TLS client. */
static inline ssize_t read_socket(client *c, void *bytes, size_t n)
{
    if (c->tls.ssl)
        return tls_conn_read(&c->tls, bytes, n);
    return read(c->fd, bytes, n);
}

/* Why a read or write failed, for the log. */
static const char *io_error(const client *c)
{
    return c->tls.ssl ? tls_conn_error(&c->tls) : strerror(errno);
}

static void read_shared(client *c)
{
    ssize_t n = read_socket(c, shared_in, sizeof(shared_in));
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        client_free(c, n < 0 ? io_error(c) : NULL);
        return;
    }
    srv.stats.net_input_bytes += (uint64_t)n;
    size_t used = process_bytes(c, shared_in, (size_t)n);
    if (used < (size_t)n && buf_append(&c->in, shared_in + used, (size_t)n - used) < 0)
        drop_later(c, "out of memory reading request");
    bound_held_input(c);
}

static int write_out(client *c);
static int tls_step(client *c);

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    client *c = arg;
    server_clock_update();
    if (c->tls.ssl && tls_step(c) < 0)
        return;
    if (buf_len(&c->in) == 0) {
        read_shared(c);
        return;
    }
    size_t want = buf_len(&c->in);
    if (want < BUF_IO_CHUNK)
        want = BUF_IO_CHUNK;
    if (want > CLIENT_MAX_READ)
        want = CLIENT_MAX_READ;
    if ((int64_t)(buf_len(&c->in) + want) > srv.cfg->max_query_buffer) {
        if ((int64_t)buf_len(&c->in) >= srv.cfg->max_query_buffer) {
            snprintf(c->scan.err, sizeof(c->scan.err),
                     "ERR Protocol error: query buffer over max_query_buffer (%lld bytes)",
                     (long long)srv.cfg->max_query_buffer);
            protocol_error(c, buf_head(&c->in), buf_len(&c->in));
            return;
        }
        want = (size_t)srv.cfg->max_query_buffer - buf_len(&c->in);
    }
    if (buf_reserve(&c->in, want) < 0) {
        drop_later(c, "out of memory reading request");
        return;
    }
    ssize_t n = read_socket(c, c->in.data + c->in.end, want);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        client_free(c, n < 0 ? io_error(c) : NULL);
        return;
    }
    c->in.end += (size_t)n;
    srv.stats.net_input_bytes += (uint64_t)n;
    process_input(c);
    bound_held_input(c);
}

/* Writes what is ready. Returns 0, or -1 when the client was freed. */
static int write_out(client *c)
{
    size_t written;
    buf_write_result r = c->tls.ssl ? tls_conn_write(&c->tls, &c->out, &written)
                                    : buf_write_fd(&c->out, c->fd, &written);
    srv.stats.net_output_bytes += written;
    if (r == BUF_WRITE_BLOCKED) {
        /* A TLS write that must wait for a read is retried from on_read:
         * read interest is on while a client takes requests, and with
         * renegotiation refused only a handshake asks for it. */
        if (!c->tls.write_waits_read) {
            event_add(&c->ev_write, NULL);
            c->write_waiting = 1;
        }
        return 0;
    }
    if (r == BUF_WRITE_FAILED) {
        client_free(c, errno ? io_error(c) : "write returned 0");
        return -1;
    }
    buf_shrink_if_empty(&c->out, BUF_KEEP_IDLE);
    switch (c->state) {
    case CLIENT_CLOSING:
        if (c->head)
            return 0;
        client_free(c, NULL);
        return -1;
    case CLIENT_PAUSED:
        /* Paused for unread replies or for requests in flight: resume once
         * they drained. */
        if ((int64_t)queued_bytes(c) > srv.cfg->client_output_pause / 2 ||
            c->inflight > c->inflight_cap / 2)
            return 0;
        set_state(c, c->sess.hold_input ? CLIENT_HELD : CLIENT_READING);
        break;
    case CLIENT_HELD:
        /* The blocking reply is in: requests that waited go now. */
        if (c->sess.hold_input)
            return 0;
        set_state(c, CLIENT_READING);
        break;
    case CLIENT_ACCEPTED:
    case CLIENT_READING:
    case CLIENT_DROPPING:
        return 0;
    }
    if (c->state == CLIENT_READING && buf_len(&c->in) > 0)
        process_input(c);
    return 0;
}

/* A TLS client's part of a readiness event, before its requests and
 * replies: the handshake, and a write that waited for a read. 0 when the
 * connection can go on reading, -1 when it cannot yet or was freed. */
static int tls_step(client *c)
{
    if (c->tls.handshaking) {
        char err[320];
        int r = tls_conn_handshake(&c->tls, err, sizeof(err));
        if (r < 0) {
            client_free(c, err);
            return -1;
        }
        if (r == 0)
            return -1;
        if (CONFIG_LOG_DEBUG >= log_threshold) {
            char subject[256];
            tls_peer_subject(c->tls.ssl, subject, sizeof(subject));
            log_debug("client %s: TLS handshake done (%s, certificate %s)", c->addr,
                      tls_version(c->tls.ssl), subject);
        }
    }
    if (c->tls.write_waits_read) {
        c->tls.write_waits_read = 0;
        if (write_out(c) < 0)
            return -1;
    }
    return 0;
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    client *c = arg;
    server_clock_update();
    c->write_waiting = 0;
    if (c->tls.handshaking || c->tls.read_waits_write) {
        /* The handshake or a read waited for the socket to take bytes;
         * replies that waited too go at the next flush. */
        c->tls.read_waits_write = 0;
        mark_dirty(c);
        on_read(fd, EV_READ, c);
        return;
    }
    write_out(c);
}

int client_flush_pending(void)
{
    int n = 0;
    flushq_link *l;
    while ((l = flushq_pop(&pending))) {
        n++;
        client *c = FLUSHQ_ENTRY(l, client, flush);
        if (c->state == CLIENT_DROPPING) {
            client_free(c, c->drop_reason);
            continue;
        }
        if (!c->write_waiting)
            write_out(c);
    }
    return n;
}

void client_accept(int fd, const char *addr, int tls)
{
    client *c = calloc(1, sizeof(*c));
    if (!c) {
        log_warn("client %s: out of memory, closing", addr);
        close(fd);
        return;
    }
    if (tls) {
        char err[128];
        SSL *ssl = tls_accept_new(fd, err, sizeof(err));
        if (!ssl) {
            log_warn("client %s: %s, closing", addr, err);
            free(c);
            close(fd);
            return;
        }
        tls_conn_start(&c->tls, ssl, &c->ev_read, &c->ev_write, &c->write_waiting);
    }
    c->fd = fd;
    c->inflight_cap = CLIENT_START_INFLIGHT;
    snprintf(c->addr, sizeof(c->addr), "%s", addr);
    resp_limits limits = {srv.cfg->max_bulk_len, srv.cfg->max_args, srv.cfg->max_inline_len};
    resp_request_init(&c->scan, &limits);
    c->sess.id = ++srv.next_client_id;
    c->sess.proto = 2;
    c->sess.addr = c->addr;
    c->sess.created_us = srv.now_us; /* the loop clock, as idle and age compare with it */
    c->sess.push = session_push;
    c->sess.drop = session_drop;
    c->sess.close_after_replies = session_close_after_replies;
    c->sess.state = session_state;
    access_session_start(&c->sess);
    DLIST_PUSH_FRONT(srv.sessions, &c->sess, prev, next);
    c->last_active_us = srv.now_us;
    event_assign(&c->ev_read, srv.base, fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(&c->ev_write, srv.base, fd, EV_WRITE, on_write, c);
    DLIST_PUSH_FRONT(clients, c, prev, next);
    srv.nclients++;
    set_state(c, CLIENT_READING);
    log_debug("client %s: connected (id %llu)", addr, (unsigned long long)c->sess.id);
}

/* A client quiet this long gives back its buffers: an idle connection then
 * costs its struct and socket only (10,000 idle clients, a few MB). */
#define CLIENT_TRIM_IDLE_US 1000000u

void client_tick(void)
{
    static unsigned ticks;
    int trim = ++ticks % 10 == 0; /* about once a second */
    int idle_s = srv.cfg->idle_timeout_s;
    if (idle_s <= 0 && !trim)
        return;
    uint64_t now = srv.now_us, limit = (uint64_t)(idle_s > 0 ? idle_s : 0) * 1000000u;
    client *c = clients, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->head || c->state == CLIENT_DROPPING)
            continue;
        /* Stamps come from the loop clock, never ahead of now; were one
         * ahead, the client is not idle (no unsigned wrap to a huge quiet). */
        uint64_t quiet = now > c->last_active_us ? now - c->last_active_us : 0;
        /* A subscriber waits for messages, not idle: Redis's timeout spares
         * it too. */
        if (idle_s > 0 && quiet > limit && !pubsub_active(&c->sess)) {
            drop_later(c, "idle timeout");
            continue;
        }
        if (trim && quiet > CLIENT_TRIM_IDLE_US && buf_len(&c->in) == 0 && buf_len(&c->out) == 0) {
            buf_free(&c->in);
            buf_free(&c->out);
            resp_request_shrink(&c->scan);
        }
    }
}

void client_close_all(void)
{
    while (clients)
        client_free(clients, NULL);
}

int client_busy_count(void)
{
    int n = 0;
    /* A blocked client's reply may never come: shutdown does not wait. */
    for (client *c = clients; c; c = c->next)
        n += (c->head != NULL || buf_len(&c->out) > 0) && !c->sess.blocked;
    return n;
}
