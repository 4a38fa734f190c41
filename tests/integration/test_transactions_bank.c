/* Checker of cross-shard transactions (cross_shard = atomic): a bank.
 * Accounts spread over four shards; MULTI writers move amounts between
 * random shared accounts with MULTI/INCRBY/INCRBY/INCR/EXEC; MSET writers
 * move amounts between accounts only they own (read, then one MSET);
 * readers MGET every account. Meanwhile the proxy is SIGKILLed and
 * restarted and a shard is paused past request_timeout. Invariants: every
 * successful read sums to the initial total; no acknowledged transfer is
 * lost (each writer's count of acknowledged transfers, kept in the same
 * transactions, is at least what it was told); at the end the MSET
 * writers' accounts hold what they last wrote; no lock or staging record
 * is left. TXN_CHECK_SEED=<n> replays a seed; TXN_CHECK_CYCLES=<n> runs
 * more fault cycles. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

#define ATOMIC                                                                                     \
    "cross_shard = atomic\ntxn_recovery_after = 1000\nrequest_timeout = 1000\n"                    \
    "reconnect_min = 20\nreconnect_max = 200\nwatch_config = no\n"

#define SHARED_ACCOUNTS 12 /* moved between by the MULTI writers */
#define MULTI_WRITERS   3
#define MSET_WRITERS    2
#define OWN_ACCOUNTS    4 /* per MSET writer */
#define READERS         2
#define INITIAL         1000
#define WRITER_PAUSE_US 2000
#define ACCOUNTS        (SHARED_ACCOUNTS + MSET_WRITERS * OWN_ACCOUNTS)
#define TOTAL           ((long long)ACCOUNTS * INITIAL)

static struct {
    unsigned long long seed;
    int port;
    atomic_int stop;
    atomic_long reads, bad_reads, failed_reads, transfers, failed_transfers;
    long acked[MULTI_WRITERS];     /* MULTI writer: transfers acknowledged */
    long ambiguous[MULTI_WRITERS]; /* MULTI writer: no reply (may or may not have run) */
    long long own[MSET_WRITERS][OWN_ACCOUNTS]; /* MSET writer: balances it last wrote */
    int own_known[MSET_WRITERS];               /* its last MSET was acknowledged */
} chk;

static unsigned long long next_rand(unsigned long long *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static redisContext *connect_proxy(void)
{
    struct timeval tv = {2L * harness_timeout_scale(), 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", chk.port, tv);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

static void account(char *out, size_t cap, int i)
{
    snprintf(out, cap, "acct:%d", i);
}

/* One MULTI transfer: 1 acknowledged, 0 refused, -1 no reply. */
static int multi_transfer(redisContext *c, int writer, unsigned long long *rng)
{
    int a = (int)(next_rand(rng) % SHARED_ACCOUNTS);
    int b = (a + 1 + (int)(next_rand(rng) % (SHARED_ACCOUNTS - 1))) % SHARED_ACCOUNTS;
    long long amount = 1 + (long long)(next_rand(rng) % 50);
    redisAppendCommand(c, "MULTI");
    redisAppendCommand(c, "INCRBY acct:%d %lld", a, -amount);
    redisAppendCommand(c, "INCRBY acct:%d %lld", b, amount);
    redisAppendCommand(c, "INCR acked:%d", writer);
    redisAppendCommand(c, "EXEC");
    redisReply *r = NULL;
    for (int i = 0; i < 5; i++) {
        if (r)
            freeReplyObject(r);
        if (redisGetReply(c, (void **)&r) != REDIS_OK)
            return -1;
    }
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 3;
    freeReplyObject(r);
    return ok;
}

static void *multi_writer(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned long long rng = chk.seed ^ ((unsigned long long)(id + 1) * 0x9E3779B97F4A7C15ull);
    redisContext *c = NULL;
    while (!atomic_load(&chk.stop)) {
        if (!c && !(c = connect_proxy())) {
            usleep(20000);
            continue;
        }
        usleep(WRITER_PAUSE_US); /* readers wait while keys are held: leave them gaps */
        int rc = multi_transfer(c, id, &rng);
        if (rc == 1) {
            chk.acked[id]++;
            atomic_fetch_add(&chk.transfers, 1);
        } else {
            atomic_fetch_add(&chk.failed_transfers, 1);
        }
        if (rc < 0) {
            chk.ambiguous[id]++;
            redisFree(c);
            c = NULL;
        }
    }
    if (c)
        redisFree(c);
    return NULL;
}

/* Reads the writer's own accounts (MGET, atomic through this proxy). 0 or -1. */
static int read_own(redisContext *c, int id, long long *bal)
{
    redisReply *r = redisCommand(
        c, "MGET acct:%d acct:%d acct:%d acct:%d", SHARED_ACCOUNTS + id * OWN_ACCOUNTS,
        SHARED_ACCOUNTS + id * OWN_ACCOUNTS + 1, SHARED_ACCOUNTS + id * OWN_ACCOUNTS + 2,
        SHARED_ACCOUNTS + id * OWN_ACCOUNTS + 3);
    int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == OWN_ACCOUNTS;
    for (int i = 0; ok && i < OWN_ACCOUNTS; i++) {
        ok = r->element[i]->type == REDIS_REPLY_STRING;
        if (ok)
            bal[i] = atoll(r->element[i]->str);
    }
    if (r)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

static void *mset_writer(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned long long rng = chk.seed ^ ((unsigned long long)(id + 101) * 0x9E3779B97F4A7C15ull);
    redisContext *c = NULL;
    long long bal[OWN_ACCOUNTS];
    int known = 0;
    while (!atomic_load(&chk.stop)) {
        if (!c && !(c = connect_proxy())) {
            usleep(20000);
            continue;
        }
        if (!known) {
            /* After an unanswered MSET: what the shards hold is the truth. */
            if (read_own(c, id, bal) < 0) {
                redisFree(c);
                c = NULL;
                usleep(20000);
                continue;
            }
            known = 1;
        }
        usleep(WRITER_PAUSE_US);
        int a = (int)(next_rand(&rng) % OWN_ACCOUNTS);
        int b = (a + 1 + (int)(next_rand(&rng) % (OWN_ACCOUNTS - 1))) % OWN_ACCOUNTS;
        long long amount = 1 + (long long)(next_rand(&rng) % 50);
        int base = SHARED_ACCOUNTS + id * OWN_ACCOUNTS;
        redisReply *r = redisCommand(c, "MSET acct:%d %lld acct:%d %lld", base + a, bal[a] - amount,
                                     base + b, bal[b] + amount);
        if (!r) {
            known = 0;
            atomic_fetch_add(&chk.failed_transfers, 1);
            redisFree(c);
            c = NULL;
            continue;
        }
        if (r->type == REDIS_REPLY_STATUS) {
            bal[a] -= amount;
            bal[b] += amount;
            atomic_fetch_add(&chk.transfers, 1);
        } else {
            atomic_fetch_add(&chk.failed_transfers, 1);
            known = 0; /* an error says nothing was written, but read again anyway */
        }
        freeReplyObject(r);
        memcpy(chk.own[id], bal, sizeof(bal));
        chk.own_known[id] = known;
    }
    if (c)
        redisFree(c);
    return NULL;
}

static void *reader(void *arg)
{
    (void)arg;
    redisContext *c = NULL;
    const char *argv[ACCOUNTS + 1];
    char names[ACCOUNTS][32];
    argv[0] = "MGET";
    for (int i = 0; i < ACCOUNTS; i++) {
        account(names[i], sizeof(names[i]), i);
        argv[i + 1] = names[i];
    }
    while (!atomic_load(&chk.stop)) {
        if (!c && !(c = connect_proxy())) {
            usleep(20000);
            continue;
        }
        redisReply *r = redisCommandArgv(c, ACCOUNTS + 1, argv, NULL);
        if (!r) {
            redisFree(c);
            c = NULL;
            atomic_fetch_add(&chk.failed_reads, 1);
            continue;
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements == ACCOUNTS) {
            long long sum = 0;
            int whole = 1;
            for (size_t i = 0; i < r->elements; i++) {
                whole &= r->element[i]->type == REDIS_REPLY_STRING;
                if (whole)
                    sum += atoll(r->element[i]->str);
            }
            if (whole) {
                atomic_fetch_add(&chk.reads, 1);
                if (sum != TOTAL) {
                    atomic_fetch_add(&chk.bad_reads, 1);
                    printf("# read a total of %lld, not %lld\n", sum, TOTAL);
                }
            }
        } else {
            atomic_fetch_add(&chk.failed_reads, 1);
        }
        freeReplyObject(r);
    }
    if (c)
        redisFree(c);
    return NULL;
}

static void fault_cycle(fixture *f, unsigned long long *rng)
{
    int paused = (int)(next_rand(rng) % FIXTURE_SHARDS);
    printf("# cycle: kill the proxy, pause s%d\n", paused + 1);
    fflush(stdout);
    fixture_sleep_ms(1500);
    assert_int_equal(harness_ringproxy_restart(&f->proxy, SIGKILL), 0);
    fixture_sleep_ms(1500);
    kill(f->shards[paused].pid, SIGSTOP);
    fixture_sleep_ms(1500);
    kill(f->shards[paused].pid, SIGCONT);
    fixture_sleep_ms(1500);
}

static void test_bank(void **state)
{
    const char *seed_env = getenv("TXN_CHECK_SEED");
    const char *cycles_env = getenv("TXN_CHECK_CYCLES");
    int cycles = cycles_env ? atoi(cycles_env) : 1;
    memset(&chk, 0, sizeof(chk));
    chk.seed = seed_env ? strtoull(seed_env, NULL, 10) : (unsigned long long)time(NULL) ^ getpid();
    if (!chk.seed)
        chk.seed = 1;
    printf("# bank checker: TXN_CHECK_SEED=%llu TXN_CHECK_CYCLES=%d\n", chk.seed, cycles);
    fflush(stdout);
    fixture *f = fixture_start(ATOMIC);
    *state = f;
    assert_non_null(f);
    chk.port = f->proxy.port;

    /* The accounts, spread over the four shards, in one transaction (retried
     * while the stores get ready). */
    redisContext *c = fixture_client(f);
    const char *argv[1 + 2 * ACCOUNTS];
    char names[ACCOUNTS][32], initial[16];
    snprintf(initial, sizeof(initial), "%d", INITIAL);
    argv[0] = "MSET";
    for (int i = 0; i < ACCOUNTS; i++) {
        account(names[i], sizeof(names[i]), i);
        argv[1 + 2 * i] = names[i];
        argv[2 + 2 * i] = initial;
    }
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    for (;;) {
        redisReply *r = fixture_cmd_argv(c, 1 + 2 * ACCOUNTS, argv, NULL);
        int ok = r->type == REDIS_REPLY_STATUS;
        freeReplyObject(r);
        if (ok)
            break;
        assert_true(fixture_now_ms() < deadline);
        fixture_sleep_ms(50);
    }
    int on_shard[FIXTURE_SHARDS] = {0};
    for (int i = 0; i < ACCOUNTS; i++)
        on_shard[fixture_owner(c, names[i], strlen(names[i]))]++;
    for (int s = 0; s < FIXTURE_SHARDS; s++)
        assert_true(on_shard[s] > 0);
    fixture_close(f, c);
    for (int w = 0; w < MSET_WRITERS; w++)
        for (int i = 0; i < OWN_ACCOUNTS; i++)
            chk.own[w][i] = INITIAL;

    pthread_t threads[MULTI_WRITERS + MSET_WRITERS + READERS];
    int n = 0;
    for (int i = 0; i < MULTI_WRITERS; i++)
        assert_int_equal(pthread_create(&threads[n++], NULL, multi_writer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < MSET_WRITERS; i++)
        assert_int_equal(pthread_create(&threads[n++], NULL, mset_writer, (void *)(intptr_t)i), 0);
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&threads[n++], NULL, reader, NULL), 0);
    unsigned long long rng = chk.seed;
    for (int i = 0; i < cycles; i++)
        fault_cycle(f, &rng);
    fixture_sleep_ms(1000);
    atomic_store(&chk.stop, 1);
    for (int i = 0; i < n; i++)
        pthread_join(threads[i], NULL);

    /* Everything recovered: no record left, the total, the counts. */
    deadline = fixture_now_ms() + fixture_bound_ms(15000);
    while (fixture_txn_records(f) != 0) {
        if (fixture_now_ms() > deadline) {
            for (int i = 0; i < FIXTURE_SHARDS; i++) {
                redisReply *k = fixture_cmd(f->direct[i], "EVAL %s 0",
                                            "redis.call('SELECT', 15) local k = "
                                            "redis.call('KEYS', 'ringproxy:txn:*') "
                                            "redis.call('SELECT', 0) return k");
                for (size_t j = 0; j < k->elements; j++)
                    printf("# s%d: left: %s\n", i + 1, k->element[j]->str);
                freeReplyObject(k);
            }
            fail_msg("transaction records left on the shards");
        }
        fixture_sleep_ms(100);
    }
    c = fixture_client(f);
    redisReply *r;
    long long sum = 0;
    for (int i = 0; i < ACCOUNTS; i++) {
        r = fixture_cmd(c, "GET %s", names[i]);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        sum += atoll(r->str);
        freeReplyObject(r);
    }
    long lost = 0;
    for (int w = 0; w < MULTI_WRITERS; w++) {
        r = fixture_cmd(c, "GET acked:%d", w);
        long counted = r->type == REDIS_REPLY_STRING ? atol(r->str) : 0;
        freeReplyObject(r);
        if (counted < chk.acked[w] || counted > chk.acked[w] + chk.ambiguous[w]) {
            lost++;
            printf("# writer %d: %ld transfers counted, %ld acknowledged, %ld unanswered\n", w,
                   counted, chk.acked[w], chk.ambiguous[w]);
        }
    }
    long mset_wrong = 0;
    for (int w = 0; w < MSET_WRITERS; w++) {
        long long bal[OWN_ACCOUNTS];
        assert_int_equal(read_own(c, w, bal), 0);
        if (chk.own_known[w] && memcmp(bal, chk.own[w], sizeof(bal)) != 0) {
            mset_wrong++;
            printf("# MSET writer %d: its accounts differ from its last acknowledged MSET\n", w);
        }
    }
    fixture_close(f, c);
    printf("# %ld transfers acknowledged, %ld failed or unanswered, %ld whole reads, %ld failed "
           "reads; violations: %ld reads off the total, final total %lld of %lld, %ld writers "
           "lost transfers, %ld MSET writers wrong (TXN_CHECK_SEED=%llu)\n",
           atomic_load(&chk.transfers), atomic_load(&chk.failed_transfers), atomic_load(&chk.reads),
           atomic_load(&chk.failed_reads), atomic_load(&chk.bad_reads), sum, TOTAL, lost,
           mset_wrong, chk.seed);
    assert_true(atomic_load(&chk.transfers) > 50);
    assert_true(atomic_load(&chk.reads) > 50);
    assert_int_equal(atomic_load(&chk.bad_reads), 0);
    assert_int_equal(sum, TOTAL);
    assert_int_equal(lost, 0);
    assert_int_equal(mset_wrong, 0);
}

static int stop(void **state)
{
    return fixture_stop(*state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bank, stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
