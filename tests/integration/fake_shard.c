/* The fake shard of fake_shard.h. */
#include "fake_shard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "proxy/resp.h"

/* Connections served at once: the proxy opens one per backend connection. */
#define FAKE_MAX_CONNS 16
/* Size of the bulk reply a "half:" or "stall:" key gets only half of. */
#define FAKE_HALF_BULK 1000
/* How far into a pending request the slowread: key is looked for. */
#define FAKE_SLOW_READ_PEEK 64

/* What answer() tells serve() to do with the connection next. */
typedef enum fake_next {
    FAKE_CONTINUE = 0, /* serve its next request */
    FAKE_CLOSE,        /* close it */
    FAKE_SILENCE,      /* read it but answer nothing more */
} fake_next;

typedef struct fake_conn {
    int fd; /* -1: free */
    char *in;
    size_t len;
    resp_request scan;
    int silent; /* a stall: reads are discarded until the peer closes */
} fake_conn;

static void conn_close(fake_conn *c)
{
    close(c->fd);
    c->fd = -1;
    free(c->in);
    c->in = NULL;
    c->len = 0;
    c->silent = 0;
    resp_request_free(&c->scan);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w == -1 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static int has_prefix(const resp_arg *a, const char *prefix)
{
    size_t n = strlen(prefix);
    return a->len >= n && memcmp(a->ptr, prefix, n) == 0;
}

static int is_word(const resp_arg *a, const char *word)
{
    return a->len == strlen(word) && strncasecmp(a->ptr, word, a->len) == 0;
}

/* The slow: reply, piece by piece. */
static void send_slow_bulk(int fd)
{
    char line[32];
    int n = snprintf(line, sizeof(line), "$%d\r\n", FAKE_SLOW_BULK);
    send_all(fd, line, (size_t)n);
    static char body[FAKE_SLOW_BULK];
    for (size_t i = 0; i < sizeof(body); i++) {
        body[i] = (char)('a' + i % 26);
    }
    size_t piece = sizeof(body) / FAKE_SLOW_CHUNKS;
    for (int k = 0; k < FAKE_SLOW_CHUNKS; k++) {
        if (k > 0) {
            sleep_ms(FAKE_SLOW_GAP_MS);
        }
        send_all(fd, body + (size_t)k * piece, piece);
    }
    send_all(fd, "\r\n", 2);
}

/* Answers one request: what to do with the connection next. */
static fake_next answer(int fd, size_t argc, const resp_arg *argv)
{
    char line[256];
    if (argc == 0) {
        return FAKE_CONTINUE;
    }
    if (is_word(&argv[0], "ping")) {
        send_all(fd, "+PONG\r\n", 7);
        return FAKE_CONTINUE;
    }
    if (argc < 2) {
        send_all(fd, "+OK\r\n", 5);
        return FAKE_CONTINUE;
    }
    const resp_arg *key = &argv[1];
    const char *error = has_prefix(key, "loading:") ? FAKE_LOADING
                        : has_prefix(key, "busy:")  ? FAKE_BUSY
                        : has_prefix(key, "oom:")   ? FAKE_OOM
                                                    : NULL;
    if (error != NULL) {
        int n = snprintf(line, sizeof(line), "-%s\r\n", error);
        send_all(fd, line, (size_t)n);
        return FAKE_CONTINUE;
    }
    if (has_prefix(key, "half:") || has_prefix(key, "stall:")) {
        int n = snprintf(line, sizeof(line), "$%d\r\n", FAKE_HALF_BULK);
        send_all(fd, line, (size_t)n);
        char body[FAKE_HALF_BULK / 2];
        memset(body, 'h', sizeof(body));
        send_all(fd, body, sizeof(body));
        return has_prefix(key, "half:") ? FAKE_CLOSE : FAKE_SILENCE;
    }
    if (has_prefix(key, "slow:")) {
        send_slow_bulk(fd);
        return FAKE_CONTINUE;
    }
    if (has_prefix(key, "garbage:")) {
        send_all(fd, "@garbage\r\n", 10);
        return FAKE_CONTINUE;
    }
    if (is_word(&argv[0], "get")) {
        int n = snprintf(line, sizeof(line), "$%zu\r\n", key->len);
        send_all(fd, line, (size_t)n);
        send_all(fd, key->ptr, key->len);
        send_all(fd, "\r\n", 2);
        return FAKE_CONTINUE;
    }
    send_all(fd, "+OK\r\n", 5);
    return FAKE_CONTINUE;
}

/* Whether the request that has started arriving carries a slowread: key. */
static int reading_slowly(const fake_conn *c)
{
    size_t n = c->len < FAKE_SLOW_READ_PEEK ? c->len : FAKE_SLOW_READ_PEEK;
    return n > 0 && memmem(c->in, n, "slowread:", 9) != NULL;
}

/* Reads what a connection sent and answers every whole request in it. */
static void serve(fake_conn *c)
{
    if (c->in == NULL && (c->in = malloc(FAKE_MAX_REQUEST)) == NULL) {
        conn_close(c);
        return;
    }
    if (c->silent) {
        static char discard[FAKE_SLOW_READ_CHUNK];
        sleep_ms(FAKE_SILENT_READ_GAP_MS);
        ssize_t n = recv(c->fd, discard, sizeof(discard), 0);
        if (n == 0 || (n == -1 && errno != EINTR)) {
            conn_close(c);
        }
        return;
    }
    /* Reads are capped, so that the pace of a slowread: request holds from
     * its first bytes on. */
    size_t want = FAKE_MAX_REQUEST - c->len;
    want = want < FAKE_SLOW_READ_CHUNK ? want : FAKE_SLOW_READ_CHUNK;
    if (reading_slowly(c)) {
        sleep_ms(FAKE_SLOW_READ_GAP_MS);
    }
    ssize_t n = recv(c->fd, c->in + c->len, want, 0);
    if (n == -1 && errno == EINTR) {
        return;
    }
    if (n <= 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    size_t start = 0;
    for (;;) {
        resp_status st = resp_request_scan(&c->scan, c->in + start, c->len - start);
        if (st == RESP_INCOMPLETE) {
            break;
        }
        fake_next next = st == RESP_ERROR ? FAKE_CLOSE : answer(c->fd, c->scan.argc, c->scan.argv);
        if (next == FAKE_CLOSE) {
            conn_close(c);
            return;
        }
        start += c->scan.req_len;
        if (next == FAKE_SILENCE) {
            c->silent = 1;
            break;
        }
    }
    memmove(c->in, c->in + start, c->len - start);
    c->len -= start;
    if (c->len == FAKE_MAX_REQUEST) {
        conn_close(c);
    }
}

static void run(int listen_fd)
{
    fake_conn conns[FAKE_MAX_CONNS];
    for (int i = 0; i < FAKE_MAX_CONNS; i++) {
        conns[i].fd = -1;
        conns[i].in = NULL;
        conns[i].len = 0;
        conns[i].silent = 0;
        resp_request_init(&conns[i].scan, NULL);
    }
    for (;;) {
        struct pollfd pfd[FAKE_MAX_CONNS + 1];
        int slot[FAKE_MAX_CONNS + 1];
        int n = 0;
        pfd[n].fd = listen_fd;
        pfd[n].events = POLLIN;
        slot[n++] = -1;
        for (int i = 0; i < FAKE_MAX_CONNS; i++) {
            if (conns[i].fd >= 0) {
                pfd[n].fd = conns[i].fd;
                pfd[n].events = POLLIN;
                slot[n++] = i;
            }
        }
        if (poll(pfd, (nfds_t)n, 1000) == -1 && errno != EINTR) {
            _exit(1);
        }
        for (int k = 0; k < n; k++) {
            if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            if (slot[k] >= 0) {
                serve(&conns[slot[k]]);
                continue;
            }
            int fd = accept(listen_fd, NULL, NULL);
            if (fd == -1) {
                continue;
            }
            int i = 0;
            while (i < FAKE_MAX_CONNS && conns[i].fd >= 0) {
                i++;
            }
            if (i == FAKE_MAX_CONNS) {
                close(fd);
                continue;
            }
            conns[i].fd = fd;
            resp_request_init(&conns[i].scan, NULL);
        }
    }
}

int fake_shard_start(fake_shard *s)
{
    s->pid = 0;
    s->port = harness_free_port();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 || listen(fd, 64) == -1) {
        fprintf(stderr, "fake shard: port %d: %s\n", s->port, strerror(errno));
        close(fd);
        return -1;
    }
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == -1) {
        close(fd);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(1);
        }
        signal(SIGPIPE, SIG_IGN);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        /* Only the listening socket: a copy of one of the test's sockets
         * kept open here would hide its close from the proxy. */
        if (fd != 3 && dup2(fd, 3) == -1) {
            _exit(1);
        }
        close_range(4, ~0u, 0);
        run(3);
        _exit(0);
    }
    close(fd);
    s->pid = pid;
    return 0;
}

void fake_shard_stop(fake_shard *s)
{
    if (s->pid <= 0) {
        return;
    }
    kill(s->pid, SIGKILL);
    while (waitpid(s->pid, NULL, 0) == -1 && errno == EINTR) {
    }
    s->pid = 0;
}
