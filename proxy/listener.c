/* Accepting client connections. */
#include "proxy/listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "proxy/client.h"
#include "proxy/log.h"
#include "proxy/server.h"

/* Connections taken per readiness event, so a connection storm cannot starve
 * the clients already served. */
#define LISTENER_ACCEPT_BATCH 64
/* Pause after running out of file descriptors, instead of spinning on a
 * listen socket that stays readable. */
#define LISTENER_EMFILE_PAUSE_MS 100
/* Descriptors never given to clients when RLIMIT_NOFILE is what bounds
 * them: the listener, the event loop, a refused client's socket, and slack;
 * room for backend connections is added per shard. Past the resulting cap a
 * client gets "max number of clients reached" at once, and shards can still
 * reconnect, where running into EMFILE would leave new clients unanswered in
 * the backlog and a dropped shard connection unable to come back. */
#define LISTENER_FD_RESERVE 32

/* A listening socket: the plain-text one (listen) and the TLS one
 * (tls_listen). */
typedef struct listener {
    int fd; /* -1 when not listening */
    int tls;
    struct event ev_accept;
    struct event ev_resume; /* accepts resume after EMFILE */
} listener;

enum { LISTENER_PLAIN, LISTENER_TLS, LISTENER_COUNT };

static listener listeners[LISTENER_COUNT] = {{.fd = -1}, {.fd = -1, .tls = 1}};
static long fd_limit; /* RLIMIT_NOFILE at start, 0 = unlimited */

static void on_accept(evutil_socket_t fd, short what, void *arg);

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    listener *l = arg;
    if (l->fd >= 0)
        event_add(&l->ev_accept, NULL);
}

static void peer_name(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        port = ntohs(sin->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        port = ntohs(sin6->sin6_port);
    }
    snprintf(out, outlen, "%s:%d", host, port);
}

/* Clients accepted at once: max_clients, or less when the fd limit leaves
 * less room. Backend connections count twice: during a rebalance the old
 * ring's shards stay connected next to the new ones. */
static int clients_allowed(void)
{
    int allowed = srv.cfg->max_clients;
    if (fd_limit > 0) {
        long room = fd_limit - LISTENER_FD_RESERVE -
                    2L * (long)srv.nshards * (long)srv.cfg->backend_connections;
        if (room < allowed)
            allowed = room > 0 ? (int)room : 0;
    }
    return allowed;
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    listener *l = arg;
    /* A new client's idle clock starts at the loop clock: stamped from a
     * fresher read, it would be ahead of the maintenance tick of this same
     * iteration, whose unsigned idle time then wraps and drops it at once. */
    server_clock_update();
    for (int i = 0; i < LISTENER_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int cfd = accept4(fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                log_warn("accept: %s: pausing accepts for %d ms", strerror(errno),
                         LISTENER_EMFILE_PAUSE_MS);
                event_del(&l->ev_accept);
                struct timeval tv = {0, LISTENER_EMFILE_PAUSE_MS * 1000};
                event_add(&l->ev_resume, &tv);
            } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                log_warn("accept: %s", strerror(errno));
            }
            return;
        }
        char addr[64];
        peer_name(&ss, addr, sizeof(addr));
        srv.stats.connections_received++;
        int allowed = clients_allowed();
        if (srv.stopping || srv.nclients >= allowed) {
            static const char full[] = "-ERR max number of clients reached\r\n";
            srv.stats.connections_rejected++;
            /* A TLS client could not read the line before a handshake: it
             * sees the connection close. */
            if (!l->tls) {
                ssize_t ignored = write(cfd, full, sizeof(full) - 1);
                (void)ignored;
            }
            close(cfd);
            log_info("client %s: refused: %d clients, the most %s allows", addr, allowed,
                     allowed < srv.cfg->max_clients ? "RLIMIT_NOFILE" : "max_clients");
            continue;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        client_accept(cfd, addr, l->tls);
    }
}

int listener_open(const char *host, int port, int backlog, int reuseport, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%d", port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "listen %s:%d: %s", host, port, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s:%d: socket: %s", host, port, strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Only processes of the same user may join a SO_REUSEPORT group. */
    if ((reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        snprintf(err, errlen, "listen %s:%d: %s", host, port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

int listener_start(const char *host, int port, int backlog, int tls, char *err, size_t errlen)
{
    listener *l = &listeners[tls ? LISTENER_TLS : LISTENER_PLAIN];
    /* A worker's plain socket comes from the supervisor (which keeps it
     * across a worker's restart); its TLS socket joins the other workers'
     * with SO_REUSEPORT. */
    int fd = !tls && srv.workers > 1
                 ? srv.worker_listen_fd
                 : listener_open(host, port, backlog, srv.workers > 1, err, errlen);
    if (fd < 0)
        return -1;
    struct rlimit lim;
    fd_limit = getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY
                   ? (long)lim.rlim_cur
                   : 0;
    l->fd = fd;
    if (tls)
        srv.tls_listen_port = port;
    else
        srv.listen_port = port;
    event_assign(&l->ev_accept, srv.base, fd, EV_READ | EV_PERSIST, on_accept, l);
    event_assign(&l->ev_resume, srv.base, -1, 0, on_resume, l);
    event_add(&l->ev_accept, NULL);
    if (!tls && clients_allowed() < srv.cfg->max_clients)
        log_warn("RLIMIT_NOFILE is %ld: at most %d clients at once, not max_clients = %d "
                 "(raise it with ulimit -n)",
                 fd_limit, clients_allowed(), srv.cfg->max_clients);
    return 0;
}

void listener_stop(void)
{
    for (int i = 0; i < LISTENER_COUNT; i++) {
        listener *l = &listeners[i];
        if (l->fd < 0)
            continue;
        event_del(&l->ev_accept);
        event_del(&l->ev_resume);
        close(l->fd);
        l->fd = -1;
    }
}
