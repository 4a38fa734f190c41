/* RESP scanners for the hot path: find request arguments and reply
 * boundaries in place, without building objects or copying multibulk data.
 * Both are incremental: they keep their progress in a struct owned by the
 * connection, so a message split at any byte scans the same. */
#ifndef PROXY_RESP_H
#define PROXY_RESP_H

#include <stddef.h>
#include <stdint.h>

/* Deepest reply nesting accepted from a backend (arrays in arrays). Redis
 * itself never sends more than a few levels except from scripts. */
#define RESP_MAX_DEPTH 128
/* The first byte of a TLS handshake record (a ClientHello): a request that
 * starts with it is a TLS client on a plain-text port, refused at once. */
#define RESP_TLS_HANDSHAKE_BYTE 0x16

typedef enum resp_status {
    RESP_OK = 0,     /* one whole message scanned */
    RESP_INCOMPLETE, /* need more bytes: call again with the same start and more length */
    RESP_ERROR,      /* protocol error: message in scanner->err; close the peer */
} resp_status;

/* One argument of a scanned request. ptr points into the buffer passed to the
 * scanner (multibulk) or into the scanner's own scratch space (inline
 * commands, which may contain quotes and escapes); valid until the next scan
 * call or until the buffer moves. */
typedef struct resp_arg {
    const char *ptr;
    size_t len;
} resp_arg;

/* Limits a request is checked against before its bytes are buffered. */
typedef struct resp_limits {
    int64_t max_bulk_len;   /* largest bulk string ($N), bytes */
    int64_t max_args;       /* largest multibulk count (*N) */
    int64_t max_inline_len; /* longest inline line without its newline, bytes */
} resp_limits;

/* Progress of one client's request stream. Zero-initialise with
 * resp_request_init; free with resp_request_free. */
typedef struct resp_request {
    resp_limits limits;
    /* progress inside the current request (private to resp.c) */
    int state;
    size_t pos;         /* bytes of the current request consumed so far */
    size_t scan;        /* where the search for a line end resumes, so no byte is searched twice */
    int64_t argc_total; /* multibulk count announced */
    int64_t bulk_len;   /* length of the bulk being read */
    size_t *arg_off;    /* offset of each argument from the request start (scratch when inline) */
    size_t arg_cap;     /* entries in arg_off and argv; grown geometrically and kept */
    /* results, valid after RESP_OK */
    size_t argc;    /* number of arguments (0: empty line or *0, skip it) */
    resp_arg *argv; /* argc arguments */
    size_t req_len; /* bytes the request occupies in the buffer */
    int is_inline;  /* 1 when it came as an inline command line */
    /* inline scratch: unescaped argument bytes */
    char *scratch;
    size_t scratch_cap;
    /* after RESP_ERROR: a Redis-compatible error text without the leading
     * '-' and the CRLF, e.g. "ERR Protocol error: invalid bulk length" */
    char err[128];
} resp_request;

/* limits NULL means Redis 7.0's own: 512 MB bulks, INT_MAX arguments, 64 KiB
 * inline lines. Allocates nothing until the first request needs it. */
void resp_request_init(resp_request *s, const resp_limits *limits);
void resp_request_free(resp_request *s);

/* Gives back argument arrays and scratch grown by an unusually large
 * request, so an idle client holds only a small footprint. Does nothing while
 * a request is half scanned. */
void resp_request_shrink(resp_request *s);

/* Scans the request that starts at buf[0], with len bytes available. After
 * RESP_OK the results above are set and the caller consumes req_len bytes;
 * the next call starts a new request. After RESP_INCOMPLETE call again with
 * the same request start (the buffer may have moved) and more bytes. A limit
 * is reported as RESP_ERROR as soon as the header that announces it is seen. */
resp_status resp_request_scan(resp_request *s, const char *buf, size_t len);

/* Progress of one backend's reply stream. */
typedef struct resp_reply {
    size_t pos;                        /* bytes of the current reply consumed */
    size_t scan;                       /* where the search for a line end resumes */
    int depth;                         /* open aggregates; -1 after an error */
    int64_t remaining[RESP_MAX_DEPTH]; /* elements still expected per level */
    int64_t bulk_left;                 /* bulk body and CRLF bytes due from pos, -1 if none */
    char err[128];
} resp_reply;

void resp_reply_init(resp_reply *s);

/* Finds the end of the reply that starts at buf[0]. RESP_OK sets *reply_len
 * and resets the scanner for the next reply. RESP2 and RESP3 types. */
resp_status resp_reply_scan(resp_reply *s, const char *buf, size_t len, size_t *reply_len);

/* Parses a whole integer reply ":123\r\n" into *out. Returns 0, or -1 when
 * the reply is not an integer reply. */
__attribute__((warn_unused_result)) int resp_reply_integer(const char *reply, size_t len,
                                                           int64_t *out);

/* Reading inside a whole reply the proxy already holds (found by
 * resp_reply_scan), for the few replies it rewrites or merges. */

/* Reads the aggregate header at r[*pos] (r holds len bytes): an array, or
 * RESP3's set, push or map ('*', '~', '>', '%'). Its element count goes in
 * *count (a map's entries count two elements each: key and value), and
 * *pos moves past it. 0, or -1 when no such header (or a null array) is
 * there. */
__attribute__((warn_unused_result)) int resp_reply_array_at(const char *r, size_t len, size_t *pos,
                                                            int64_t *count);

/* Reads the bulk string at r[*pos] (r holds len bytes), or RESP3's
 * verbatim string ('=', its "txt:" format prefix left out): its bytes in
 * *ptr and *n, and moves *pos past it. 0, or -1 when no whole bulk string
 * (body and CR LF), or a null bulk, is there. */
__attribute__((warn_unused_result)) int resp_reply_bulk_at(const char *r, size_t len, size_t *pos,
                                                           const char **ptr, size_t *n);

/* A RESP3 verbatim string's body starts with its format and a colon. */
#define RESP_VERBATIM_PREFIX_LEN 4

/* A whole PING request, for the proxy's own round trips to a shard. */
#define RESP_PING_REQUEST     "*1\r\n$4\r\nPING\r\n"
#define RESP_PING_REQUEST_LEN (sizeof(RESP_PING_REQUEST) - 1)

#endif
