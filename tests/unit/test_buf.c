/* Specification of the buffer hand-off (proxy/buf.c): a big message moves
 * from one buffer to another without its bytes being copied (buf_split,
 * buf_take, buf_offer, buf_append_msg), and everything that does not fit
 * the hand-off is copied exactly as buf_append copies it. "Not copied" is
 * checked by address: the bytes the taker holds are those the source held.
 * Out of memory is sticky: after one append fails, every append fails and
 * adds nothing until the buffer is emptied. */
#include <errno.h>
#include <fcntl.h>
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

#include "proxy/buf.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MIB          (1024 * 1024)

/* Fills b with consumed bytes, then the message, then the bytes after it:
 * pattern bytes that differ by position, so a shifted copy shows. */
static void fill(buf *b, size_t consumed, size_t len)
{
    memset(b, 0, sizeof(*b));
    assert_int_equal(buf_reserve(b, consumed + len), 0);
    for (size_t i = 0; i < consumed + len; i++) {
        b->data[b->end++] = (char)('a' + (i * 7 + i / 251) % 26);
    }
    buf_consume(b, consumed);
}

static int pattern_at(const char *bytes, size_t offset, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t pos = offset + i;
        if (bytes[i] != (char)('a' + (pos * 7 + pos / 251) % 26)) {
            return 0;
        }
    }
    return 1;
}

typedef struct split_case {
    const char *name;
    size_t consumed; /* bytes consumed before the message (src->start) */
    size_t msg;      /* the message: the first msg bytes of src */
    size_t rest;     /* bytes after it */
    int moves;       /* 1: split, 0: refused (src unchanged) */
} split_case;

static const split_case split_cases[] = {
    {"message alone", 0, 3 * MIB, 0, 1},
    {"message then a read's tail", 0, 2 * MIB, 5000, 1},
    {"after consumed requests", 70000, 2 * MIB, 17, 1},
    {"rest as long as the message", 0, 4096, 4096, 1},
    {"rest longer than the message: a copy is cheaper", 0, 4096, 4097, 0},
    {"tiny message, no rest", 3, 1, 0, 1},
};

/* buf_split: the message keeps its address, the rest moves to a fresh
 * buffer that src keeps. */
static void test_split(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(split_cases); i++) {
        const split_case *t = &split_cases[i];
        buf src, msg = {0};
        fill(&src, t->consumed, t->msg + t->rest);
        const char *head = buf_head(&src);
        char *storage = src.data;
        int rc = buf_split(&src, t->msg, &msg);
        if (!t->moves) {
            assert_int_equal(rc, -1);
            assert_ptr_equal(buf_head(&src), head);
            assert_int_equal(buf_len(&src), t->msg + t->rest);
            assert_null(msg.data);
            buf_free(&src);
            continue;
        }
        if (rc != 0) {
            fail_msg("%s: buf_split refused", t->name);
        }
        assert_ptr_equal(msg.data, storage);
        assert_ptr_equal(buf_head(&msg), head);
        assert_int_equal(buf_len(&msg), t->msg);
        assert_true(pattern_at(buf_head(&msg), t->consumed, t->msg));
        assert_int_equal(buf_len(&src), t->rest);
        if (t->rest) {
            assert_ptr_not_equal(src.data, storage);
            assert_true(pattern_at(buf_head(&src), t->consumed + t->msg, t->rest));
        } else {
            assert_null(src.data);
        }
        /* Both go on as ordinary buffers. */
        assert_int_equal(buf_append(&src, "+OK\r\n", 5), 0);
        assert_int_equal(buf_append(&msg, "tail", 4), 0);
        assert_memory_equal(buf_head(&msg) + t->msg, "tail", 4);
        buf_free(&src);
        buf_free(&msg);
    }
}

/* buf_take: dst (empty, with or without storage) gets src's bytes in place. */
static void test_take(void **state)
{
    (void)state;
    for (int dst_has_storage = 0; dst_has_storage <= 1; dst_has_storage++) {
        buf src, dst = {0};
        fill(&src, 10, 1000);
        if (dst_has_storage) {
            assert_int_equal(buf_append(&dst, "old", 3), 0);
            buf_consume(&dst, 3);
        }
        const char *head = buf_head(&src);
        buf_take(&dst, &src);
        assert_ptr_equal(buf_head(&dst), head);
        assert_int_equal(buf_len(&dst), 1000);
        assert_int_equal(buf_len(&src), 0);
        assert_int_equal(buf_append(&src, "x", 1), 0);
        assert_memory_equal(buf_head(&src), "x", 1);
        buf_free(&src);
        buf_free(&dst);
    }
}

typedef struct offer_case {
    const char *name;
    size_t msg;         /* bytes of the offered message */
    size_t append_from; /* offset into the message of the bytes appended */
    size_t append_len;  /* 0: the whole message from append_from */
    int dst_len;        /* bytes already in dst */
    int offered;        /* 0: nothing offered */
    int taken;          /* expected: 1 taken in place, 0 copied */
} offer_case;

static const offer_case offer_cases[] = {
    {"the offered big message into an empty buffer", 2 * MIB, 0, 0, 0, 1, 1},
    {"exactly BUF_HANDOFF_MIN", BUF_HANDOFF_MIN, 0, 0, 0, 1, 1},
    {"one byte under BUF_HANDOFF_MIN: copied", BUF_HANDOFF_MIN - 1, 0, 0, 0, 1, 0},
    {"destination not empty: copied after its bytes", 2 * MIB, 0, 0, 7, 1, 0},
    {"other bytes of the message: copied", 2 * MIB + 1, 1, 2 * MIB, 0, 1, 0},
    {"a prefix of the message: copied", 2 * MIB, 0, 2 * MIB - 1, 0, 1, 0},
    {"nothing offered: copied", 2 * MIB, 0, 0, 0, 0, 0},
};

/* buf_append_msg: takes the offered message only when it is exactly the
 * bytes appended, big, and the destination empty; else buf_append. */
static void test_append_msg(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(offer_cases); i++) {
        const offer_case *t = &offer_cases[i];
        buf msg, dst = {0};
        fill(&msg, 0, t->msg);
        for (int k = 0; k < t->dst_len; k++) {
            assert_int_equal(buf_append(&dst, "d", 1), 0);
        }
        const char *bytes = buf_head(&msg) + t->append_from;
        size_t n = t->append_len ? t->append_len : t->msg - t->append_from;
        buf *outer = buf_offer(t->offered ? &msg : NULL);
        assert_int_equal(buf_append_msg(&dst, bytes, n), 0);
        /* Restoring returns the offer still standing: none once taken. */
        buf *left = buf_offer(outer);
        assert_ptr_equal(left, t->offered && !t->taken ? &msg : NULL);
        if (t->taken != (buf_head(&dst) == bytes)) {
            fail_msg("%s: %s", t->name, t->taken ? "copied, not taken" : "taken, not copied");
        }
        assert_int_equal(buf_len(&dst), (size_t)t->dst_len + n);
        assert_true(pattern_at(buf_head(&dst) + t->dst_len, t->append_from, n));
        /* The source's bytes are intact when copied; empty when taken. */
        assert_int_equal(buf_len(&msg), t->taken ? 0 : t->msg);
        buf_free(&msg);
        buf_free(&dst);
    }
}

/* An offer is used up by its take; offers nest and are restored. */
static void test_offer_used_once_and_nested(void **state)
{
    (void)state;
    buf outer_msg, inner_msg, a = {0}, b = {0}, c = {0};
    fill(&outer_msg, 0, 2 * MIB);
    fill(&inner_msg, 0, 2 * MIB);
    const char *outer_bytes = buf_head(&outer_msg), *inner_bytes = buf_head(&inner_msg);

    buf *none = buf_offer(&outer_msg);
    assert_null(none);
    /* A nested offer hides the outer one while it lasts. */
    buf *prev = buf_offer(&inner_msg);
    assert_ptr_equal(prev, &outer_msg);
    assert_int_equal(buf_append_msg(&a, outer_bytes, 2 * MIB), 0);
    assert_ptr_not_equal(buf_head(&a), outer_bytes); /* copied */
    assert_int_equal(buf_append_msg(&b, inner_bytes, 2 * MIB), 0);
    assert_ptr_equal(buf_head(&b), inner_bytes); /* taken */
    assert_ptr_equal(buf_offer(prev), NULL);     /* the inner offer was used up */
    /* The outer offer is back, and taken once only. */
    assert_int_equal(buf_append_msg(&c, outer_bytes, 2 * MIB), 0);
    assert_ptr_equal(buf_head(&c), outer_bytes);
    buf d = {0};
    assert_int_equal(buf_append_msg(&d, outer_bytes, 2 * MIB), 0);
    assert_ptr_not_equal(buf_head(&d), outer_bytes);
    assert_memory_equal(buf_head(&d), outer_bytes, 2 * MIB);
    assert_null(buf_offer(NULL));

    buf_free(&outer_msg);
    buf_free(&inner_msg);
    buf_free(&a);
    buf_free(&b);
    buf_free(&c);
    buf_free(&d);
}

/* buf_write_fd over a non-blocking pipe: everything when it fits, what
 * fits when it does not (BLOCKED, the rest kept), EPIPE once the reader is
 * gone. */
static void test_write_fd(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[1], F_SETFL, O_NONBLOCK), 0);
    buf b = {0};
    assert_int_equal(buf_append(&b, "hello", 5), 0);
    size_t written;
    assert_int_equal(buf_write_fd(&b, fds[1], &written), BUF_WRITE_DONE);
    assert_int_equal(written, 5);
    assert_int_equal(buf_len(&b), 0);
    char got[5];
    assert_int_equal(read(fds[0], got, 5), 5);
    assert_memory_equal(got, "hello", 5);

    size_t big = 4 * 1024 * 1024; /* more than a pipe holds */
    char *bytes = calloc(1, big);
    assert_non_null(bytes);
    assert_int_equal(buf_append(&b, bytes, big), 0);
    assert_int_equal(buf_write_fd(&b, fds[1], &written), BUF_WRITE_BLOCKED);
    assert_true(written > 0 && written < big);
    assert_int_equal(buf_len(&b), big - written);

    close(fds[0]);
    assert_int_equal(buf_write_fd(&b, fds[1], &written), BUF_WRITE_FAILED);
    assert_int_equal(errno, EPIPE);
    assert_int_equal(written, 0);
    close(fds[1]);
    free(bytes);
    buf_free(&b);
}

/* More than a buffer can ever hold: the append fails before any allocation
 * or read of the bytes, as it would when malloc fails. (volatile: the
 * compiler must not see the inline memcpy's length.) */
static volatile size_t impossible_len = SIZE_MAX / 2 + 2;
#define IMPOSSIBLE_LEN impossible_len

/* One way to append after the failure; each must fail and add nothing. */
typedef struct append_case {
    const char *name;
    int (*append)(buf *b);
} append_case;

static int append_bytes(buf *b)
{
    return buf_append(b, "abc", 3);
}
static int append_bulk(buf *b)
{
    return buf_append_bulk(b, "abc", 3);
}
static int append_header(buf *b)
{
    return buf_append_header(b, '*', 3);
}
static int append_printf(buf *b)
{
    return buf_printf(b, "%d", 3);
}
static int append_msg(buf *b)
{
    return buf_append_msg(b, "abc", 3);
}

static const append_case append_cases[] = {
    {"buf_append", append_bytes},         {"buf_append_bulk", append_bulk},
    {"buf_append_header", append_header}, {"buf_printf", append_printf},
    {"buf_append_msg", append_msg},
};

static void test_failure_is_sticky(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(append_cases); i++) {
        buf b = {0};
        assert_int_equal(buf_append(&b, "head", 4), 0);
        assert_false(buf_failed(&b));
        assert_int_equal(buf_append(&b, "x", IMPOSSIBLE_LEN), -1);
        assert_true(buf_failed(&b));
        if (append_cases[i].append(&b) != -1 || buf_len(&b) != 4 || !buf_failed(&b))
            fail_msg("%s after a failed append: not a failing no-op", append_cases[i].name);
        buf_free(&b);
    }
}

static void test_failure_ends_when_emptied(void **state)
{
    (void)state;
    buf b = {0};
    /* buf_reset */
    assert_int_equal(buf_append(&b, "x", IMPOSSIBLE_LEN), -1);
    buf_reset(&b);
    assert_false(buf_failed(&b));
    assert_int_equal(buf_append(&b, "ab", 2), 0);
    /* buf_consume of the last byte (a connection's buffer drained) */
    assert_int_equal(buf_append(&b, "x", IMPOSSIBLE_LEN), -1);
    buf_consume(&b, 1);
    assert_true(buf_failed(&b));
    buf_consume(&b, 1);
    assert_false(buf_failed(&b));
    /* buf_free */
    assert_int_equal(buf_append(&b, "x", IMPOSSIBLE_LEN), -1);
    buf_free(&b);
    assert_false(buf_failed(&b));
    /* a queue of whole messages goes on after a failed append */
    assert_int_equal(buf_append(&b, "ab", 2), 0);
    assert_int_equal(buf_append(&b, "x", IMPOSSIBLE_LEN), -1);
    buf_forget_failure(&b);
    assert_int_equal(buf_append(&b, "c", 1), 0);
    assert_memory_equal(buf_head(&b), "abc", 3);
    buf_free(&b);
    /* a reservation that fails is not an append */
    assert_int_equal(buf_reserve(&b, IMPOSSIBLE_LEN), -1);
    assert_false(buf_failed(&b));
    assert_int_equal(buf_append(&b, "ab", 2), 0);
    assert_memory_equal(buf_head(&b), "ab", 2);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_take),
        cmocka_unit_test(test_append_msg),
        cmocka_unit_test(test_offer_used_once_and_nested),
        cmocka_unit_test(test_write_fd),
        cmocka_unit_test(test_failure_is_sticky),
        cmocka_unit_test(test_failure_ends_when_emptied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
