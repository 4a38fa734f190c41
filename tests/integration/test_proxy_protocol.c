/* ringproxy reads the Redis protocol as Redis does: inline and multibulk
 * requests split at any byte, and malformed input answered with a
 * "-ERR Protocol error" and a close of that client only, after the replies
 * to the requests before it. Raw sockets, since hiredis sends only valid
 * requests. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

/* How long a reply or a close may take; far above what a proxy needs. */
#define REPLY_TIMEOUT_MS 3000
/* Redis's PROTO_INLINE_MAX_SIZE: an inline line longer than this is refused. */
#define INLINE_MAX 65536

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

/* Sends req on a new connection and expects exactly want back (within the
 * timeout, the connection left open). */
static void expect_exchange(const fixture *f, const char *req, size_t req_len, const char *want)
{
    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    assert_int_equal(fixture_raw_send(fd, req, req_len), 0);
    char buf[4096];
    int closed;
    size_t n = fixture_raw_read(fd, buf, sizeof(buf), strlen(want),
                                fixture_bound_ms(REPLY_TIMEOUT_MS), &closed);
    close(fd);
    if (n != strlen(want) || memcmp(buf, want, n) != 0) {
        fail_msg("sent %zu bytes, expected \"%s\", got %zu bytes \"%s\"%s", req_len, want, n, buf,
                 closed ? " then close" : "");
    }
}

static void test_inline_commands(void **state)
{
    fixture *f = *state;
    static const char req[] = "PING\r\n"
                              "SET inline:k \"hello world\"\r\n"
                              "GET inline:k\n" /* a bare LF ends a line too */
                              "\r\n"           /* an empty line is skipped */
                              "ECHO 'single quoted'\r\n"
                              "  EXISTS   inline:k   inline:none \r\n"
                              "SET inline:esc \"a\\r\\nb\\x00c\"\r\n"
                              "STRLEN inline:esc\r\n";
    expect_exchange(f, req, sizeof(req) - 1,
                    "+PONG\r\n+OK\r\n$11\r\nhello world\r\n$13\r\nsingle quoted\r\n"
                    ":1\r\n+OK\r\n:6\r\n");
}

/* Each request split at every byte boundary: written one byte at a time. */
static void test_requests_split_at_every_byte(void **state)
{
    fixture *f = *state;
    static const char req[] = "*3\r\n$3\r\nSET\r\n$7\r\nsplit:k\r\n$5\r\nv\r\nxy\r\n"
                              "*2\r\n$3\r\nGET\r\n$7\r\nsplit:k\r\n"
                              "ECHO inline\r\n"
                              "*1\r\n$4\r\nPING\r\n";
    static const char want[] = "+OK\r\n$5\r\nv\r\nxy\r\n$6\r\ninline\r\n+PONG\r\n";
    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    for (size_t i = 0; i < sizeof(req) - 1; i++) {
        assert_int_equal(fixture_raw_send(fd, req + i, 1), 0);
        fixture_sleep_ms(1);
    }
    char buf[256];
    int closed;
    fixture_raw_read(fd, buf, sizeof(buf), sizeof(want) - 1, fixture_bound_ms(REPLY_TIMEOUT_MS),
                     &closed);
    close(fd);
    assert_string_equal(buf, want);
}

/* One malformed request and the error the Redis server gives for it. */
typedef struct malformed_case {
    const char *what;
    const char *bytes; /* NULL: an over-long line built by the test */
    size_t len;
    char fill; /* for the built line: its first byte, then digits or 'a' */
} malformed_case;

#define CASE(what, bytes)                                                                          \
    {                                                                                              \
        what, bytes, sizeof(bytes) - 1, 0                                                          \
    }

static const malformed_case malformed_cases[] = {
    CASE("multibulk count not a number", "*abc\r\n"),
    CASE("negative bulk length", "*3\r\n$3\r\nSET\r\n$-5\r\n"),
    CASE("multibulk count over the limit", "*3000000000\r\n"),
    CASE("bulk length over the limit", "*1\r\n$2000000000\r\n"),
    CASE("bulk length not a number", "*1\r\n$x1\r\n"),
    CASE("bulk header without $", "*2\r\n$3\r\nGET\r\n:5\r\n"),
    CASE("unbalanced quotes in an inline command", "SET \"a b\r\n"),
    {"inline line over 64 KiB without newline", NULL, INLINE_MAX + 4096, 'a'},
    {"multibulk count line over 64 KiB without newline", NULL, INLINE_MAX + 4096, '*'},
};

/* What the proxy answers to the valid GET sent before each malformed case. */
#define PROTO_KEY   "proto:key"
#define PROTO_VALUE "proto value"

static char *case_bytes(const malformed_case *mc, size_t *len)
{
    *len = mc->len;
    char *bytes = malloc(mc->len);
    assert_non_null(bytes);
    if (mc->bytes != NULL) {
        memcpy(bytes, mc->bytes, mc->len);
        return bytes;
    }
    memset(bytes, mc->fill == '*' ? '1' : 'a', mc->len);
    bytes[0] = mc->fill;
    return bytes;
}

/* The bytes received on the malformed connection must be the reply to the
 * GET sent before, then (optionally) -ERR Protocol error..., and the
 * connection must be closed. */
static void check_malformed_answer(const malformed_case *mc, const char *got, size_t n, int closed)
{
    static const char get_reply[] = "$11\r\n" PROTO_VALUE "\r\n";
    static const char error[] = "-ERR Protocol error";
    const size_t get_len = sizeof(get_reply) - 1;
    int ok;
    if (n <= get_len) {
        /* Closed before or while sending the GET reply. */
        ok = memcmp(got, get_reply, n) == 0;
    } else {
        size_t rest = n - get_len;
        size_t cmp = rest < sizeof(error) - 1 ? rest : sizeof(error) - 1;
        ok = memcmp(got, get_reply, get_len) == 0 && memcmp(got + get_len, error, cmp) == 0 &&
             (rest >= sizeof(error) - 1 || closed);
    }
    if (!ok) {
        fail_msg("%s: expected the GET reply then \"%s...\", got %zu bytes \"%s\"", mc->what, error,
                 n, got);
    }
    if (!closed) {
        fail_msg("%s: connection still open %lld ms after a protocol error (got \"%s\")", mc->what,
                 fixture_bound_ms(REPLY_TIMEOUT_MS), got);
    }
}

static void test_malformed_input_closes_only_that_client(void **state)
{
    fixture *f = *state;
    redisContext *other = fixture_client(f);
    fixture_expect_status(fixture_cmd(other, "SET %s %s", PROTO_KEY, PROTO_VALUE), "OK");

    for (size_t i = 0; i < sizeof(malformed_cases) / sizeof(malformed_cases[0]); i++) {
        const malformed_case *mc = &malformed_cases[i];
        /* A bystander with half a request in the proxy's buffer. */
        int bystander = fixture_raw_connect(f->proxy.port);
        assert_true(bystander >= 0);
        static const char half1[] = "*2\r\n$3\r\nGET\r\n$9\r\npro";
        static const char half2[] = "to:key\r\n";
        assert_int_equal(fixture_raw_send(bystander, half1, sizeof(half1) - 1), 0);

        int fd = fixture_raw_connect(f->proxy.port);
        assert_true(fd >= 0);
        static const char get[] = "*2\r\n$3\r\nGET\r\n$9\r\n" PROTO_KEY "\r\n";
        assert_int_equal(fixture_raw_send(fd, get, sizeof(get) - 1), 0);
        size_t len;
        char *bytes = case_bytes(mc, &len);
        /* The proxy may close before taking all of it: not a failure. */
        (void)fixture_raw_send(fd, bytes, len);
        free(bytes);
        char buf[1024];
        int closed;
        size_t n = fixture_raw_read(fd, buf, sizeof(buf), sizeof(buf) - 1,
                                    fixture_bound_ms(REPLY_TIMEOUT_MS), &closed);
        close(fd);
        check_malformed_answer(mc, buf, n, closed);

        /* The bystander's request completes; the hiredis client is fine. */
        assert_int_equal(fixture_raw_send(bystander, half2, sizeof(half2) - 1), 0);
        static const char want[] = "$11\r\n" PROTO_VALUE "\r\n";
        n = fixture_raw_read(bystander, buf, sizeof(buf), sizeof(want) - 1,
                             fixture_bound_ms(REPLY_TIMEOUT_MS), &closed);
        close(bystander);
        if (strcmp(buf, want) != 0) {
            fail_msg("after \"%s\" a bystander got \"%s\"", mc->what, buf);
        }
        fixture_expect_str(fixture_cmd(other, "GET %s", PROTO_KEY), PROTO_VALUE);
        fixture_expect_int(fixture_cmd(other, "INCR proto:counter"), (long long)i + 1);
    }
    fixture_close(f, other);
}

/* Limits close to the edge but inside it are accepted. */
static void test_long_inline_line_under_the_limit_is_accepted(void **state)
{
    fixture *f = *state;
    /* "ECHO " + a 60 KiB argument + CRLF: under Redis's 64 KiB inline limit. */
    size_t arg_len = 60 * 1024;
    size_t len = 5 + arg_len + 2;
    char *req = fixture_alloc(f, len);
    memcpy(req, "ECHO ", 5);
    memset(req + 5, 'x', arg_len);
    memcpy(req + 5 + arg_len, "\r\n", 2);
    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    assert_int_equal(fixture_raw_send(fd, req, len), 0);
    char header[16];
    int header_len = snprintf(header, sizeof(header), "$%zu\r\n", arg_len);
    size_t want = (size_t)header_len + arg_len + 2;
    char *buf = fixture_alloc(f, want + 1);
    int closed;
    size_t n =
        fixture_raw_read(fd, buf, want + 1, want, fixture_bound_ms(REPLY_TIMEOUT_MS), &closed);
    close(fd);
    assert_int_equal(n, want);
    assert_memory_equal(buf, header, (size_t)header_len);
    assert_memory_equal(buf + header_len, req + 5, arg_len);
    fixture_free(f, buf);
    fixture_free(f, req);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inline_commands),
        cmocka_unit_test(test_requests_split_at_every_byte),
        cmocka_unit_test(test_malformed_input_closes_only_that_client),
        cmocka_unit_test(test_long_inline_line_under_the_limit_is_accepted),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
