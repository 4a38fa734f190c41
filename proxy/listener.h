/* The listening sockets, plain-text (listen) and TLS (tls_listen): accept
 * clients up to max_clients, counted over both. */
#ifndef PROXY_LISTENER_H
#define PROXY_LISTENER_H

#include <stddef.h>

/* A non-blocking socket bound and listening on host:port, or -1 with a
 * reason in err. reuseport: SO_REUSEPORT, so that sockets of several
 * workers share the port and the kernel spreads connections over them. */
__attribute__((warn_unused_result)) int listener_open(const char *host, int port, int backlog,
                                                      int reuseport, char *err, size_t errlen);

/* Accepts clients on host:port; tls: its clients speak TLS (the contexts
 * of tls_configure). The plain socket of a worker is srv.worker_listen_fd
 * (the supervisor opened it); the others are opened here (with
 * SO_REUSEPORT under workers). Returns 0, or -1 with a reason in err. */
__attribute__((warn_unused_result)) int listener_start(const char *host, int port, int backlog,
                                                       int tls, char *err, size_t errlen);

/* Stops accepting (shutdown) and closes the sockets. */
void listener_stop(void);

#endif
