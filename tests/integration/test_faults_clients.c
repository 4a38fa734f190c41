/* Hostile and runaway clients: more connections than max_clients, a bulk
 * length of 2 GB, a client that floods requests and never reads a reply
 * (and the other clients of its shard, whose replies must not wait behind
 * its own), slowloris clients trickling a request byte by byte, and the
 * proxy's own file descriptor limit. Each test checks that the proxy stays up with
 * bounded memory, that the offending client gets an error and/or a clean
 * close (with the reason in the log), that the other clients keep working,
 * and that writes acknowledged to them read back. Raw sockets where hiredis
 * would not misbehave. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

/* 10,000 connections against max_clients = 5,000, when the fd limit allows
 * (the test process holds them all, the proxy half); else fewer, same
 * ratio (main says so). */
#define MANY_CLIENTS     10000
#define NOFILE_SLACK     1000
#define MANY_CLIENTS_MIN 200
/* Per accepted idle client, the proxy may hold this much (its struct,
 * scanner state, buffers), on top of its base size. */
#define PER_CLIENT_KIB 8
#define BASE_RSS_KIB   (32 * 1024)

/* The flooder: GETs of a 1 MB value, never reading a reply. Its reading
 * pauses at FLOOD_OUTPUT_PAUSE of replies waiting, with up to that much
 * more in flight (8 replies of 1 MB); between pauses for its requests in
 * flight it has at least 4 of them out, so the replies still coming when
 * it pauses take it over FLOOD_OUTPUT_MAX, and it is dropped. */
#define FLOOD_VALUE_LEN    (1024 * 1024)
#define FLOOD_OUTPUT_PAUSE "8mb"
#define FLOOD_OUTPUT_MAX   "10mb"
#define FLOOD_DEADLINE_MS  15000
/* Peak RSS the flood may cost: the 10 MB of replies held for the client,
 * the replies in flight from the shard, buffers, allocator slack. */
#define FLOOD_PEAK_KIB (96 * 1024)

/* A client that reads its replies late: PAUSE_GETS GETs of a PAUSE_VALUE_LEN
 * value (12.5 MB of replies) against client_output_pause = 1mb, more than
 * the kernel's socket buffers (4 MB send, 64 KB receive) can hide. */
#define PAUSE_VALUE_LEN (64 * 1024)
#define PAUSE_GETS      200

/* Slowloris: a byte every SLOW_BYTE_MS from each of SLOW_CLIENTS, with
 * idle_timeout = SLOW_IDLE_S; each must be closed after SLOW_IDLE_S, not
 * before (a byte is no activity, but a client just connected is not idle
 * either), and within SLOW_CLOSE_MS. */
#define SLOW_CLIENTS  20
#define SLOW_BYTE_MS  100
#define SLOW_IDLE_S   1
#define SLOW_CLOSE_MS 2500

/* The proxy's own descriptor limit, and connections tried against it. */
#define FD_LIMIT    128
#define FD_ATTEMPTS 300

#define REPLY_TIMEOUT_MS 3000

static int many_clients = MANY_CLIENTS;
static int many_max_clients = MANY_CLIENTS / 2;

/* Per-test fixtures: each test runs against its own proxy, so its memory
 * figures (peak RSS included) are its own. */
static int start_with(void **state, const char *lines)
{
    fixture *f = fixture_start(lines);
    *state = f;
    return f != NULL ? 0 : -1;
}

static int stop_fixture(void **state)
{
    return fixture_stop(*state);
}

static int setup_plain(void **state)
{
    return start_with(state, NULL);
}

static int setup_many(void **state)
{
    char lines[128];
    snprintf(lines, sizeof(lines), "max_clients = %d\ntcp_backlog = 4096\n", many_max_clients);
    return start_with(state, lines);
}

static int setup_flood(void **state)
{
    /* The flooder's orphaned replies (up to 8 MB) drain through the
     * shard connection the other clients share: under valgrind that takes
     * longer than the default request timeout. */
    char lines[160];
    snprintf(lines, sizeof(lines),
             "client_output_pause = %s\nmax_client_output = %s\nrequest_timeout = %lld\n",
             FLOOD_OUTPUT_PAUSE, FLOOD_OUTPUT_MAX, fixture_bound_ms(2000));
    return start_with(state, lines);
}

static int setup_pause(void **state)
{
    return start_with(state, "client_output_pause = 1mb\nmax_client_output = 64mb\n");
}

static int setup_slowloris(void **state)
{
    char lines[64];
    snprintf(lines, sizeof(lines), "idle_timeout = %d\n", SLOW_IDLE_S);
    return start_with(state, lines);
}

static int setup_fd_limit(void **state)
{
    fixture *f = fixture_start_nofile(NULL, FD_LIMIT);
    *state = f;
    return f != NULL ? 0 : -1;
}

/* No crash; a new client is served; writes of before read back. */
static void expect_proxy_serves(fixture *f, const char *key, const char *value)
{
    assert_true(fixture_alive(f->proxy.pid));
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    if (key != NULL) {
        fixture_expect_str(fixture_cmd(c, "GET %s", key), value);
    }
    fixture_close(f, c);
}

/* Reads what is waiting on a non-blocking socket without waiting: the
 * bytes (NUL-terminated in buf) and whether the peer closed. */
static size_t drain(int fd, char *buf, size_t cap, int *closed)
{
    size_t got = 0;
    *closed = 0;
    for (;;) {
        ssize_t n = recv(fd, buf + got, cap - 1 - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            if (got == cap - 1) {
                break;
            }
            continue;
        }
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n == 0 || (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            *closed = n == 0 ? 1 : 2; /* 2: reset */
        }
        break;
    }
    buf[got] = '\0';
    return got;
}

/* ---- max_clients ---- */

static void test_many_clients_over_max_clients_are_refused_cleanly(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    fixture_expect_status(fixture_cmd(admin, "SET many:key before"), "OK");
    long long rejected_before = fixture_info_int(admin, "rejected_connections");
    int *fds = fixture_alloc(f, (size_t)many_clients * sizeof(int));
    for (int i = 0; i < many_clients; i++) {
        fds[i] = fixture_raw_connect(f->proxy.port);
        if (fds[i] < 0) {
            fail_msg("connection %d of %d: %s", i + 1, many_clients, strerror(errno));
        }
    }
    /* The admin connection holds one of the max_clients places. */
    const int accepted_want = many_max_clients - 1;
    const int refused_want = many_clients - accepted_want;
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    long long refused_seen;
    while ((refused_seen = fixture_info_int(admin, "rejected_connections") - rejected_before) <
               refused_want &&
           fixture_now_ms() < deadline) {
        fixture_sleep_ms(50);
    }
    assert_int_equal(refused_seen, refused_want);
    assert_int_equal(fixture_info_int(admin, "connected_clients"), many_max_clients);

    /* A refused connection got the error line, then a clean close; an
     * accepted one got nothing yet. */
    static const char full[] = "-ERR max number of clients reached\r\n";
    int accepted = 0, refused = 0;
    for (int i = 0; i < many_clients; i++) {
        char buf[128];
        int closed;
        size_t n = drain(fds[i], buf, sizeof(buf), &closed);
        if (n == 0 && !closed) {
            accepted++;
            continue;
        }
        if (strcmp(buf, full) != 0 || closed != 1) {
            fail_msg("connection %d: got \"%s\" and %s", i, buf,
                     closed == 2   ? "a reset"
                     : closed == 1 ? "a close"
                                   : "no close");
        }
        refused++;
        close(fds[i]);
        fds[i] = -1;
    }
    assert_int_equal(accepted, accepted_want);
    assert_int_equal(refused, refused_want);

    /* Every accepted one is served. */
    for (int i = 0; i < many_clients; i++) {
        if (fds[i] >= 0) {
            assert_int_equal(fixture_raw_send(fds[i], "PING\r\n", 6), 0);
        }
    }
    for (int i = 0; i < many_clients; i++) {
        if (fds[i] >= 0) {
            char buf[16];
            int closed;
            fixture_raw_read(fds[i], buf, sizeof(buf), 7, fixture_bound_ms(REPLY_TIMEOUT_MS),
                             &closed);
            if (strcmp(buf, "+PONG\r\n") != 0) {
                fail_msg("accepted connection %d: PING got \"%s\"", i, buf);
            }
        }
    }
    long rss = fixture_rss_kib(f->proxy.pid);
    long bound = BASE_RSS_KIB + (long)many_max_clients * PER_CLIENT_KIB;
    if (!fixture_memory_instrumented(f->proxy.pid) && rss > bound) {
        fail_msg("proxy RSS %ld KiB with %d clients, bound %ld KiB", rss, many_max_clients, bound);
    }
    fixture_expect_status(fixture_cmd(admin, "SET many:key during"), "OK");

    /* Once they leave, new clients are accepted again. */
    for (int i = 0; i < many_clients; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    fixture_free(f, fds);
    deadline = fixture_now_ms() + fixture_bound_ms(5000);
    while (fixture_info_int(admin, "connected_clients") > 1 && fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
    }
    assert_int_equal(fixture_info_int(admin, "connected_clients"), 1);
    redisContext *again[100];
    for (int i = 0; i < 100; i++) {
        again[i] = fixture_client(f);
        fixture_expect_status(fixture_cmd(again[i], "PING"), "PONG");
    }
    for (int i = 0; i < 100; i++) {
        fixture_close(f, again[i]);
    }
    fixture_wait_log(&f->proxy, "refused: ");
    fixture_close(f, admin);
    expect_proxy_serves(f, "many:key", "during");
}

/* ---- a 2 GB bulk length ---- */

static void test_huge_bulk_length_closed_with_protocol_error(void **state)
{
    fixture *f = *state;
    redisContext *other = fixture_client(f);
    fixture_expect_status(fixture_cmd(other, "SET huge:key kept"), "OK");
    long peak_before = fixture_peak_rss_kib(f->proxy.pid);

    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    static const char req[] = "*1\r\n$2000000000\r\n";
    (void)fixture_raw_send(fd, req, sizeof(req) - 1);
    char buf[256];
    int closed;
    fixture_raw_read(fd, buf, sizeof(buf), sizeof(buf) - 1, fixture_bound_ms(REPLY_TIMEOUT_MS),
                     &closed);
    close(fd);
    assert_string_equal(buf, "-ERR Protocol error: invalid bulk length\r\n");
    assert_true(closed);

    /* Under the limit (512 MB), announced but trickled: the proxy holds
     * what arrived, not what was announced. */
    fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    static const char big[] = "*2\r\n$3\r\nGET\r\n$500000000\r\n";
    long long input_before = fixture_info_int(other, "total_net_input_bytes");
    assert_int_equal(fixture_raw_send(fd, big, sizeof(big) - 1), 0);
    static char body[1024 * 1024];
    memset(body, 'b', sizeof(body));
    assert_int_equal(fixture_raw_send(fd, body, sizeof(body)), 0);
    /* The proxy has read all of it. */
    fixture_wait_info_at_least(other, "total_net_input_bytes",
                               input_before + (long long)(sizeof(big) - 1 + sizeof(body)));
    long peak_during = fixture_peak_rss_kib(f->proxy.pid);
    fixture_expect_str(fixture_cmd(other, "GET huge:key"), "kept");
    close(fd);

    if (!fixture_memory_instrumented(f->proxy.pid) && peak_during > peak_before + 16 * 1024) {
        fail_msg("peak RSS went from %ld to %ld KiB for 1 MB of a bulk announced as 500 MB",
                 peak_before, peak_during);
    }
    fixture_wait_log(&f->proxy, "invalid bulk length");
    fixture_expect_str(fixture_cmd(other, "GET huge:key"), "kept");
    fixture_close(f, other);
    expect_proxy_serves(f, "huge:key", "kept");
}

/* ---- a client that never reads ---- */

static void test_client_never_reading_is_dropped_and_memory_bounded(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    char *value = fixture_alloc(f, FLOOD_VALUE_LEN);
    for (size_t i = 0; i < FLOOD_VALUE_LEN; i++) {
        value[i] = (char)('a' + i % 26);
    }
    fixture_expect_status(fixture_cmd(c, "SET flood:big %b", value, (size_t)FLOOD_VALUE_LEN), "OK");
    long long dropped_before = fixture_info_int(c, "clients_dropped");

    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
    static const char get[] = "*2\r\n$3\r\nGET\r\n$9\r\nflood:big\r\n";
    char batch[100 * (sizeof(get) - 1)];
    for (size_t i = 0; i < 100; i++) {
        memcpy(batch + i * (sizeof(get) - 1), get, sizeof(get) - 1);
    }
    /* GETs as fast as the proxy takes them, until it drops the client. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(FLOOD_DEADLINE_MS);
    size_t off = 0, sent_gets = 0;
    int dropped = 0;
    long peak = 0;
    while (!dropped && fixture_now_ms() < deadline) {
        ssize_t n = send(fd, batch + off, sizeof(batch) - off, MSG_NOSIGNAL);
        if (n > 0) {
            off = (off + (size_t)n) % sizeof(batch);
            sent_gets += (size_t)n / (sizeof(get) - 1);
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT | POLLRDHUP};
            poll(&pfd, 1, 50);
            dropped = (pfd.revents & (POLLHUP | POLLERR | POLLRDHUP)) != 0;
        } else {
            dropped = 1; /* EPIPE or ECONNRESET */
        }
        long rss = fixture_rss_kib(f->proxy.pid);
        peak = rss > peak ? rss : peak;
    }
    close(fd);
    if (!dropped) {
        fail_msg("a client that sent %zu GETs of 1 MB and read nothing is still connected",
                 sent_gets);
    }
    /* The reason is logged and counted. */
    fixture_wait_log(&f->proxy, "max_client_output");
    assert_true(fixture_info_int(c, "clients_dropped") > dropped_before);

    /* Meanwhile and after, the others are served, the big value intact. */
    fixture_expect_bin(fixture_cmd(c, "GET flood:big"), value, FLOOD_VALUE_LEN);
    fixture_expect_status(fixture_cmd(c, "SET flood:after ok"), "OK");
    long hwm = fixture_peak_rss_kib(f->proxy.pid);
    if (!fixture_memory_instrumented(f->proxy.pid) && hwm > FLOOD_PEAK_KIB) {
        fail_msg("proxy peak RSS %ld KiB (sampled %ld) with %s max_client_output, bound %d KiB",
                 hwm, peak, FLOOD_OUTPUT_MAX, FLOOD_PEAK_KIB);
    }
    fixture_free(f, value);
    fixture_close(f, c);
    expect_proxy_serves(f, "flood:after", "ok");
}

/* A client that pipelines FLOOD_GETS GETs of the 1 MB value in one write
 * and reads nothing shares its shard connection with everyone else on
 * that shard: another client's GETs there must not wait behind hundreds
 * of megabytes of replies nobody reads. The shard runs at most
 * FLOOD_GETS_RUN_MAX of them (16 before the first reply says how big they
 * are, a margin for replies that come in between); a GET of another key
 * there waits behind those at most (about 60 ms measured, 270 ms when all
 * 256 ran). */
#define FLOOD_GETS         256
#define FLOOD_GETS_RUN_MAX 32
#define FLOOD_PROBES       200
#define FLOOD_PROBE_MAX_MS 250

/* calls= of cmdstat_get in a shard's INFO commandstats. */
static long long shard_get_calls(fixture *f, int shard)
{
    redisReply *r = fixture_cmd(fixture_shard(f, shard), "INFO commandstats");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    const char *line = strstr(r->str, "cmdstat_get:calls=");
    long long calls = line ? atoll(line + strlen("cmdstat_get:calls=")) : 0;
    freeReplyObject(r);
    return calls;
}

static void test_flooder_does_not_stall_its_shard(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    char *value = fixture_alloc(f, FLOOD_VALUE_LEN);
    memset(value, 'f', FLOOD_VALUE_LEN);
    fixture_expect_status(fixture_cmd(c, "SET flood:big %b", value, (size_t)FLOOD_VALUE_LEN), "OK");
    char near[64];
    int owner = fixture_owner(c, "flood:big", 9);
    fixture_key_on_shard(c, "near", owner, near, sizeof(near));
    fixture_expect_status(fixture_cmd(c, "SET %s small", near), "OK");
    long long gets_before = shard_get_calls(f, owner);

    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    static const char get[] = "*2\r\n$3\r\nGET\r\n$9\r\nflood:big\r\n";
    char *batch = fixture_alloc(f, FLOOD_GETS * (sizeof(get) - 1));
    for (size_t i = 0; i < FLOOD_GETS; i++) {
        memcpy(batch + i * (sizeof(get) - 1), get, sizeof(get) - 1);
    }
    assert_int_equal(fixture_raw_send(fd, batch, FLOOD_GETS * (sizeof(get) - 1)), 0);

    /* Meanwhile, GETs of a small key on the same shard, one at a time. */
    long long worst = 0, total = 0;
    for (int i = 0; i < FLOOD_PROBES; i++) {
        long long t0 = fixture_now_ms();
        fixture_expect_str(fixture_cmd(c, "GET %s", near), "small");
        long long took = fixture_now_ms() - t0;
        worst = took > worst ? took : worst;
        total += took;
    }
    print_message("GET on the flooded shard: worst %lld ms, mean %.2f ms over %d\n", worst,
                  (double)total / FLOOD_PROBES, FLOOD_PROBES);
    long long flood_run = shard_get_calls(f, owner) - gets_before - FLOOD_PROBES;
    print_message("the shard ran %lld of the flooder's %d GETs\n", flood_run, FLOOD_GETS);
    close(fd);
    assert_true(flood_run >= 1);
    if (flood_run > FLOOD_GETS_RUN_MAX) {
        fail_msg("the shard ran %lld of the %d GETs of a client reading nothing, bound %d",
                 flood_run, FLOOD_GETS, FLOOD_GETS_RUN_MAX);
    }
    if (worst > fixture_bound_ms(FLOOD_PROBE_MAX_MS)) {
        fail_msg("a GET on the flooder's shard took %lld ms, bound %lld ms", worst,
                 fixture_bound_ms(FLOOD_PROBE_MAX_MS));
    }
    fixture_free(f, batch);
    fixture_free(f, value);
    fixture_close(f, c);
    expect_proxy_serves(f, near, "small");
}

/* ---- a client that reads late ---- */

/* The state= field of the CLIENT LIST line of the client named name, into
 * out ("" when it is not connected). */
static void client_state_of(redisContext *c, const char *name, char *out, size_t cap)
{
    redisReply *r = fixture_cmd(c, "CLIENT LIST");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    char want[64];
    snprintf(want, sizeof(want), " name=%s ", name);
    out[0] = '\0';
    const char *line = strstr(r->str, want);
    const char *st = line ? strstr(line, " state=") : NULL;
    if (st) {
        st += 7;
        size_t n = strcspn(st, "\n");
        snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), st);
    }
    freeReplyObject(r);
}

/* Unread replies over client_output_pause stop the proxy reading the
 * client (state=paused); once it has read them it is read again. */
static void test_client_reading_late_is_paused_then_resumed(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    char *value = malloc(PAUSE_VALUE_LEN);
    assert_non_null(value);
    memset(value, 'p', PAUSE_VALUE_LEN);
    fixture_expect_status(fixture_cmd(c, "SET pause:big %b", value, (size_t)PAUSE_VALUE_LEN), "OK");

    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    static const char setname[] = "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$4\r\nlate\r\n";
    char ok[8];
    int closed;
    assert_int_equal(fixture_raw_send(fd, setname, sizeof(setname) - 1), 0);
    assert_int_equal(fixture_raw_read(fd, ok, sizeof(ok), 5, REPLY_TIMEOUT_MS, &closed), 5);
    static const char get[] = "*2\r\n$3\r\nGET\r\n$9\r\npause:big\r\n";
    char batch[PAUSE_GETS * (sizeof(get) - 1)];
    for (size_t i = 0; i < PAUSE_GETS; i++) {
        memcpy(batch + i * (sizeof(get) - 1), get, sizeof(get) - 1);
    }
    assert_int_equal(fixture_raw_send(fd, batch, sizeof(batch)), 0);

    char st[32];
    long long deadline = fixture_now_ms() + fixture_bound_ms(REPLY_TIMEOUT_MS);
    client_state_of(c, "late", st, sizeof(st));
    while (strcmp(st, "paused") != 0 && fixture_now_ms() < deadline) {
        fixture_sleep_ms(10);
        client_state_of(c, "late", st, sizeof(st));
    }
    assert_string_equal(st, "paused");

    /* Every reply arrives, whole and in order, once the client reads. */
    char head[32];
    int head_len = snprintf(head, sizeof(head), "$%d\r\n", PAUSE_VALUE_LEN);
    size_t one = (size_t)head_len + PAUSE_VALUE_LEN + 2, total = one * PAUSE_GETS;
    char *got = malloc(total + 1);
    assert_non_null(got);
    assert_int_equal(fixture_raw_read(fd, got, total + 1, total,
                                      (int)fixture_bound_ms(REPLY_TIMEOUT_MS), &closed),
                     total);
    for (size_t i = 0; i < PAUSE_GETS; i++) {
        const char *r = got + i * one;
        assert_memory_equal(r, head, (size_t)head_len);
        assert_memory_equal(r + head_len, value, PAUSE_VALUE_LEN);
        assert_memory_equal(r + head_len + PAUSE_VALUE_LEN, "\r\n", 2);
    }
    assert_int_equal(fixture_raw_send(fd, "PING\r\n", 6), 0);
    char pong[16];
    fixture_raw_read(fd, pong, sizeof(pong), 7, REPLY_TIMEOUT_MS, &closed);
    assert_string_equal(pong, "+PONG\r\n");
    client_state_of(c, "late", st, sizeof(st));
    assert_string_equal(st, "reading");
    close(fd);
    free(got);
    free(value);
    fixture_close(f, c);
}

/* A client that writes its whole pipeline before it reads any reply, as
 * hiredis and redis-py pipelines do: LONG_PAIRS of SET and GET of a
 * LONG_VALUE_LEN value, about 25 MB each way, far more than
 * client_output_pause (1 MB here) and the sockets' buffers hold. The
 * proxy pauses taking its requests, but still reads them: were it to stop
 * reading, the client would wait for it to take the rest of the pipeline
 * and it for the client to read, for ever. */
#define LONG_PAIRS     96
#define LONG_VALUE_LEN (256 * 1024)

static void test_client_writing_a_long_pipeline_before_reading_is_served(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    long long dropped_before = fixture_info_int(c, "clients_dropped");
    char *value = fixture_alloc(f, LONG_VALUE_LEN);
    size_t req_cap = LONG_PAIRS * (LONG_VALUE_LEN + 128), rep_cap = req_cap;
    char *req = fixture_alloc(f, req_cap), *want = fixture_alloc(f, rep_cap);
    char *got = fixture_alloc(f, rep_cap + 1);
    size_t req_len = 0, want_len = 0;
    for (int i = 0; i < LONG_PAIRS; i++) {
        char key[32];
        int key_len = snprintf(key, sizeof(key), "long:%d", i);
        for (size_t j = 0; j < LONG_VALUE_LEN; j++) {
            value[j] = (char)('a' + (j + (size_t)i * 7) % 26);
        }
        req_len += (size_t)snprintf(req + req_len, req_cap - req_len,
                                    "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", key_len, key,
                                    LONG_VALUE_LEN);
        memcpy(req + req_len, value, LONG_VALUE_LEN);
        req_len += LONG_VALUE_LEN;
        req_len += (size_t)snprintf(req + req_len, req_cap - req_len,
                                    "\r\n*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", key_len, key);
        want_len +=
            (size_t)snprintf(want + want_len, rep_cap - want_len, "+OK\r\n$%d\r\n", LONG_VALUE_LEN);
        memcpy(want + want_len, value, LONG_VALUE_LEN);
        want_len += LONG_VALUE_LEN;
        memcpy(want + want_len, "\r\n", 2);
        want_len += 2;
    }

    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    int small = 64 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    /* A send that makes no progress for this long fails instead of waiting. */
    struct timeval tv = fixture_bound_tv(REPLY_TIMEOUT_MS);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (fixture_raw_send(fd, req, req_len) < 0) {
        close(fd);
        fail_msg("the proxy stopped reading a %zu-byte pipeline whose replies were not read yet",
                 req_len);
    }
    int closed;
    size_t n = fixture_raw_read(fd, got, rep_cap + 1, want_len,
                                (int)fixture_bound_ms(REPLY_TIMEOUT_MS), &closed);
    close(fd);
    assert_int_equal(n, want_len);
    assert_memory_equal(got, want, want_len);
    assert_int_equal(fixture_info_int(c, "clients_dropped"), dropped_before);
    fixture_expect_int(fixture_cmd(c, "DEL long:0 long:%d", LONG_PAIRS - 1), 2);
    fixture_close(f, c);
}

/* ---- slowloris ---- */

/* A client connected after start (ms) and seen closed at closed_at (0:
 * never) was closed by idle_timeout: not before it, and within
 * SLOW_CLOSE_MS. Both clocks are CLOCK_MONOTONIC; the proxy closes more
 * than SLOW_IDLE_S after a time later than start, so even in whole ms the
 * difference is at least SLOW_IDLE_S. */
static void expect_closed_idle(const char *what, int i, long long start, long long closed_at)
{
    long long after = closed_at - start;
    if (closed_at == 0) {
        fail_msg("%s %d was never closed", what, i);
    }
    if (after < SLOW_IDLE_S * 1000LL) {
        fail_msg("%s %d was closed %lld ms after the connects began, before idle_timeout = %d s",
                 what, i, after, SLOW_IDLE_S);
    }
    if (after > fixture_bound_ms(SLOW_CLOSE_MS)) {
        fail_msg("%s %d was closed %lld ms after the connects began, bound %lld ms", what, i, after,
                 fixture_bound_ms(SLOW_CLOSE_MS));
    }
}

static void test_slowloris_clients_closed_by_idle_timeout(void **state)
{
    fixture *f = *state;
    redisContext *active = fixture_client(f);
    fixture_expect_status(fixture_cmd(active, "SET slow:key kept"), "OK");
    long long dropped_before = fixture_info_int(active, "clients_dropped");
    /* A request that takes far longer to trickle than the test lasts. */
    char request[128];
    int request_len = snprintf(request, sizeof(request), "*2\r\n$3\r\nGET\r\n$64\r\n%064d\r\n", 0);
    int slow[SLOW_CLIENTS];
    long long closed_at[SLOW_CLIENTS];
    /* Taken before the connects: the proxy's idle clock for each client
     * starts later, and closed_at (when the test notices the close) is no
     * earlier than the close, so closed_at - start is at least SLOW_IDLE_S for
     * every client the proxy times out correctly. */
    long long start = fixture_now_ms();
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        slow[i] = fixture_raw_connect(f->proxy.port);
        assert_true(slow[i] >= 0);
        closed_at[i] = 0;
    }
    int silent = fixture_raw_connect(f->proxy.port); /* sends nothing at all */
    assert_true(silent >= 0);
    long long silent_closed_at = 0;

    int open_count = SLOW_CLIENTS;
    for (int tick = 0; (open_count > 0 || silent_closed_at == 0) &&
                       fixture_now_ms() - start < fixture_bound_ms(2 * SLOW_CLOSE_MS);
         tick++) {
        for (int i = 0; i < SLOW_CLIENTS; i++) {
            if (closed_at[i] != 0) {
                continue;
            }
            char buf[64];
            int closed;
            drain(slow[i], buf, sizeof(buf), &closed);
            if (closed || send(slow[i], request + tick % request_len, 1, MSG_NOSIGNAL) != 1) {
                closed_at[i] = fixture_now_ms();
                open_count--;
            }
        }
        if (silent_closed_at == 0) {
            char buf[64];
            int closed;
            drain(silent, buf, sizeof(buf), &closed);
            if (closed) {
                silent_closed_at = fixture_now_ms();
            }
        }
        /* A client sending whole requests now and then stays. */
        if (tick % 3 == 0) {
            fixture_expect_status(fixture_cmd(active, "PING"), "PONG");
        }
        fixture_sleep_ms(SLOW_BYTE_MS);
    }
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        close(slow[i]);
        expect_closed_idle("slowloris client", i, start, closed_at[i]);
    }
    close(silent);
    expect_closed_idle("silent client", 0, start, silent_closed_at);
    fixture_expect_str(fixture_cmd(active, "GET slow:key"), "kept");
    fixture_wait_log(&f->proxy, "idle timeout");
    assert_true(fixture_info_int(active, "clients_dropped") >= dropped_before + SLOW_CLIENTS + 1);
    fixture_close(f, active);
    expect_proxy_serves(f, "slow:key", "kept");
}

/* ---- the proxy's fd limit ---- */

static void test_fd_limit_refuses_new_clients_and_recovers(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    fixture_expect_status(fixture_cmd(admin, "SET fd:key before"), "OK");
    long long rejected_before = fixture_info_int(admin, "rejected_connections");
    int fds[FD_ATTEMPTS];
    for (int i = 0; i < FD_ATTEMPTS; i++) {
        fds[i] = fixture_raw_connect(f->proxy.port);
        assert_true(fds[i] >= 0);
    }
    /* Every connection is taken: served, or refused at once; none is left
     * waiting in the listen backlog. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    long long taken = 0;
    while (fixture_now_ms() < deadline) {
        taken = fixture_info_int(admin, "rejected_connections") - rejected_before +
                fixture_info_int(admin, "connected_clients") - 1;
        if (taken >= FD_ATTEMPTS) {
            break;
        }
        fixture_sleep_ms(20);
    }
    if (taken < FD_ATTEMPTS) {
        fail_msg("the proxy at %d fds took %lld of %d connections; the rest wait unanswered",
                 FD_LIMIT, taken, FD_ATTEMPTS);
    }
    static const char full[] = "-ERR max number of clients reached\r\n";
    int served = 0, refused = 0;
    for (int i = 0; i < FD_ATTEMPTS; i++) {
        char buf[128];
        int closed;
        size_t n = drain(fds[i], buf, sizeof(buf), &closed);
        if (n == 0 && !closed) {
            served++;
            continue;
        }
        if (strcmp(buf, full) != 0 || closed != 1) {
            fail_msg("connection %d of %d with the proxy at %d fds: got \"%s\"%s", i, FD_ATTEMPTS,
                     FD_LIMIT, buf, closed ? " and a close" : "");
        }
        refused++;
        close(fds[i]);
        fds[i] = -1;
    }
    assert_true(served >= FD_LIMIT / 2);
    assert_true(refused > 0);
    for (int i = 0; i < FD_ATTEMPTS; i++) {
        if (fds[i] >= 0) {
            char buf[16];
            int closed;
            assert_int_equal(fixture_raw_send(fds[i], "PING\r\n", 6), 0);
            fixture_raw_read(fds[i], buf, sizeof(buf), 7, fixture_bound_ms(REPLY_TIMEOUT_MS),
                             &closed);
            if (strcmp(buf, "+PONG\r\n") != 0) {
                fail_msg("served connection %d: PING got \"%s\"", i, buf);
            }
        }
    }
    fixture_wait_log(&f->proxy, "RLIMIT_NOFILE");

    /* The existing clients are fine, on every shard. */
    fixture_expect_str(fixture_cmd(admin, "GET fd:key"), "before");
    for (int i = 0; i < 100; i++) {
        fixture_expect_status(fixture_cmd(admin, "SET fd:%d v%d", i, i), "OK");
    }
    /* At the limit, a shard connection that drops can still come back. */
    assert_true(harness_proc_stop(&f->shards[0], SIGKILL) != -1);
    assert_int_equal(harness_redis_restart(&f->shards[0]), 0);
    deadline = fixture_now_ms() + fixture_bound_ms(5000);
    int back = 0;
    while (!back && fixture_now_ms() < deadline) {
        back = 1;
        for (int i = 0; back && i < 100; i++) {
            redisReply *r = fixture_cmd(admin, "SET fd:%d v%d", i, i);
            back = r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
        }
        if (!back) {
            fixture_sleep_ms(50);
        }
    }
    if (!back) {
        fail_msg("a shard restarted while the proxy was at its fd limit is still unavailable");
    }

    /* Once clients leave, new ones are served again. */
    for (int i = 0; i < FD_ATTEMPTS; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    deadline = fixture_now_ms() + fixture_bound_ms(5000);
    while (fixture_info_int(admin, "connected_clients") > 1 && fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
    }
    redisContext *again[20];
    for (int i = 0; i < 20; i++) {
        again[i] = fixture_client(f);
        fixture_expect_status(fixture_cmd(again[i], "PING"), "PONG");
    }
    for (int i = 0; i < 20; i++) {
        fixture_close(f, again[i]);
    }
    for (int i = 0; i < 100; i++) {
        char want[16];
        snprintf(want, sizeof(want), "v%d", i);
        fixture_expect_str(fixture_cmd(admin, "GET fd:%d", i), want);
    }
    fixture_close(f, admin);
    expect_proxy_serves(f, "fd:0", "v0");
}

int main(void)
{
    /* The many-clients test holds every connection in this process, and
     * the proxy (which inherits the limit) half of them. */
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
        rlim_t want = (rlim_t)MANY_CLIENTS + NOFILE_SLACK;
        if (lim.rlim_cur < want) {
            lim.rlim_cur = lim.rlim_max < want ? lim.rlim_max : want;
            setrlimit(RLIMIT_NOFILE, &lim);
            getrlimit(RLIMIT_NOFILE, &lim);
        }
        if (lim.rlim_cur < want) {
            long room = (long)lim.rlim_cur - NOFILE_SLACK;
            many_clients = room > MANY_CLIENTS_MIN ? (int)(room / 100 * 100) : MANY_CLIENTS_MIN;
            many_max_clients = many_clients / 2;
            fprintf(stderr,
                    "note: RLIMIT_NOFILE is %lu: %d clients against max_clients = %d instead "
                    "of %d against %d\n",
                    (unsigned long)lim.rlim_cur, many_clients, many_max_clients, MANY_CLIENTS,
                    MANY_CLIENTS / 2);
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_many_clients_over_max_clients_are_refused_cleanly,
                                        setup_many, stop_fixture),
        cmocka_unit_test_setup_teardown(test_huge_bulk_length_closed_with_protocol_error,
                                        setup_plain, stop_fixture),
        cmocka_unit_test_setup_teardown(test_client_never_reading_is_dropped_and_memory_bounded,
                                        setup_flood, stop_fixture),
        cmocka_unit_test_setup_teardown(test_flooder_does_not_stall_its_shard, setup_flood,
                                        stop_fixture),
        cmocka_unit_test_setup_teardown(test_client_reading_late_is_paused_then_resumed,
                                        setup_pause, stop_fixture),
        cmocka_unit_test_setup_teardown(
            test_client_writing_a_long_pipeline_before_reading_is_served, setup_pause,
            stop_fixture),
        cmocka_unit_test_setup_teardown(test_slowloris_clients_closed_by_idle_timeout,
                                        setup_slowloris, stop_fixture),
        cmocka_unit_test_setup_teardown(test_fd_limit_refuses_new_clients_and_recovers,
                                        setup_fd_limit, stop_fixture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
