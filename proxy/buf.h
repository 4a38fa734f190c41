/* A growable byte buffer with a read cursor: bytes are appended at the end
 * and consumed from the start; consumed space is reclaimed by compacting. */
#ifndef PROXY_BUF_H
#define PROXY_BUF_H

#include <stddef.h>
#include <stdint.h>

/* Bytes read from or written to a socket per call when nothing larger is
 * expected (as Redis's PROTO_IOBUF_LEN). */
#define BUF_IO_CHUNK (16 * 1024)
/* An empty buffer larger than this is freed when its connection goes idle,
 * so one burst (a big value, a deep pipeline) does not pin memory. */
#define BUF_KEEP_IDLE (64 * 1024)

typedef struct buf {
    char *data;
    size_t start; /* first unconsumed byte */
    size_t end;   /* one past the last byte */
    size_t cap;
} buf;

static inline size_t buf_len(const buf *b)
{
    return b->end - b->start;
}

static inline char *buf_head(const buf *b)
{
    return b->data + b->start;
}

/* Makes room for at least n more bytes at the end (compacting first).
 * Returns 0, or -1 when out of memory. */
__attribute__((warn_unused_result)) int buf_reserve(buf *b, size_t n);

/* Appends n bytes. 0 or -1 (out of memory). */
__attribute__((warn_unused_result)) int buf_append(buf *b, const void *bytes, size_t n);

/* Appends printf-formatted text. 0 or -1. */
__attribute__((warn_unused_result, format(printf, 2, 3))) int buf_printf(buf *b, const char *fmt,
                                                                         ...);

/* Drops n bytes from the start. */
void buf_consume(buf *b, size_t n);

/* Frees the storage when the buffer is empty and larger than keep bytes. */
void buf_shrink_if_empty(buf *b, size_t keep);

void buf_free(buf *b);

/* Appends the RESP bulk string $len\r\n...\r\n. 0 or -1. */
__attribute__((warn_unused_result)) int buf_append_bulk(buf *b, const char *s, size_t len);

/* Appends a RESP header line: prefix char, decimal n, CRLF (e.g. "*3\r\n"). */
__attribute__((warn_unused_result)) int buf_append_header(buf *b, char prefix, int64_t n);

#endif
