/* TLS contexts and non-blocking TLS I/O on the proxy's own sockets, with
 * OpenSSL: see tls.h. */
#include "proxy/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* What a TLS listener or shard connection accepts: TLS 1.2 and 1.3, as
 * Redis's default tls-protocols. */
#define TLS_MIN_VERSION TLS1_2_VERSION
/* Names this proxy's sessions so that a client resuming one with a
 * certificate check on gets the same check (OpenSSL refuses resumption
 * with a verify mode and no id context). */
#define TLS_SESSION_ID_CONTEXT "ringproxy"

static struct {
    SSL_CTX *clients;  /* for tls_listen, NULL when it is off */
    SSL_CTX *upstream; /* for connections to shards and Sentinels, NULL when neither uses TLS */
    int shards;        /* tls_shards: the shards are reached with upstream */
    int sentinels;     /* tls_sentinels: the Sentinels are */
    char last_error[256];
} tls;

/* OpenSSL's error queue as one line (its first entry, the cause), or what
 * fallback says when the queue is empty. The queue is emptied. */
static void error_text(const char *fallback, char *out, size_t outlen)
{
    unsigned long code = ERR_get_error();
    if (!code) {
        snprintf(out, outlen, "%s", fallback);
        return;
    }
    char text[200];
    ERR_error_string_n(code, text, sizeof(text));
    snprintf(out, outlen, "%s", text);
    ERR_clear_error();
}

/* The mode bits both sides need: a write may send part of a buffer, and
 * be retried with the buffer moved (ours compact and grow). */
static void set_common(SSL_CTX *ctx)
{
    SSL_CTX_set_min_proto_version(ctx, TLS_MIN_VERSION);
    /* A peer that closes the socket without close_notify (redis-cli does)
     * is a close, not an error: the RESP layer knows whether a reply was
     * cut short. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
}

static int load_pair(SSL_CTX *ctx, const char *cert, const char *key, char *err, size_t errlen)
{
    char why[200];
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        error_text("unreadable", why, sizeof(why));
        snprintf(err, errlen, "certificate %s: %s", cert, why);
        return -1;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        error_text("unreadable", why, sizeof(why));
        snprintf(err, errlen, "key %s: %s", key, why);
        return -1;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        error_text("does not match", why, sizeof(why));
        snprintf(err, errlen, "key %s does not match certificate %s: %s", key, cert, why);
        return -1;
    }
    return 0;
}

static int load_ca(SSL_CTX *ctx, const char *ca, char *err, size_t errlen)
{
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) == 1)
        return 0;
    char why[200];
    error_text("unreadable", why, sizeof(why));
    snprintf(err, errlen, "CA certificates %s: %s", ca, why);
    return -1;
}

static SSL_CTX *clients_context(const config *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "tls_listen: out of memory");
        return NULL;
    }
    set_common(ctx);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)TLS_SESSION_ID_CONTEXT,
                                   sizeof(TLS_SESSION_ID_CONTEXT) - 1);
    int ok = load_pair(ctx, cfg->tls_cert_file, cfg->tls_key_file, err, errlen) == 0;
    if (ok && cfg->tls_ca_cert_file) {
        ok = load_ca(ctx, cfg->tls_ca_cert_file, err, errlen) == 0;
        STACK_OF(X509_NAME) *names = ok ? SSL_load_client_CA_file(cfg->tls_ca_cert_file) : NULL;
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names);
    }
    if (!ok) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    switch ((config_tls_auth)cfg->tls_auth_clients) {
    case CONFIG_TLS_AUTH_YES:
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        break;
    case CONFIG_TLS_AUTH_OPTIONAL:
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        break;
    case CONFIG_TLS_AUTH_NO:
    case CONFIG_TLS_AUTH_COUNT:
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        break;
    }
    return ctx;
}

/* The client side, for shards and Sentinels alike: one CA file and one
 * client certificate, as a Redis deployment has one PKI for its servers
 * and the Sentinels that connect to them (tls-replication). */
static SSL_CTX *upstream_context(const config *cfg, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    set_common(ctx);
    int ok = load_ca(ctx, cfg->tls_shards_ca_cert_file, err, errlen) == 0;
    if (ok && cfg->tls_shards_cert_file)
        ok = load_pair(ctx, cfg->tls_shards_cert_file, cfg->tls_shards_key_file, err, errlen) == 0;
    if (!ok) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

int tls_configure(const config *cfg, char *err, size_t errlen)
{
    char why[400];
    SSL_CTX *clients = NULL, *upstream = NULL;
    if (cfg->tls_listen_host && !(clients = clients_context(cfg, why, sizeof(why)))) {
        snprintf(err, errlen, "tls_listen: %s", why);
        return -1;
    }
    if ((cfg->tls_shards || cfg->tls_sentinels) &&
        !(upstream = upstream_context(cfg, why, sizeof(why)))) {
        snprintf(err, errlen, "%s: %s", cfg->tls_shards ? "tls_shards" : "tls_sentinels", why);
        SSL_CTX_free(clients);
        return -1;
    }
    /* Connections made with the old contexts hold references to them. */
    SSL_CTX_free(tls.clients);
    SSL_CTX_free(tls.upstream);
    tls.clients = clients;
    tls.upstream = upstream;
    tls.shards = cfg->tls_shards;
    tls.sentinels = cfg->tls_sentinels;
    return 0;
}

void tls_shutdown(void)
{
    SSL_CTX_free(tls.clients);
    SSL_CTX_free(tls.upstream);
    tls.clients = tls.upstream = NULL;
    tls.shards = tls.sentinels = 0;
}

int tls_shards_enabled(void)
{
    return tls.shards && tls.upstream;
}

int tls_sentinels_enabled(void)
{
    return tls.sentinels && tls.upstream;
}

SSL_CTX *tls_shard_context(void)
{
    return tls.shards ? tls.upstream : NULL;
}

SSL *tls_accept_new(int fd, char *err, size_t errlen)
{
    SSL *ssl = tls.clients ? SSL_new(tls.clients) : NULL;
    if (!ssl || SSL_set_fd(ssl, fd) != 1) {
        snprintf(err, errlen, "%s", tls.clients ? "TLS: out of memory" : "TLS is not configured");
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

SSL *tls_connect_new(int fd, const char *host, char *err, size_t errlen)
{
    SSL *ssl = tls.upstream ? SSL_new(tls.upstream) : NULL;
    if (!ssl || (fd >= 0 && SSL_set_fd(ssl, fd) != 1)) {
        snprintf(err, errlen, "%s", tls.upstream ? "TLS: out of memory" : "TLS is not configured");
        SSL_free(ssl);
        return NULL;
    }
    /* The certificate must name the address dialled: an IP address in its
     * subjectAltName, or a DNS name (then also sent as SNI). */
    unsigned char ip[16];
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    int ok =
        is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
              : X509_VERIFY_PARAM_set1_host(param, host, 0) && SSL_set_tlsext_host_name(ssl, host);
    if (!ok) {
        snprintf(err, errlen, "TLS: cannot check a certificate for %s", host);
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

/* "TLS handshake failed: ..." with why: the certificate check's verdict
 * first when that is what failed. */
static void failure_text(const SSL *ssl, const char *why, char *err, size_t errlen)
{
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK)
        snprintf(err, errlen, "TLS handshake failed: certificate: %s (%s)",
                 X509_verify_cert_error_string(verify), why);
    else
        snprintf(err, errlen, "TLS handshake failed: %s", why);
}

void tls_handshake_failure(const SSL *ssl, unsigned long code, char *err, size_t errlen)
{
    char why[200];
    ERR_error_string_n(code, why, sizeof(why));
    failure_text(ssl, why, err, errlen);
}

/* The reason a handshake failed: the certificate check's verdict when that
 * is what failed, else OpenSSL's error queue. */
static void handshake_error(SSL *ssl, int ssl_err, char *err, size_t errlen)
{
    char why[200];
    if (ssl_err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        snprintf(why, sizeof(why), "%s", errno ? strerror(errno) : "connection closed by peer");
    else
        error_text("protocol error", why, sizeof(why));
    failure_text(ssl, why, err, errlen);
    ERR_clear_error();
    SSL_set_quiet_shutdown(ssl, 1); /* nothing more is written to it */
}

int tls_handshake(SSL *ssl, tls_want *want, char *err, size_t errlen)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        *want = TLS_WANT_NOTHING;
        return 1;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want = e == SSL_ERROR_WANT_READ ? TLS_WANT_READ : TLS_WANT_WRITE;
        return 0;
    }
    handshake_error(ssl, e, err, errlen);
    return -1;
}

/* Classifies a failed SSL_read/SSL_write: -1 with errno EAGAIN and *want
 * set when it must wait, 0 for a close, -1 with errno and last_error for a
 * failure. */
static ssize_t io_failure(SSL *ssl, int r, tls_want *want)
{
    int e = SSL_get_error(ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        *want = e == SSL_ERROR_WANT_READ ? TLS_WANT_READ : TLS_WANT_WRITE;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0; /* close_notify */
    case SSL_ERROR_SYSCALL:
        SSL_set_quiet_shutdown(ssl, 1);
        if (ERR_peek_error() == 0 && errno == 0)
            return 0; /* the socket closed without close_notify: as a close */
        if (errno == 0)
            errno = EPROTO;
        error_text(strerror(errno), tls.last_error, sizeof(tls.last_error));
        return -1;
    default:
        SSL_set_quiet_shutdown(ssl, 1);
        error_text("TLS protocol error", tls.last_error, sizeof(tls.last_error));
        errno = EPROTO;
        return -1;
    }
}

ssize_t tls_read(SSL *ssl, void *bytes, size_t n, tls_want *want)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_read(ssl, bytes, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    return io_failure(ssl, r, want);
}

ssize_t tls_write(SSL *ssl, const void *bytes, size_t n, tls_want *want)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_write(ssl, bytes, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    if (io_failure(ssl, r, want) == 0) {
        snprintf(tls.last_error, sizeof(tls.last_error), "closed by peer");
        errno = 0;
    }
    return -1;
}

buf_write_result tls_write_buf(SSL *ssl, buf *b, size_t *written, tls_want *want)
{
    *written = 0;
    while (buf_len(b) > 0) {
        ssize_t n = tls_write(ssl, buf_head(b), buf_len(b), want);
        if (n > 0) {
            buf_consume(b, (size_t)n);
            *written += (size_t)n;
            continue;
        }
        return errno == EAGAIN ? BUF_WRITE_BLOCKED : BUF_WRITE_FAILED;
    }
    return BUF_WRITE_DONE;
}

void tls_close(SSL *ssl)
{
    if (!ssl)
        return;
    /* One close_notify if the handshake finished; the socket is closed
     * right after, so the peer's answer is not waited for. */
    if (SSL_is_init_finished(ssl)) {
        ERR_clear_error();
        (void)SSL_shutdown(ssl);
        ERR_clear_error();
    }
    SSL_free(ssl);
}

const char *tls_last_error(void)
{
    return tls.last_error;
}

const char *tls_version(const SSL *ssl)
{
    return SSL_get_version(ssl);
}

void tls_peer_subject(SSL *ssl, char *out, size_t outlen)
{
    X509 *cert = SSL_get1_peer_certificate(ssl);
    if (!cert) {
        snprintf(out, outlen, "none");
        return;
    }
    X509_NAME_oneline(X509_get_subject_name(cert), out, (int)outlen);
    X509_free(cert);
}

/* ---- a data connection's TLS ---- */

void tls_conn_start(tls_conn *t, SSL *ssl, struct event *ev_read, struct event *ev_write,
                    int *write_waiting)
{
    *t = (tls_conn){.ssl = ssl,
                    .handshaking = 1,
                    .ev_read = ev_read,
                    .ev_write = ev_write,
                    .write_waiting = write_waiting};
}

/* Arms the owner's write event, once. */
static void wait_writable(tls_conn *t)
{
    if (!*t->write_waiting) {
        event_add(t->ev_write, NULL);
        *t->write_waiting = 1;
    }
}

int tls_conn_handshake(tls_conn *t, char *err, size_t errlen)
{
    tls_want want;
    int r = tls_handshake(t->ssl, &want, err, errlen);
    if (r == 1)
        t->handshaking = 0;
    else if (r == 0 && want == TLS_WANT_READ)
        event_add(t->ev_read, NULL);
    else if (r == 0)
        wait_writable(t);
    return r;
}

ssize_t tls_conn_read(tls_conn *t, void *bytes, size_t n)
{
    tls_want want;
    ssize_t got = tls_read(t->ssl, bytes, n, &want);
    if (got < 0 && errno == EAGAIN && want == TLS_WANT_WRITE) {
        t->read_waits_write = 1;
        wait_writable(t);
    }
    if (got > 0 && SSL_pending(t->ssl))
        event_active(t->ev_read, EV_READ, 1);
    return got;
}

buf_write_result tls_conn_write(tls_conn *t, buf *b, size_t *written)
{
    tls_want want;
    buf_write_result r = tls_write_buf(t->ssl, b, written, &want);
    if (r == BUF_WRITE_BLOCKED && want == TLS_WANT_READ)
        t->write_waits_read = 1; /* nothing for the write event to wait for */
    return r;
}

void tls_conn_close(tls_conn *t)
{
    if (!t->ssl)
        return;
    tls_close(t->ssl);
    t->ssl = NULL;
    t->handshaking = t->read_waits_write = t->write_waits_read = 0;
}

const char *tls_conn_error(const tls_conn *t)
{
    if (t->ssl && errno == EPROTO)
        return tls.last_error;
    return errno ? strerror(errno) : "connection closed by peer";
}
