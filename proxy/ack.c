/* Writes acknowledged by replicas (min_replicas_to_ack); see ack.h. */
#include "proxy/ack.h"

#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proxy/log.h"
#include "proxy/server.h"

/* Redis 7.0's read-only commands that are forwarded over the pool: these
 * need no WAIT. Anything else (unknown included) counts as a write, so a
 * command missing here costs a WAIT, never a lost guarantee. */
static const char *const readonly_commands[] = {
    "bitcount",
    "bitfield_ro",
    "bitpos",
    "dbsize",
    "dump",
    "echo",
    "eval_ro",
    "evalsha_ro",
    "exists",
    "expiretime",
    "fcall_ro",
    "geodist",
    "geohash",
    "geopos",
    "georadius_ro",
    "georadiusbymember_ro",
    "geosearch",
    "get",
    "getbit",
    "getrange",
    "hexists",
    "hget",
    "hgetall",
    "hkeys",
    "hlen",
    "hmget",
    "hrandfield",
    "hscan",
    "hstrlen",
    "hvals",
    "keys",
    "lcs",
    "lindex",
    "llen",
    "lpos",
    "lrange",
    "memory",
    "mget",
    "object",
    "pexpiretime",
    "pfcount",
    "ping",
    "pttl",
    "randomkey",
    "scan",
    "scard",
    "sdiff",
    "sinter",
    "sintercard",
    "sismember",
    "smembers",
    "smismember",
    "sort_ro",
    "srandmember",
    "sscan",
    "strlen",
    "substr",
    "sunion",
    "time",
    "touch",
    "ttl",
    "type",
    "xinfo",
    "xlen",
    "xpending",
    "xrange",
    "xread",
    "xrevrange",
    "zcard",
    "zcount",
    "zdiff",
    "zinter",
    "zintercard",
    "zlexcount",
    "zmscore",
    "zrandmember",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrank",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
    "zunion",
};

/* A write in flight with the WAIT behind it. */
typedef struct ack_wait {
    shard *shard;   /* where it went: alive while its fragments are in flight */
    fragment write; /* the write, as sent */
    fragment wait;  /* WAIT, on the same connection right behind it */
    fragment *orig; /* the router's fragment, answered when WAIT is */
    buf reply;      /* the write's reply, kept until WAIT's */
} ack_wait;

int ack_is_write(const char *bytes, size_t len)
{
    /* "*<argc>\r\n$<len>\r\n<name>\r\n" */
    const char *end = bytes + len;
    const char *p = memchr(bytes, '\n', len);
    if (!p || ++p >= end || *p != '$')
        return 1;
    size_t name_len = 0;
    for (p++; p < end && isdigit((unsigned char)*p); p++)
        name_len = name_len * 10 + (size_t)(*p - '0');
    p += 2; /* \r\n */
    if (p > end || name_len > (size_t)(end - p) || name_len == 0 || name_len > 32)
        return 1;
    for (size_t i = 0; i < sizeof(readonly_commands) / sizeof(readonly_commands[0]); i++)
        if (strlen(readonly_commands[i]) == name_len &&
            strncasecmp(readonly_commands[i], p, name_len) == 0)
            return 0;
    return 1;
}

static void write_done(fragment *f, const char *reply, size_t len)
{
    ack_wait *a = (ack_wait *)((char *)f - offsetof(ack_wait, write));
    if (buf_append(&a->reply, reply, len) < 0) {
        buf_free(&a->reply);
        static const char oom[] = "-ERR out of memory keeping a shard reply\r\n";
        (void)!buf_append(&a->reply, oom, sizeof(oom) - 1);
    }
}

/* WAIT answered (or failed): the write's reply, or -NOREPLICAS. */
static void wait_done(fragment *f, const char *reply, size_t len)
{
    ack_wait *a = (ack_wait *)((char *)f - offsetof(ack_wait, wait));
    fragment *orig = a->orig;
    const char *written = buf_head(&a->reply);
    size_t written_len = buf_len(&a->reply);
    int want = srv.cfg->min_replicas_to_ack;
    long long got = -1;
    if (len > 1 && reply[0] == ':')
        got = strtoll(reply + 1, NULL, 10);
    if (written_len == 0 || written[0] == '-' || got >= want) {
        /* an error needs no replica; else the replicas have it */
        orig->done(orig, written, written_len);
    } else {
        char text[400];
        int n;
        if (got >= 0)
            n = snprintf(text, sizeof(text),
                         "-NOREPLICAS write done on shard %s but acknowledged by %lld of %d "
                         "replicas in %d ms (min_replicas_to_ack): a failover may lose it\r\n",
                         a->shard->label, got, want, srv.cfg->min_replicas_timeout_ms);
        else
            n = snprintf(
                text, sizeof(text), "-NOREPLICAS write done on shard %s but WAIT failed: %.*s\r\n",
                a->shard->label, (int)(len > 3 ? (len - 3 > 200 ? 200 : len - 3) : 0), reply + 1);
        if (n < 0 || (size_t)n >= sizeof(text))
            n = snprintf(text, sizeof(text), "-NOREPLICAS write not acknowledged by replicas\r\n");
        orig->done(orig, text, (size_t)n);
    }
    buf_free(&a->reply);
    free(a);
}

int ack_send(shard *s, uint64_t hint, fragment *f, const char *bytes, size_t len)
{
    int want = srv.cfg->min_replicas_to_ack;
    if (want == 0 || !ack_is_write(bytes, len))
        return 0;
    /* Its bytes go out with a fragment of this module's, where the slow
     * log does not look for them (slowlog.h): copied now, if it is on. */
    request *req = f->req;
    if (req && f == &req->single && req->head_len == REQUEST_HEAD_SENT) {
        if (srv.cfg->slowlog_slower_than >= 0)
            request_keep_bytes(req, bytes, len);
        else
            req->head_len = REQUEST_HEAD_NONE;
    }
    ack_wait *a = calloc(1, sizeof(*a));
    if (!a) {
        static const char oom[] = "-ERR out of memory waiting for replicas\r\n";
        f->done(f, oom, sizeof(oom) - 1);
        return 1;
    }
    int timeout_ms = srv.cfg->min_replicas_timeout_ms;
    char wait[96];
    char want_text[16], timeout_text[16];
    int want_len = snprintf(want_text, sizeof(want_text), "%d", want);
    int timeout_len = snprintf(timeout_text, sizeof(timeout_text), "%d", timeout_ms);
    int wait_len = snprintf(wait, sizeof(wait), "*3\r\n$4\r\nWAIT\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n",
                            want_len, want_text, timeout_len, timeout_text);
    /* The router's fragment is never queued on a connection, where
     * backend_send would stamp it: the slow log names its shard and
     * times it from this (append_shards in slowlog.c skips a fragment
     * never sent). */
    f->sent_us = srv.now_us;
    a->orig = f;
    a->shard = s;
    a->write.req = f->req;
    a->write.shard = f->shard;
    a->write.done = write_done;
    a->wait.req = f->req;
    a->wait.shard = f->shard;
    a->wait.done = wait_done;
    a->wait.block_us = (uint64_t)timeout_ms * 1000u;
    /* The same hint picks the same connection: WAIT runs right after the
     * write, and its reply comes after the write's, even when both fail. */
    backend_send(s, hint, &a->write, bytes, len);
    backend_send(s, hint, &a->wait, wait, (size_t)wait_len);
    return 1;
}
