/* Lock round-trip latency through ringproxy, for bench/lock_bench.sh: one
 * client, one lock at a time, each iteration an acquire and its release.
 *
 *   lock_bench <port> quorum|setnx <iterations>
 *
 * quorum: LOCK.ACQUIRE name 10000 + LOCK.RELEASE name token (the lock
 * shards' majority, two round trips to each inside the proxy);
 * setnx: SET name token NX PX 10000 + DEL name (one shard). Prints p50,
 * p99, p99.9 and the mean in microseconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int by_value(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

/* One acquire + release; 0, or -1 on an unexpected reply. */
static int round_trip(redisContext *c, int quorum, long i)
{
    char name[32];
    snprintf(name, sizeof(name), "bench:%ld", i % 64);
    redisReply *r = quorum ? redisCommand(c, "LOCK.ACQUIRE %s 10000", name)
                           : redisCommand(c, "SET %s %ld NX PX 10000", name, i);
    if (!r || (quorum ? r->type != REDIS_REPLY_INTEGER : r->type != REDIS_REPLY_STATUS)) {
        fprintf(stderr, "lock_bench: acquire failed: %s\n",
                r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
        if (r)
            freeReplyObject(r);
        return -1;
    }
    long long token = quorum ? r->integer : 0;
    freeReplyObject(r);
    r = quorum ? redisCommand(c, "LOCK.RELEASE %s %lld", name, token)
               : redisCommand(c, "DEL %s", name);
    int ok = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    if (r)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[2], "quorum") != 0 && strcmp(argv[2], "setnx") != 0)) {
        fprintf(stderr, "usage: lock_bench <port> quorum|setnx <iterations>\n");
        return 2;
    }
    int quorum = strcmp(argv[2], "quorum") == 0;
    long n = atol(argv[3]);
    if (n <= 0)
        return 2;
    redisContext *c = redisConnect("127.0.0.1", atoi(argv[1]));
    if (!c || c->err) {
        fprintf(stderr, "lock_bench: cannot connect\n");
        return 1;
    }
    long long *lat = malloc(sizeof(*lat) * (size_t)n);
    if (!lat)
        return 1;
    for (long i = 0; i < n / 10 + 1; i++) /* warm-up */
        if (round_trip(c, quorum, i) < 0)
            return 1;
    long long total = 0;
    for (long i = 0; i < n; i++) {
        long long start = now_us();
        if (round_trip(c, quorum, i) < 0)
            return 1;
        lat[i] = now_us() - start;
        total += lat[i];
    }
    qsort(lat, (size_t)n, sizeof(*lat), by_value);
    printf("%s p50=%lld us p99=%lld us p99.9=%lld us mean=%lld us (%ld round trips)\n", argv[2],
           lat[n / 2], lat[n * 99 / 100], lat[n * 999 / 1000], total / n, n);
    free(lat);
    redisFree(c);
    return 0;
}
