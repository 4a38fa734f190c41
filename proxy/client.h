/* Client connections: read requests, hand them to the router, and write the
 * replies back strictly in request order. */
#ifndef PROXY_CLIENT_H
#define PROXY_CLIENT_H

#include <stddef.h>

/* Takes over an accepted socket. addr is the peer, for log lines; tls:
 * the socket came from tls_listen, and requests are read once the TLS
 * handshake is done. */
void client_accept(int fd, const char *addr, int tls);

/* Writes every client's pending replies and closes clients that are done:
 * called once per loop iteration. */
int client_flush_pending(void);

/* Periodic: idle timeouts. */
void client_tick(void);

/* Closes every client (shutdown). */
void client_close_all(void);

/* Clients with requests still waiting for a backend reply. */
int client_busy_count(void);

#endif
