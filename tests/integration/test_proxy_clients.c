/* ringproxy under many clients: 1,000 connections with requests in flight
 * at once, clients that vanish with replies still queued, and a
 * redis-benchmark run, after which the proxy still serves everyone. */
#include <errno.h>
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

#define CONCURRENT_CLIENTS 1000
/* Descriptors the test process (and the proxy, which inherits the limit)
 * needs: the clients, the proxy's backends, and some slack. */
#define NOFILE_NEEDED (CONCURRENT_CLIENTS + 1024)
#define VANISH_ROUNDS 20
#define VANISH_GETS   1000
/* Large enough that 1,000 replies overflow the socket buffers and stay
 * queued in the proxy when the client goes. */
#define VANISH_VALUE_LEN     4096
#define BENCHMARK_TIMEOUT_MS 60000
/* 256 GETs of 256 KiB: 64 MiB of replies, far over the 16 MiB at which the
 * proxy stops reading a client that does not read its replies. */
#define SLOW_GETS      256
#define SLOW_VALUE_LEN (256 * 1024)
/* How far above its starting RSS the idle proxy may stay afterwards: half
 * the replies' size (allocator caches and grown buffers may remain; keeping
 * them all, as twemproxy does, fails). */
#define RSS_SLACK_KIB (32 * 1024)

static int group_setup(void **state)
{
    fixture *f = fixture_start(NULL);
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* Value of an INFO field such as "connected_clients", or -1 when absent. */
static long long info_field(redisContext *c, const char *field)
{
    redisReply *r = fixture_cmd(c, "INFO");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    long long value = -1;
    char pattern[64];
    int n = snprintf(pattern, sizeof(pattern), "\n%s:", field);
    const char *p = memmem(r->str, r->len, pattern, (size_t)n);
    if (p != NULL) {
        value = atoll(p + n);
    }
    freeReplyObject(r);
    return value;
}

/* Sends whatever each context has buffered, so that every request is in
 * flight before any reply is read. */
static void flush_all(redisContext **conns, int n)
{
    for (int i = 0; i < n; i++) {
        int done = 0;
        while (!done) {
            if (redisBufferWrite(conns[i], &done) != REDIS_OK) {
                fail_msg("client %d: write failed: %s", i, conns[i]->errstr);
            }
        }
    }
}

/* The clients of test_1000_concurrent_clients, closed by its teardown even
 * when it fails, so later tests see a quiet proxy. */
static redisContext **clients;

static int close_clients(void **state)
{
    (void)state;
    for (int i = 0; clients != NULL && i < CONCURRENT_CLIENTS; i++) {
        if (clients[i] != NULL) {
            redisFree(clients[i]);
        }
    }
    free(clients);
    clients = NULL;
    return 0;
}

static void test_1000_concurrent_clients(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    long long before = info_field(admin, "connected_clients");
    clients = calloc(CONCURRENT_CLIENTS, sizeof(*clients));
    assert_non_null(clients);
    for (int i = 0; i < CONCURRENT_CLIENTS; i++) {
        clients[i] = harness_connect(f->proxy.port);
        if (clients[i] == NULL) {
            fail_msg("connection %d of %d refused", i + 1, CONCURRENT_CLIENTS);
        }
    }
    /* connect() returns once the kernel queued the connection; the proxy
     * accepts it a moment later. */
    long long connected = info_field(admin, "connected_clients");
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    while (connected != -1 && connected < before + CONCURRENT_CLIENTS &&
           fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
        connected = info_field(admin, "connected_clients");
    }
    if (connected != -1 && connected < before + CONCURRENT_CLIENTS) {
        fail_msg("INFO connected_clients is %lld with %d more clients than %lld", connected,
                 CONCURRENT_CLIENTS, before);
    }

    for (int i = 0; i < CONCURRENT_CLIENTS; i++) {
        redisAppendCommand(clients[i], "SET conc:%d client-%d", i, i);
        redisAppendCommand(clients[i], "INCR conc:shared");
    }
    flush_all(clients, CONCURRENT_CLIENTS);
    long long max_incr = 0;
    for (int i = 0; i < CONCURRENT_CLIENTS; i++) {
        fixture_expect_status(fixture_next_reply(clients[i]), "OK");
        redisReply *r = fixture_next_reply(clients[i]);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        if (r->integer > max_incr) {
            max_incr = r->integer;
        }
        freeReplyObject(r);
    }
    /* Every INCR was applied exactly once. */
    assert_int_equal(max_incr, CONCURRENT_CLIENTS);
    fixture_expect_str(fixture_cmd(admin, "GET conc:shared"), "1000");

    for (int i = 0; i < CONCURRENT_CLIENTS; i++) {
        /* Each reads the key of another client: no crossed replies. */
        redisAppendCommand(clients[i], "GET conc:%d", (i + 1) % CONCURRENT_CLIENTS);
    }
    flush_all(clients, CONCURRENT_CLIENTS);
    for (int i = 0; i < CONCURRENT_CLIENTS; i++) {
        char want[32];
        snprintf(want, sizeof(want), "client-%d", (i + 1) % CONCURRENT_CLIENTS);
        fixture_expect_str(fixture_next_reply(clients[i]), want);
    }
    for (int i = 0; i < CONCURRENT_CLIENTS; i += 50) {
        char key[32];
        snprintf(key, sizeof(key), "conc:%d", i);
        int owner = fixture_owner(admin, key, strlen(key));
        assert_int_equal(fixture_holders(f, key, strlen(key)), 1u << owner);
    }
    close_clients(NULL);

    /* The proxy notices all of them gone. */
    deadline = fixture_now_ms() + fixture_bound_ms(3000);
    while ((connected = info_field(admin, "connected_clients")) > before &&
           fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
    }
    if (connected > before) {
        fail_msg("INFO connected_clients still %lld after the clients closed", connected);
    }
    fixture_close(f, admin);
}

/* 1 while pid has not exited (without reaping it). */
static int proxy_alive(pid_t pid)
{
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) == -1) {
        return 0;
    }
    return info.si_pid == 0;
}

static void test_client_vanishing_mid_pipeline(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    long long before = info_field(c, "connected_clients");
    char *value = fixture_alloc(f, VANISH_VALUE_LEN);
    memset(value, 'v', VANISH_VALUE_LEN);
    fixture_expect_status(fixture_cmd(c, "SET vanish:big %b", value, (size_t)VANISH_VALUE_LEN),
                          "OK");
    fixture_free(f, value);

    static const char get[] = "*2\r\n$3\r\nGET\r\n$10\r\nvanish:big\r\n";
    size_t len = (sizeof(get) - 1) * VANISH_GETS;
    char *pipeline = fixture_alloc(f, len);
    for (int i = 0; i < VANISH_GETS; i++) {
        memcpy(pipeline + i * (sizeof(get) - 1), get, sizeof(get) - 1);
    }
    for (int round = 0; round < VANISH_ROUNDS; round++) {
        int fd = fixture_raw_connect(f->proxy.port);
        assert_true(fd >= 0);
        if (round % 4 == 3) {
            /* Gone in the middle of a request. */
            assert_int_equal(fixture_raw_send(fd, pipeline, len / 2 + 7), 0);
        } else {
            assert_int_equal(fixture_raw_send(fd, pipeline, len), 0);
        }
        if (round % 2 == 1) {
            /* Reset instead of FIN: the proxy's next write fails. */
            struct linger hard = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
        }
        close(fd);
        /* Others are served meanwhile. */
        fixture_expect_int(fixture_cmd(c, "STRLEN vanish:big"), VANISH_VALUE_LEN);
    }
    fixture_free(f, pipeline);
    assert_true(proxy_alive(f->proxy.pid));
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_expect_status(fixture_cmd(c, "SET vanish:after ok"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET vanish:after"), "ok");

    /* Their connections are released, not leaked. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    long long connected;
    while ((connected = info_field(c, "connected_clients")) > before &&
           fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
    }
    if (connected > before) {
        fail_msg("INFO connected_clients still %lld after the clients vanished", connected);
    }
    fixture_close(f, c);
}

/* A client that pipelines many big GETs and reads slowly gets every reply
 * intact and in order; once it is done the proxy gives the memory back. */
static void test_slow_reader_gets_every_reply_then_memory_returns(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    long before = fixture_rss_kib(f->proxy.pid);
    assert_true(before > 0);
    char *value = fixture_alloc(f, SLOW_VALUE_LEN);
    for (size_t i = 0; i < SLOW_VALUE_LEN; i++) {
        value[i] = (char)('A' + i % 53);
    }
    fixture_expect_status(fixture_cmd(c, "SET slow:big %b", value, (size_t)SLOW_VALUE_LEN), "OK");

    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    static const char get[] = "*2\r\n$3\r\nGET\r\n$8\r\nslow:big\r\n";
    for (int i = 0; i < SLOW_GETS; i++) {
        assert_int_equal(fixture_raw_send(fd, get, sizeof(get) - 1), 0);
    }
    char header[32];
    size_t header_len = (size_t)snprintf(header, sizeof(header), "$%d\r\n", SLOW_VALUE_LEN);
    size_t reply_len = header_len + SLOW_VALUE_LEN + 2;
    char *reply = fixture_alloc(f, reply_len);
    memcpy(reply, header, header_len);
    memcpy(reply + header_len, value, SLOW_VALUE_LEN);
    memcpy(reply + header_len + SLOW_VALUE_LEN, "\r\n", 2);

    /* Read 64 KiB at a time with a pause in between, comparing each byte
     * with the expected stream of identical replies. */
    size_t total = reply_len * SLOW_GETS, got = 0;
    static char chunk[65536];
    long long deadline = fixture_now_ms() + fixture_bound_ms(30000);
    while (got < total && fixture_now_ms() < deadline) {
        int closed;
        size_t want = total - got < sizeof(chunk) - 1 ? total - got : sizeof(chunk) - 1;
        size_t n =
            fixture_raw_read(fd, chunk, sizeof(chunk), want, fixture_bound_ms(2000), &closed);
        for (size_t j = 0; j < n; j++) {
            if (chunk[j] != reply[(got + j) % reply_len]) {
                fail_msg("reply byte %zu differs (reply %zu, offset %zu)", got + j,
                         (got + j) / reply_len, (got + j) % reply_len);
            }
        }
        got += n;
        if (closed) {
            fail_msg("closed after %zu of %zu reply bytes", got, total);
        }
        fixture_sleep_ms(1);
    }
    close(fd);
    assert_int_equal(got, total);

    /* The buffers of those 64 MiB of replies do not stay resident (not
     * checked under ASan, whose quarantine holds freed memory). */
    long after = fixture_rss_kib(f->proxy.pid);
    deadline = fixture_now_ms() + fixture_bound_ms(3000);
    while (!fixture_memory_instrumented(f->proxy.pid) && after > before + RSS_SLACK_KIB &&
           fixture_now_ms() < deadline) {
        fixture_sleep_ms(50);
        after = fixture_rss_kib(f->proxy.pid);
    }
    if (!fixture_memory_instrumented(f->proxy.pid) && after > before + RSS_SLACK_KIB) {
        fail_msg("proxy RSS %ld KiB, was %ld KiB before %d MiB of replies", after, before,
                 (int)(total >> 20));
    }
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_free(f, reply);
    fixture_free(f, value);
    fixture_close(f, c);
}

/* Runs argv with stdout and stderr captured into out (NUL-terminated, cut at
 * cap), killed by pid after timeout_ms. Returns the waitpid status or -1. */
static int run_captured(char *const argv[], char *out, size_t cap, int timeout_ms)
{
    int pipefd[2];
    assert_int_equal(pipe(pipefd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pipefd[1], STDOUT_FILENO);
        dup2(pipefd[1], STDERR_FILENO);
        close(pipefd[0]);
        close(pipefd[1]);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(pipefd[1]);
    size_t used = 0;
    long long deadline = fixture_now_ms() + timeout_ms;
    int timed_out = 0;
    for (;;) {
        long long left = deadline - fixture_now_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
        int ready = poll(&pfd, 1, (int)left);
        if (ready == -1 && errno == EINTR) {
            continue;
        }
        if (ready <= 0) {
            continue;
        }
        char chunk[4096];
        ssize_t n = read(pipefd[0], chunk, sizeof(chunk));
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        size_t take = (size_t)n < cap - 1 - used ? (size_t)n : cap - 1 - used;
        memcpy(out + used, chunk, take);
        used += take;
    }
    out[used] = '\0';
    close(pipefd[0]);
    if (timed_out) {
        kill(pid, SIGKILL);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) {
        return -1;
    }
    if (timed_out) {
        fail_msg("%s did not finish in %d ms; output so far:\n%s", argv[0], timeout_ms, out);
    }
    return status;
}

static void test_redis_benchmark_smoke(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    freeReplyObject(fixture_cmd(c, "DEL counter:__rand_int__ mylist key:__rand_int__"));
    char port[16];
    snprintf(port, sizeof(port), "%d", f->proxy.port);
    char *argv[] = {
        "redis-benchmark",         "-h", "127.0.0.1", "-p", port, "-n", "2000", "-c", "10", "-t",
        "set,get,incr,lpush,mset", "-q", NULL};
    static char out[65536];
    int status = run_captured(argv, out, sizeof(out), fixture_bound_ms(BENCHMARK_TIMEOUT_MS));
    if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fail_msg("redis-benchmark failed (status %#x):\n%s", (unsigned)status, out);
    }
    /* "SET: 12345.68 requests per second, p50=0.311 msec" per test; no error
     * from the server on any request. */
    const char *tests[] = {"SET: ", "GET: ", "INCR: ", "LPUSH: ", "MSET (10 keys): "};
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        /* Progress lines ("SET: rps=...") come first; the result is the
         * occurrence followed by a number and "requests per second". */
        double rps = 0;
        for (const char *at = strstr(out, tests[i]); at != NULL && rps <= 0;
             at = strstr(at + 1, tests[i])) {
            char *end;
            double v = strtod(at + strlen(tests[i]), &end);
            if (end != at + strlen(tests[i]) &&
                strncmp(end, " requests per second", strlen(" requests per second")) == 0) {
                rps = v;
            }
        }
        if (rps <= 0) {
            fail_msg("no plausible redis-benchmark result for \"%s\":\n%s", tests[i], out);
        }
    }
    if (strstr(out, "Error from server") != NULL) {
        fail_msg("redis-benchmark got error replies:\n%s", out);
    }
    /* The work really happened, exactly once per request. */
    fixture_expect_str(fixture_cmd(c, "GET counter:__rand_int__"), "2000");
    fixture_expect_int(fixture_cmd(c, "LLEN mylist"), 2000);
    fixture_expect_int(fixture_cmd(c, "EXISTS key:__rand_int__"), 1);
    int owner = fixture_owner(c, "mylist", 6);
    fixture_expect_int(fixture_cmd(fixture_shard(f, owner), "LLEN mylist"), 2000);
    fixture_close(f, c);
}

int main(void)
{
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < NOFILE_NEEDED) {
        lim.rlim_cur = lim.rlim_max < NOFILE_NEEDED ? lim.rlim_max : NOFILE_NEEDED;
        if (setrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < NOFILE_NEEDED) {
            fprintf(stderr, "cannot raise RLIMIT_NOFILE to %d\n", NOFILE_NEEDED);
            return 1;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_1000_concurrent_clients, close_clients),
        cmocka_unit_test(test_client_vanishing_mid_pipeline),
        cmocka_unit_test(test_slow_reader_gets_every_reply_then_memory_returns),
        cmocka_unit_test(test_redis_benchmark_smoke),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
