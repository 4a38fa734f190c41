/* The listening sockets, plain-text (listen) and TLS (tls_listen): accept
 * clients up to max_clients, counted over both. */
#ifndef PROXY_LISTENER_H
#define PROXY_LISTENER_H

#include <stddef.h>

/* Binds and listens on host:port; tls: its clients speak TLS (the
 * contexts of tls_configure). Returns 0, or -1 with a reason in err. */
__attribute__((warn_unused_result)) int listener_start(const char *host, int port, int backlog,
                                                       int tls, char *err, size_t errlen);

/* Stops accepting (shutdown) and closes the sockets. */
void listener_stop(void);

#endif
