/* TLS with OpenSSL: the contexts built from proxy.ini (one for clients on
 * tls_listen, one for connections to the shards and the Sentinels) and non-blocking I/O on a
 * connection's own socket through an SSL object. The connection modules
 * keep their buffers and events; where they call read(2)/write(2) on a
 * plain socket they call tls_read/tls_write on a TLS one, and an operation
 * that must wait for the other direction (TLS_WANT_*) is retried when that
 * direction is ready. Renegotiation is refused, so after the handshake a
 * read only waits for reads and a write only for writes (TLS 1.3 key
 * updates are answered inside the read that sees them). */
#ifndef PROXY_TLS_H
#define PROXY_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "config/config.h"
#include "proxy/buf.h"

/* OpenSSL's types, named without its headers. */
typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
struct event;

/* What a TLS operation is waiting for. */
typedef enum tls_want {
    TLS_WANT_NOTHING = 0,
    TLS_WANT_READ,  /* retry once the socket is readable */
    TLS_WANT_WRITE, /* retry once the socket is writable */
} tls_want;

/* Builds the contexts cfg asks for (reading its certificate, key and CA
 * files) and makes them current: new connections use them, connections
 * already open keep the context they were made with (an SSL holds a
 * reference to its context). A reload calls it again: on failure the old
 * contexts stay, so a bad file never stops the proxy serving. 0, or -1
 * with a reason in err. */
__attribute__((warn_unused_result)) int tls_configure(const config *cfg, char *err, size_t errlen);

/* Frees the current contexts (exit). */
void tls_shutdown(void);

/* Whether connections to the shards use TLS (tls_shards). */
int tls_shards_enabled(void);

/* Whether connections to the Sentinels use TLS (tls_sentinels): with the
 * shards' CA file and client certificate. */
int tls_sentinels_enabled(void);

/* The context for connections to the shards, NULL when tls_shards is off:
 * for a caller that wraps a socket itself (a libevent bufferevent). */
SSL_CTX *tls_shard_context(void);

/* A server-side SSL on an accepted client socket, NULL with a reason in
 * err (tls_listen not configured, out of memory). */
SSL *tls_accept_new(int fd, char *err, size_t errlen);

/* A client-side SSL on a socket connecting to a shard or a Sentinel at
 * host (fd -1: no socket yet, for a bufferevent that makes its own): the
 * peer's certificate must be signed by tls_shards_ca_cert_file and name
 * host (an IP address or DNS name). NULL with a reason in err. */
SSL *tls_connect_new(int fd, const char *host, char *err, size_t errlen);

/* Words a client-side handshake that failed with OpenSSL's error code as
 * tls_handshake does: "TLS handshake failed: certificate: <the check's
 * verdict> (...)" when the peer's certificate was refused. */
void tls_handshake_failure(const SSL *ssl, unsigned long code, char *err, size_t errlen);

/* Advances the handshake. 1 when it is done, 0 when it waits (*want says
 * for what), -1 when it failed, with OpenSSL's reason in err. */
int tls_handshake(SSL *ssl, tls_want *want, char *err, size_t errlen);

/* Reads up to n bytes as read(2) would: > 0 bytes, 0 when the peer closed,
 * -1 with errno EAGAIN when nothing can be read yet (*want says what to
 * wait for), or -1 with errno set (EPROTO for a TLS error, reason in
 * tls_last_error()). Decrypted bytes may be left inside the SSL
 * (SSL_pending): tls_conn_read reads them without waiting for the socket. */
ssize_t tls_read(SSL *ssl, void *bytes, size_t n, tls_want *want);

/* Writes up to n bytes as write(2) would: > 0 bytes, or -1 with errno
 * EAGAIN (*want says what to wait for), or -1 with errno set (EPROTO for a
 * TLS error, reason in tls_last_error(); 0 when the peer closed). */
ssize_t tls_write(SSL *ssl, const void *bytes, size_t n, tls_want *want);

/* Writes b's bytes to ssl until b is empty or the socket is full, as
 * buf_write_fd; BUF_WRITE_BLOCKED sets *want. */
buf_write_result tls_write_buf(SSL *ssl, buf *b, size_t *written, tls_want *want);

/* Sends close_notify (best effort, never waits) and frees ssl. */
void tls_close(SSL *ssl);

/* The reason of the last failed tls_read/tls_write_buf. */
const char *tls_last_error(void);

/* The subject of the peer's certificate ("CN=app1"), or "none". */
void tls_peer_subject(SSL *ssl, char *out, size_t outlen);

/* The protocol version agreed ("TLSv1.3"). */
const char *tls_version(const SSL *ssl);

/* ---- a data connection's TLS ----
 * What client.c and backend.c embed: the SSL on the connection's socket
 * and what it waits for, driven by the connection's own events (a
 * persistent read event, a one-shot write event and the flag that says the
 * write event is added). The tls_conn_* calls arm those events themselves,
 * and the owner's callbacks ask, before their own work, whether a
 * handshake or a retry is due (handshaking, read_waits_write,
 * write_waits_read). */
typedef struct tls_conn {
    SSL *ssl;              /* NULL: the connection is plain text */
    int handshaking;       /* the handshake is not done: no data yet */
    int read_waits_write;  /* a read waits for the socket to be writable */
    int write_waits_read;  /* a write waits for it to be readable */
    struct event *ev_read; /* the owner's events and write_waiting flag */
    struct event *ev_write;
    int *write_waiting;
} tls_conn;

/* Sets up t for a new SSL (tls_accept_new or tls_connect_new) on the
 * owner's socket, handshake pending. */
void tls_conn_start(tls_conn *t, SSL *ssl, struct event *ev_read, struct event *ev_write,
                    int *write_waiting);

/* Advances the handshake, arming the event it waits for. 1 done, 0
 * waiting, -1 failed with the reason in err. */
int tls_conn_handshake(tls_conn *t, char *err, size_t errlen);

/* tls_read on t: a read that must wait for a write arms the write event
 * (read_waits_write); decrypted bytes left inside the SSL, which the
 * socket's readiness will not announce, make the read event active. */
ssize_t tls_conn_read(tls_conn *t, void *bytes, size_t n);

/* tls_write_buf on t: BUF_WRITE_BLOCKED when it waits, as buf_write_fd;
 * when it waits for the socket to be readable, write_waits_read is set and
 * the owner's read event retries it (the write event must not be armed:
 * nothing would come of it). */
buf_write_result tls_conn_write(tls_conn *t, buf *b, size_t *written);

/* Closes the SSL (tls_close) and clears t's state; no-op when plain. */
void tls_conn_close(tls_conn *t);

/* Why the last failed read or write on t failed (errno set by it). */
const char *tls_conn_error(const tls_conn *t);

#endif
