/* RESP scanners: the arguments of a client request and the end of a backend
 * reply, found in place without copying multibulk data or building objects.
 *
 * Request framing follows Redis 7.0 (processMultibulkBuffer and
 * processInlineBuffer) byte for byte, including what Redis does not check
 * (the byte after a header's '\r', the two bytes after a bulk body). The proxy
 * forwards raw bytes, so it must cut the stream exactly where the shard will:
 * any disagreement would let one request smuggle another past the router. */
#include "proxy/resp.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A "*N" or "$L" line with no '\r' after this many bytes is refused, as
 * Redis's PROTO_INLINE_MAX_SIZE refuses it: no client needs more, and it
 * bounds what a peer can make us buffer before the body limits apply. */
#define RESP_HEADER_LINE_MAX (64 * 1024)

/* Defaults when resp_request_init gets no limits: Redis 7.0's
 * proto-max-bulk-len, its multibulk count cap, and PROTO_INLINE_MAX_SIZE. */
#define RESP_DEFAULT_MAX_BULK_LEN   (512LL * 1024 * 1024)
#define RESP_DEFAULT_MAX_ARGS       ((int64_t)INT_MAX)
#define RESP_DEFAULT_MAX_INLINE_LEN (64 * 1024)

/* First size of the argument arrays: most commands fit without a regrowth. */
#define RESP_ARGS_INITIAL 16
/* resp_request_shrink frees arrays beyond these, so one huge MSET or inline
 * line does not pin its memory to an idle client forever. */
#define RESP_ARGS_KEEP    1024
#define RESP_SCRATCH_KEEP (16 * 1024)

/* Digits the fast header path reads: 18 of them can never overflow int64,
 * so that path needs no overflow check. */
#define RESP_FAST_DIGITS 18

/* A reply length or count is at most 20 characters ("-9223372036854775808");
 * a backend line without '\r' by then is garbage, not a slow number. */
#define RESP_REPLY_NUMBER_MAX 20

enum request_state {
    REQ_START = 0,   /* between requests: the first byte picks the form */
    REQ_INLINE,      /* inline line: searching for its '\n' */
    REQ_COUNT,       /* "*N" line at offset 0: searching for its '\r' */
    REQ_BULK_HEADER, /* the next "$L" line starts at pos */
    REQ_BULK_BODY,   /* bulk_len bytes and two terminator bytes start at pos */
    REQ_FAILED,      /* an error was reported; the peer is being closed */
};

static resp_status request_fail(resp_request *s, const char *msg)
{
    snprintf(s->err, sizeof(s->err), "%s", msg);
    s->state = REQ_FAILED;
    return RESP_ERROR;
}

/* The only way a request ends well: results published, progress rewound. */
static resp_status request_done(resp_request *s, size_t argc, size_t req_len)
{
    s->argc = argc;
    s->req_len = req_len;
    s->state = REQ_START;
    s->pos = 0;
    s->scan = 0;
    return RESP_OK;
}

/* Decimal exactly as Redis's string2ll accepts it: optional '-', then no
 * leading zero (but "0" itself), no '+', no blanks, within int64. A header
 * Redis would refuse must be refused here too, and vice versa. */
static int parse_int64(const char *p, size_t n, int64_t *out)
{
    if (n == 0 || n > 20)
        return 0;
    if (n == 1 && p[0] == '0') {
        *out = 0;
        return 1;
    }
    size_t i = p[0] == '-';
    if (i == n || p[i] < '1' || p[i] > '9')
        return 0;
    uint64_t v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned char)p[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    if (p[0] == '-') {
        if (v > (uint64_t)INT64_MAX + 1)
            return 0;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
        return 1;
    }
    if (v > (uint64_t)INT64_MAX)
        return 0;
    *out = (int64_t)v;
    return 1;
}

/* The header every pipelined command is made of: a type byte, a short
 * non-negative number, '\r' and one more byte, all present. Returns the
 * offset after the line, or 0 for anything else (long, negative, malformed,
 * incomplete), which the exact path then decides. */
static inline size_t fast_header(const char *buf, size_t len, size_t start, int64_t *value)
{
    size_t first = start + 1;
    size_t last = len - 1; /* the '\r' must leave one byte after it */
    size_t i = first;
    int64_t v = 0;

    while (i < last && i - first < RESP_FAST_DIGITS) {
        unsigned d = (unsigned char)buf[i] - '0';
        if (d > 9)
            break;
        v = v * 10 + d;
        i++;
    }
    if (i == first || i >= last || buf[i] != '\r' || (buf[first] == '0' && i - first > 1))
        return 0;
    *value = v;
    return i + 2;
}

/* Finds the '\r' ending the header line that starts at `start`, resuming
 * where the previous call stopped so a slowly arriving line costs O(n).
 * Returns 1 when the '\r' and the byte after it are in (*cr set), 0 when more
 * bytes are needed, -1 when the line is longer than Redis accepts. The limit
 * is also applied when the '\r' is found, so the outcome does not depend on
 * how the line was split into reads. */
static int header_line(resp_request *s, const char *buf, size_t len, size_t start, size_t *cr)
{
    size_t from = s->scan > start ? s->scan : start;
    const char *found = memchr(buf + from, '\r', len - from);

    if (found == NULL) {
        if (len - start > RESP_HEADER_LINE_MAX)
            return -1;
        s->scan = len;
        return 0;
    }
    size_t at = (size_t)(found - buf);
    if (at - start > RESP_HEADER_LINE_MAX)
        return -1;
    s->scan = at;
    if (at + 1 >= len)
        return 0;
    *cr = at;
    return 1;
}

/* Grows arg_off and argv together to hold at least `need` entries. */
static int grow_args(resp_request *s, size_t need)
{
    size_t cap = s->arg_cap ? s->arg_cap * 2 : RESP_ARGS_INITIAL;
    while (cap < need)
        cap *= 2;
    size_t *off = realloc(s->arg_off, cap * sizeof(*off));
    if (off == NULL)
        return -1;
    s->arg_off = off;
    resp_arg *argv = realloc(s->argv, cap * sizeof(*argv));
    if (argv == NULL)
        return -1;
    s->argv = argv;
    s->arg_cap = cap;
    return 0;
}

static resp_status expected_dollar(resp_request *s, char got)
{
    /* Redis blanks CR and LF in error text so the reply stays one line. */
    if (got == '\r' || got == '\n' || got == '\0')
        got = ' ';
    snprintf(s->err, sizeof(s->err), "ERR Protocol error: expected '$', got '%c'", got);
    s->state = REQ_FAILED;
    return RESP_ERROR;
}

/* Multibulk form. Progress lives in s (pos, state, argc so far, the bulk
 * being waited for), copied to locals on the way in so the loop does not
 * reload them after every store into the argument arrays. */
static resp_status scan_multibulk(resp_request *s, const char *buf, size_t len)
{
    int state = s->state;
    size_t pos = s->pos;
    size_t argc = s->argc;
    int64_t value;
    size_t next, cr;
    int found;

    if (state == REQ_COUNT) {
        next = fast_header(buf, len, 0, &value);
        if (next == 0) {
            found = header_line(s, buf, len, 0, &cr);
            if (found < 0)
                return request_fail(s, "ERR Protocol error: too big mbulk count string");
            if (found == 0)
                return RESP_INCOMPLETE;
            if (!parse_int64(buf + 1, cr - 1, &value))
                return request_fail(s, "ERR Protocol error: invalid multibulk length");
            next = cr + 2;
        }
        if (value > s->limits.max_args)
            return request_fail(s, "ERR Protocol error: invalid multibulk length");
        if (value <= 0)
            return request_done(s, 0, next);
        s->argc_total = value;
        argc = 0;
        pos = next;
        state = REQ_BULK_HEADER;
    }

    for (;;) {
        if (state == REQ_BULK_HEADER) {
            if (pos >= len)
                goto incomplete;
            next = buf[pos] == '$' ? fast_header(buf, len, pos, &value) : 0;
            if (next == 0) {
                found = header_line(s, buf, len, pos, &cr);
                if (found < 0)
                    return request_fail(s, "ERR Protocol error: too big bulk count string");
                if (found == 0)
                    goto incomplete;
                if (buf[pos] != '$')
                    return expected_dollar(s, buf[pos]);
                if (!parse_int64(buf + pos + 1, cr - pos - 1, &value))
                    return request_fail(s, "ERR Protocol error: invalid bulk length");
                next = cr + 2;
            }
            if (value < 0 || value > s->limits.max_bulk_len)
                return request_fail(s, "ERR Protocol error: invalid bulk length");
            if (argc == s->arg_cap && grow_args(s, argc + 1) != 0)
                return request_fail(s, "ERR out of memory");
            s->arg_off[argc] = next;
            s->argv[argc].len = (size_t)value;
            s->bulk_len = value;
            pos = next;
            state = REQ_BULK_BODY;
        }
        /* Only arithmetic here: the body is never read, so a 100 MB value
         * arriving in small reads costs nothing per read. */
        if ((uint64_t)(len - pos) < (uint64_t)s->bulk_len + 2)
            goto incomplete;
        pos += (size_t)s->bulk_len + 2;
        if (++argc == (size_t)s->argc_total)
            break;
        state = REQ_BULK_HEADER;
    }

    for (size_t i = 0; i < argc; i++)
        s->argv[i].ptr = buf + s->arg_off[i];
    return request_done(s, argc, pos);

incomplete:
    s->state = state;
    s->pos = pos;
    s->argc = argc;
    return RESP_INCOMPLETE;
}

/* isspace() in the C locale, which is what sdssplitargs skips between words. */
static inline int is_blank(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static char unescape(char c)
{
    switch (c) {
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 't':
        return '\t';
    case 'b':
        return '\b';
    case 'a':
        return '\a';
    default:
        return c;
    }
}

enum word_mode { WORD_BARE, WORD_DOUBLE, WORD_SINGLE };

/* Splits an inline line into s->scratch with the rules of Redis's
 * sdssplitargs, so `SET k "a b"` typed in telnet means what it means to
 * Redis. One difference: a NUL byte is an ordinary character here, where
 * Redis's C-string parsing would stop at it. Returns the argument count, -1
 * for unbalanced quotes (or a closing quote glued to more text, which Redis
 * reports the same way), -2 when out of memory. */
static long split_inline(resp_request *s, const char *p, const char *end)
{
    char *out = s->scratch;
    size_t argc = 0;

    for (;;) {
        while (p < end && is_blank((unsigned char)*p))
            p++;
        if (p == end)
            return (long)argc;
        if (argc == s->arg_cap && grow_args(s, argc + 1) != 0)
            return -2;
        s->arg_off[argc] = (size_t)(out - s->scratch);

        enum word_mode mode = WORD_BARE;
        for (;;) {
            if (mode == WORD_BARE) {
                if (p == end)
                    break;
                char c = *p++;
                if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
                    break;
                if (c == '"')
                    mode = WORD_DOUBLE;
                else if (c == '\'')
                    mode = WORD_SINGLE;
                else
                    *out++ = c;
                continue;
            }
            if (p == end)
                return -1;
            if (mode == WORD_DOUBLE) {
                int hi, lo;
                if (*p == '\\' && end - p >= 4 && p[1] == 'x' &&
                    (hi = hex_digit((unsigned char)p[2])) >= 0 &&
                    (lo = hex_digit((unsigned char)p[3])) >= 0) {
                    *out++ = (char)(hi * 16 + lo);
                    p += 4;
                } else if (*p == '\\' && end - p >= 2) {
                    *out++ = unescape(p[1]);
                    p += 2;
                } else if (*p == '"') {
                    p++;
                    if (p < end && !is_blank((unsigned char)*p))
                        return -1;
                    break;
                } else {
                    *out++ = *p++;
                }
            } else {
                if (*p == '\\' && end - p >= 2 && p[1] == '\'') {
                    *out++ = '\'';
                    p += 2;
                } else if (*p == '\'') {
                    p++;
                    if (p < end && !is_blank((unsigned char)*p))
                        return -1;
                    break;
                } else {
                    *out++ = *p++;
                }
            }
        }
        s->argv[argc].len = (size_t)(out - s->scratch) - s->arg_off[argc];
        argc++;
    }
}

/* Inline form: one line up to '\n', an optional '\r' before it dropped. */
static resp_status scan_inline(resp_request *s, const char *buf, size_t len)
{
    const char *nl = memchr(buf + s->scan, '\n', len - s->scan);

    /* Applied to the line found as well as to the bytes waiting, so a long
     * line is refused however it was split into reads. */
    if (nl == NULL) {
        if ((uint64_t)len > (uint64_t)s->limits.max_inline_len)
            return request_fail(s, "ERR Protocol error: too big inline request");
        s->scan = len;
        return RESP_INCOMPLETE;
    }
    size_t eol = (size_t)(nl - buf);
    if ((uint64_t)eol > (uint64_t)s->limits.max_inline_len)
        return request_fail(s, "ERR Protocol error: too big inline request");
    size_t line_len = eol > 0 && buf[eol - 1] == '\r' ? eol - 1 : eol;

    /* Unescaping never lengthens a word, so the line's size is enough. */
    if (line_len > s->scratch_cap) {
        size_t cap = s->scratch_cap ? s->scratch_cap : 256;
        while (cap < line_len)
            cap *= 2;
        char *scratch = realloc(s->scratch, cap);
        if (scratch == NULL)
            return request_fail(s, "ERR out of memory");
        s->scratch = scratch;
        s->scratch_cap = cap;
    }
    long argc = split_inline(s, buf, buf + line_len);
    if (argc == -1)
        return request_fail(s, "ERR Protocol error: unbalanced quotes in request");
    if (argc < 0)
        return request_fail(s, "ERR out of memory");
    for (long i = 0; i < argc; i++)
        s->argv[i].ptr = s->scratch + s->arg_off[i];
    return request_done(s, (size_t)argc, eol + 1);
}

void resp_request_init(resp_request *s, const resp_limits *limits)
{
    memset(s, 0, sizeof(*s));
    if (limits != NULL) {
        s->limits = *limits;
    } else {
        s->limits.max_bulk_len = RESP_DEFAULT_MAX_BULK_LEN;
        s->limits.max_args = RESP_DEFAULT_MAX_ARGS;
        s->limits.max_inline_len = RESP_DEFAULT_MAX_INLINE_LEN;
    }
    s->state = REQ_START;
    s->bulk_len = -1;
}

void resp_request_free(resp_request *s)
{
    free(s->arg_off);
    free(s->argv);
    free(s->scratch);
    s->arg_off = NULL;
    s->argv = NULL;
    s->scratch = NULL;
    s->arg_cap = 0;
    s->scratch_cap = 0;
    s->argc = 0;
}

void resp_request_shrink(resp_request *s)
{
    if (s->state != REQ_START)
        return;
    if (s->arg_cap > RESP_ARGS_KEEP) {
        free(s->arg_off);
        free(s->argv);
        s->arg_off = NULL;
        s->argv = NULL;
        s->arg_cap = 0;
        s->argc = 0;
    }
    if (s->scratch_cap > RESP_SCRATCH_KEEP) {
        free(s->scratch);
        s->scratch = NULL;
        s->scratch_cap = 0;
    }
}

resp_status resp_request_scan(resp_request *s, const char *buf, size_t len)
{
    switch ((enum request_state)s->state) {
    case REQ_START:
        if (len == 0)
            return RESP_INCOMPLETE;
        s->pos = 0;
        s->scan = 0;
        s->argc = 0;
        /* Like Redis, only '*' announces multibulk; any other first byte
         * (even '$') starts an inline line. */
        if (buf[0] == '*') {
            s->is_inline = 0;
            s->state = REQ_COUNT;
            return scan_multibulk(s, buf, len);
        }
        /* 0x16 opens a TLS handshake record: a TLS client on the
         * plain-text port, whose hello may hold no '\n' for ever. */
        if (buf[0] == RESP_TLS_HANDSHAKE_BYTE)
            return request_fail(s, "ERR Protocol error: TLS handshake on the plain-text port");
        s->is_inline = 1;
        s->state = REQ_INLINE;
        return scan_inline(s, buf, len);
    case REQ_INLINE:
        if (len < s->scan)
            return request_fail(s, "ERR internal error: request buffer shrank");
        return scan_inline(s, buf, len);
    case REQ_COUNT:
    case REQ_BULK_HEADER:
    case REQ_BULK_BODY:
        /* The offsets kept from the last call must still be inside the
         * buffer; anything else is a caller bug, refused before any read. */
        if (len < s->pos || len < s->scan)
            return request_fail(s, "ERR internal error: request buffer shrank");
        return scan_multibulk(s, buf, len);
    case REQ_FAILED:
        return RESP_ERROR;
    }
    fprintf(stderr, "resp_request_scan: corrupt scanner state %d\n", s->state);
    abort();
}

/* ---- replies ---- */

static resp_status reply_fail(resp_reply *s, const char *msg)
{
    snprintf(s->err, sizeof(s->err), "protocol error: %s", msg);
    s->depth = -1;
    return RESP_ERROR;
}

/* Reads the length or count line at buf[pos] ("$5\r\n", "*-1\r\n"). Returns
 * 1 (*value, *next set), 0 when incomplete, -1 when malformed. */
static int reply_number(const char *buf, size_t len, size_t pos, int64_t *value, size_t *next)
{
    size_t start = pos + 1;
    size_t stop = start + RESP_REPLY_NUMBER_MAX + 1;
    size_t i = start;

    if (stop > len)
        stop = len;
    while (i < stop && buf[i] != '\r')
        i++;
    if (i == stop)
        return stop == len && len - start <= RESP_REPLY_NUMBER_MAX ? 0 : -1;
    if (i + 1 >= len)
        return 0;
    if (buf[i + 1] != '\n' || !parse_int64(buf + start, i - start, value))
        return -1;
    *next = i + 2;
    return 1;
}

/* Finds the CRLF ending a simple line (+ - : , ( types), resuming where the
 * previous call stopped. Returns 1 (*next set), 0 incomplete, -1 malformed. */
static int reply_line(resp_reply *s, const char *buf, size_t len, size_t pos, size_t *next)
{
    size_t from = s->scan > pos + 1 ? s->scan : pos + 1;
    const char *cr = from < len ? memchr(buf + from, '\r', len - from) : NULL;

    if (cr == NULL) {
        s->scan = len > from ? len : from;
        return 0;
    }
    size_t at = (size_t)(cr - buf);
    s->scan = at;
    if (at + 1 >= len)
        return 0;
    if (buf[at + 1] != '\n')
        return -1;
    *next = at + 2;
    return 1;
}

void resp_reply_init(resp_reply *s)
{
    s->pos = 0;
    s->scan = 0;
    s->depth = 0;
    s->bulk_left = -1;
    s->err[0] = '\0';
}

/* What one step of resp_reply_scan's loop found at the current position. */
typedef enum reply_step {
    REPLY_ELEMENT,    /* an element ended: close the aggregates it completes */
    REPLY_OPENED,     /* a bulk body or an aggregate's elements come next */
    REPLY_INCOMPLETE, /* more bytes are needed to go on */
    REPLY_FAILED,     /* malformed: s->err is set and s->depth is -1 */
} reply_step;

static reply_step reply_step_fail(resp_reply *s, const char *msg)
{
    reply_fail(s, msg);
    return REPLY_FAILED;
}

/* The body and CRLF of the bulk whose header set s->bulk_left, at buf[*pos]. */
static inline reply_step reply_bulk_body(resp_reply *s, const char *buf, size_t len, size_t *pos)
{
    uint64_t need = (uint64_t)s->bulk_left;
    if ((uint64_t)(len - *pos) < need)
        return REPLY_INCOMPLETE;
    if (buf[*pos + need - 2] != '\r' || buf[*pos + need - 1] != '\n')
        return reply_step_fail(s, "bulk string not terminated by CRLF");
    *pos += need;
    s->bulk_left = -1;
    return REPLY_ELEMENT;
}

/* A bulk header ('$', '=', '!'): its body is due next, unless it is RESP2's
 * null bulk "$-1\r\n" (RESP3 has '_' for that). The streamed form "$?" is
 * never sent by Redis. */
static inline reply_step reply_bulk_header(resp_reply *s, const char *buf, size_t len, size_t *pos,
                                           char type)
{
    size_t next = 0;
    int64_t value = 0;
    int found = reply_number(buf, len, *pos, &value, &next);

    if (found == 0)
        return REPLY_INCOMPLETE;
    if (found < 0 || value < -1 || (value == -1 && type != '$') || value > INT64_MAX - 2)
        return reply_step_fail(s, "invalid bulk length");
    *pos = next;
    if (value == -1)
        return REPLY_ELEMENT;
    s->bulk_left = value + 2;
    return REPLY_OPENED;
}

/* An aggregate header ('*', '~', '>', '%', '|'): opens a level expecting its
 * elements, unless it is empty or RESP2's null array "*-1\r\n". */
static inline reply_step reply_aggregate_header(resp_reply *s, const char *buf, size_t len,
                                                size_t *pos, int *depth, char type)
{
    size_t next = 0;
    int64_t value = 0;
    int found = reply_number(buf, len, *pos, &value, &next);

    if (found == 0)
        return REPLY_INCOMPLETE;
    if (found < 0 || value < -1 || (value == -1 && type != '*') || value > INT64_MAX / 2 - 1)
        return reply_step_fail(s, "invalid aggregate length");
    *pos = next;
    if (value == -1)
        return REPLY_ELEMENT;
    if (type == '%' || type == '|')
        value *= 2;
    /* The annotated reply counts as part of the attribute, so both together
     * are one element of whatever holds them. */
    if (type == '|')
        value += 1;
    if (value == 0)
        return REPLY_ELEMENT;
    if (*depth == RESP_MAX_DEPTH)
        return reply_step_fail(s, "reply nesting too deep");
    s->remaining[(*depth)++] = value;
    return REPLY_OPENED;
}

/* The element or header that starts with the type byte at buf[*pos]
 * (*pos < len). Moves *pos past what it consumed. */
static inline reply_step reply_header(resp_reply *s, const char *buf, size_t len, size_t *pos,
                                      int *depth)
{
    size_t next = 0;
    int found;
    char type = buf[*pos];

    switch (type) {
    case '+': /* simple string */
    case '-': /* error */
    case ':': /* integer */
    case ',': /* double */
    case '(': /* big number */
        found = reply_line(s, buf, len, *pos, &next);
        if (found < 0)
            return reply_step_fail(s, "line not terminated by CRLF");
        if (found == 0)
            return REPLY_INCOMPLETE;
        *pos = next;
        return REPLY_ELEMENT;
    case '_': /* null */
        if (len - *pos < 3)
            return REPLY_INCOMPLETE;
        if (buf[*pos + 1] != '\r' || buf[*pos + 2] != '\n')
            return reply_step_fail(s, "malformed null");
        *pos += 3;
        return REPLY_ELEMENT;
    case '#': /* boolean */
        if (len - *pos < 4)
            return REPLY_INCOMPLETE;
        if ((buf[*pos + 1] != 't' && buf[*pos + 1] != 'f') || buf[*pos + 2] != '\r' ||
            buf[*pos + 3] != '\n')
            return reply_step_fail(s, "malformed boolean");
        *pos += 4;
        return REPLY_ELEMENT;
    case '$': /* bulk string */
    case '=': /* verbatim string */
    case '!': /* bulk error */
        return reply_bulk_header(s, buf, len, pos, type);
    case '*': /* array */
    case '~': /* set */
    case '>': /* push */
    case '%': /* map: key and value per entry */
    case '|': /* attribute: a map, then the reply it annotates */
        return reply_aggregate_header(s, buf, len, pos, depth, type);
    default:
        snprintf(s->err, sizeof(s->err), "protocol error: unknown reply type byte 0x%02x",
                 (unsigned char)type);
        s->depth = -1;
        return REPLY_FAILED;
    }
}

resp_status resp_reply_scan(resp_reply *s, const char *buf, size_t len, size_t *reply_len)
{
    size_t pos = s->pos;
    int depth = s->depth;

    if (depth < 0)
        return RESP_ERROR;
    if (len < pos || len < s->scan)
        return reply_fail(s, "reply buffer shrank between calls");
    for (;;) {
        reply_step step;
        if (s->bulk_left >= 0)
            step = reply_bulk_body(s, buf, len, &pos);
        else if (pos >= len)
            step = REPLY_INCOMPLETE;
        else
            step = reply_header(s, buf, len, &pos, &depth);
        if (step == REPLY_OPENED)
            continue;
        if (step == REPLY_INCOMPLETE)
            break;
        if (step == REPLY_FAILED)
            return RESP_ERROR;
        /* One element is complete: close every aggregate it completes. */
        while (depth > 0 && --s->remaining[depth - 1] == 0)
            depth--;
        if (depth == 0) {
            *reply_len = pos;
            s->pos = 0;
            s->scan = 0;
            s->depth = 0;
            return RESP_OK;
        }
    }
    s->pos = pos;
    s->depth = depth;
    return RESP_INCOMPLETE;
}

int resp_reply_integer(const char *reply, size_t len, int64_t *out)
{
    if (len < 4 || reply[0] != ':' || reply[len - 2] != '\r' || reply[len - 1] != '\n')
        return -1;
    return parse_int64(reply + 1, len - 3, out) ? 0 : -1;
}

/* Reads the header line "<prefix><integer>\r\n" at r[*pos] into *value and
 * moves *pos past it. 0 or -1. */
static int header_at(const char *r, size_t len, size_t *pos, char prefix, int64_t *value)
{
    if (*pos >= len || r[*pos] != prefix)
        return -1;
    const char *cr = memchr(r + *pos, '\r', len - *pos);
    if (!cr || (size_t)(cr - r) + 2 > len || cr[1] != '\n')
        return -1;
    size_t digits = (size_t)(cr - r) - *pos - 1;
    if (!parse_int64(r + *pos + 1, digits, value))
        return -1;
    *pos = (size_t)(cr - r) + 2;
    return 0;
}

int resp_reply_array_at(const char *r, size_t len, size_t *pos, int64_t *count)
{
    size_t at = *pos;
    int64_t n;
    char type = *pos < len ? r[*pos] : '\0';
    if (type != '*' && type != '~' && type != '>' && type != '%')
        return -1;
    if (header_at(r, len, &at, type, &n) < 0 || n < 0 || n > INT64_MAX / 2)
        return -1;
    *count = type == '%' ? 2 * n : n;
    *pos = at;
    return 0;
}

int resp_reply_bulk_at(const char *r, size_t len, size_t *pos, const char **ptr, size_t *n)
{
    size_t at = *pos;
    int64_t blen;
    char type = *pos < len && r[*pos] == '=' ? '=' : '$';
    if (header_at(r, len, &at, type, &blen) < 0 || blen < 0 || (uint64_t)blen > len - at ||
        len - at - (size_t)blen < 2 || r[at + (size_t)blen] != '\r' ||
        r[at + (size_t)blen + 1] != '\n')
        return -1;
    /* A verbatim string's "txt:" (its format and a colon) is not text. */
    size_t skip = type == '=' ? RESP_VERBATIM_PREFIX_LEN : 0;
    if ((size_t)blen < skip)
        return -1;
    *ptr = r + at + skip;
    *n = (size_t)blen - skip;
    *pos = at + (size_t)blen + 2;
    return 0;
}
