/* The listening socket: accepts clients up to max_clients. */
#ifndef PROXY_LISTENER_H
#define PROXY_LISTENER_H

#include <stddef.h>

/* A non-blocking socket bound and listening on host:port, or -1 with a
 * reason in err. reuseport: SO_REUSEPORT, so that sockets of several
 * workers share the port and the kernel spreads connections over them. */
__attribute__((warn_unused_result)) int listener_open(const char *host, int port, int backlog,
                                                      int reuseport, char *err, size_t errlen);

/* Accepts clients on host:port: on srv.worker_listen_fd when this process
 * is a worker (the supervisor opened it), else on a socket it opens.
 * Returns 0, or -1 with a reason in err. */
__attribute__((warn_unused_result)) int listener_start(const char *host, int port, int backlog,
                                                       char *err, size_t errlen);

/* Stops accepting (shutdown) and closes the socket. */
void listener_stop(void);

#endif
