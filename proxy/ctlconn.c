/* Control connections over a libevent bufferevent, with hiredis's async
 * API: see ctlconn.h.
 *
 * A numeric host is connected to at once. A host name is looked up first
 * (resolver.c: evdns, never a blocking getaddrinfo on the loop); the
 * bufferevent is made before, so commands queue meanwhile, and the connect
 * starts on the answer. A lookup that fails is a failed connect. */
#include "proxy/ctlconn.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <hiredis/read.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config/config.h"
#include "proxy/resolver.h"
#include "proxy/server.h"
#include "proxy/tls.h"

/* One command's reply callback, in the order the commands were sent. */
typedef struct ctl_callback {
    ctlconn_reply_fn *fn;
    void *privdata;
    int subscribe; /* SUBSCRIBE/PSUBSCRIBE: fn takes every reply from then on */
    struct ctl_callback *next;
} ctl_callback;

/* The full connection behind the public head (err, errstr, data). */
typedef struct ctl_conn {
    ctlconn pub;
    struct bufferevent *bev;
    resolver_lookup *lookup; /* the host name's lookup, while the connect waits for it */
    redisReader *reader;
    ctl_callback *head; /* replies due, oldest first */
    ctl_callback *tail;
    ctl_callback push; /* after SUBSCRIBE: where every reply goes (fn NULL = none) */
    ctlconn_status_fn *on_connect;
    ctlconn_status_fn *on_disconnect;
    int connected;     /* the connect callback said OK */
    int in_callback;   /* inside a user callback: freeing waits */
    int free_pending;  /* ctlconn_free called inside a callback */
    int disconnecting; /* ctlconn_disconnect: free once nothing is due */
} ctl_conn;

static ctl_conn *full(ctlconn *c)
{
    return (ctl_conn *)(void *)c;
}

static void set_error(ctl_conn *cc, const char *fmt, const char *detail)
{
    if (!cc->pub.err) {
        cc->pub.err = REDIS_ERR_IO;
        snprintf(cc->pub.errstr, sizeof(cc->pub.errstr), fmt, detail);
    }
}

/* Calls every queued callback with a NULL reply, oldest first. */
static void fail_callbacks(ctl_conn *cc)
{
    ctl_callback *cb;
    cc->in_callback++;
    while ((cb = cc->head)) {
        cc->head = cb->next;
        if (!cc->head)
            cc->tail = NULL;
        if (cb->fn)
            cb->fn(&cc->pub, NULL, cb->privdata);
        free(cb);
    }
    if (cc->push.fn)
        cc->push.fn(&cc->pub, NULL, cc->push.privdata);
    cc->push.fn = NULL;
    cc->in_callback--;
}

/* Frees cc: queued callbacks get NULL, then the disconnect callback gets
 * status (when it was connected). */
static void destroy(ctl_conn *cc, int status)
{
    cc->free_pending = 1; /* callbacks below may send no more */
    if (cc->lookup)
        resolver_cancel(cc->lookup);
    if (cc->bev)
        bufferevent_disable(cc->bev, EV_READ | EV_WRITE);
    fail_callbacks(cc);
    if (cc->connected && cc->on_disconnect) {
        cc->in_callback++;
        cc->on_disconnect(&cc->pub, status);
        cc->in_callback--;
    }
    if (cc->bev)
        bufferevent_free(cc->bev);
    redisReaderFree(cc->reader);
    free(cc);
}

/* After a callback: whether the user freed cc meanwhile (it is gone). */
static int freed_in_callback(ctl_conn *cc)
{
    if (cc->in_callback || !cc->free_pending)
        return 0;
    destroy(cc, CTLCONN_OK);
    return 1;
}

/* The connection failed (connect, I/O, protocol): callbacks as hiredis. */
static void fail(ctl_conn *cc)
{
    if (!cc->connected && cc->on_connect) {
        cc->in_callback++;
        cc->on_connect(&cc->pub, CTLCONN_ERR);
        cc->in_callback--;
    }
    destroy(cc, CTLCONN_ERR);
}

/* Delivers every whole reply read so far. */
static void on_read(struct bufferevent *bev, void *arg)
{
    ctl_conn *cc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    while ((n = evbuffer_get_length(in)) > 0) {
        /* Fed in the pieces the buffer holds, without a copy. */
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (redisReaderFeed(cc->reader, v.iov_base, v.iov_len) != REDIS_OK)
            break;
        evbuffer_drain(in, v.iov_len);
    }
    server_clock_update();
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(cc->reader, &reply) != REDIS_OK) {
            set_error(cc, "protocol error: %s", cc->reader->errstr);
            fail(cc);
            return;
        }
        if (!reply)
            break;
        ctl_callback *cb = cc->head;
        ctl_callback use = {0};
        if (cc->push.fn || !cb) {
            use = cc->push; /* subscribed: every reply; else an unasked reply, dropped */
        } else {
            cc->head = cb->next;
            if (!cc->head)
                cc->tail = NULL;
            use = *cb;
            free(cb);
            if (use.subscribe)
                cc->push = use;
        }
        if (use.fn) {
            cc->in_callback++;
            use.fn(&cc->pub, reply, use.privdata);
            cc->in_callback--;
        }
        freeReplyObject(reply);
        if (freed_in_callback(cc))
            return;
        if (cc->disconnecting && !cc->head) {
            destroy(cc, CTLCONN_OK);
            return;
        }
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    ctl_conn *cc = arg;
    server_clock_update();
    if (what & BEV_EVENT_CONNECTED) {
        evutil_socket_t fd = bufferevent_getfd(bev);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        cc->connected = 1;
        if (cc->on_connect) {
            cc->in_callback++;
            cc->on_connect(&cc->pub, CTLCONN_OK);
            cc->in_callback--;
        }
        if (!freed_in_callback(cc) && cc->disconnecting && !cc->head)
            destroy(cc, CTLCONN_OK);
        return;
    }
    if (what & BEV_EVENT_EOF) {
        set_error(cc, "%s", "Server closed the connection");
    } else {
        unsigned long tls_err = bufferevent_get_openssl_error(bev);
        SSL *ssl = bufferevent_openssl_get_ssl(bev);
        char text[sizeof(cc->pub.errstr)];
        if (tls_err && ssl && !cc->connected)
            tls_handshake_failure(ssl, tls_err, text, sizeof(text));
        else if (tls_err)
            ERR_error_string_n(tls_err, text, sizeof(text));
        else
            snprintf(text, sizeof(text), "%s",
                     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        set_error(cc, tls_err && cc->connected ? "TLS: %s" : "%s", text);
    }
    fail(cc);
}

/* Makes cc's bufferevent (TLS to host when peer says so). 0, or -1 with
 * err set. */
static int new_bufferevent(ctl_conn *cc, const char *host, ctlconn_peer peer)
{
    int use_tls = (peer == CTLCONN_SHARD && tls_shards_enabled()) ||
                  (peer == CTLCONN_SENTINEL && tls_sentinels_enabled());
    if (use_tls) {
        char why[200];
        SSL *ssl = tls_connect_new(-1, host, why, sizeof(why));
        if (ssl)
            cc->bev = bufferevent_openssl_socket_new(srv.base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                     BEV_OPT_CLOSE_ON_FREE);
        if (!ssl || !cc->bev) {
            if (ssl)
                SSL_free(ssl);
            set_error(cc, "%s", ssl ? "out of memory" : why);
            return -1;
        }
        /* Redis closes without close_notify: that is a close, not an attack. */
        bufferevent_openssl_set_allow_dirty_shutdown(cc->bev, 1);
    } else {
        cc->bev = bufferevent_socket_new(srv.base, -1, BEV_OPT_CLOSE_ON_FREE);
        if (!cc->bev) {
            set_error(cc, "%s", "out of memory");
            return -1;
        }
    }
    bufferevent_setcb(cc->bev, on_read, NULL, on_event, cc);
    bufferevent_enable(cc->bev, EV_READ | EV_WRITE);
    return 0;
}

/* Starts the connect to the first address of a lookup's answer (result
 * 0), or notes why there is none. 0, or -1 with err set. */
static int start_connect(ctl_conn *cc, int result, const struct evutil_addrinfo *res)
{
    if (result != 0) {
        set_error(cc, "cannot resolve host: %s", evutil_gai_strerror(result));
        return -1;
    }
    if (bufferevent_socket_connect(cc->bev, res->ai_addr, (int)res->ai_addrlen) < 0) {
        set_error(cc, "connect: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
        return -1;
    }
    return 0;
}

/* The answer to a host name's lookup. Inside resolver_lookup_start (cc->lookup
 * not set yet) a failure only sets err, which ctlconn_connect's caller
 * sees; from the loop it fails the connection as a refused connect does. */
static void on_resolved(int result, const struct evutil_addrinfo *res, void *arg)
{
    ctl_conn *cc = arg;
    int from_loop = cc->lookup != NULL;
    cc->lookup = NULL;
    if (from_loop)
        server_clock_update();
    if (start_connect(cc, result, res) < 0 && from_loop)
        fail(cc);
}

ctlconn *ctlconn_connect(const char *host, int port, ctlconn_peer peer)
{
    ctl_conn *cc = calloc(1, sizeof(*cc));
    if (!cc)
        return NULL;
    cc->reader = redisReaderCreate();
    if (!cc->reader) {
        free(cc);
        return NULL;
    }
    if (new_bufferevent(cc, host, peer) < 0)
        return &cc->pub;
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    if (config_host_is_name(host)) {
        cc->lookup = resolver_lookup_start(host, service, on_resolved, cc);
        return &cc->pub;
    }
    /* A numeric address: getaddrinfo with AI_NUMERICHOST never blocks. */
    struct evutil_addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV;
    int rc = evutil_getaddrinfo(host, service, &hints, &res);
    (void)start_connect(cc, rc, res);
    if (res)
        evutil_freeaddrinfo(res);
    return &cc->pub;
}

void ctlconn_set_connect_callback(ctlconn *c, ctlconn_status_fn *fn)
{
    full(c)->on_connect = fn;
}

void ctlconn_set_disconnect_callback(ctlconn *c, ctlconn_status_fn *fn)
{
    full(c)->on_disconnect = fn;
}

/* Whether a formatted request is SUBSCRIBE or PSUBSCRIBE: "*N\r\n$L\r\nNAME". */
static int is_subscribe(const char *cmd, size_t len)
{
    const char *end = cmd + len;
    const char *p = memchr(cmd, '\n', len);
    p = p ? memchr(p + 1, '\n', (size_t)(end - p - 1)) : NULL;
    if (!p)
        return 0;
    p++;
    size_t left = (size_t)(end - p);
    return (left >= 10 && strncasecmp(p, "SUBSCRIBE\r", 10) == 0) ||
           (left >= 11 && strncasecmp(p, "PSUBSCRIBE\r", 11) == 0);
}

int ctlconn_formatted_command(ctlconn *c, ctlconn_reply_fn *fn, void *privdata, const char *cmd,
                              size_t len)
{
    ctl_conn *cc = full(c);
    if (c->err || cc->disconnecting || cc->free_pending || !cc->bev)
        return CTLCONN_ERR;
    ctl_callback *cb = calloc(1, sizeof(*cb));
    if (!cb || bufferevent_write(cc->bev, cmd, len) < 0) {
        free(cb);
        return CTLCONN_ERR;
    }
    cb->fn = fn;
    cb->privdata = privdata;
    cb->subscribe = is_subscribe(cmd, len);
    if (cc->tail)
        cc->tail->next = cb;
    else
        cc->head = cb;
    cc->tail = cb;
    return CTLCONN_OK;
}

int ctlconn_command(ctlconn *c, ctlconn_reply_fn *fn, void *privdata, const char *format, ...)
{
    char *cmd = NULL;
    va_list ap;
    va_start(ap, format);
    int len = redisvFormatCommand(&cmd, format, ap);
    va_end(ap);
    if (len < 0)
        return CTLCONN_ERR;
    int rc = ctlconn_formatted_command(c, fn, privdata, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

int ctlconn_command_argv(ctlconn *c, ctlconn_reply_fn *fn, void *privdata, int argc,
                         const char **argv, const size_t *argvlen)
{
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        return CTLCONN_ERR;
    int rc = ctlconn_formatted_command(c, fn, privdata, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

void ctlconn_disconnect(ctlconn *c)
{
    ctl_conn *cc = full(c);
    cc->disconnecting = 1;
    if (!cc->head && !cc->in_callback)
        destroy(cc, CTLCONN_OK);
}

void ctlconn_free(ctlconn *c)
{
    ctl_conn *cc = full(c);
    if (cc->in_callback) {
        cc->free_pending = 1;
        return;
    }
    destroy(cc, CTLCONN_OK);
}
