/* Backend connections to the shards: connect with timeout and backoff,
 * batched writes, FIFO reply matching, request timeouts. */
#include "proxy/backend.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "proxy/dlist.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "proxy/tls.h"

/* Largest single read while a big reply is arriving: big enough to move a
 * 100 MB value in few calls, small enough not to over-allocate. */
#define BACKEND_MAX_READ (4 * 1024 * 1024)

/* A reserved connection that holds nothing of its client's (a finished
 * transaction or blocking command) stays open this long for the client's
 * next one, then closes: a worker looping on BLPOP or MULTI/EXEC reuses one
 * connection, and a client that did it once does not pin one for ever. */
#define BACKEND_LINGER_MS 10000

static const char ROLE_REQUEST[] = "*1\r\n$4\r\nROLE\r\n";
/* The first request on a RESP3 connection, and on a reserved one. */
static const char HELLO3_REQUEST[] = "*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
static const char CLIENT_ID_REQUEST[] = "*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n";
/* How ROLE's reply starts on a master: ["master", offset, replicas]. */
static const char ROLE_MASTER[] = "*3\r\n$6\r\nmaster\r\n";
/* How it starts on a replica: ["slave", master host, port, link state,
 * offset]; the link state must be "connected" (replicating now). */
static const char ROLE_REPLICA[] = "*5\r\n$5\r\nslave\r\n";
static const char ROLE_LINK_UP[] = "\r\n$9\r\nconnected\r\n";

/* Why a sentinel shard's requests fail before its master's address is known. */
#define SHARD_NO_MASTER "unavailable: master not known yet (asking the Sentinels)"
/* Why a shard named by hostname fails them before the name has resolved. */
#define SHARD_NOT_RESOLVED "unavailable: name not resolved yet (DNS)"
/* Connections with requests to write, first marked first. */
static flushq pending = FLUSHQ_INIT(pending);
static backend_conn *reserved_head; /* every reserved connection */
static shard *live_head;            /* every shard object not yet freed */
static uint64_t last_shard_id;

static void conn_connect(backend_conn *c);
static void conn_fail(backend_conn *c, const char *why, int is_timeout);
static void conn_note_unconfirmed(backend_conn *c);
static void reserved_fail(backend_conn *c, const char *why, int is_timeout, int quiet);
static void shard_fail_reserved(shard *s, const char *why);

static const char *state_name(backend_state st)
{
    switch (st) {
    case BACKEND_DOWN:
        return "down";
    case BACKEND_CONNECTING:
        return "connecting";
    case BACKEND_UP:
        return "up";
    case BACKEND_CLOSED:
        return "closed";
    case BACKEND_GONE:
        return "gone";
    }
    return "?";
}

/* The one place a connection changes state. GONE is for reserved
 * connections and final: anything else is a bug. */
static void conn_set_state(backend_conn *c, backend_state st)
{
    if (c->state == st)
        return;
    log_debug("shard %s conn %d: %s -> %s", c->shard->label, c->index, state_name(c->state),
              state_name(st));
    switch (st) {
    case BACKEND_DOWN:
    case BACKEND_CONNECTING:
    case BACKEND_UP:
    case BACKEND_CLOSED:
        if (c->state == BACKEND_GONE)
            break;
        c->state = st;
        return;
    case BACKEND_GONE:
        if (!c->reserved)
            break;
        c->state = st;
        return;
    default:
        break;
    }
    log_error("BUG: shard %s conn %d: state %s (%d) -> %s (%d)", c->shard->label, c->index,
              state_name(c->state), (int)c->state, state_name(st), (int)st);
    abort();
}

/* Whether requests may be queued on c: they are written once it is up. */
static int conn_takes_requests(const backend_conn *c)
{
    return c->state == BACKEND_UP || c->state == BACKEND_CONNECTING;
}

/* ---- a request's bytes kept for the slow log (backend_sent_bytes) ----
 * What a pool connection writes stays in its output buffer, behind
 * c->out.start, from the oldest fragment still awaiting its reply on:
 * the write does not empty the buffer then (conn_write), and making room
 * drops only what lies before that fragment (out_append_slow). The byte at
 * stream offset x (queued_total counts them) is at c->out.data[x - base],
 * base = written_total - c->out.start, while x >= base. While
 * fragments' completions run, `answering` says where their bytes are. */
struct answering {
    const backend_conn *c; /* the connection whose replies (or failures) are given */
    const char *bytes;     /* or the bytes of a fragment failed before it was queued */
    size_t len;
};
static struct answering answering;

/* f's bytes where c's output buffer keeps them (f queued on c), or NULL. */
static const char *conn_kept_bytes(const backend_conn *c, const fragment *f, size_t *len)
{
    uint64_t base = c->written_total - c->out.start;
    uint64_t from = f->end_offset - f->sent_len;
    if (!f->sent_len || from < base || f->end_offset - base > c->out.end)
        return NULL;
    *len = f->sent_len;
    return c->out.data + (from - base);
}

const char *backend_sent_bytes(const fragment *f, size_t *len)
{
    if (answering.bytes) {
        *len = answering.len;
        return answering.bytes;
    }
    return answering.c ? conn_kept_bytes(answering.c, f, len) : NULL;
}

/* Answers one fragment with an error made up by the proxy; its bytes are
 * in c's output buffer, or are bytes (never queued), or unknown (both NULL). */
static void fragment_fail_at(shard *s, fragment *f, const char *fmt_reason, int is_timeout,
                             const backend_conn *c, const char *bytes, size_t len)
{
    char reply[512];
    int n;
    if (is_timeout)
        n = snprintf(reply, sizeof(reply), "-ERR shard %s timeout\r\n", s->label);
    else
        n = snprintf(reply, sizeof(reply), "-ERR shard %s %s\r\n", s->label, fmt_reason);
    if (n < 0 || (size_t)n >= sizeof(reply)) {
        n = (int)sizeof(reply) - 1;
        reply[n - 2] = '\r';
        reply[n - 1] = '\n';
    }
    s->errors++;
    if (is_timeout) {
        s->timeouts++;
        srv.stats.errors_timeout++;
    } else {
        srv.stats.errors_shard++;
    }
    /* Inside another connection's replies (a completion failed this
     * one), theirs are put back after. */
    struct answering outer = answering;
    answering.c = c;
    answering.bytes = bytes;
    answering.len = len;
    f->done(f, reply, (size_t)n);
    answering = outer;
}

static void fragment_fail(shard *s, fragment *f, const char *fmt_reason, int is_timeout)
{
    fragment_fail_at(s, f, fmt_reason, is_timeout, NULL, NULL, 0);
}

void backend_fragment_timeout(shard *s, fragment *f)
{
    fragment_fail(s, f, "timeout", 1);
}

/* Takes a connection that is going away off the pending-flush list. */
static void conn_unmark_dirty(backend_conn *c)
{
    flushq_remove(&pending, &c->flush);
}

static void conn_mark_dirty(backend_conn *c)
{
    flushq_push(&pending, &c->flush);
}

static void conn_close_fd(backend_conn *c)
{
    if (c->fd < 0)
        return;
    event_del(&c->ev_read);
    event_del(&c->ev_write);
    c->write_waiting = 0;
    tls_conn_close(&c->tls);
    close(c->fd);
    c->fd = -1;
}

/* Why a socket or TLS call failed (errno set by it), for messages. */
static const char *io_error(const backend_conn *c)
{
    if (c->tls.ssl)
        return tls_conn_error(&c->tls);
    return errno ? strerror(errno) : "connection closed by shard";
}

/* Fails every in-flight request of c (its replies can no longer be matched)
 * and drops its buffers. */
static void conn_fail_inflight(backend_conn *c, const char *why, int is_timeout)
{
    fragment *f = c->head;
    c->head = c->tail = NULL;
    c->inflight = 0;
    while (f) {
        fragment *next = f->next;
        f->next = NULL;
        fragment_fail_at(c->shard, f, why, is_timeout, c, NULL, 0);
        f = next;
    }
    buf_free(&c->out);
    buf_free(&c->in);
    resp_reply_init(&c->scan);
    c->queued_total = c->written_total = 0;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    backend_conn *c = arg;
    switch (c->state) {
    case BACKEND_DOWN:
        conn_connect(c);
        return;
    case BACKEND_CONNECTING:
        conn_fail(c, "connect timeout", 0);
        return;
    case BACKEND_UP:
    case BACKEND_CLOSED:
    case BACKEND_GONE:
        return;
    }
}

/* Closes the connection, fails what is in flight and schedules a reconnect
 * after the current backoff, doubling it up to reconnect_max. */
/* A connection that fails the same way again and again (a proxy whose
 * ring the shards refuse retries every reconnect_min) logs it once per
 * BACKEND_RELOG_US, not at every attempt. */
#define BACKEND_RELOG_US (10 * 1000000ull)

static void log_failure(backend_conn *c, const char *why)
{
    uint64_t h = 1469598103934665603ull, now = server_now_us();
    for (const char *p = why; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    if (h == c->logged_why && now - c->logged_us < BACKEND_RELOG_US) {
        log_debug("shard %s: %s", c->shard->label, why);
        return;
    }
    c->logged_why = h;
    c->logged_us = now;
    log_warn("shard %s: %s", c->shard->label, why);
}

static void conn_fail(backend_conn *c, const char *why, int is_timeout)
{
    if (c->reserved) {
        reserved_fail(c, why, is_timeout, 0);
        return;
    }
    if (c->state == BACKEND_UP || c->state == BACKEND_CONNECTING)
        log_failure(c, why);
    /* A name may have moved (a pod restarted elsewhere): dns.c looks it up
     * again before the reconnect. */
    if (c->shard->dns_name)
        c->shard->dns_wanted = 1;
    if (c->state == BACKEND_UP)
        conn_note_unconfirmed(c);
    c->laddr[0] = '\0';
    conn_close_fd(c);
    event_del(&c->ev_timer);
    snprintf(c->last_error, sizeof(c->last_error), "%s", why);
    conn_set_state(c, BACKEND_DOWN);
    conn_fail_inflight(c, why, is_timeout);
    const config *cfg = srv.cfg;
    int delay = c->backoff_ms ? c->backoff_ms : cfg->reconnect_min_ms;
    c->backoff_ms = delay * 2 > cfg->reconnect_max_ms ? cfg->reconnect_max_ms : delay * 2;
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    event_assign(&c->ev_timer, srv.base, -1, 0, on_timer, c);
    event_add(&c->ev_timer, &tv);
}

static void on_readable(evutil_socket_t fd, short what, void *arg);
static void on_writable(evutil_socket_t fd, short what, void *arg);

/* The shard refused a command the connection opens with (what names it):
 * the connection fails with the shard's error line in the reason. */
static void conn_fail_refused(backend_conn *c, const char *what, const char *reply, size_t len)
{
    char why[160];
    int n = len > 2 ? (int)(len - 2) : 0;
    snprintf(why, sizeof(why), "unavailable: %s: %.*s", what, n > 100 ? 100 : n,
             len && reply[0] == '-' ? reply + 1 : reply);
    conn_fail(c, why, 0);
}

static void auth_done(fragment *f, const char *reply, size_t len)
{
    backend_conn *c = f->conn;
    if (c->state != BACKEND_UP)
        return; /* the connection is failing already */
    if (len >= 3 && memcmp(reply, "+OK", 3) == 0)
        return;
    conn_fail_refused(c, "AUTH failed", reply, len);
}

/* Puts the command in first (taken) in front of everything queued while
 * connecting, and f, its completion, at the head of the in-flight FIFO.
 * 0 or -1. */
static int conn_queue_first(backend_conn *c, fragment *f, fragment_done_fn done, buf *first)
{
    if (buf_append(first, buf_head(&c->out), buf_len(&c->out)) < 0) {
        buf_free(first);
        return -1;
    }
    /* The command goes before bytes already counted: what was queued while
     * connecting (none of it written yet) now ends len later. */
    size_t len = buf_len(first) - buf_len(&c->out);
    for (fragment *g = c->head; g; g = g->next)
        g->end_offset += len;
    c->queued_total += len;
    buf_free(&c->out);
    c->out = *first;
    memset(f, 0, sizeof(*f));
    f->done = done;
    f->conn = c;
    f->sent_us = srv.now_us;
    f->end_offset = c->written_total + len;
    f->next = c->head;
    c->head = f;
    if (!c->tail)
        c->tail = f;
    c->inflight++;
    return 0;
}

/* AUTH [user] password: user is backend_user, NULL for Redis's default. */
static int conn_queue_auth(backend_conn *c, const char *user, const char *password)
{
    buf first = {0};
    buf_append_header(&first, '*', user ? 3 : 2);
    buf_append_bulk(&first, "AUTH", 4);
    if (user)
        buf_append_bulk(&first, user, strlen(user));
    if (buf_append_bulk(&first, password, strlen(password)) < 0 || buf_failed(&first)) {
        buf_free(&first);
        return -1;
    }
    return conn_queue_first(c, &c->auth, auth_done, &first);
}

/* One answer of the handshake (ROLE, the ring check) came back good: when
 * it is the last awaited, what was queued behind it goes out. */
static void handshake_answered(backend_conn *c)
{
    if (c->handshake_pending > 0 && --c->handshake_pending == 0 && buf_len(&c->out))
        conn_mark_dirty(c);
}

static void role_done(fragment *f, const char *reply, size_t len)
{
    backend_conn *c = f->conn;
    if (c->state != BACKEND_UP)
        return; /* the connection is failing already */
    if (c->shard->is_replica) {
        if (len >= sizeof(ROLE_REPLICA) - 1 &&
            memcmp(reply, ROLE_REPLICA, sizeof(ROLE_REPLICA) - 1) == 0 &&
            memmem(reply, len, ROLE_LINK_UP, sizeof(ROLE_LINK_UP) - 1)) {
            handshake_answered(c);
            return;
        }
        /* Promoted, or cut off from its master: reads there could be
         * arbitrarily stale. The next poll of the replicas replaces it. */
        conn_fail(c, "unavailable: not a replica in sync with its master (ROLE)", 0);
        return;
    }
    if (len >= sizeof(ROLE_MASTER) - 1 &&
        memcmp(reply, ROLE_MASTER, sizeof(ROLE_MASTER) - 1) == 0) {
        handshake_answered(c);
        return;
    }
    /* A demoted master (a failover not yet heard of): nothing may be sent
     * to it. The Sentinels are asked again at once. */
    conn_fail(c, "unavailable: not a master (ROLE); waiting for the Sentinels to name it", 0);
    c->shard->role_refused = 1; /* the Sentinels are asked again at the next tick */
}

/* Puts a fixed request first, behind only what is queued first after it
 * (conn_queue_first). 0 or -1. */
static int conn_queue_fixed(backend_conn *c, fragment *f, fragment_done_fn done, const char *req,
                            size_t len)
{
    buf first = {0};
    if (buf_append(&first, req, len) < 0) {
        buf_free(&first);
        return -1;
    }
    return conn_queue_first(c, f, done, &first);
}

/* A sentinel shard's address may be a demoted master by now: ROLE goes
 * first (only AUTH, queued after this call, goes before it). 0 or -1. */
static int conn_queue_role(backend_conn *c)
{
    return conn_queue_fixed(c, &c->role, role_done, ROLE_REQUEST, sizeof(ROLE_REQUEST) - 1);
}

static void hello_done(fragment *f, const char *reply, size_t len)
{
    backend_conn *c = f->conn;
    if (c->state != BACKEND_UP)
        return; /* the connection is failing already */
    if (len > 0 && reply[0] == '%')
        return;
    /* A shard older than Redis 6 answers -ERR unknown command. */
    conn_fail_refused(c, "HELLO 3 refused", reply, len);
}

static void client_id_done(fragment *f, const char *reply, size_t len)
{
    backend_conn *c = f->conn;
    int64_t id;
    if (c->state == BACKEND_UP && resp_reply_integer(reply, len, &id) == 0)
        c->shard_client_id = id;
}

/* Writes the handshake (AUTH, ROLE, CLIENT SETNAME, the ring check) at
 * once; the rest waits for the answers it needs (handshake_pending). The
 * socket has just connected, so its buffer takes these few bytes whole.
 * 0, or -1 with a reason in why. */
static int conn_write_handshake(backend_conn *c, const fragment *last, int awaited, char *why,
                                size_t whylen)
{
    size_t len = (size_t)(last->end_offset - c->written_total);
    tls_want want;
    ssize_t n = c->tls.ssl ? tls_write(c->tls.ssl, buf_head(&c->out), len, &want)
                           : write(c->fd, buf_head(&c->out), len);
    if (n != (ssize_t)len) {
        snprintf(why, whylen, "unavailable: write: %s", n < 0 ? io_error(c) : "short write");
        return -1;
    }
    buf_consume(&c->out, len);
    c->written_total += len;
    c->handshake_pending = awaited;
    return 0;
}

/* ---- the ring check (docs/rebalancing.md, "Several proxies") ----
 * Every connection names itself (CLIENT SETNAME ringproxy-<ring>-<proxy>)
 * and, before anything else is written on it, asks the shard whether the
 * ring this proxy runs is the shards' current one. The proxy that advances
 * the ring epoch writes the new ring on each shard and then kills the
 * connections named with another ring: a proxy behind loses its
 * connections, and the check refuses its new ones. SETNAME runs before the
 * check, so a connection checked before the new ring was written is listed
 * (and killed) after it. Per request nothing is added. */

/* The check: reads the ring record from the store's database (SELECT in a
 * script changes only the script's database) and answers its epoch, or
 * RINGEPOCH <epoch> <fingerprint> when the shards run another ring than
 * this proxy's (ARGV[2]) or the one it is moving on from (ARGV[3]). No
 * record (a fleet not yet set up, a shard that restarted empty): passed.
 * A record older than the epoch this proxy runs (ARGV[4]) is passed too:
 * every shard of a ring gets each later epoch's record, so that shard was
 * outside the ring since (a shard added back), and the epoch's writer
 * brings it up to date before keys move. */
static const char RING_CHECK_SCRIPT[] =
    "redis.call('SELECT', ARGV[1])\n"
    "local r = redis.call('HMGET', 'ringproxy:ring', 'epoch', 'fp')\n"
    "if not r[1] then return 0 end\n"
    "if r[2] == ARGV[2] or r[2] == ARGV[3] then return tonumber(r[1]) end\n"
    "if tonumber(r[1]) < tonumber(ARGV[4]) then return tonumber(r[1]) end\n"
    "return redis.error_reply('RINGEPOCH ' .. r[1] .. ' ' .. r[2])\n";

static void name_done(fragment *f, const char *reply, size_t len)
{
    (void)f;
    (void)reply;
    (void)len; /* an old Redis without CLIENT SETNAME: the check still guards */
}

static void ring_check_done(fragment *f, const char *reply, size_t len)
{
    backend_conn *c = f->conn;
    if (c->state != BACKEND_UP)
        return; /* the connection is failing already */
    unsigned long long epoch = 0;
    char fp[24] = "";
    /* The reply is not NUL-terminated: its line is scanned from a copy. */
    char line[96];
    size_t n = len < sizeof(line) ? len : sizeof(line) - 1;
    memcpy(line, reply, n);
    line[n] = '\0';
    if (len > 11 && memcmp(reply, "-RINGEPOCH ", 11) == 0 &&
        sscanf(line + 11, "%llu %23s", &epoch, fp) == 2) {
        if (epoch > srv.shards_epoch_seen)
            srv.shards_epoch_seen = epoch;
        srv.ring_check_refused = 1;
        srv.stats.ring_check_refusals++;
        char why[200];
        snprintf(why, sizeof(why),
                 "unavailable: ring changed: the shards run ring %s (epoch %llu), this proxy %s",
                 fp, epoch, srv.ring_fp);
        conn_fail(c, why, 0);
        return;
    }
    if (len > 1 && reply[0] == ':') {
        epoch = strtoull(line + 1, NULL, 10);
        if (epoch > srv.shards_epoch_seen)
            srv.shards_epoch_seen = epoch;
    } else if (len > 1 && reply[0] == '-') {
        /* No store database (store_db out of range) or no scripting: the
         * store cannot work either; serve as a single proxy would. */
        log_debug("shard %s: ring check answered %.*s", c->shard->label, (int)(len - 2), reply);
    }
    handshake_answered(c);
}

/* Queues CLIENT SETNAME and the ring check (the check first: each goes in
 * front of what is queued). 0 or -1. */
static int conn_queue_ring_check(backend_conn *c)
{
    char db[16], name[96], run[24];
    snprintf(db, sizeof(db), "%d", srv.cfg->store_db);
    snprintf(run, sizeof(run), "%llu", (unsigned long long)srv.ring_epoch_run);
    snprintf(name, sizeof(name), "ringproxy-%s-%s", srv.ring_fp, srv.instance_id);
    buf check = {0}, setname = {0};
    buf_append_header(&check, '*', 7);
    buf_append_bulk(&check, "EVAL", 4);
    buf_append_bulk(&check, RING_CHECK_SCRIPT, sizeof(RING_CHECK_SCRIPT) - 1);
    buf_append_bulk(&check, "0", 1);
    buf_append_bulk(&check, db, strlen(db));
    buf_append_bulk(&check, srv.ring_fp, strlen(srv.ring_fp));
    buf_append_bulk(&check, srv.ring_fp_prev, strlen(srv.ring_fp_prev));
    buf_append_bulk(&check, run, strlen(run));
    buf_append_header(&setname, '*', 3);
    buf_append_bulk(&setname, "CLIENT", 6);
    buf_append_bulk(&setname, "SETNAME", 7);
    buf_append_bulk(&setname, name, strlen(name));
    if (buf_failed(&check) || buf_failed(&setname)) {
        buf_free(&check);
        buf_free(&setname);
        return -1;
    }
    if (conn_queue_first(c, &c->ring_check, ring_check_done, &check) < 0) {
        buf_free(&setname);
        return -1;
    }
    c->ring_check.harmless = 1;
    if (conn_queue_first(c, &c->name, name_done, &setname) < 0)
        return -1;
    c->name.harmless = 1;
    return 0;
}

/* Our end of c as the shard prints it (ip:port, [ip]:port for IPv6). */
static void conn_note_laddr(backend_conn *c)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "";
    uint16_t port = 0;
    c->laddr[0] = '\0';
    if (getsockname(c->fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
        port = ntohs(in->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
        port = ntohs(in6->sin6_port);
    }
    if (ip[0])
        config_format_addr(ip, port, c->laddr, sizeof(c->laddr));
}

/* A connection reset while requests that change data were in flight: the
 * shard may still run them (they wait in its socket while it is paused),
 * so it is remembered until the shard confirms it gone. */
static void conn_note_unconfirmed(backend_conn *c)
{
    int risky = 0;
    for (const fragment *f = c->head; f && !risky; f = f->next)
        risky = !f->harmless;
    shard *s = c->shard;
    if (!risky || !c->laddr[0])
        return;
    if (s->n_unconfirmed == BACKEND_UNCONFIRMED_MAX) {
        s->unconfirmed_dropped++;
        log_warn("shard %s: more than %d old connections may still run requests; forgetting %s",
                 s->label, BACKEND_UNCONFIRMED_MAX, s->unconfirmed[0]);
        memmove(s->unconfirmed[0], s->unconfirmed[1],
                (size_t)(BACKEND_UNCONFIRMED_MAX - 1) * sizeof(s->unconfirmed[0]));
        s->n_unconfirmed--;
    }
    snprintf(s->unconfirmed[s->n_unconfirmed++], sizeof(s->unconfirmed[0]), "%s", c->laddr);
}

void backend_shard_confirm_gone(shard *s, const char *laddr)
{
    for (int i = 0; i < s->n_unconfirmed; i++)
        if (strcmp(s->unconfirmed[i], laddr) == 0) {
            memmove(s->unconfirmed[i], s->unconfirmed[i + 1],
                    (size_t)(s->n_unconfirmed - i - 1) * sizeof(s->unconfirmed[0]));
            s->n_unconfirmed--;
            return;
        }
}

static void conn_connected(backend_conn *c)
{
    event_del(&c->ev_timer);
    conn_note_laddr(c);
    conn_set_state(c, BACKEND_UP);
    c->backoff_ms = 0;
    c->last_error[0] = '\0';
    if (c->reserved)
        log_debug("shard %s: reserved connection up", c->shard->label);
    else
        log_info("shard %s conn %d: connected", c->shard->label, c->index);
    c->handshake_pending = 0;
    c->shard_client_id = 0;
    /* Each goes in front of the one before: AUTH, ROLE, CLIENT SETNAME and
     * the ring check, HELLO 3, CLIENT ID, then what was queued while
     * connecting. */
    if (c->reserved && !c->push_mode &&
        conn_queue_fixed(c, &c->client_id, client_id_done, CLIENT_ID_REQUEST,
                         sizeof(CLIENT_ID_REQUEST) - 1) < 0) {
        conn_fail(c, "unavailable: out of memory queueing CLIENT ID", 0);
        return;
    }
    if (c->resp3 && conn_queue_fixed(c, &c->hello, hello_done, HELLO3_REQUEST,
                                     sizeof(HELLO3_REQUEST) - 1) < 0) {
        conn_fail(c, "unavailable: out of memory queueing HELLO", 0);
        return;
    }
    /* Subscriber connections carry no keys (a subscription made by a stale
     * ring misses messages, and the switch closes them anyway), and their
     * replies are events, not answers to fragments: no ring check. */
    int check_ring = srv.ring_fp[0] != '\0' && !c->push_mode;
    int check_role = c->shard->sentinel_master != NULL || c->shard->is_replica;
    if (check_ring && conn_queue_ring_check(c) < 0) {
        conn_fail(c, "unavailable: out of memory queueing the ring check", 0);
        return;
    }
    if (check_role && conn_queue_role(c) < 0) {
        conn_fail(c, "unavailable: out of memory queueing ROLE", 0);
        return;
    }
    if (srv.cfg->backend_password &&
        conn_queue_auth(c, srv.cfg->backend_user, srv.cfg->backend_password) < 0) {
        conn_fail(c, "unavailable: out of memory queueing AUTH", 0);
        return;
    }
    char why[160];
    const fragment *last = check_ring ? &c->ring_check : &c->role;
    if ((check_ring || check_role) &&
        conn_write_handshake(c, last, check_ring + check_role, why, sizeof(why)) < 0) {
        conn_fail(c, why, 0);
        return;
    }
    event_add(&c->ev_read, NULL);
    if (buf_len(&c->out))
        conn_mark_dirty(c);
}

/* Drives a TLS connection's handshake: the connection stays CONNECTING
 * (requests queue, the connect timeout runs) until it is done. */
static void conn_tls_handshake(backend_conn *c)
{
    char err[320], why[400];
    int r = tls_conn_handshake(&c->tls, err, sizeof(err));
    if (r < 0) {
        snprintf(why, sizeof(why), "unavailable: %s", err);
        conn_fail(c, why, 0);
    } else if (r == 1) {
        conn_connected(c);
    }
}

/* The TCP connection is up: plain text is connected, TLS starts its
 * handshake. */
static void conn_tcp_connected(backend_conn *c)
{
    if (!tls_shards_enabled()) {
        conn_connected(c);
        return;
    }
    char err[200], why[260];
    SSL *ssl = tls_connect_new(c->fd, c->shard->host, err, sizeof(err));
    if (!ssl) {
        snprintf(why, sizeof(why), "unavailable: %s", err);
        conn_fail(c, why, 0);
        return;
    }
    tls_conn_start(&c->tls, ssl, &c->ev_read, &c->ev_write, &c->write_waiting);
    conn_tls_handshake(c);
}

static void conn_connect(backend_conn *c)
{
    shard *s = c->shard;
    char why[160];
    /* A reload starts a shard whose connection waits out its reconnect
     * delay: that timer must be off before ev_timer is assigned again. */
    event_del(&c->ev_timer);
    if (!s->addrlen) {
        conn_set_state(c, BACKEND_CONNECTING);
        conn_fail(c, s->sentinel_master ? SHARD_NO_MASTER : SHARD_NOT_RESOLVED, 0);
        return;
    }
    int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, sizeof(why), "unavailable: socket: %s", strerror(errno));
        conn_set_state(c, BACKEND_CONNECTING);
        conn_fail(c, why, 0);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    c->fd = fd;
    event_assign(&c->ev_read, srv.base, fd, EV_READ | EV_PERSIST, on_readable, c);
    event_assign(&c->ev_write, srv.base, fd, EV_WRITE, on_writable, c);
    conn_set_state(c, BACKEND_CONNECTING);
    int ms = srv.cfg->connect_timeout_ms;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_assign(&c->ev_timer, srv.base, -1, 0, on_timer, c);
    if (connect(fd, (struct sockaddr *)&s->addr, s->addrlen) == 0) {
        event_add(&c->ev_timer, &tv); /* a TLS handshake may follow */
        conn_tcp_connected(c);
        return;
    }
    if (errno != EINPROGRESS) {
        snprintf(why, sizeof(why), "unavailable: connect: %s", strerror(errno));
        conn_fail(c, why, 0);
        return;
    }
    event_add(&c->ev_timer, &tv);
    event_add(&c->ev_write, NULL);
}

/* Writes what is queued. Returns 0, or -1 after failing the connection. */
static int conn_write(backend_conn *c)
{
    uint64_t before = c->written_total;
    size_t end = c->out.end;
    size_t written;
    buf_write_result r = c->tls.ssl ? tls_conn_write(&c->tls, &c->out, &written)
                                    : buf_write_fd(&c->out, c->fd, &written);
    c->written_total += written;
    /* All written empties the buffer: what was written stays while a
     * fragment awaits its reply (backend_sent_bytes). */
    if (c->out.end == 0 && c->head)
        c->out.start = c->out.end = end;
    /* Progress only while the head's own request is still going out: a
     * stopped shard's socket buffer takes megabytes of the requests behind
     * it. */
    if (written && c->head && before < c->head->end_offset)
        c->progress_us = srv.now_us;
    if (r == BUF_WRITE_BLOCKED) {
        /* A TLS write that waits for a read is retried from on_readable,
         * whose interest is on while connected. */
        if (!c->tls.write_waits_read) {
            event_add(&c->ev_write, NULL);
            c->write_waiting = 1;
        }
        return 0;
    }
    if (r == BUF_WRITE_FAILED) {
        char why[160];
        snprintf(why, sizeof(why), "unavailable: write: %s", errno ? io_error(c) : "closed");
        conn_fail(c, why, 0);
        return -1;
    }
    if (!c->head)
        buf_shrink_if_empty(&c->out, BUF_KEEP_IDLE);
    return 0;
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    backend_conn *c = arg;
    server_clock_update();
    c->write_waiting = 0;
    if (c->tls.handshaking) {
        conn_tls_handshake(c);
        return;
    }
    if (c->tls.read_waits_write) {
        /* A TLS read waited for the socket to take bytes; queued writes go
         * at the next flush. */
        c->tls.read_waits_write = 0;
        conn_mark_dirty(c);
        on_readable(fd, EV_READ, c);
        return;
    }
    if (c->state == BACKEND_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            char why[160];
            snprintf(why, sizeof(why), "unavailable: connect: %s", strerror(err));
            conn_fail(c, why, 0);
            return;
        }
        conn_tcp_connected(c);
        return;
    }
    if (c->state == BACKEND_UP && !c->barrier && !c->handshake_pending)
        conn_write(c);
}

static void reserved_free(backend_conn *c);

/* Passes a big reply, the first n bytes of c->in, to f's completion
 * without a copy where it is kept: the reply is split off c->in into a
 * buffer of its own and offered (buf_offer), so the client's output buffer
 * can take it; c->in keeps the bytes after it. 0, or -1 when it could not
 * be split (the caller passes it on from c->in as usual). */
static int deliver_big(backend_conn *c, fragment *f, size_t n)
{
    buf reply = {0};
    if (buf_split(&c->in, n, &reply) < 0)
        return -1;
    buf *outer = buf_offer(&reply);
    f->done(f, buf_head(&reply), n);
    buf_offer(outer);
    buf_free(&reply);
    return 0;
}

/* A TLS connection's part of a read event, before the reply bytes: the
 * handshake, and a write that waited for the socket to be readable. 0 when
 * the connection can read on, -1 when it cannot yet or has failed. */
static int conn_tls_step(backend_conn *c)
{
    if (c->tls.handshaking) {
        conn_tls_handshake(c);
        return -1;
    }
    if (c->tls.write_waits_read) {
        c->tls.write_waits_read = 0;
        if (conn_write(c) < 0)
            return -1;
    }
    return 0;
}

/* Reads what the shard sent into c->in. 1 when bytes came, 0 when there
 * were none after all, -1 after failing the connection. */
static int conn_read(backend_conn *c, int fd)
{
    size_t want = buf_len(&c->in);
    if (want < BUF_IO_CHUNK)
        want = BUF_IO_CHUNK;
    if (want > BACKEND_MAX_READ)
        want = BACKEND_MAX_READ;
    if (buf_reserve(&c->in, want) < 0) {
        conn_fail(c, "unavailable: out of memory reading reply", 0);
        return -1;
    }
    size_t room = c->in.cap - c->in.end;
    ssize_t n = c->tls.ssl ? tls_conn_read(&c->tls, c->in.data + c->in.end, room)
                           : read(fd, c->in.data + c->in.end, room);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return 0;
        char why[320];
        snprintf(why, sizeof(why), "unavailable: %s",
                 n == 0 ? "connection closed by shard" : io_error(c));
        conn_fail(c, why, 0);
        return -1;
    }
    c->in.end += (size_t)n;
    return 1;
}

/* Hands every whole reply in c->in to the fragment it answers, in order (in
 * push mode, one that answers none to the owner). Stops when the
 * connection fails or is closed by a callback. */
static void conn_deliver_replies(backend_conn *c)
{
    shard *s = c->shard;
    answering.c = c; /* the completions below are of its fragments */
    while (buf_len(&c->in) > 0 && c->state == BACKEND_UP) {
        size_t reply_len = 0;
        resp_status st = resp_reply_scan(&c->scan, buf_head(&c->in), buf_len(&c->in), &reply_len);
        if (st == RESP_INCOMPLETE)
            break;
        if (st == RESP_OK && !c->head && c->push_mode) {
            /* Pub/sub: messages and confirmations answer no request. */
            const char *reply = buf_head(&c->in);
            buf_consume(&c->in, reply_len);
            if (c->on_event)
                c->on_event(c->owner, reply, reply_len);
            continue;
        }
        if (st == RESP_ERROR || !c->head) {
            char dump[80], why[256];
            log_escape(buf_head(&c->in), buf_len(&c->in) < 32 ? buf_len(&c->in) : 32, dump,
                       sizeof(dump));
            snprintf(why, sizeof(why), "unavailable: bad reply from shard (%s): %s",
                     st == RESP_ERROR ? c->scan.err : "reply without a request", dump);
            conn_fail(c, why, 0);
            break;
        }
        fragment *f = c->head;
        c->head = f->next;
        if (!c->head)
            c->tail = NULL;
        c->inflight--;
        if (!c->inflight)
            c->idle_since_us = srv.now_us;
        f->next = NULL;
        s->replies++;
        s->latency_us_sum += srv.now_us - f->sent_us;
        if (reply_len >= BUF_HANDOFF_MIN && deliver_big(c, f, reply_len) == 0)
            continue;
        const char *reply = buf_head(&c->in);
        /* Consume before the callback: it may not reenter this connection,
         * but keeping the buffer consistent first costs nothing. */
        buf_consume(&c->in, reply_len);
        f->done(f, reply, reply_len);
    }
    answering.c = NULL;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    backend_conn *c = arg;
    server_clock_update();
    if (c->tls.ssl && conn_tls_step(c) < 0)
        return;
    if (conn_read(c, fd) <= 0)
        return;
    /* Progress: bytes of the head's reply arrived, or the head is answered
     * below and the next one, which could not be answered before it, starts
     * waiting now. */
    c->progress_us = srv.now_us;
    /* A reserved connection's owner may close it from a callback below:
     * freeing waits until the loop is done with it. */
    c->busy = 1;
    conn_deliver_replies(c);
    c->busy = 0;
    if (c->state == BACKEND_GONE) {
        reserved_free(c);
        return;
    }
    if (buf_len(&c->in) == 0)
        buf_shrink_if_empty(&c->in, BUF_KEEP_IDLE);
    if (!c->head && buf_len(&c->out) == 0) { /* all answered: nothing is kept */
        buf_reset(&c->out);
        buf_shrink_if_empty(&c->out, BUF_KEEP_IDLE);
    }
}

/* Where c's output buffer must keep its bytes from: the start of the
 * oldest fragment awaiting its reply (none: nothing before c->out.start). */
static size_t out_keep_from(const backend_conn *c)
{
    const fragment *h = c->head;
    if (!h)
        return c->out.start;
    uint64_t base = c->written_total - c->out.start;
    uint64_t from = h->end_offset - h->sent_len;
    if (from <= base)
        return 0;
    return from - base < c->out.start ? (size_t)(from - base) : c->out.start;
}

/* Before c's buffer takes a big request's storage in place of its own
 * (buf_append_big), the requests whose bytes it keeps for the slow log
 * (REQUEST_HEAD_SENT) get a copy of them. */
static __attribute__((noinline)) void out_copy_kept(const backend_conn *c)
{
    for (fragment *g = c->head; g; g = g->next) {
        request *req = g->req;
        size_t len;
        const char *bytes;
        if (req && g == &req->single && req->head_len == REQUEST_HEAD_SENT &&
            (bytes = conn_kept_bytes(c, g, &len)))
            request_keep_bytes(req, bytes, len);
    }
}

/* Room made at once in a pool connection's output buffer (out_append_slow). */
#define OUT_ROOM_MIN (2 * BUF_IO_CHUNK)

/* Appends len bytes to c->out when they do not fit: room is made without
 * dropping the bytes of fragments awaiting replies. A big request offered
 * by the client (buf_offer) is taken, not copied, when all written before
 * it is written (the bytes kept are copied out first). 0, or -1 when out
 * of memory. */
static __attribute__((noinline)) int out_append_slow(backend_conn *c, const char *bytes, size_t len)
{
    buf *out = &c->out;
    if (out->err)
        return -1;
    size_t keep = out_keep_from(c);
    if (len >= BUF_HANDOFF_MIN && buf_len(out) == 0) {
        if (keep < out->start)
            out_copy_kept(c);
        buf_reset(out); /* nothing kept: the offer may be taken */
        return buf_append_big(out, bytes, len);
    }
    /* buf_reserve drops what lies before start: start is moved back to
     * keep for it, then the unwritten bytes' start is put back. Making
     * room moves the bytes in flight to the front: on a pool connection
     * (few, busy), asking for at least OUT_ROOM_MIN keeps that to a
     * fraction of the bytes appended; a reserved one (one per client that
     * needs it) grows as it needs. */
    size_t unwritten = out->start - keep;
    out->start = keep;
    int r = buf_reserve(out, len < OUT_ROOM_MIN && !c->reserved ? OUT_ROOM_MIN : len);
    out->start += unwritten;
    if (r < 0)
        return -1;
    memcpy(out->data + out->end, bytes, len);
    out->end += len;
    return 0;
}

/* Appends a fragment and its bytes to a connection that can take them.
 * Returns 0, or -1 after failing the fragment. */
static int conn_queue(backend_conn *c, fragment *f, const char *bytes, size_t len)
{
    shard *s = c->shard;
    if (c->inflight >= (size_t)srv.cfg->backend_max_inflight) {
        char why[128];
        snprintf(why, sizeof(why), "busy: %zu requests in flight (backend_max_inflight)",
                 c->inflight);
        fragment_fail_at(s, f, why, 0, NULL, bytes, len);
        return -1;
    }
    /* buf_append's test, then the copy; the rest keeps what the fragments
     * in flight were sent with (out_append_slow). */
    buf *out = &c->out;
    if (__builtin_expect(out->err || out->cap - out->end < len, 0)) {
        if (out_append_slow(c, bytes, len) < 0) {
            buf_forget_failure(out);
            fragment_fail_at(s, f, "unavailable: out of memory queueing request", 0, NULL, bytes,
                             len);
            return -1;
        }
    } else {
        memcpy(out->data + out->end, bytes, len);
        out->end += len;
    }
    c->queued_total += len;
    f->end_offset = c->queued_total;
    f->sent_len = (uint16_t)len; /* cut: read back only when short (REQUEST_SENT_SHORT) */
    if (c->tail)
        c->tail->next = f;
    else
        c->head = f;
    c->tail = f;
    c->inflight++;
    if (c->state == BACKEND_UP)
        conn_mark_dirty(c);
    return 0;
}

/* Connects the RESP3 pool of s, on the first request of a RESP3 client:
 * a proxy whose clients all speak RESP2 opens no connection for it. */
static __attribute__((noinline)) void resp3_pool_start(shard *s)
{
    s->resp3_started = 1;
    if (!s->addrlen)
        return; /* a sentinel shard's master is not known yet: started with the rest */
    for (int j = s->nconns; j < 2 * s->nconns; j++)
        if (s->conns[j].state == BACKEND_DOWN)
            conn_connect(&s->conns[j]);
}

int backend_pool_size(const shard *s)
{
    return s->resp3_started ? 2 * s->nconns : s->nconns;
}

uint64_t backend_pool_hint(const shard *s, int j)
{
    return j < s->nconns ? (uint64_t)j : (uint64_t)(j - s->nconns) | REQUEST_HINT_RESP3;
}

/* The connection hint picks: RESP2 clients' requests are spread over the
 * first nconns by their id, RESP3 clients' over the RESP3 pool. */
static inline backend_conn *pool_conn(shard *s, uint64_t hint)
{
    if (__builtin_expect((hint & REQUEST_HINT_RESP3) != 0, 0)) {
        if (!s->resp3_started)
            resp3_pool_start(s);
        return &s->conns[s->nconns + (hint & ~REQUEST_HINT_RESP3) % (uint64_t)s->nconns];
    }
    return &s->conns[hint % (uint64_t)s->nconns];
}

void backend_send(shard *s, uint64_t hint, fragment *f, const char *bytes, size_t len)
{
    backend_conn *c = pool_conn(s, hint);
    s->requests++;
    f->next = NULL;
    f->sent_us = srv.now_us;
    switch (c->state) {
    case BACKEND_DOWN: {
        char why[200];
        snprintf(why, sizeof(why), "unavailable: %s",
                 c->last_error[0] ? c->last_error : "not connected");
        /* last_error already starts with "unavailable: " for most causes */
        fragment_fail_at(s, f,
                         strncmp(c->last_error, "unavailable: ", 13) == 0 ? c->last_error : why, 0,
                         NULL, bytes, len);
        return;
    }
    case BACKEND_CLOSED:
    case BACKEND_GONE: /* reserved only: not in a pool */
        fragment_fail_at(s, f, "unavailable: shard removed", 0, NULL, bytes, len);
        return;
    case BACKEND_CONNECTING:
    case BACKEND_UP:
        break;
    }
    (void)conn_queue(c, f, bytes, len);
}

int backend_flush_pending(void)
{
    int n = 0;
    flushq_link *l;
    while ((l = flushq_pop(&pending))) {
        n++;
        backend_conn *c = FLUSHQ_ENTRY(l, backend_conn, flush);
        /* A reserved connection's writes wait for its barrier. */
        if (c->state == BACKEND_UP && !c->barrier && !c->handshake_pending && !c->write_waiting)
            conn_write(c);
    }
    return n;
}

/* When the shard last made progress on c's head: its queueing, then any
 * read (bytes of its reply, or the end of the reply before it, from which
 * it waits afresh), or a write while its request was not all written. The
 * last socket buffer's worth of a request cannot be seen going out: the
 * shard must take that within the timeout. */
static uint64_t conn_head_clock(const backend_conn *c)
{
    return c->head->sent_us > c->progress_us ? c->head->sent_us : c->progress_us;
}

/* Reserved connections: request timeouts (longer by a blocking command's
 * own timeout) and lingering connections left idle. Failing one calls its
 * owner, who may close others: the walk starts over after each. */
static void reserved_tick(void)
{
    int timeout_ms = srv.cfg->request_timeout_ms;
    uint64_t now = server_now_us(), base = timeout_ms > 0 ? (uint64_t)timeout_ms * 1000 : 0;
    backend_conn *c = reserved_head;
    while (c) {
        backend_conn *next = c->next_reserved;
        int live = conn_takes_requests(c);
        if (live && c->head && base) {
            uint64_t block = c->head->block_us;
            uint64_t limit = block > UINT64_MAX - base ? UINT64_MAX : base + block;
            uint64_t clock = conn_head_clock(c);
            if (limit != UINT64_MAX && now > clock && now - clock > limit) {
                reserved_fail(c, "timeout", 1, 0);
                c = reserved_head;
                continue;
            }
        }
        if (live && c->lingering && !c->inflight && !c->barrier &&
            now - c->idle_since_us > (uint64_t)BACKEND_LINGER_MS * 1000) {
            reserved_fail(c, "idle, closed", 0, 1);
            c = reserved_head;
            continue;
        }
        c = next;
    }
}

/* A retired shard whose requests did not finish in this long is freed
 * anyway (they get an error): request_timeout plus a second, or this when
 * requests have no time limit. */
#define RETIRE_MAX_US (60ull * 1000000u)

/* Shards out of service that still answer requests sent before. */
static shard *retired_head;

/* Resets the connections of s whose oldest request made no progress for
 * limit microseconds. */
static void shard_check_timeouts(shard *s, uint64_t limit, uint64_t now)
{
    if (limit == 0)
        return;
    for (int j = 0; j < backend_pool_size(s); j++) {
        backend_conn *c = &s->conns[j];
        if (!c->head || !conn_takes_requests(c))
            continue;
        uint64_t clock = conn_head_clock(c);
        /* A WAIT (min_replicas_to_ack) may take its own timeout. */
        uint64_t block = c->head->block_us;
        if (block == UINT64_MAX)
            continue;
        if (now > clock && now - clock > limit + block)
            /* Later replies could not be matched to their requests: the
             * whole connection is reset. */
            conn_fail(c, "timeout", 1);
    }
}

/* Frees the retired shards that have nothing in flight any more, or that
 * had long enough. */
static void retired_tick(uint64_t now)
{
    int timeout_ms = srv.cfg->request_timeout_ms;
    uint64_t cap = timeout_ms > 0 ? (uint64_t)timeout_ms * 1000 + 1000000u : RETIRE_MAX_US;
    for (shard **link = &retired_head; *link;) {
        shard *s = *link;
        if (backend_shard_inflight(s) > 0 && now - s->retired_us < cap) {
            link = &s->next_retired;
            continue;
        }
        *link = s->next_retired;
        log_notice("shard %s: retired, %zu requests still in flight, closing its connections",
                   s->label, backend_shard_inflight(s));
        backend_shard_free(s);
    }
}

void backend_shard_check_timeouts(shard *s)
{
    int timeout_ms = srv.cfg->request_timeout_ms;
    shard_check_timeouts(s, timeout_ms > 0 ? (uint64_t)timeout_ms * 1000 : 0, server_now_us());
}

void backend_tick(void)
{
    reserved_tick();
    uint64_t now = server_now_us();
    int timeout_ms = srv.cfg->request_timeout_ms;
    if (timeout_ms > 0) {
        uint64_t limit = (uint64_t)timeout_ms * 1000;
        for (size_t i = 0; i < srv.nshards; i++) {
            shard_check_timeouts(srv.shards[i], limit, now);
            if (srv.shards[i]->replica)
                shard_check_timeouts(srv.shards[i]->replica, limit, now);
        }
        for (shard *s = retired_head; s; s = s->next_retired)
            shard_check_timeouts(s, limit, now);
    }
    retired_tick(now);
}

const char *backend_shard_state(const shard *s)
{
    int up = 0, connecting = 0;
    for (int i = 0; i < s->nconns; i++) {
        up += s->conns[i].state == BACKEND_UP;
        connecting += s->conns[i].state == BACKEND_CONNECTING;
    }
    if (up == s->nconns)
        return "up";
    if (up > 0)
        return "degraded";
    return connecting ? "connecting" : "down";
}

size_t backend_shard_inflight(const shard *s)
{
    size_t n = 0;
    for (int i = 0; i < backend_pool_size(s); i++)
        n += s->conns[i].inflight;
    return n;
}

/* The sockaddr of a numeric host:port (no lookup: names are dns.c's). */
static int numeric_addr(const shard *s, const char *host, uint16_t port_number,
                        struct sockaddr_storage *addr, socklen_t *addrlen, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)port_number);
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "shard %s: bad address '%s': %s", s->name, host, gai_strerror(rc));
        return -1;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* "s2 (127.0.0.1:7002)", or "s2 (sentinel:name)" before its master is known. */
static void shard_set_label(shard *s)
{
    if (!s->port) {
        snprintf(s->label, sizeof(s->label), "%s (sentinel:%s)", s->name, s->sentinel_master);
        return;
    }
    char addr[CONFIG_ADDR_MAX];
    config_format_addr(s->host, s->port, addr, sizeof(addr));
    snprintf(s->label, sizeof(s->label), "%s (%s)", s->name, addr);
}

shard *backend_shard_new(const config_shard *cs, int nconns, char *err, size_t errlen)
{
    shard *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->name = strdup(cs->name);
    s->host = strdup(cs->host ? cs->host : "");
    s->port = cs->port;
    s->sentinel_master = cs->sentinel_master ? strdup(cs->sentinel_master) : NULL;
    s->nconns = nconns;
    s->conns = calloc(2 * (size_t)nconns, sizeof(*s->conns));
    if (!s->name || !s->host || !s->conns || (cs->sentinel_master && !s->sentinel_master)) {
        snprintf(err, errlen, "out of memory");
        backend_shard_free(s);
        return NULL;
    }
    shard_set_label(s);
    s->id = ++last_shard_id;
    DLIST_PUSH_FRONT(live_head, s, prev_live, next_live);
    s->dns_name = s->port && config_host_is_name(s->host);
    for (int j = 0; j < 2 * s->nconns; j++) {
        backend_conn *c = &s->conns[j];
        c->shard = s;
        c->index = j;
        c->resp3 = j >= s->nconns;
        c->fd = -1;
        c->state = BACKEND_DOWN;
        resp_reply_init(&c->scan);
        event_assign(&c->ev_timer, srv.base, -1, 0, on_timer, c);
        if (!s->port || s->dns_name)
            snprintf(c->last_error, sizeof(c->last_error), "%s",
                     s->port ? SHARD_NOT_RESOLVED : SHARD_NO_MASTER);
    }
    if (s->port && !s->dns_name &&
        numeric_addr(s, s->host, s->port, &s->addr, &s->addrlen, err, errlen) < 0) {
        backend_shard_free(s);
        return NULL;
    }
    return s;
}

void backend_shard_start(shard *s)
{
    if (!s->addrlen)
        return;
    for (int j = 0; j < backend_pool_size(s); j++)
        if (s->conns[j].state == BACKEND_DOWN)
            conn_connect(&s->conns[j]);
}

int backend_shard_same_source(const shard *s, const config_shard *cs)
{
    if (s->sentinel_master || cs->sentinel_master)
        return s->sentinel_master && cs->sentinel_master &&
               strcmp(s->sentinel_master, cs->sentinel_master) == 0;
    return strcmp(s->host, cs->host) == 0 && s->port == cs->port;
}

/* Closes every connection of s for an address change: requests in
 * flight get why, reserved connections end, nothing reconnects yet. */
static void shard_close_for_move(shard *s, const char *why)
{
    shard_fail_reserved(s, why);
    for (int j = 0; j < backend_pool_size(s); j++) {
        backend_conn *c = &s->conns[j];
        conn_close_fd(c);
        event_del(&c->ev_timer);
        conn_set_state(c, BACKEND_DOWN);
        conn_fail_inflight(c, why, 0);
        conn_unmark_dirty(c);
        c->backoff_ms = 0;
        c->handshake_pending = 0;
        c->laddr[0] = '\0';
    }
    /* Connections reset on the old address cannot be confirmed gone on the
     * new one: they never reached it. */
    s->n_unconfirmed = 0;
}

int backend_shard_readdress(shard *s, const char *host, uint16_t port, char *err, size_t errlen)
{
    struct sockaddr_storage addr;
    socklen_t addrlen = 0;
    int is_name = config_host_is_name(host);
    char *copy = strdup(host);
    if (!copy || (!is_name && numeric_addr(s, host, port, &addr, &addrlen, err, errlen) < 0)) {
        if (!copy)
            snprintf(err, errlen, "out of memory");
        free(copy);
        return -1;
    }
    char why[400];
    snprintf(why, sizeof(why), "unavailable: master moved to %s:%u", host, (unsigned)port);
    shard_close_for_move(s, why);
    /* The replica may be the new master: the next poll finds the replicas. */
    if (s->replica) {
        backend_shard_retire(s->replica);
        s->replica = NULL;
    }
    if (s->addrlen) {
        s->address_changes++;
        s->address_changed_at = time(NULL);
    }
    free(s->host);
    s->host = copy;
    s->port = port;
    s->dns_name = is_name;
    s->dns_wanted = is_name;
    if (is_name) {
        s->addrlen = 0; /* dns.c resolves it, then connects */
    } else {
        s->addr = addr;
        s->addrlen = addrlen;
    }
    shard_set_label(s);
    backend_shard_start(s);
    return 0;
}

/* Whether two socket addresses name the same address and port. */
static int same_sockaddr(const struct sockaddr_storage *a, socklen_t alen,
                         const struct sockaddr_storage *b, socklen_t blen)
{
    if (alen != blen || a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a;
        const struct sockaddr_in *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a;
    const struct sockaddr_in6 *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

int backend_shard_set_address(shard *s, const struct sockaddr *sa, socklen_t len, const char *why)
{
    struct sockaddr_storage addr = {0};
    if ((sa->sa_family != AF_INET || len != sizeof(struct sockaddr_in)) &&
        (sa->sa_family != AF_INET6 || len != sizeof(struct sockaddr_in6)))
        return -1;
    memcpy(&addr, sa, len);
    if (addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&addr)->sin_port = htons(s->port);
    else
        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(s->port);
    if (s->addrlen && same_sockaddr(&s->addr, s->addrlen, &addr, len))
        return 0;
    if (s->addrlen) {
        shard_close_for_move(s, why);
        s->address_changes++;
        s->address_changed_at = time(NULL);
    }
    s->addr = addr;
    s->addrlen = len;
    backend_shard_start(s);
    return 1;
}

void backend_shard_ip(const shard *s, char *out, size_t outlen)
{
    const void *bin = NULL;
    if (s->addrlen && s->addr.ss_family == AF_INET)
        bin = &((const struct sockaddr_in *)&s->addr)->sin_addr;
    else if (s->addrlen && s->addr.ss_family == AF_INET6)
        bin = &((const struct sockaddr_in6 *)&s->addr)->sin6_addr;
    if (!bin || !inet_ntop(s->addr.ss_family, bin, out, (socklen_t)outlen))
        snprintf(out, outlen, "%s", s->host);
}

shard *backend_shard_live_first(void)
{
    return live_head;
}

/* Ends the reserved connections pinned to s; their owners are told. */
static void shard_fail_reserved(shard *s, const char *why)
{
    for (backend_conn *c = reserved_head; c;) {
        if (c->shard == s && c->state != BACKEND_GONE) {
            reserved_fail(c, why, 0, 0);
            c = reserved_head;
        } else {
            c = c->next_reserved;
        }
    }
}

int backend_shard_set_replica(shard *s, const char *host, uint16_t port, char *err, size_t errlen)
{
    if (s->replica && host && s->replica->port == port && strcmp(s->replica->host, host) == 0)
        return 0;
    shard *replica = NULL;
    if (host) {
        config_shard cs = {.name = s->name, .host = (char *)host, .port = port, .read_from = -1};
        replica = backend_shard_new(&cs, s->nconns, err, errlen);
        if (!replica)
            return -1;
        replica->is_replica = 1;
    }
    if (s->replica)
        backend_shard_retire(s->replica);
    s->replica = replica;
    if (replica)
        backend_shard_start(replica);
    return 0;
}

void backend_shard_free(shard *s)
{
    if (!s)
        return;
    backend_shard_free(s->replica);
    shard_fail_reserved(s, "unavailable: shard removed or re-addressed");
    for (int j = 0; s->conns && j < 2 * s->nconns; j++) {
        backend_conn *c = &s->conns[j];
        conn_close_fd(c);
        event_del(&c->ev_timer);
        conn_set_state(c, BACKEND_CLOSED);
        conn_fail_inflight(c, "unavailable: shard removed", 0);
        conn_unmark_dirty(c);
    }
    if (s->id)
        DLIST_UNLINK(live_head, s, prev_live, next_live);
    free(s->conns);
    free(s->name);
    free(s->host);
    free(s->sentinel_master);
    free(s);
}

void backend_shard_retire(shard *s)
{
    shard_fail_reserved(s, "unavailable: shard removed or re-addressed");
    s->retired_us = server_now_us();
    s->next_retired = retired_head;
    retired_head = s;
}

shard *backend_retired_first(void)
{
    return retired_head;
}

void backend_retired_free_all(void)
{
    while (retired_head) {
        shard *s = retired_head;
        retired_head = s->next_retired;
        backend_shard_free(s);
    }
}

/* ---- reserved connections ---- */

static void reserved_free(backend_conn *c)
{
    conn_unmark_dirty(c);
    DLIST_UNLINK(reserved_head, c, prev_reserved, next_reserved);
    /* A barrier still queued on the pool connection completes alone. */
    if (c->barrier)
        c->barrier->conn = NULL;
    event_del(&c->ev_timer);
    buf_free(&c->out);
    buf_free(&c->in);
    c->shard->reserved--;
    free(c);
}

/* Ends a reserved connection: its requests get an error, the owner is
 * told (unless quiet is for an owner that asked), then it is freed (once
 * its read callback, if it is in one, returns). */
static void reserved_fail(backend_conn *c, const char *why, int is_timeout, int quiet)
{
    if (c->state == BACKEND_GONE)
        return;
    if (quiet)
        log_debug("shard %s: reserved connection %s", c->shard->label, why);
    else
        log_info("shard %s: reserved connection: %s", c->shard->label, why);
    conn_close_fd(c);
    event_del(&c->ev_timer);
    snprintf(c->last_error, sizeof(c->last_error), "%s", why);
    conn_set_state(c, BACKEND_GONE);
    /* The owner first, so that callbacks of the failed requests below find
     * the owner's state without this connection. */
    backend_event_fn tell = c->on_event;
    c->on_event = NULL;
    if (tell)
        tell(c->owner, NULL, 0);
    conn_fail_inflight(c, why, is_timeout);
    if (!c->busy)
        reserved_free(c);
}

backend_conn *backend_reserve(shard *s, int push_mode, int resp3, backend_event_fn on_event,
                              void *owner, char *err, size_t errlen)
{
    backend_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->shard = s;
    c->index = -1;
    c->fd = -1;
    c->state = BACKEND_DOWN;
    c->reserved = 1;
    c->push_mode = push_mode;
    c->resp3 = resp3;
    c->owner = owner;
    c->idle_since_us = srv.now_us;
    resp_reply_init(&c->scan);
    event_assign(&c->ev_timer, srv.base, -1, 0, on_timer, c);
    DLIST_PUSH_FRONT(reserved_head, c, prev_reserved, next_reserved);
    s->reserved++;
    /* A connect that fails at once must not call the owner back before it
     * has the handle. */
    c->busy = 1;
    conn_connect(c);
    c->busy = 0;
    if (c->state == BACKEND_GONE) {
        snprintf(err, errlen, "shard %s %s", s->label, c->last_error);
        reserved_free(c);
        return NULL;
    }
    c->on_event = on_event;
    return c;
}

static void barrier_done(fragment *f, const char *reply, size_t len)
{
    (void)reply;
    (void)len;
    backend_conn *c = f->conn;
    free(f);
    if (!c || c->barrier != f)
        return;
    c->barrier = NULL;
    if (c->state == BACKEND_UP && buf_len(&c->out) > 0)
        conn_mark_dirty(c);
}

void backend_reserved_barrier(backend_conn *c, uint64_t hint)
{
    if (c->state == BACKEND_GONE)
        return;
    fragment *f = calloc(1, sizeof(*f));
    if (!f) {
        /* Without a barrier the order is still right unless the client's
         * earlier requests to this shard are still queued: log it. */
        log_warn("shard %s: out of memory for a barrier", c->shard->label);
        return;
    }
    f->done = barrier_done;
    f->conn = c;
    /* A newer barrier covers everything the older one did. */
    if (c->barrier)
        c->barrier->conn = NULL;
    c->barrier = f;
    backend_send(c->shard, hint, f, RESP_PING_REQUEST, RESP_PING_REQUEST_LEN);
}

void backend_reserved_send(backend_conn *c, fragment *f, const char *bytes, size_t len)
{
    shard *s = c->shard;
    s->requests++;
    f->next = NULL;
    f->sent_us = srv.now_us;
    if (f->req)
        f->req->served_by = s; /* for SLOWLOG: a fragment has only shared shards' index */
    if (!conn_takes_requests(c)) {
        fragment_fail(s, f, c->last_error[0] ? c->last_error : "unavailable: connection closed", 0);
        return;
    }
    (void)conn_queue(c, f, bytes, len);
}

int backend_reserved_write(backend_conn *c, const char *bytes, size_t len)
{
    if (!conn_takes_requests(c))
        return -1;
    if (buf_append(&c->out, bytes, len) < 0) {
        buf_forget_failure(&c->out);
        return -1;
    }
    c->queued_total += len;
    if (c->state == BACKEND_UP)
        conn_mark_dirty(c);
    return 0;
}

void backend_reserved_linger(backend_conn *c, int lingering)
{
    c->lingering = lingering;
    if (lingering && !c->inflight)
        c->idle_since_us = srv.now_us;
}

void backend_reserved_close_all(const char *why)
{
    /* Owners may close others while told: start over after each. */
    for (backend_conn *c = reserved_head; c;) {
        if (c->state != BACKEND_GONE) {
            reserved_fail(c, why, 0, 0);
            c = reserved_head;
        } else {
            c = c->next_reserved;
        }
    }
}

void backend_reserved_close(backend_conn *c)
{
    if (!c || c->state == BACKEND_GONE)
        return;
    c->on_event = NULL;
    reserved_fail(c, "closed", 0, 1);
}
