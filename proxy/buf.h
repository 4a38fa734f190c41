/* A growable byte buffer with a read cursor: bytes are appended at the end
 * and consumed from the start; consumed space is reclaimed by compacting.
 * Out of memory is sticky, as in hiredis's reader: the append that fails
 * marks the buffer, every later append does nothing, and whoever finishes
 * the message checks buf_failed() once instead of after every append.
 * A big message moves from one connection's buffer to another's by handing
 * the storage over instead of copying it (buf_split, buf_offer,
 * buf_append_msg). */
#ifndef PROXY_BUF_H
#define PROXY_BUF_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* Bytes read from or written to a socket per call when nothing larger is
 * expected (as Redis's PROTO_IOBUF_LEN). */
#define BUF_IO_CHUNK (16 * 1024)
/* An empty buffer larger than this is freed when its connection goes idle,
 * so one burst (a big value, a deep pipeline) does not pin memory. */
#define BUF_KEEP_IDLE (64 * 1024)
/* A message (one request or one reply) of at least this many bytes is
 * handed over between buffers rather than copied: a 100 MB value is then
 * held once, not twice, and no second buffer's pages are faulted in (page
 * faults were most of the proxy's CPU on big values). Below it the copy is
 * cheaper than the split, which copies the bytes that follow the message,
 * and the hot path of small commands sees one comparison. */
#define BUF_HANDOFF_MIN (1024 * 1024)

typedef struct buf {
    char *data;
    size_t start; /* first unconsumed byte */
    size_t end;   /* one past the last byte */
    size_t cap;
    int err; /* an append failed since the buffer was last emptied */
} buf;

static inline size_t buf_len(const buf *b)
{
    return b->end - b->start;
}

static inline char *buf_head(const buf *b)
{
    return b->data + b->start;
}

/* Whether an append failed since the buffer was last emptied (buf_reset,
 * buf_free, or buf_consume of its last byte): its bytes are then a message
 * cut short, to be thrown away. */
__attribute__((warn_unused_result)) static inline int buf_failed(const buf *b)
{
    return b->err;
}

/* Empties the buffer, keeping its storage, and clears a failure. */
static inline void buf_reset(buf *b)
{
    b->start = b->end = 0;
    b->err = 0;
}

/* For a queue of whole messages (a connection's output): an append that
 * failed added nothing, so what was queued before it is still good. Once
 * the failure is handled, this lets the queue take the next message. */
static inline void buf_forget_failure(buf *b)
{
    b->err = 0;
}

/* Makes room for at least n more bytes at the end (compacting first).
 * Returns 0, or -1 when out of memory; a reservation that fails is not an
 * append and does not mark the buffer failed. */
__attribute__((warn_unused_result)) int buf_reserve(buf *b, size_t n);

/* buf_append's slow half: a failed buffer, or one that must grow. */
int buf_append_slow(buf *b, const void *bytes, size_t n);

/* Appends n bytes. 0, or -1 when the buffer has failed (now or before).
 * Inline: replies and requests pass through it on every request. */
static inline int buf_append(buf *b, const void *bytes, size_t n)
{
    if (b->err || b->cap - b->end < n)
        return buf_append_slow(b, bytes, n);
    if (n)
        memcpy(b->data + b->end, bytes, n);
    b->end += n;
    return 0;
}

/* Appends printf-formatted text. 0 or -1, as buf_append. */
__attribute__((format(printf, 2, 3))) int buf_printf(buf *b, const char *fmt, ...);

/* Drops n bytes from the start; a buffer emptied so forgets a failure. */
void buf_consume(buf *b, size_t n);

/* Frees the storage when the buffer is empty and larger than keep bytes. */
void buf_shrink_if_empty(buf *b, size_t keep);

/* How buf_write_fd ended. */
typedef enum buf_write_result {
    BUF_WRITE_DONE,    /* b is empty */
    BUF_WRITE_BLOCKED, /* the socket is full: wait for it to take more */
    BUF_WRITE_FAILED,  /* write failed (errno), or returned 0 (errno 0) */
} buf_write_result;

/* Writes b's bytes to fd until b is empty or fd would block, consuming what
 * was written; *written gets the byte count (also on failure). Inline: it
 * is the last step of every request's reply. */
static inline buf_write_result buf_write_fd(buf *b, int fd, size_t *written)
{
    *written = 0;
    while (buf_len(b) > 0) {
        ssize_t n = write(fd, buf_head(b), buf_len(b));
        if (n > 0) {
            buf_consume(b, (size_t)n);
            *written += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return BUF_WRITE_BLOCKED;
        if (n == 0)
            errno = 0;
        return BUF_WRITE_FAILED;
    }
    return BUF_WRITE_DONE;
}

void buf_free(buf *b);

/* Appends the RESP bulk string $len\r\n...\r\n. 0 or -1, as buf_append. */
int buf_append_bulk(buf *b, const char *s, size_t len);

/* Appends a RESP header line: prefix char, decimal n, CRLF (e.g. "*3\r\n").
 * 0 or -1, as buf_append. */
int buf_append_header(buf *b, char prefix, int64_t n);

/* dst, which must be empty, takes src's bytes (and failure) by swapping
 * their storage: no byte is copied. src is left empty (with dst's old
 * storage) and not failed. */
void buf_take(buf *dst, buf *src);

/* Moves the first n bytes of src (n <= buf_len(src)) into msg, which must
 * be empty, without copying them: msg gets src's storage trimmed to those
 * n bytes, and src a fresh buffer with the bytes that followed them (a
 * copy). 0, or -1 when nothing moved: the bytes that follow outnumber the
 * message (copying the message is then cheaper), or memory ran out. */
__attribute__((warn_unused_result)) int buf_split(buf *src, size_t n, buf *msg);

/* ---- handing a message over through callbacks ----
 * A connection passes a finished message on as a pointer and a length
 * (fragment_done_fn, router_dispatch) through code that knows nothing of
 * its buffer. To let the buffer that keeps the message take its storage,
 * the source splits the message into a buffer of its own (buf_split),
 * offers it for the duration of the callback, and frees what was not taken
 * afterwards:
 *
 *     buf *outer = buf_offer(&msg);
 *     callback(buf_head(&msg), buf_len(&msg));
 *     buf_offer(outer);
 *     buf_free(&msg);
 *
 * Inside, buf_append_msg() of exactly those bytes into an empty buffer takes
 * them (buf_take). The offer is one process-wide pointer (the proxy is
 * single-threaded) owned by this module; offers nest. After a take the
 * bytes have not moved, but belong to the taker: code still holding the
 * pointer must not read it once the taker's buffer may have changed. */

/* Makes msg (or NULL: nothing) the offered message; returns the offer it
 * replaces, to restore when the callback returns. */
buf *buf_offer(buf *msg);

/* buf_append_msg's slow half, for n >= BUF_HANDOFF_MIN: takes the offered
 * message into b when bytes and n are exactly it and b is empty and not
 * failed (the offer is then used up), else appends a copy. 0 or -1, as
 * buf_append. */
int buf_append_big(buf *b, const void *bytes, size_t n);

/* Appends n bytes as buf_append does, or takes them without a copy when
 * they are a big offered message and b is empty. 0 or -1, as buf_append.
 * Inline so that a small message costs one comparison: both calls take
 * the same arguments. */
static inline int buf_append_msg(buf *b, const void *bytes, size_t n)
{
    if (n < BUF_HANDOFF_MIN)
        return buf_append(b, bytes, n);
    return buf_append_big(b, bytes, n);
}

#endif
