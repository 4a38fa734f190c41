/* Subscriptions over the client's subscriber connections, one per shard it
 * uses. Every (P)(UN)SUBSCRIBE sent to a shard is followed by a PING: the
 * shard's confirmations are dropped (the proxy makes the client's own, with
 * its total counts, when the request arrives) and the pong says the shard
 * has taken the change, which completes the client's request. Messages go
 * to the client through its session, after the replies already due, and
 * only for channels and patterns it is still subscribed to, so none
 * arrives after the confirmation of its UNSUBSCRIBE.
 *
 * A change waits for its pong no longer than request_timeout (pubsub_tick):
 * then it gets the shard's timeout error, the connection closes, and the
 * client, whose subscriptions there are in an unknown state, is closed once
 * that error and the replies before it are written. */
#include "proxy/pubsub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/backend.h"
#include "proxy/buf.h"
#include "proxy/log.h"
#include "proxy/server.h"

struct pubsub;

/* A subscriber connection to one shard. */
typedef struct sub_conn {
    struct pubsub *ps;
    shard *shard;
    backend_conn *conn;     /* NULL once it has gone */
    fragment *waiting_head; /* requests waiting for this shard's pong, in order */
    fragment *waiting_tail;
} sub_conn;

/* A channel or pattern the client is subscribed to. */
typedef struct entry {
    char *name;
    size_t len;
    sub_conn *sc; /* channels: the connection it was subscribed on */
    int fresh;    /* added by the request being handled: to be sent */
} entry;

typedef struct entries {
    entry *items;
    size_t n;
    size_t cap;
} entries;

/* A client's subscriptions. Lookups are linear: a client holds a few
 * channels and patterns, and each message is checked against them once. */
typedef struct pubsub {
    session *sess;
    sub_conn **conns; /* stable addresses: each is its connection's owner */
    size_t nconns;
    size_t conn_cap;
    entries channels;
    entries patterns;
} pubsub;

static void conn_event(void *owner, const char *push, size_t len);

static size_t total(const pubsub *ps)
{
    return ps ? ps->channels.n + ps->patterns.n : 0;
}

int pubsub_active(const session *sess)
{
    return sess && total(sess->pubsub) > 0;
}

void pubsub_counts(const session *sess, int *channels, int *patterns)
{
    const pubsub *ps = sess ? sess->pubsub : NULL;
    *channels = ps ? (int)ps->channels.n : 0;
    *patterns = ps ? (int)ps->patterns.n : 0;
}

static entry *find(entries *e, const char *name, size_t len)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->items[i].len == len && memcmp(e->items[i].name, name, len) == 0)
            return &e->items[i];
    return NULL;
}

static entry *add(entries *e, const char *name, size_t len, sub_conn *sc)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 8;
        entry *p = realloc(e->items, cap * sizeof(*p));
        if (!p)
            return NULL;
        e->items = p;
        e->cap = cap;
    }
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return NULL;
    memcpy(copy, name, len);
    e->items[e->n] = (entry){copy, len, sc, 1};
    return &e->items[e->n++];
}

static void remove_at(entries *e, size_t i)
{
    free(e->items[i].name);
    e->items[i] = e->items[--e->n];
}

static void entries_free(entries *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->items[i].name);
    free(e->items);
    *e = (entries){0};
}

/* The subscriber connection to s, opened when missing. NULL with err. */
static sub_conn *conn_to(pubsub *ps, shard *s, char *err, size_t errlen)
{
    for (size_t i = 0; i < ps->nconns; i++)
        if (ps->conns[i]->shard == s && ps->conns[i]->conn)
            return ps->conns[i];
    if (ps->nconns == ps->conn_cap) {
        size_t cap = ps->conn_cap ? ps->conn_cap * 2 : 4;
        sub_conn **p = realloc(ps->conns, cap * sizeof(*p));
        if (!p) {
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
        ps->conns = p;
        ps->conn_cap = cap;
    }
    sub_conn *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    sc->ps = ps;
    sc->shard = s;
    sc->conn = backend_reserve(s, 1, ps->sess->proto == 3, conn_event, sc, err, errlen);
    if (!sc->conn) {
        free(sc);
        return NULL;
    }
    ps->conns[ps->nconns++] = sc;
    return sc;
}

/* One shard has taken its part of a request (reply NULL), or failed it
 * (reply: the error, e.g. its timeout). The request is answered once every
 * part is in: with the confirmations made for it, or with the first
 * error, as the change may or may not have been made on that shard. */
static void part_taken(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    buf *d = &req->confirmations;
    /* Confirmations start with '*', so an error already kept is seen. */
    if (reply && len > 0 && reply[0] == '-' && (buf_len(d) == 0 || buf_head(d)[0] != '-')) {
        buf_reset(d);
        buf_append(d, reply, len); /* out of memory: answered below */
    }
    if (--req->pending > 0)
        return;
    request_reply_buf(req, d);
}

/* Takes the oldest request waiting on sc off its list; NULL when none. */
static fragment *take_waiting(sub_conn *sc)
{
    fragment *f = sc->waiting_head;
    if (!f)
        return NULL;
    sc->waiting_head = f->next;
    if (!sc->waiting_head)
        sc->waiting_tail = NULL;
    f->next = NULL;
    return f;
}

/* Completes the oldest request waiting on sc. */
static void pop_waiting(sub_conn *sc)
{
    fragment *f = take_waiting(sc);
    if (f)
        f->done(f, NULL, 0);
}

/* Closes the connections that carry none of the client's subscriptions
 * and no request. */
static void close_unused(pubsub *ps)
{
    size_t kept = 0;
    for (size_t i = 0; i < ps->nconns; i++) {
        sub_conn *sc = ps->conns[i];
        int used = sc->waiting_head != NULL || (ps->patterns.n > 0 && sc->conn);
        for (size_t j = 0; j < ps->channels.n && !used; j++)
            used = ps->channels.items[j].sc == sc;
        if (used) {
            ps->conns[kept++] = sc;
            continue;
        }
        backend_reserved_close(sc->conn);
        free(sc);
    }
    ps->nconns = kept;
}

/* A message, confirmation, pong or error on a subscriber connection. */
static void on_push(sub_conn *sc, const char *r, size_t len)
{
    pubsub *ps = sc->ps;
    if (len >= 5 && memcmp(r, "+PONG", 5) == 0) {
        /* A PING on a connection the last UNSUBSCRIBE took out of
         * subscribed mode. */
        pop_waiting(sc);
        close_unused(ps);
        return;
    }
    if (len < 4 || (r[0] != '*' && r[0] != '>')) {
        if (len > 0 && r[0] == '-')
            log_warn("shard %s: subscriber connection: %.*s", sc->shard->label,
                     (int)(len > 200 ? 200 : len - 2), r);
        return;
    }
    size_t pos = 0;
    int64_t count;
    const char *kind, *name;
    size_t kind_len, name_len;
    if (resp_reply_array_at(r, len, &pos, &count) < 0 ||
        resp_reply_bulk_at(r, len, &pos, &kind, &kind_len) < 0)
        return;
    if (kind_len == 4 && memcmp(kind, "pong", 4) == 0) {
        pop_waiting(sc);
        close_unused(ps);
        return;
    }
    if (resp_reply_bulk_at(r, len, &pos, &name, &name_len) < 0)
        return;
    int wanted = 0;
    if (kind_len == 7 && memcmp(kind, "message", 7) == 0)
        wanted = find(&ps->channels, name, name_len) != NULL;
    else if (kind_len == 8 && memcmp(kind, "pmessage", 8) == 0)
        wanted = find(&ps->patterns, name, name_len) != NULL;
    /* Confirmations were made for the client when it asked. */
    if (wanted && ps->sess->push)
        ps->sess->push(ps->sess, r, len);
}

static void conn_event(void *owner, const char *push, size_t len)
{
    sub_conn *sc = owner;
    if (push) {
        on_push(sc, push, len);
        return;
    }
    /* The shard closed it: the subscriptions on it are gone, and a client
     * that is not told would wait for messages for ever. Closing it makes
     * it reconnect and subscribe again. */
    pubsub *ps = sc->ps;
    sc->conn = NULL;
    while (sc->waiting_head)
        pop_waiting(sc);
    if (ps->sess->drop)
        ps->sess->drop(ps->sess, "its subscriber connection to a shard was lost");
}

static pubsub *get_pubsub(session *sess)
{
    if (!sess->pubsub) {
        sess->pubsub = calloc(1, sizeof(pubsub));
        if (sess->pubsub)
            sess->pubsub->sess = sess;
    }
    return sess->pubsub;
}

static shard *channel_shard(const resp_arg *channel)
{
    return srv.shards[server_shard_of_key(channel->ptr, channel->len)];
}

/* Appends one confirmation to req's: [kind, name (NULL: nil), count], a
 * push in RESP3 as Redis sends it. */
static void confirm(request *req, const char *kind, const char *name, size_t len, size_t count)
{
    buf *b = &req->confirmations;
    int resp3 = request_resp3(req);
    buf_append_header(b, resp3 ? '>' : '*', 3);
    buf_append_bulk(b, kind, strlen(kind));
    if (name)
        buf_append_bulk(b, name, len);
    else if (resp3)
        buf_append(b, "_\r\n", 3);
    else
        buf_append(b, "$-1\r\n", 5);
    buf_append_header(b, ':', (int64_t)count);
}

/* Sends `<verb> <names>` and a PING on sc, and makes f wait for the
 * pong. names: the fresh entries of e (on sc, for channels), or every name
 * in args when args is set, or none. 0 or -1. */
static int send_part(sub_conn *sc, fragment *f, const char *verb, const entries *e,
                     int channels_only, size_t argc, const resp_arg *argv)
{
    buf out = {0};
    size_t n = 0;
    if (e) {
        for (size_t i = 0; i < e->n; i++)
            n += e->items[i].fresh && (!channels_only || e->items[i].sc == sc);
    } else {
        n = argc;
    }
    buf_append_header(&out, '*', (int64_t)(1 + n));
    buf_append_bulk(&out, verb, strlen(verb));
    for (size_t i = 0; e && i < e->n; i++)
        if (e->items[i].fresh && (!channels_only || e->items[i].sc == sc))
            buf_append_bulk(&out, e->items[i].name, e->items[i].len);
    for (size_t i = 0; !e && i < argc; i++)
        buf_append_bulk(&out, argv[i].ptr, argv[i].len);
    buf_append(&out, RESP_PING_REQUEST, RESP_PING_REQUEST_LEN);
    int fail =
        buf_failed(&out) || backend_reserved_write(sc->conn, buf_head(&out), buf_len(&out)) < 0;
    buf_free(&out);
    if (fail)
        return -1;
    /* Fresh from send_parts' calloc: its request_timeout starts now. */
    f->sent_us = srv.now_us;
    f->next = NULL;
    if (sc->waiting_tail)
        sc->waiting_tail->next = f;
    else
        sc->waiting_head = f;
    sc->waiting_tail = f;
    return 0;
}

/* Waits for the parts marked in send_to[0..nconns) and answers req with
 * the reply in req->confirmations once all are taken. */
static void send_parts(request *req, pubsub *ps, const unsigned char *send_to, const char *verb,
                       const entries *e, int channels_only, size_t argc, const resp_arg *argv)
{
    size_t nparts = 0;
    for (size_t i = 0; i < ps->nconns; i++)
        nparts += send_to[i];
    if (nparts == 0) {
        req->on_done(req, buf_head(&req->confirmations), buf_len(&req->confirmations));
        return;
    }
    req->frags = calloc(nparts, sizeof(fragment));
    if (!req->frags) {
        request_error(req, "ERR out of memory");
        return;
    }
    req->nfrags = nparts;
    /* Each part is taken later, from its connection's callback: count
     * them all before any is sent. */
    req->pending = nparts + 1;
    size_t k = 0;
    int lost = 0;
    for (size_t i = 0; i < ps->nconns; i++) {
        if (!send_to[i])
            continue;
        fragment *f = &req->frags[k++];
        f->req = req;
        f->done = part_taken;
        if (send_part(ps->conns[i], f, verb, e, channels_only, argc, argv) < 0) {
            lost = 1;
            req->pending--;
        }
    }
    if (lost && ps->sess->drop)
        ps->sess->drop(ps->sess, "a subscriber connection failed");
    part_taken(&req->frags[0], NULL, 0);
}

static void cmd_subscribe(request *req, pubsub *ps, size_t argc, const resp_arg *argv)
{
    char err[300];
    /* Every connection first, so a shard that cannot be reached changes
     * nothing. */
    for (size_t i = 1; i < argc; i++) {
        if (!find(&ps->channels, argv[i].ptr, argv[i].len) &&
            !conn_to(ps, channel_shard(&argv[i]), err, sizeof(err))) {
            request_error(req, "ERR %s", err);
            return;
        }
    }
    int fail = 0;
    for (size_t i = 1; i < argc && !fail; i++) {
        if (!find(&ps->channels, argv[i].ptr, argv[i].len))
            fail = !add(&ps->channels, argv[i].ptr, argv[i].len,
                        conn_to(ps, channel_shard(&argv[i]), err, sizeof(err)));
        confirm(req, "subscribe", argv[i].ptr, argv[i].len, total(ps));
    }
    unsigned char *send_to = calloc(ps->nconns + 1, 1);
    if (fail || buf_failed(&req->confirmations) || !send_to) {
        free(send_to);
        request_error(req, "ERR out of memory");
        return;
    }
    for (size_t i = 0; i < ps->channels.n; i++)
        for (size_t j = 0; j < ps->nconns; j++)
            send_to[j] |= ps->channels.items[i].fresh && ps->channels.items[i].sc == ps->conns[j];
    send_parts(req, ps, send_to, "SUBSCRIBE", &ps->channels, 1, 0, NULL);
    for (size_t i = 0; i < ps->channels.n; i++)
        ps->channels.items[i].fresh = 0;
    free(send_to);
}

static void cmd_psubscribe(request *req, pubsub *ps, size_t argc, const resp_arg *argv)
{
    char err[300];
    int fresh = 0;
    for (size_t i = 1; i < argc; i++)
        fresh |= !find(&ps->patterns, argv[i].ptr, argv[i].len);
    /* A pattern can match channels of every shard. */
    for (size_t s = 0; fresh && s < srv.nshards; s++) {
        if (!conn_to(ps, srv.shards[s], err, sizeof(err))) {
            request_error(req, "ERR %s", err);
            return;
        }
    }
    int fail = 0;
    for (size_t i = 1; i < argc && !fail; i++) {
        if (!find(&ps->patterns, argv[i].ptr, argv[i].len))
            fail = !add(&ps->patterns, argv[i].ptr, argv[i].len, NULL);
        confirm(req, "psubscribe", argv[i].ptr, argv[i].len, total(ps));
    }
    unsigned char *send_to = calloc(ps->nconns + 1, 1);
    if (fail || buf_failed(&req->confirmations) || !send_to) {
        free(send_to);
        request_error(req, "ERR out of memory");
        return;
    }
    for (size_t j = 0; j < ps->nconns; j++)
        send_to[j] = fresh && ps->conns[j]->conn != NULL;
    send_parts(req, ps, send_to, "PSUBSCRIBE", &ps->patterns, 0, 0, NULL);
    for (size_t i = 0; i < ps->patterns.n; i++)
        ps->patterns.items[i].fresh = 0;
    free(send_to);
}

/* UNSUBSCRIBE and PUNSUBSCRIBE: the names given, or all when none is. */
static void cmd_unsubscribe(request *req, pubsub *ps, int patterns, size_t argc,
                            const resp_arg *argv)
{
    entries *e = patterns ? &ps->patterns : &ps->channels;
    const char *kind = patterns ? "punsubscribe" : "unsubscribe";
    unsigned char *send_to = calloc(ps->nconns + 1, 1);
    if (!send_to) {
        request_error(req, "ERR out of memory");
        return;
    }
    if (argc == 1) {
        if (e->n == 0)
            confirm(req, kind, NULL, 0, total(ps));
        for (size_t j = 0; j < ps->nconns; j++)
            for (size_t i = 0; i < e->n; i++)
                send_to[j] |= patterns || e->items[i].sc == ps->conns[j];
        while (e->n > 0) {
            entry *last = &e->items[e->n - 1];
            confirm(req, kind, last->name, last->len, total(ps) - 1);
            remove_at(e, e->n - 1);
        }
    } else {
        for (size_t i = 1; i < argc; i++) {
            entry *it = find(e, argv[i].ptr, argv[i].len);
            if (it) {
                for (size_t j = 0; j < ps->nconns; j++)
                    send_to[j] |= patterns || it->sc == ps->conns[j];
                remove_at(e, (size_t)(it - e->items));
            }
            confirm(req, kind, argv[i].ptr, argv[i].len, total(ps));
        }
    }
    if (buf_failed(&req->confirmations)) {
        free(send_to);
        request_error(req, "ERR out of memory");
        return;
    }
    for (size_t j = 0; j < ps->nconns; j++)
        send_to[j] &= ps->conns[j]->conn != NULL;
    send_parts(req, ps, send_to, patterns ? "PUNSUBSCRIBE" : "UNSUBSCRIBE", NULL, 0, argc - 1,
               argv + 1);
    free(send_to);
}

void pubsub_command(request *req, command_id id, size_t argc, const resp_arg *argv)
{
    pubsub *ps = get_pubsub(req->session);
    if (!ps) {
        request_error(req, "ERR out of memory");
        return;
    }
    switch (id) {
    case CMD_SUBSCRIBE:
        cmd_subscribe(req, ps, argc, argv);
        return;
    case CMD_PSUBSCRIBE:
        cmd_psubscribe(req, ps, argc, argv);
        return;
    case CMD_UNSUBSCRIBE:
        cmd_unsubscribe(req, ps, 0, argc, argv);
        return;
    case CMD_PUNSUBSCRIBE:
        cmd_unsubscribe(req, ps, 1, argc, argv);
        return;
    default:
        break;
    }
    log_error("BUG: '%s' is not a pub/sub command", req->cmd ? req->cmd->name : "?");
    request_error(req, "ERR internal error: not a pub/sub command");
}

void pubsub_ping(request *req, size_t argc, const resp_arg *argv)
{
    buf b = {0};
    buf_append_header(&b, '*', 2);
    buf_append_bulk(&b, "pong", 4);
    buf_append_bulk(&b, argc > 1 ? argv[1].ptr : "", argc > 1 ? argv[1].len : 0);
    request_reply_buf(req, &b);
    buf_free(&b);
}

void pubsub_end(session *sess)
{
    pubsub *ps = sess->pubsub;
    if (!ps)
        return;
    sess->pubsub = NULL;
    for (size_t i = 0; i < ps->nconns; i++) {
        sub_conn *sc = ps->conns[i];
        /* Requests still waiting were answered in the client's eyes: they
         * complete with the reply made for them. */
        while (sc->waiting_head)
            pop_waiting(sc);
        backend_reserved_close(sc->conn);
        free(sc);
    }
    free(ps->conns);
    entries_free(&ps->channels);
    entries_free(&ps->patterns);
    free(ps);
}

/* The shard has not confirmed sc's oldest change within timeout_ms: every
 * change waiting on sc gets the shard's timeout error, and the connection
 * closes, so that the shard drops whatever it took of them when it wakes. */
static void time_out(sub_conn *sc, int timeout_ms)
{
    pubsub *ps = sc->ps;
    log_warn("shard %s: no confirmation of client %s's subscription change within "
             "request_timeout (%d ms), closing its subscriber connection",
             sc->shard->label, ps->sess->addr ? ps->sess->addr : "?", timeout_ms);
    backend_reserved_close(sc->conn);
    sc->conn = NULL;
    fragment *f;
    while ((f = take_waiting(sc)))
        backend_fragment_timeout(sc->shard, f);
    /* Its subscriptions on that shard are in an unknown state: the client
     * must not go on believing in them. */
    if (ps->sess->close_after_replies)
        ps->sess->close_after_replies(
            ps->sess, "a shard did not confirm a subscription change within request_timeout");
}

void pubsub_tick(void)
{
    int timeout_ms = srv.cfg->request_timeout_ms;
    if (timeout_ms <= 0)
        return;
    uint64_t now = srv.now_us, limit = (uint64_t)timeout_ms * 1000;
    for (session *sess = srv.sessions; sess; sess = sess->next) {
        pubsub *ps = sess->pubsub;
        for (size_t i = 0; ps && i < ps->nconns; i++) {
            const fragment *f = ps->conns[i]->waiting_head;
            if (f && now > f->sent_us && now - f->sent_us > limit)
                time_out(ps->conns[i], timeout_ms);
        }
    }
}
