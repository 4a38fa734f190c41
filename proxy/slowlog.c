/* Slow log entries, each kept as its SLOWLOG GET reply element, ready to
 * be written: an entry is built once, when the request turns out slow,
 * and read any number of times. */
#include "proxy/slowlog.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/histogram.h"
#include "proxy/log.h"
#include "proxy/server.h"

/* One entry: its reply element "*8\r\n:id..." (malloc'd). */
typedef struct slowlog_entry {
    char *element;
    size_t len;
} slowlog_entry;

/* Newest first: a ring of up to cap entries. */
static struct {
    slowlog_entry *ring;
    size_t cap;    /* slots in ring */
    size_t head;   /* slot of the newest entry */
    size_t len;    /* entries held */
    uint64_t next; /* id of the next entry (ids keep growing across RESET, as Redis's) */
} slowlog;

uint64_t slowlog_fast_slots = HISTOGRAM_BUCKETS - 2;

void slowlog_configure(int64_t slower_than)
{
    size_t slot = slower_than < 0 ? HISTOGRAM_BUCKETS - 1 : histogram_slot((uint64_t)slower_than);
    slowlog_fast_slots = slot ? slot - 1 : 0;
}

void slowlog_capture_long(request *req, size_t argc, const resp_arg *argv, const char *raw,
                          size_t raw_len)
{
    if (raw) {
        request_keep_bytes(req, raw, raw_len);
        return;
    }
    buf_reset(&req->args);
    req->head_len = REQUEST_HEAD_IN_ARGS;
    (void)buf_append_header(&req->args, '*', (int64_t)argc); /* an inline command */
    for (size_t i = 0; i < argc && buf_len(&req->args) < SLOWLOG_CAPTURE_MAX; i++)
        (void)buf_append_bulk(&req->args, argv[i].ptr, argv[i].len);
}

/* Reads a RESP header line "<prefix><int>\r\n" at *p (before end). 0, or -1
 * when it is cut off or not one. */
static int read_header(const char **p, const char *end, char prefix, long long *out)
{
    const char *s = *p;
    if (s >= end || *s != prefix)
        return -1;
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    if (!nl || nl - s < 3 || nl[-1] != '\r')
        return -1;
    char tmp[24];
    size_t n = (size_t)(nl - 1 - (s + 1));
    if (n == 0 || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, s + 1, n);
    tmp[n] = '\0';
    char *stop;
    errno = 0;
    long long v = strtoll(tmp, &stop, 10);
    if (errno || *stop || v < 0)
        return -1;
    *out = v;
    *p = nl + 1;
    return 0;
}

/* Appends an argument as Redis shows it in an entry: at most
 * SLOWLOG_ENTRY_MAX_STRING bytes, then "... (N more bytes)". have: bytes
 * of it kept, len: its whole length. */
static void append_arg(buf *b, const char *bytes, size_t have, size_t len)
{
    if (len <= SLOWLOG_ENTRY_MAX_STRING && have >= len) {
        (void)buf_append_bulk(b, bytes, len);
        return;
    }
    size_t shown = len < SLOWLOG_ENTRY_MAX_STRING ? len : SLOWLOG_ENTRY_MAX_STRING;
    if (shown > have)
        shown = have;
    char text[SLOWLOG_ENTRY_MAX_STRING + 48];
    int n =
        snprintf(text, sizeof(text), "%.*s... (%zu more bytes)", (int)shown, bytes, len - shown);
    (void)buf_append_bulk(b, text, (size_t)n);
}

/* The arguments array of an entry, from the request's kept bytes. */
static void append_args(buf *b, const request *req)
{
    const buf *kept = &req->args;
    const char *p = req->head;
    size_t nkept = req->head_len;
    if (req->head_len == REQUEST_HEAD_SENT) { /* where the shard connection keeps them */
        p = backend_sent_bytes(&req->single, &nkept);
        if (!p) {
            p = req->head;
            nkept = 0;
        }
    } else if (req->head_len == REQUEST_HEAD_IN_ARGS) {
        int in_args = !buf_failed(kept) && kept->data;
        p = in_args ? buf_head(kept) : req->head;
        nkept = in_args ? buf_len(kept) : 0;
    } else if (nkept > REQUEST_HEAD_MAX) { /* REQUEST_HEAD_NONE */
        nkept = 0;
    }
    const char *end = p + nkept;
    long long argc;
    if (read_header(&p, end, '*', &argc) < 0) {
        (void)buf_append_header(b, '*', 0);
        return;
    }
    size_t limit = (size_t)argc > SLOWLOG_ENTRY_MAX_ARGC ? SLOWLOG_ENTRY_MAX_ARGC : (size_t)argc;
    buf args = {0};
    size_t j = 0;
    for (; j < limit; j++) {
        long long len;
        /* The last slot says how many were left out, as Redis's does; an
         * argument past the bytes kept is left out too. */
        if ((limit != (size_t)argc && j == limit - 1) || read_header(&p, end, '$', &len) < 0) {
            char more[64];
            int n = snprintf(more, sizeof(more), "... (%zu more arguments)", (size_t)argc - j);
            (void)buf_append_bulk(&args, more, (size_t)n);
            j++;
            break;
        }
        size_t have = (size_t)(end - p) < (size_t)len ? (size_t)(end - p) : (size_t)len;
        append_arg(&args, p, have, (size_t)len);
        p += have;
        p = (size_t)(end - p) >= 2 ? p + 2 : end; /* the argument's CRLF */
    }
    (void)buf_append_header(b, '*', (int64_t)j);
    if (buf_failed(&args))
        b->err = 1;
    else if (j)
        (void)buf_append(b, buf_head(&args), buf_len(&args));
    buf_free(&args);
}

/* The shard at index i of srv.shards, NULL when there is none such. */
static const shard *shard_at(size_t i)
{
    return i < srv.nshards ? srv.shards[i] : NULL;
}

/* Appends the shards req went to ("s2", or "s1,s3" for a split or fan-out
 * request; empty when the proxy answered it itself) and the time from
 * sending to the last reply, in µs. A reload may have changed the shards
 * since: a shard no longer there is left out. */
static void append_shards(buf *b, const request *req)
{
    char names[512] = "";
    size_t used = 0;
    uint64_t first_sent = 0;
    for (size_t i = 0; i < (req->nfrags ? req->nfrags : 1); i++) {
        const fragment *f = req->nfrags ? &req->frags[i] : &req->single;
        if (!f->sent_us)
            continue; /* never sent */
        const shard *s = shard_at(f->shard);
        if (req->served_by) { /* a reserved connection: no index in the fragment */
            s = NULL;
            for (size_t j = 0; j < srv.nshards && !s; j++)
                s = srv.shards[j] == req->served_by ? srv.shards[j] : NULL;
        }
        if (!first_sent || f->sent_us < first_sent)
            first_sent = f->sent_us;
        if (s && used < sizeof(names)) {
            int n = snprintf(names + used, sizeof(names) - used, "%s%s", used ? "," : "", s->name);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    (void)buf_append_bulk(b, names, used < sizeof(names) ? used : sizeof(names) - 1);
    (void)buf_append_header(b, ':', first_sent ? (int64_t)(srv.now_us - first_sent) : 0);
}

void slowlog_add(const request *req, uint64_t took_us)
{
    /* A blocking command waits for data, not for a slow shard (Redis logs
     * its execution only); AUTH and HELLO carry a password. */
    if (req->single.block_us || req->cmd->id == CMD_AUTH || req->cmd->id == CMD_HELLO)
        return;
    size_t max_len = (size_t)srv.cfg->slowlog_max_len;
    slowlog_trim(max_len);
    if (max_len == 0)
        return;
    if (slowlog.cap != max_len) {
        /* Resized: the entries kept (at most max_len) are laid out again,
         * newest in slot 0. */
        slowlog_entry *slots = calloc(max_len, sizeof(*slots));
        if (!slots)
            return;
        for (size_t i = 0; i < slowlog.len; i++)
            slots[i] = slowlog.ring[(slowlog.head + i) % slowlog.cap];
        free(slowlog.ring);
        slowlog.ring = slots;
        slowlog.cap = max_len;
        slowlog.head = 0;
    }
    const session *sess = req->session;
    buf b = {0};
    (void)buf_append_header(&b, '*', 8);
    (void)buf_append_header(&b, ':', (int64_t)slowlog.next);
    (void)buf_append_header(&b, ':', (int64_t)time(NULL));
    (void)buf_append_header(&b, ':', (int64_t)took_us);
    append_args(&b, req);
    const char *addr = sess && sess->addr ? sess->addr : "";
    const char *name = sess && sess->name ? sess->name : "";
    (void)buf_append_bulk(&b, addr, strlen(addr));
    (void)buf_append_bulk(&b, name, strlen(name));
    append_shards(&b, req);
    if (buf_failed(&b)) {
        buf_free(&b);
        return;
    }
    slowlog.next++;
    if (slowlog.len == slowlog.cap) { /* full: the oldest goes */
        size_t oldest = (slowlog.head + slowlog.len - 1) % slowlog.cap;
        free(slowlog.ring[oldest].element);
        slowlog.len--;
    }
    slowlog.head = (slowlog.head + slowlog.cap - 1) % slowlog.cap;
    /* The buffer's bytes become the entry (start is 0: nothing consumed). */
    slowlog.ring[slowlog.head] = (slowlog_entry){b.data, buf_len(&b)};
    slowlog.len++;
}

void slowlog_trim(size_t max_len)
{
    while (slowlog.len > max_len) {
        size_t oldest = (slowlog.head + slowlog.len - 1) % slowlog.cap;
        free(slowlog.ring[oldest].element);
        slowlog.len--;
    }
    if (max_len == 0) {
        free(slowlog.ring);
        slowlog.ring = NULL;
        slowlog.cap = 0;
        slowlog.head = 0;
    }
}

static int arg_is(const resp_arg *a, const char *s)
{
    return a->len == strlen(s) && strncasecmp(a->ptr, s, a->len) == 0;
}

static void slowlog_get(request *req, size_t argc, const resp_arg *argv)
{
    long long count = 10; /* Redis's default */
    if (argc > 2) {
        char tmp[24], *end;
        size_t n = argv[2].len < sizeof(tmp) - 1 ? argv[2].len : sizeof(tmp) - 1;
        memcpy(tmp, argv[2].ptr, n);
        tmp[n] = '\0';
        errno = 0;
        count = strtoll(tmp, &end, 10);
        if (n == 0 || n != argv[2].len || *end || errno) {
            request_error(req, "ERR value is not an integer or out of range");
            return;
        }
        if (count < -1) {
            request_error(req, "ERR count should be greater than or equal to -1");
            return;
        }
    }
    slowlog_trim((size_t)srv.cfg->slowlog_max_len);
    size_t n = count == -1 || (size_t)count > slowlog.len ? slowlog.len : (size_t)count;
    buf b = {0};
    (void)buf_append_header(&b, '*', (int64_t)n);
    for (size_t i = 0; i < n; i++) {
        const slowlog_entry *e = &slowlog.ring[(slowlog.head + i) % slowlog.cap];
        (void)buf_append(&b, e->element, e->len);
    }
    request_reply_buf(req, &b);
    buf_free(&b);
}

static void slowlog_help(request *req)
{
    static const char *const lines[] = {
        "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET [<count>]",
        "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
        "    Entries are made of:",
        "    id, timestamp, time in microseconds, arguments array, client IP and port,",
        "    client name, and (ringproxy) the shard that answered last and its time in",
        "    microseconds (empty and 0 when the proxy answered itself).",
        "LEN",
        "    Return the length of the slowlog.",
        "RESET",
        "    Reset the slowlog.",
        "HELP",
        "    Prints this help.",
    };
    buf b = {0};
    size_t n = sizeof(lines) / sizeof(lines[0]);
    (void)buf_append_header(&b, '*', (int64_t)n);
    for (size_t i = 0; i < n; i++)
        (void)buf_printf(&b, "+%s\r\n", lines[i]);
    request_reply_buf(req, &b);
    buf_free(&b);
}

void slowlog_command(request *req, size_t argc, const resp_arg *argv)
{
    const resp_arg *sub = &argv[1];
    buf b = {0};
    if (arg_is(sub, "get")) {
        slowlog_get(req, argc, argv);
        return;
    }
    if (arg_is(sub, "help")) {
        slowlog_help(req);
        return;
    }
    if (arg_is(sub, "len")) {
        slowlog_trim((size_t)srv.cfg->slowlog_max_len);
        (void)buf_append_header(&b, ':', (int64_t)slowlog.len);
    } else { /* reset: the command table knows no other subcommand */
        slowlog_trim(0);
        (void)buf_printf(&b, "+OK\r\n");
    }
    request_reply_buf(req, &b);
    buf_free(&b);
}
