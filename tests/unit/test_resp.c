/* Specification of the RESP scanners (proxy/resp.c): what a request or a
 * reply stream scans to, whatever way it is cut into reads.
 *
 * Every table case is fed whole, byte by byte, and split in two at every
 * offset (large inputs: in odd-sized chunks and at chosen offsets), each call
 * getting a freshly allocated copy of the unconsumed bytes, as if the read
 * buffer had moved; all must render the same text:
 *   "M arg arg ...\n"  a multibulk request      "I arg ...\n"  an inline one
 *   "R <len>\n"        a reply of len bytes     "E <error>\n"  the error reported
 *   "rest <n>\n"       bytes left unconsumed when the input ran out
 * Argument bytes outside '!'..'~', and '\' and '"', are written as \xHH. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "proxy/resp.h"

/* ---- growing text, for renderings ---- */

typedef struct text {
    char *ptr;
    size_t len;
    size_t cap;
} text;

static void text_add(text *t, const char *bytes, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        t->ptr = realloc(t->ptr, cap);
        assert_non_null(t->ptr);
        t->cap = cap;
    }
    memcpy(t->ptr + t->len, bytes, n);
    t->len += n;
    t->ptr[t->len] = '\0';
}

static void text_str(text *t, const char *s)
{
    text_add(t, s, strlen(s));
}

static void text_printf(text *t, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(buf));
    text_add(t, buf, (size_t)n);
}

static void text_arg(text *t, const char *p, size_t n)
{
    if (n == 0)
        text_str(t, "\"\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c > ' ' && c < 0x7f && c != '\\' && c != '"')
            text_add(t, (const char *)&c, 1);
        else
            text_printf(t, "\\x%02x", c);
    }
}

/* ---- one scanner of either kind, fed like a connection ---- */

typedef enum kind { REQUESTS, REPLIES } kind;

typedef struct scanner {
    kind kind;
    resp_request req;
    resp_reply rep;
} scanner;

static void scanner_init(scanner *sc, kind k, const resp_limits *limits)
{
    sc->kind = k;
    resp_request_init(&sc->req, limits);
    resp_reply_init(&sc->rep);
}

/* Scans one message at buf; OK and ERROR are appended to out. */
static resp_status scanner_step(scanner *sc, const char *buf, size_t len, text *out, size_t *used)
{
    if (sc->kind == REPLIES) {
        size_t reply_len = 0;
        resp_status st = resp_reply_scan(&sc->rep, buf, len, &reply_len);
        if (st == RESP_OK) {
            assert_true(reply_len > 0 && reply_len <= len);
            text_printf(out, "R %zu\n", reply_len);
            *used = reply_len;
        } else if (st == RESP_ERROR) {
            text_printf(out, "E %s\n", sc->rep.err);
        }
        return st;
    }
    resp_request *s = &sc->req;
    resp_status st = resp_request_scan(s, buf, len);
    if (st == RESP_OK) {
        assert_true(s->req_len > 0 && s->req_len <= len);
        text_str(out, s->is_inline ? "I" : "M");
        for (size_t i = 0; i < s->argc; i++) {
            /* zero-copy: multibulk arguments are the buffer's own bytes */
            if (s->is_inline) {
                assert_true(s->argv[i].ptr >= s->scratch &&
                            s->argv[i].ptr + s->argv[i].len <= s->scratch + s->scratch_cap);
            } else {
                assert_true(s->argv[i].ptr >= buf &&
                            s->argv[i].ptr + s->argv[i].len <= buf + s->req_len);
            }
            text_str(out, " ");
            text_arg(out, s->argv[i].ptr, s->argv[i].len);
        }
        text_str(out, "\n");
        *used = s->req_len;
    } else if (st == RESP_ERROR) {
        text_printf(out, "E %s\n", s->err);
        /* the scanner stays failed: the caller closes the peer */
        assert_int_equal(resp_request_scan(s, buf, len), RESP_ERROR);
    }
    return st;
}

/* Feeds `in` with reads ending at cuts[0..n) (the last is len). Each call
 * gets a fresh exact-size copy of the unconsumed bytes, so a pointer kept
 * across calls or a read past the end shows up under AddressSanitizer. */
static char *run_stream(kind k, const resp_limits *limits, const char *in, size_t len,
                        const size_t *cuts, size_t ncuts)
{
    scanner sc;
    text out = {0};
    size_t start = 0;
    int failed = 0;

    scanner_init(&sc, k, limits);
    text_str(&out, "");
    for (size_t c = 0; c < ncuts && !failed; c++) {
        for (;;) {
            size_t n = cuts[c] - start, used = 0;
            char *copy = malloc(n ? n : 1);
            assert_non_null(copy);
            memcpy(copy, in + start, n);
            resp_status st = scanner_step(&sc, copy, n, &out, &used);
            free(copy);
            if (st == RESP_OK) {
                start += used;
                continue;
            }
            failed = st == RESP_ERROR;
            break;
        }
    }
    if (!failed)
        text_printf(&out, "rest %zu\n", len - start);
    resp_request_free(&sc.req);
    return out.ptr;
}

static int expect_stream(const char *name, const char *how, kind k, const resp_limits *limits,
                         const char *in, size_t len, const size_t *cuts, size_t ncuts,
                         const char *want)
{
    char *got = run_stream(k, limits, in, len, cuts, ncuts);
    int same = strcmp(got, want) == 0;
    if (!same)
        print_error("case '%s' fed %s:\n--- want\n%s--- got\n%s", name, how, want, got);
    free(got);
    return same;
}

/* Whole, byte by byte, and in two pieces split at every offset. Inputs over
 * 4 KiB go in 997-byte reads and split at a few offsets instead, to keep
 * the copying quadratic cost out of the suite's run time. */
static void expect_all_ways(const char *name, kind k, const resp_limits *limits, const char *in,
                            size_t len, const char *want)
{
    size_t *cuts = malloc((len + 1) * sizeof(*cuts));
    size_t n;
    char how[64];
    int ok = 1;

    assert_non_null(cuts);
    ok &= expect_stream(name, "whole", k, limits, in, len, &len, 1, want);

    if (len <= 4096) {
        for (n = 0; n < len; n++)
            cuts[n] = n + 1;
        ok &= expect_stream(name, "byte by byte", k, limits, in, len, cuts, n, want);
        for (size_t at = 1; at < len && ok; at++) {
            size_t two[2] = {at, len};
            snprintf(how, sizeof(how), "split at %zu", at);
            ok &= expect_stream(name, how, k, limits, in, len, two, 2, want);
        }
    } else {
        for (n = 0; n * 997 < len; n++)
            cuts[n] = (n + 1) * 997 < len ? (n + 1) * 997 : len;
        ok &= expect_stream(name, "in 997-byte reads", k, limits, in, len, cuts, n, want);
        size_t offsets[] = {1, 2, 3, 4, 5, 100, len / 2, len - 3, len - 2, len - 1};
        for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
            size_t two[2] = {offsets[i], len};
            snprintf(how, sizeof(how), "split at %zu", offsets[i]);
            ok &= expect_stream(name, how, k, limits, in, len, two, 2, want);
        }
    }
    free(cuts);
    if (!ok)
        fail_msg("case '%s' scanned differently than specified", name);
}

/* ---- request cases ---- */

typedef struct stream_case {
    const char *name;
    const char *in;
    size_t len;
    const char *want;
    const resp_limits *limits; /* NULL: Redis's defaults */
} stream_case;

#define IN(s) s, sizeof(s) - 1

static const resp_limits small_limits = {
    .max_bulk_len = 3,
    .max_args = 2,
    .max_inline_len = 8,
};

static const stream_case request_cases[] = {
    /* multibulk */
    {"set", IN("*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\nb\r\n"), "M SET a b\nrest 0\n"},
    {"longer values", IN("*3\r\n$3\r\nSET\r\n$10\r\nkey:000001\r\n$12\r\nhello world!\r\n"),
     "M SET key:000001 hello\\x20world!\nrest 0\n"},
    {"pipeline", IN("*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n"),
     "M PING\nM GET k\nM PING\nrest 0\n"},
    {"pipeline with inline in between", IN("*1\r\n$4\r\nPING\r\nECHO hi\r\n*1\r\n$4\r\nQUIT\r\n"),
     "M PING\nI ECHO hi\nM QUIT\nrest 0\n"},
    {"incomplete last request", IN("*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk"),
     "M PING\nrest 18\n"},
    {"incomplete header", IN("*2\r\n$3\r\nGET\r\n$1"), "rest 15\n"},
    {"empty bulk", IN("*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"), "M ECHO \"\"\nrest 0\n"},
    {"binary bulk with CRLF and NUL", IN("*2\r\n$3\r\nGET\r\n$6\r\na\r\nb\0c\r\n"),
     "M GET a\\x0d\\x0ab\\x00c\nrest 0\n"},
    {"bulk that looks like a header", IN("*2\r\n$4\r\nECHO\r\n$8\r\n*1\r\n$1\r\n\r\n"),
     "M ECHO *1\\x0d\\x0a$1\\x0d\\x0a\nrest 0\n"},
    {"zero count", IN("*0\r\n"), "M\nrest 0\n"},
    {"null count", IN("*-1\r\n"), "M\nrest 0\n"},
    {"negative count then a command", IN("*-10\r\nPING\r\n"), "M\nI PING\nrest 0\n"},
    {"smallest int64 count is empty", IN("*-9223372036854775808\r\n"), "M\nrest 0\n"},
    /* Redis skips the byte after a header's '\r' and the two after a body
     * without looking at them; so must we, to frame the stream as it does. */
    {"header CR followed by any byte", IN("*1\rX$4\rYPING\r\n"), "M PING\nrest 0\n"},
    {"body followed by any two bytes", IN("*1\r\n$4\r\nPINGxy*1\r\n$4\r\nPING\r\n"),
     "M PING\nM PING\nrest 0\n"},

    /* inline */
    {"inline", IN("SET a b\r\n"), "I SET a b\nrest 0\n"},
    {"inline with bare LF", IN("SET a b\n"), "I SET a b\nrest 0\n"},
    {"inline pipeline", IN("PING\r\nPING\nECHO x\r\n"), "I PING\nI PING\nI ECHO x\nrest 0\n"},
    {"inline blanks", IN(" \t SET  a\v\fb \t c \r\n"), "I SET a\\x0b\\x0cb c\nrest 0\n"},
    {"inline CR inside the line", IN("ECHO a\rb\r\r\n"), "I ECHO a b\nrest 0\n"},
    {"empty line CRLF", IN("\r\n"), "I\nrest 0\n"},
    {"empty line LF", IN("\n"), "I\nrest 0\n"},
    {"blank line", IN("   \t\r\n"), "I\nrest 0\n"},
    {"inline incomplete", IN("SET a b\r"), "rest 8\n"},
    {"dollar starts an inline line", IN("$3\r\n"), "I $3\nrest 0\n"},
    {"NUL is an ordinary inline byte", IN("ECHO a\0b\r\n"), "I ECHO a\\x00b\nrest 0\n"},
    {"double quotes", IN("SET k \"hello world\"\r\n"), "I SET k hello\\x20world\nrest 0\n"},
    {"double-quote escapes", IN("ECHO \"\\x41\\x6a\\n\\r\\t\\b\\a\\\\\\\"\\q\"\r\n"),
     "I ECHO Aj\\x0a\\x0d\\x09\\x08\\x07\\x5c\\x22q\nrest 0\n"},
    {"hex escape needs two hex digits", IN("ECHO \"\\xZZ\\x4\"\r\n"), "I ECHO xZZx4\nrest 0\n"},
    {"single quotes", IN("SET k 'it\\'s \"x\" \\n'\r\n"),
     "I SET k it's\\x20\\x22x\\x22\\x20\\x5cn\nrest 0\n"},
    {"empty quoted args", IN("ECHO \"\" ''\r\n"), "I ECHO \"\" \"\"\nrest 0\n"},
    {"quote inside a word", IN("ECHO a\"b c\" d\r\n"), "I ECHO ab\\x20c d\nrest 0\n"},
    {"quote at end of line", IN("ECHO \"x\"\n"), "I ECHO x\nrest 0\n"},

    /* errors, worded as Redis 7.0 words them */
    {"unterminated double quote", IN("ECHO \"abc\r\n"),
     "E ERR Protocol error: unbalanced quotes in request\n"},
    {"unterminated single quote", IN("ECHO 'abc\r\n"),
     "E ERR Protocol error: unbalanced quotes in request\n"},
    {"closing quote glued to a word", IN("ECHO \"a\"b\r\n"),
     "E ERR Protocol error: unbalanced quotes in request\n"},
    {"backslash at end of quotes", IN("ECHO \"a\\\r\n"),
     "E ERR Protocol error: unbalanced quotes in request\n"},
    {"TLS ClientHello on the plain port", IN("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
     "E ERR Protocol error: TLS handshake on the plain-text port\n"},
    {"count not a number", IN("*abc\r\n"), "E ERR Protocol error: invalid multibulk length\n"},
    {"count empty", IN("*\r\n"), "E ERR Protocol error: invalid multibulk length\n"},
    {"count with plus", IN("*+1\r\n"), "E ERR Protocol error: invalid multibulk length\n"},
    {"count with leading zero", IN("*01\r\n"), "E ERR Protocol error: invalid multibulk length\n"},
    {"count minus zero", IN("*-0\r\n"), "E ERR Protocol error: invalid multibulk length\n"},
    {"count with trailing blank", IN("*1 \r\n"),
     "E ERR Protocol error: invalid multibulk length\n"},
    {"count over max args", IN("*3000000000\r\n"),
     "E ERR Protocol error: invalid multibulk length\n"},
    {"count over int64", IN("*99999999999999999999\r\n"),
     "E ERR Protocol error: invalid multibulk length\n"},
    {"count under int64", IN("*-9223372036854775809\r\n"),
     "E ERR Protocol error: invalid multibulk length\n"},
    {"bulk over max", IN("*1\r\n$2000000000\r\n"), "E ERR Protocol error: invalid bulk length\n"},
    {"bulk over int64", IN("*1\r\n$9223372036854775808\r\n"),
     "E ERR Protocol error: invalid bulk length\n"},
    {"bulk negative", IN("*1\r\n$-5\r\n"), "E ERR Protocol error: invalid bulk length\n"},
    {"bulk null", IN("*1\r\n$-1\r\n"), "E ERR Protocol error: invalid bulk length\n"},
    {"bulk not a number", IN("*1\r\n$abc\r\n"), "E ERR Protocol error: invalid bulk length\n"},
    {"bulk empty", IN("*1\r\n$\r\n"), "E ERR Protocol error: invalid bulk length\n"},
    {"bulk with leading zero", IN("*1\r\n$03\r\nfoo\r\n"),
     "E ERR Protocol error: invalid bulk length\n"},
    {"bulk header missing", IN("*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"),
     "E ERR Protocol error: expected '$', got 'f'\n"},
    {"bulk header is an empty line", IN("*1\r\n\r\n"),
     "E ERR Protocol error: expected '$', got ' '\n"},
    {"error after good requests", IN("PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n"),
     "I PING\nM PING\nE ERR Protocol error: invalid bulk length\n"},

    /* configured limits */
    {"args at limit", IN("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), "M GET k\nrest 0\n", &small_limits},
    {"args over limit", IN("*3\r\n"), "E ERR Protocol error: invalid multibulk length\n",
     &small_limits},
    {"bulk at limit", IN("*1\r\n$3\r\nGET\r\n"), "M GET\nrest 0\n", &small_limits},
    {"bulk over limit, before its body", IN("*1\r\n$4\r\n"),
     "E ERR Protocol error: invalid bulk length\n", &small_limits},
    {"inline at limit", IN("SET a b\r\n"), "I SET a b\nrest 0\n", &small_limits},
    {"inline at limit, LF only", IN("ECHO abc\n"), "I ECHO abc\nrest 0\n", &small_limits},
    {"inline over limit with its newline", IN("ECHO abcd\n"),
     "E ERR Protocol error: too big inline request\n", &small_limits},
    {"inline over limit without newline", IN("ECHO abcd"),
     "E ERR Protocol error: too big inline request\n", &small_limits},
    {"limits do not apply to empty counts", IN("*-1\r\n*0\r\n"), "M\nM\nrest 0\n", &small_limits},
};

static void test_request_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(request_cases) / sizeof(request_cases[0]); i++) {
        const stream_case *c = &request_cases[i];
        expect_all_ways(c->name, REQUESTS, c->limits, c->in, c->len, c->want);
    }
}

/* Lines longer than Redis's 64 KiB are refused as soon as they are that
 * long, newline or not; one byte less is still waited for. */
static void test_request_long_lines(void **state)
{
    (void)state;
    const size_t max = 64 * 1024;
    char *in = malloc(max + 64);
    assert_non_null(in);

    memset(in, 'a', max);
    expect_all_ways("64 KiB inline line, no newline yet", REQUESTS, NULL, in, max, "rest 65536\n");
    memset(in, 'a', max + 1);
    expect_all_ways("64 KiB + 1 inline line", REQUESTS, NULL, in, max + 1,
                    "E ERR Protocol error: too big inline request\n");
    in[max] = '\n';
    text want = {0};
    text_str(&want, "I ");
    text_add(&want, in, max);
    text_str(&want, "\nrest 0\n");
    expect_all_ways("64 KiB inline word and LF", REQUESTS, NULL, in, max + 1, want.ptr);
    free(want.ptr);
    in[max] = '\r';
    in[max + 1] = '\n';
    expect_all_ways("64 KiB inline word and CRLF", REQUESTS, NULL, in, max + 2,
                    "E ERR Protocol error: too big inline request\n");

    in[0] = '*';
    memset(in + 1, '1', max);
    expect_all_ways("64 KiB count line", REQUESTS, NULL, in, max + 1,
                    "E ERR Protocol error: too big mbulk count string\n");
    memcpy(in + 1 + max, "\r\n", 2);
    expect_all_ways("64 KiB count line with its CRLF", REQUESTS, NULL, in, max + 3,
                    "E ERR Protocol error: too big mbulk count string\n");

    memcpy(in, "*1\r\n$", 5);
    memset(in + 5, '1', max);
    expect_all_ways("64 KiB bulk length line", REQUESTS, NULL, in, max + 5,
                    "E ERR Protocol error: too big bulk count string\n");
    memset(in + 5, '1', max - 1);
    expect_all_ways("bulk length line just under the limit", REQUESTS, NULL, in, max + 4,
                    "rest 65540\n");
    free(in);
}

/* The results point where they should and req_len steps through a buffer. */
static void test_request_results(void **state)
{
    (void)state;
    static const char in[] = "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nSET k \"v w\"\r\n\r\n*0\r\n";
    size_t len = sizeof(in) - 1, off = 0;
    resp_request s;

    resp_request_init(&s, NULL);
    assert_int_equal(resp_request_scan(&s, in, len), RESP_OK);
    assert_int_equal(s.req_len, 22);
    assert_int_equal(s.argc, 2);
    assert_false(s.is_inline);
    assert_ptr_equal(s.argv[0].ptr, in + 8);
    assert_ptr_equal(s.argv[1].ptr, in + 17);
    assert_int_equal(s.argv[1].len, 3);
    off += s.req_len;

    assert_int_equal(resp_request_scan(&s, in + off, len - off), RESP_OK);
    assert_int_equal(s.req_len, 13);
    assert_true(s.is_inline);
    assert_int_equal(s.argc, 3);
    assert_memory_equal(s.argv[2].ptr, "v w", 3);
    off += s.req_len;

    assert_int_equal(resp_request_scan(&s, in + off, len - off), RESP_OK);
    assert_int_equal(s.req_len, 2);
    assert_int_equal(s.argc, 0);
    off += s.req_len;

    assert_int_equal(resp_request_scan(&s, in + off, len - off), RESP_OK);
    assert_int_equal(s.req_len, 4);
    assert_int_equal(s.argc, 0);
    assert_false(s.is_inline);
    off += s.req_len;
    assert_int_equal(off, len);
    assert_int_equal(resp_request_scan(&s, in + off, 0), RESP_INCOMPLETE);
    resp_request_free(&s);
}

/* A command with many arguments grows the arrays; shrink gives them back. */
static void test_request_many_args(void **state)
{
    (void)state;
    const size_t nargs = 5000;
    text in = {0}, want = {0};
    resp_request s;

    text_printf(&in, "*%zu\r\n$4\r\nMSET\r\n", nargs + 1);
    text_str(&want, "M MSET");
    for (size_t i = 0; i < nargs; i++) {
        char arg[32];
        int n = snprintf(arg, sizeof(arg), "k%zu", i);
        text_printf(&in, "$%d\r\n%s\r\n", n, arg);
        text_printf(&want, " %s", arg);
    }
    text_str(&want, "\nrest 0\n");
    expect_all_ways("5001 arguments", REQUESTS, NULL, in.ptr, in.len, want.ptr);

    resp_request_init(&s, NULL);
    assert_int_equal(resp_request_scan(&s, in.ptr, in.len), RESP_OK);
    assert_int_equal(s.argc, nargs + 1);
    assert_memory_equal(s.argv[nargs].ptr, "k4999", 5);
    resp_request_shrink(&s);
    assert_int_equal(s.arg_cap, 0);
    assert_int_equal(resp_request_scan(&s, "*1\r\n$4\r\nPING\r\n", 14), RESP_OK);
    assert_int_equal(s.argc, 1);
    resp_request_free(&s);
    free(in.ptr);
    free(want.ptr);
}

/* ---- a buffer that moves on every call and hides the bytes already read ----
 *
 * The data lives in one half of a reserved region; mremap moves it to the
 * other half between calls (a true move, without copying), and pages the
 * scanner has already been given are made unreadable during each call: a
 * scanner that kept a pointer, or searched old bytes again, faults. */

typedef struct moving_buf {
    char *data;  /* current address of the bytes */
    char *other; /* the half it moves to next */
    size_t span; /* bytes per half, whole pages */
    size_t page;
} moving_buf;

static void moving_init(moving_buf *m, size_t size)
{
    m->page = (size_t)sysconf(_SC_PAGESIZE);
    m->span = (size + m->page - 1) / m->page * m->page;
    char *region = mmap(NULL, 2 * m->span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(region != MAP_FAILED);
    m->data = mmap(region, m->span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                   -1, 0);
    assert_true(m->data == region);
    m->other = region + m->span;
}

/* Hides whole pages in [from, to) until the next moving_move. */
static void moving_hide(moving_buf *m, size_t from, size_t to)
{
    size_t first = (from + m->page - 1) / m->page * m->page;
    size_t last = to / m->page * m->page;
    if (last > first)
        assert_int_equal(mprotect(m->data + first, last - first, PROT_NONE), 0);
}

static void moving_move(moving_buf *m)
{
    assert_int_equal(mprotect(m->data, m->span, PROT_READ | PROT_WRITE), 0);
    char *old = m->data;
    m->data = mremap(old, m->span, m->span, MREMAP_MAYMOVE | MREMAP_FIXED, m->other);
    assert_true(m->data == m->other);
    /* keep the vacated half reserved so nothing else is mapped there */
    assert_true(mmap(old, m->span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                old);
    m->other = old;
}

static void moving_free(moving_buf *m)
{
    char *region = m->data < m->other ? m->data : m->other;
    munmap(region, 2 * m->span);
}

/* Delivers `total` bytes made by fill() in reads of `chunk`, hiding bytes
 * before `keep` that earlier calls were given. Returns the last status. */
typedef struct delivery {
    moving_buf buf;
    size_t total;
    size_t chunk;
    size_t keep; /* bytes at the start left readable (the header) */
} delivery;

static resp_status deliver_request(delivery *d, resp_request *s,
                                   void (*fill)(char *at, size_t from, size_t n))
{
    size_t have = 0;
    resp_status st = RESP_INCOMPLETE;
    while (have < d->total) {
        size_t n = d->total - have < d->chunk ? d->total - have : d->chunk;
        fill(d->buf.data + have, have, n);
        moving_hide(&d->buf, d->keep, have);
        have += n;
        st = resp_request_scan(s, d->buf.data, have);
        if (st != RESP_INCOMPLETE)
            break;
        moving_move(&d->buf);
    }
    assert_int_equal(mprotect(d->buf.data, d->buf.span, PROT_READ | PROT_WRITE), 0);
    return st;
}

#define BIG_BODY (8u << 20)
static const char big_header[] = "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$8388608\r\n";

static char big_byte(size_t i)
{
    return (char)(i * 2654435761u >> 13);
}

static void fill_big_set(char *at, size_t from, size_t n)
{
    const size_t hlen = sizeof(big_header) - 1;
    for (size_t i = from; i < from + n; i++) {
        if (i < hlen)
            *at++ = big_header[i];
        else if (i < hlen + BIG_BODY)
            *at++ = big_byte(i - hlen);
        else
            *at++ = i == hlen + BIG_BODY ? '\r' : '\n';
    }
}

/* An 8 MB value in 16 KB reads, the buffer moving between calls: scanned
 * with no pointer kept and no body byte read, so a 100 MB value costs the
 * same per read as a small one. */
static void test_request_big_bulk_moving_buffer(void **state)
{
    (void)state;
    const size_t hlen = sizeof(big_header) - 1;
    delivery d = {.total = hlen + BIG_BODY + 2, .chunk = 16 * 1024, .keep = 0};
    resp_request s;

    moving_init(&d.buf, d.total);
    resp_request_init(&s, NULL);
    assert_int_equal(deliver_request(&d, &s, fill_big_set), RESP_OK);
    assert_int_equal(s.req_len, d.total);
    assert_int_equal(s.argc, 3);
    assert_memory_equal(s.argv[1].ptr, "big", 3);
    assert_ptr_equal(s.argv[2].ptr, d.buf.data + hlen);
    assert_int_equal(s.argv[2].len, BIG_BODY);
    for (size_t i = 0; i < BIG_BODY; i += 4093)
        assert_int_equal(s.argv[2].ptr[i], big_byte(i));
    resp_request_free(&s);
    moving_free(&d.buf);
}

static void fill_inline_word(char *at, size_t from, size_t n)
{
    (void)from;
    memset(at, 'w', n);
}

static void fill_long_length(char *at, size_t from, size_t n)
{
    for (size_t i = from; i < from + n; i++)
        *at++ = i < 5 ? "*1\r\n$"[i] : '7';
}

/* Lines arriving slowly are searched once: old pages hidden, they still end
 * in the right error (the bulk header's first bytes stay readable: the fast
 * path rereads up to 20 of them, a bounded cost). */
static void test_request_slow_lines_searched_once(void **state)
{
    (void)state;
    resp_request s;
    delivery d = {.total = 64 * 1024 + 1, .chunk = 1000, .keep = 0};

    moving_init(&d.buf, d.total);
    resp_request_init(&s, NULL);
    assert_int_equal(deliver_request(&d, &s, fill_inline_word), RESP_ERROR);
    assert_string_equal(s.err, "ERR Protocol error: too big inline request");
    resp_request_free(&s);
    moving_free(&d.buf);

    d = (delivery){.total = 64 * 1024 + 6, .chunk = 1000, .keep = 4096};
    moving_init(&d.buf, d.total);
    resp_request_init(&s, NULL);
    assert_int_equal(deliver_request(&d, &s, fill_long_length), RESP_ERROR);
    assert_string_equal(s.err, "ERR Protocol error: too big bulk count string");
    resp_request_free(&s);
    moving_free(&d.buf);
}

/* ---- random pipelines, fed in random reads ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Appends one random request to in and its rendering to want. */
static void random_request(text *in, text *want)
{
    char value[300];
    int form = (int)(rng() % 8);

    if (form == 0) {
        int multibulk = rng() % 2;
        text_str(in, multibulk ? "*0\r\n" : "\r\n");
        text_str(want, multibulk ? "M\n" : "I\n");
        return;
    }
    if (form == 1) {
        /* inline: one quoted word with escapes for every awkward byte */
        size_t n = rng() % 40;
        text_str(in, "SET k \"");
        text_str(want, "I SET k ");
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)rng();
            value[i] = (char)c;
            if (c >= ' ' && c < 0x7f && c != '"' && c != '\\')
                text_add(in, (const char *)&c, 1);
            else
                text_printf(in, "\\x%02x", c);
        }
        text_str(in, rng() % 2 ? "\"\r\n" : "\"\n");
        text_arg(want, value, n);
        text_str(want, "\n");
        return;
    }
    size_t argc = 1 + rng() % 5;
    text_printf(in, "*%zu\r\n", argc);
    text_str(want, "M");
    for (size_t a = 0; a < argc; a++) {
        size_t n = rng() % (rng() % 4 ? 12 : sizeof(value));
        for (size_t i = 0; i < n; i++)
            value[i] = (char)rng();
        text_printf(in, "$%zu\r\n", n);
        text_add(in, value, n);
        text_str(in, "\r\n");
        text_str(want, " ");
        text_arg(want, value, n);
    }
    text_str(want, "\n");
}

static void test_request_random_pipelines(void **state)
{
    (void)state;
    for (int round = 0; round < 20; round++) {
        text in = {0}, want = {0};
        for (int i = 0; i < 200; i++)
            random_request(&in, &want);
        text_str(&want, "rest 0\n");

        size_t *cuts = malloc((in.len + 1) * sizeof(*cuts));
        size_t n = 0, at = 0;
        assert_non_null(cuts);
        while (at < in.len) {
            size_t step = 1 + rng() % (rng() % 3 ? 64 : 4096);
            at = at + step < in.len ? at + step : in.len;
            cuts[n++] = at;
        }
        assert_true(expect_stream("random pipeline", "in random reads", REQUESTS, NULL, in.ptr,
                                  in.len, cuts, n, want.ptr));
        assert_true(expect_stream("random pipeline", "whole", REQUESTS, NULL, in.ptr, in.len,
                                  &in.len, 1, want.ptr));
        free(cuts);
        free(in.ptr);
        free(want.ptr);
    }
}

/* ---- reply cases ---- */

static const stream_case reply_cases[] = {
    /* RESP2 */
    {"status", IN("+OK\r\n"), "R 5\nrest 0\n"},
    {"error", IN("-ERR unknown command 'x'\r\n"), "R 26\nrest 0\n"},
    {"integer", IN(":-123\r\n"), "R 7\nrest 0\n"},
    {"bulk", IN("$5\r\nhello\r\n"), "R 11\nrest 0\n"},
    {"empty bulk", IN("$0\r\n\r\n"), "R 6\nrest 0\n"},
    {"binary bulk", IN("$6\r\n\r\n\0\r\n\n\r\n"), "R 12\nrest 0\n"},
    {"null bulk", IN("$-1\r\n"), "R 5\nrest 0\n"},
    {"null array", IN("*-1\r\n"), "R 5\nrest 0\n"},
    {"empty array", IN("*0\r\n"), "R 4\nrest 0\n"},
    {"array", IN("*3\r\n$1\r\na\r\n:1\r\n$-1\r\n"), "R 20\nrest 0\n"},
    {"nested arrays", IN("*3\r\n*2\r\n:1\r\n:2\r\n*0\r\n*1\r\n*1\r\n+x\r\n"), "R 32\nrest 0\n"},
    {"array ending in nested empties", IN("*2\r\n*1\r\n*0\r\n*-1\r\n+next\r\n"),
     "R 17\nR 7\nrest 0\n"},
    {"pipeline", IN("+OK\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n"), "R 5\nR 4\nR 7\nR 8\nrest 0\n"},
    {"incomplete array", IN("*2\r\n+OK\r\n"), "rest 9\n"},
    {"incomplete bulk", IN("+OK\r\n$5\r\nhel"), "R 5\nrest 7\n"},

    /* RESP3 */
    {"null", IN("_\r\n"), "R 3\nrest 0\n"},
    {"double", IN(",3.14\r\n"), "R 7\nrest 0\n"},
    {"boolean", IN("#t\r\n#f\r\n"), "R 4\nR 4\nrest 0\n"},
    {"big number", IN("(3492890328409238509324850943850943825024385\r\n"), "R 46\nrest 0\n"},
    {"bulk error", IN("!21\r\nSYNTAX invalid syntax\r\n"), "R 28\nrest 0\n"},
    {"verbatim", IN("=15\r\ntxt:Some string\r\n"), "R 22\nrest 0\n"},
    {"map", IN("%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n"), "R 29\nrest 0\n"},
    {"empty map", IN("%0\r\n"), "R 4\nrest 0\n"},
    {"set", IN("~3\r\n+a\r\n+b\r\n+c\r\n"), "R 16\nrest 0\n"},
    {"push", IN(">3\r\n+message\r\n+ch\r\n$2\r\nhi\r\n"), "R 27\nrest 0\n"},
    {"attribute before a reply", IN("|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n"), "R 24\nrest 0\n"},
    {"attribute inside an array", IN("*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n"), "R 24\nrest 0\n"},
    {"map of arrays", IN("%1\r\n*2\r\n:1\r\n:2\r\n~1\r\n_\r\n"), "R 23\nrest 0\n"},

    /* malformed */
    {"unknown type", IN("?\r\n"), "E protocol error: unknown reply type byte 0x3f\n"},
    {"line without LF", IN("+OK\rX"), "E protocol error: line not terminated by CRLF\n"},
    {"bulk without CRLF", IN("$3\r\nabcXY"),
     "E protocol error: bulk string not terminated by CRLF\n"},
    {"bulk length not a number", IN("$abc\r\n"), "E protocol error: invalid bulk length\n"},
    {"bulk length -2", IN("$-2\r\n"), "E protocol error: invalid bulk length\n"},
    {"bulk length header without LF", IN("$1\rxa\r\n"), "E protocol error: invalid bulk length\n"},
    {"null verbatim", IN("=-1\r\n"), "E protocol error: invalid bulk length\n"},
    {"endless bulk length", IN("$123456789012345678901"),
     "E protocol error: invalid bulk length\n"},
    {"array length -2", IN("*-2\r\n"), "E protocol error: invalid aggregate length\n"},
    {"null map", IN("%-1\r\n"), "E protocol error: invalid aggregate length\n"},
    {"huge map", IN("%9223372036854775807\r\n"), "E protocol error: invalid aggregate length\n"},
    {"malformed null", IN("_x\r\n"), "E protocol error: malformed null\n"},
    {"malformed boolean", IN("#x\r\n"), "E protocol error: malformed boolean\n"},
    {"error inside an array", IN("*2\r\n+OK\r\n&\r\n"),
     "E protocol error: unknown reply type byte 0x26\n"},
};

static void test_reply_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(reply_cases) / sizeof(reply_cases[0]); i++) {
        const stream_case *c = &reply_cases[i];
        expect_all_ways(c->name, REPLIES, NULL, c->in, c->len, c->want);
    }
}

static void test_reply_nesting(void **state)
{
    (void)state;
    text in = {0};
    char want[64];

    for (int i = 0; i < RESP_MAX_DEPTH; i++)
        text_str(&in, "*1\r\n");
    text_str(&in, ":1\r\n");
    snprintf(want, sizeof(want), "R %zu\nrest 0\n", in.len);
    expect_all_ways("deepest nesting accepted", REPLIES, NULL, in.ptr, in.len, want);

    in.len = 0;
    for (int i = 0; i <= RESP_MAX_DEPTH; i++)
        text_str(&in, "*1\r\n");
    text_str(&in, ":1\r\n");
    expect_all_ways("one level too deep", REPLIES, NULL, in.ptr, in.len,
                    "E protocol error: reply nesting too deep\n");

    /* attributes take a level too */
    in.len = 0;
    for (int i = 0; i <= RESP_MAX_DEPTH; i++)
        text_str(&in, i % 2 ? "|0\r\n" : "%1\r\n+k\r\n");
    expect_all_ways("attributes too deep", REPLIES, NULL, in.ptr, in.len,
                    "E protocol error: reply nesting too deep\n");
    free(in.ptr);
}

/* A long status line and a big bulk reply arriving in small reads, on a
 * moving buffer with old pages hidden: each byte is looked at once. */
static resp_status deliver_reply(delivery *d, resp_reply *s,
                                 void (*fill)(char *at, size_t from, size_t n), size_t *reply_len)
{
    size_t have = 0;
    resp_status st = RESP_INCOMPLETE;
    while (have < d->total) {
        size_t n = d->total - have < d->chunk ? d->total - have : d->chunk;
        fill(d->buf.data + have, have, n);
        moving_hide(&d->buf, d->keep, have);
        have += n;
        st = resp_reply_scan(s, d->buf.data, have, reply_len);
        if (st != RESP_INCOMPLETE)
            break;
        moving_move(&d->buf);
    }
    assert_int_equal(mprotect(d->buf.data, d->buf.span, PROT_READ | PROT_WRITE), 0);
    return st;
}

#define LONG_LINE (1u << 20)

static void fill_long_status(char *at, size_t from, size_t n)
{
    for (size_t i = from; i < from + n; i++)
        *at++ = i == 0 ? '+' : i == LONG_LINE + 1 ? '\r' : i == LONG_LINE + 2 ? '\n' : 's';
}

static void fill_big_reply(char *at, size_t from, size_t n)
{
    static const char header[] = "*2\r\n:7\r\n$8388608\r\n";
    const size_t hlen = sizeof(header) - 1;
    for (size_t i = from; i < from + n; i++) {
        if (i < hlen)
            *at++ = header[i];
        else if (i < hlen + BIG_BODY)
            *at++ = big_byte(i);
        else
            *at++ = i == hlen + BIG_BODY ? '\r' : '\n';
    }
}

static void test_reply_big_moving_buffer(void **state)
{
    (void)state;
    resp_reply s;
    size_t reply_len = 0;
    delivery d = {.total = LONG_LINE + 3, .chunk = 16 * 1024, .keep = 4096};

    moving_init(&d.buf, d.total);
    resp_reply_init(&s);
    assert_int_equal(deliver_reply(&d, &s, fill_long_status, &reply_len), RESP_OK);
    assert_int_equal(reply_len, d.total);
    moving_free(&d.buf);

    d = (delivery){.total = 18 + BIG_BODY + 2, .chunk = 16 * 1024, .keep = 0};
    moving_init(&d.buf, d.total);
    resp_reply_init(&s);
    assert_int_equal(deliver_reply(&d, &s, fill_big_reply, &reply_len), RESP_OK);
    assert_int_equal(reply_len, d.total);
    moving_free(&d.buf);
}

static void test_reply_integer(void **state)
{
    (void)state;
    int64_t v = 0;

    assert_int_equal(resp_reply_integer(":123\r\n", 6, &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(resp_reply_integer(":0\r\n", 4, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(resp_reply_integer(":-42\r\n", 6, &v), 0);
    assert_int_equal(v, -42);
    assert_int_equal(resp_reply_integer(":9223372036854775807\r\n", 22, &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(resp_reply_integer(":-9223372036854775808\r\n", 23, &v), 0);
    assert_true(v == INT64_MIN);

    assert_int_equal(resp_reply_integer(":9223372036854775808\r\n", 22, &v), -1);
    assert_int_equal(resp_reply_integer("+123\r\n", 6, &v), -1);
    assert_int_equal(resp_reply_integer(":\r\n", 3, &v), -1);
    assert_int_equal(resp_reply_integer(":12a\r\n", 6, &v), -1);
    assert_int_equal(resp_reply_integer(":12\n", 4, &v), -1);
    assert_int_equal(resp_reply_integer(":1\r\n", 3, &v), -1);
    assert_int_equal(resp_reply_integer("$1\r\n1\r\n", 7, &v), -1);
}

/* Reading inside a whole reply: a SCAN reply, a pub/sub message. Each case
 * reads from offset `from` and expects the fields (or -1) and the offset
 * after them. */
typedef struct inside_case {
    const char *name;
    const char *reply;
    size_t from;
    int is_array;    /* 1: resp_reply_array_at, 0: resp_reply_bulk_at */
    int ok;          /* 0 or -1 */
    int64_t count;   /* array: element count */
    const char *str; /* bulk: its bytes */
    size_t next;     /* offset after what was read */
} inside_case;

static const inside_case inside_cases[] = {
    {"array header", "*2\r\n$1\r\n0\r\n*0\r\n", 0, 1, 0, 2, NULL, 4},
    {"empty array", "*0\r\n", 0, 1, 0, 0, NULL, 4},
    {"nested array further in", "*2\r\n$1\r\n0\r\n*3\r\n", 11, 1, 0, 3, NULL, 15},
    {"null array", "*-1\r\n", 0, 1, -1, 0, NULL, 0},
    {"not an array", "$1\r\nx\r\n", 0, 1, -1, 0, NULL, 0},
    {"array header cut short", "*2\r", 0, 1, -1, 0, NULL, 0},
    {"array count not a number", "*x\r\n", 0, 1, -1, 0, NULL, 0},
    {"bulk", "*2\r\n$7\r\nmessage\r\n$2\r\nch\r\n", 4, 0, 0, 0, "message", 17},
    {"empty bulk", "$0\r\n\r\n", 0, 0, 0, 0, "", 6},
    {"bulk with CR LF inside", "$4\r\na\r\nb\r\n", 0, 0, 0, 0, "a\r\nb", 10},
    {"null bulk", "$-1\r\n", 0, 0, -1, 0, NULL, 0},
    {"bulk body cut short", "$5\r\nab", 0, 0, -1, 0, NULL, 0},
    {"bulk without its CR LF", "$2\r\nab", 0, 0, -1, 0, NULL, 0},
    {"bulk body longer than said", "$2\r\nabc\r\n", 0, 0, -1, 0, NULL, 0},
    {"bulk length past the end", "$99999999999\r\nab\r\n", 0, 0, -1, 0, NULL, 0},
    {"offset at the end", "$1\r\nx\r\n", 7, 0, -1, 0, NULL, 0},
    /* RESP3: a map's entries count two elements; sets and pushes as arrays */
    {"map header", "%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n", 0, 1, 0, 4, NULL, 4},
    {"empty map", "%0\r\n", 0, 1, 0, 0, NULL, 4},
    {"set header", "~3\r\n", 0, 1, 0, 3, NULL, 4},
    {"push header", ">3\r\n$7\r\nmessage\r\n", 0, 1, 0, 3, NULL, 4},
    {"attribute is not an aggregate to read", "|1\r\n+a\r\n+b\r\n:1\r\n", 0, 1, -1, 0, NULL, 0},
    {"RESP3 null is not an array", "_\r\n", 0, 1, -1, 0, NULL, 0},
    {"verbatim string without its format", "=8\r\ntxt:a\r\nb\r\n", 0, 0, 0, 0, "a\r\nb", 14},
    {"verbatim string shorter than a format", "=2\r\ntx\r\n", 0, 0, -1, 0, NULL, 0},
    {"RESP3 null is not a bulk", "_\r\n", 0, 0, -1, 0, NULL, 0},
};

static void test_reply_inside(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(inside_cases) / sizeof(inside_cases[0]); i++) {
        const inside_case *c = &inside_cases[i];
        size_t len = strlen(c->reply), pos = c->from, n = 0;
        int64_t count = -7;
        const char *ptr = NULL;
        int rc = c->is_array ? resp_reply_array_at(c->reply, len, &pos, &count)
                             : resp_reply_bulk_at(c->reply, len, &pos, &ptr, &n);
        if (rc != c->ok)
            fail_msg("%s: returned %d, expected %d", c->name, rc, c->ok);
        if (rc < 0) {
            if (pos != c->from)
                fail_msg("%s: moved the offset on failure", c->name);
            continue;
        }
        if (pos != c->next)
            fail_msg("%s: offset %zu, expected %zu", c->name, pos, c->next);
        if (c->is_array && count != c->count)
            fail_msg("%s: count %lld, expected %lld", c->name, (long long)count,
                     (long long)c->count);
        if (!c->is_array && (n != strlen(c->str) || memcmp(ptr, c->str, n) != 0))
            fail_msg("%s: wrong bulk bytes", c->name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_cases),
        cmocka_unit_test(test_request_long_lines),
        cmocka_unit_test(test_request_results),
        cmocka_unit_test(test_request_many_args),
        cmocka_unit_test(test_request_big_bulk_moving_buffer),
        cmocka_unit_test(test_request_slow_lines_searched_once),
        cmocka_unit_test(test_request_random_pipelines),
        cmocka_unit_test(test_reply_cases),
        cmocka_unit_test(test_reply_nesting),
        cmocka_unit_test(test_reply_big_moving_buffer),
        cmocka_unit_test(test_reply_integer),
        cmocka_unit_test(test_reply_inside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
