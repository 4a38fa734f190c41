/* Growable byte buffer. */
#include "proxy/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int buf_reserve(buf *b, size_t n)
{
    if (b->cap - b->end >= n)
        return 0;
    size_t used = b->end - b->start;
    /* Compact when that alone makes room and the move is cheap relative to
     * the space regained; otherwise grow geometrically. */
    if (b->start > 0 && b->cap - used >= n && used <= b->start) {
        memmove(b->data, b->data + b->start, used);
        b->start = 0;
        b->end = used;
        return 0;
    }
    size_t want = used + n;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < want) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    if (b->start > 0) {
        char *data = malloc(cap);
        if (!data)
            return -1;
        if (used)
            memcpy(data, b->data + b->start, used);
        free(b->data);
        b->data = data;
    } else {
        char *data = realloc(b->data, cap);
        if (!data)
            return -1;
        b->data = data;
    }
    b->cap = cap;
    b->start = 0;
    b->end = used;
    return 0;
}

/* Reserves n bytes for an append: -1, marking the buffer failed, when out
 * of memory or when it failed before. */
static int reserve_for_append(buf *b, size_t n)
{
    if (b->err)
        return -1;
    if (buf_reserve(b, n) < 0) {
        b->err = 1;
        return -1;
    }
    return 0;
}

int buf_append_slow(buf *b, const void *bytes, size_t n)
{
    if (reserve_for_append(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->data + b->end, bytes, n);
    b->end += n;
    return 0;
}

int buf_printf(buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->err = 1;
        return -1;
    }
    if ((size_t)n < sizeof(small))
        return buf_append(b, small, (size_t)n);
    if (reserve_for_append(b, (size_t)n + 1) < 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->end, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->end += (size_t)n;
    return 0;
}

void buf_consume(buf *b, size_t n)
{
    b->start += n;
    if (b->start >= b->end)
        buf_reset(b);
}

void buf_shrink_if_empty(buf *b, size_t keep)
{
    if (b->start == b->end && b->cap > keep) {
        free(b->data);
        b->data = NULL;
        b->cap = b->start = b->end = 0;
    }
}

void buf_free(buf *b)
{
    free(b->data);
    b->data = NULL;
    b->cap = b->start = b->end = 0;
    b->err = 0;
}

void buf_take(buf *dst, buf *src)
{
    buf old = *dst;
    *dst = *src;
    *src = old;
    buf_reset(src);
}

int buf_split(buf *src, size_t n, buf *msg)
{
    size_t rest = buf_len(src) - n;
    if (rest > n)
        return -1;
    buf tail = {0};
    if (rest && buf_append(&tail, buf_head(src) + n, rest) < 0)
        return -1;
    *msg = *src;
    msg->end = msg->start + n;
    *src = tail;
    return 0;
}

/* The message being offered (see buf_offer), NULL when none. */
static buf *offered;

buf *buf_offer(buf *msg)
{
    buf *outer = offered;
    offered = msg;
    return outer;
}

int buf_append_big(buf *b, const void *bytes, size_t n)
{
    if (!offered || bytes != buf_head(offered) || n != buf_len(offered) || buf_len(b) != 0 ||
        b->err)
        return buf_append(b, bytes, n);
    buf_take(b, offered);
    offered = NULL;
    return 0;
}

/* Writes the decimal digits of v ending at *end (exclusive); returns the start. */
static char *format_int(char *end, int64_t v)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    char *p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return p;
}

int buf_append_header(buf *b, char prefix, int64_t n)
{
    char tmp[32];
    char *end = tmp + sizeof(tmp);
    end[-2] = '\r';
    end[-1] = '\n';
    char *p = format_int(end - 2, n);
    *--p = prefix;
    return buf_append(b, p, (size_t)(end - p));
}

int buf_append_bulk(buf *b, const char *s, size_t len)
{
    if (reserve_for_append(b, len + 24) < 0)
        return -1;
    if (buf_append_header(b, '$', (int64_t)len) < 0)
        return -1;
    memcpy(b->data + b->end, s, len);
    b->end += len;
    b->data[b->end++] = '\r';
    b->data[b->end++] = '\n';
    return 0;
}
