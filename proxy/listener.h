/* The listening socket: accepts clients up to max_clients. */
#ifndef PROXY_LISTENER_H
#define PROXY_LISTENER_H

#include <stddef.h>

/* Binds and listens on host:port. Returns 0, or -1 with a reason in err. */
__attribute__((warn_unused_result)) int listener_start(const char *host, int port, int backlog,
                                                       char *err, size_t errlen);

/* Stops accepting (shutdown) and closes the socket. */
void listener_stop(void);

#endif
