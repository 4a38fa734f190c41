/* Shared fixture of the proxy data-path tests: four redis-server shards
 * (s1..s4) behind one ringproxy, plus cmocka assertions on hiredis replies and
 * raw-socket helpers for bytes hiredis would never send. */
#ifndef TESTS_FIXTURE_H
#define TESTS_FIXTURE_H

#include <stddef.h>
#include <sys/time.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#include "harness.h"

/* Shards behind the proxy: enough that a 100-key request almost surely
 * touches each of them. */
#define FIXTURE_SHARDS 4

/* Buffers and clients a fixture holds for its tests at once, so that an
 * assertion failing half way (cmocka longjmps out of the test) leaks none of
 * them: the teardown's fixture_stop frees what the test did not. */
#define FIXTURE_OWNED_MAX 256

typedef struct fixture {
    harness_proc shards[FIXTURE_SHARDS]; /* s1..s4, in that order */
    harness_proc proxy;
    redisContext *direct[FIXTURE_SHARDS];     /* to each shard, bypassing the proxy */
    pid_t direct_pid[FIXTURE_SHARDS];         /* the shard process direct[i] talks to */
    void *owned[FIXTURE_OWNED_MAX];           /* fixture_alloc'd, freed by fixture_stop */
    redisContext *clients[FIXTURE_OWNED_MAX]; /* fixture_client's, freed by fixture_stop */
} fixture;

/* Starts the shards and a ringproxy over them, with extra [proxy] lines (may
 * be NULL). Returns a new fixture, or NULL with everything started stopped. */
fixture *fixture_start(const char *extra_proxy_lines);

/* Like fixture_start, but the proxy's ini lists only s1..s<nshards_in_ini>;
 * the other shards run empty, ready to be added by a reload (1 <= n <=
 * FIXTURE_SHARDS). */
fixture *fixture_start_some(const char *extra_proxy_lines, size_t nshards_in_ini);

/* Like fixture_start, with the proxy's RLIMIT_NOFILE lowered to nofile
 * (harness_ringproxy_start_nofile). */
fixture *fixture_start_nofile(const char *extra_proxy_lines, int nofile);

/* Stops the proxy (SIGTERM) and the shards, frees f with the buffers and
 * clients it still owns. Returns 0 when the proxy exited 0 (or a test had
 * stopped it already), -1 otherwise. */
int fixture_stop(fixture *f);

/* A new connection to the proxy, with harness_connect's timeout (2 s times
 * the harness timeout scale); fails the test if none. f owns it until
 * fixture_close. */
redisContext *fixture_client(fixture *f);

/* Closes a client of fixture_client (NULL: nothing). */
void fixture_close(fixture *f, redisContext *c);

/* len zeroed bytes owned by f until fixture_free (or fixture_stop, after a failed
 * assertion); fails the test when out of memory or slots. */
void *fixture_alloc(fixture *f, size_t len);
void fixture_free(fixture *f, void *p);

/* ms stretched by harness_timeout_scale: a bound on how long something may
 * take, or how long to wait for it. */
long long fixture_bound_ms(long long ms);

/* A hiredis timeout of fixture_bound_ms(ms), for redisSetTimeout. */
struct timeval fixture_bound_tv(long long ms);

/* The connection to shard i (0-based), reconnected if it broke (a shard that
 * was restarted). Fails the test if the shard does not answer. */
redisContext *fixture_shard(fixture *f, int i);

/* Runs a command and fails the test when there is no reply (connection error
 * or timeout). The caller frees the reply. */
/* fmt is hiredis's: printf-like plus %b (pointer, size_t length). */
redisReply *fixture_cmd(redisContext *c, const char *fmt, ...);
redisReply *fixture_cmd_argv(redisContext *c, int argc, const char **argv, const size_t *lens);

/* Reads the next reply of a pipeline; fails the test if there is none. */
redisReply *fixture_next_reply(redisContext *c);

/* Checks a reply and frees it; each fails the test with what was received. */
void fixture_expect_status(redisReply *r, const char *status);
void fixture_expect_int(redisReply *r, long long value);
void fixture_expect_str(redisReply *r, const char *str);
void fixture_expect_bin(redisReply *r, const void *bytes, size_t len);
void fixture_expect_nil(redisReply *r);
void fixture_expect_error(redisReply *r, const char *prefix);
/* An array of n elements; not freed (the caller looks inside, then frees). */
void fixture_expect_array(const redisReply *r, size_t n);

/* The words of a reply (strings, integers, array elements, space separated),
 * cut at cap, for searching replies whose layout may vary. */
void fixture_reply_text(const redisReply *r, char *out, size_t cap);

/* Shard index (0-based) that PROXY RING names as the owner of key; fails the
 * test if the answer names no shard of the fixture. */
int fixture_owner(redisContext *proxy_conn, const void *key, size_t len);

/* Key names tried by fixture_key_on_shard: with FIXTURE_SHARDS shards
 * sharing the ring, one of this many lands on any shard unless the ring is
 * badly skewed. */
#define FIXTURE_KEY_SEARCH 10000

/* Writes to out the first name "<prefix>:<n>" that PROXY RING places on
 * shard (0-based); fails the test if none of FIXTURE_KEY_SEARCH does. */
void fixture_key_on_shard(redisContext *proxy_conn, const char *prefix, int shard, char *out,
                          size_t cap);

/* Bit i set when shard i holds key (EXISTS asked directly on the shard). */
unsigned fixture_holders(fixture *f, const void *key, size_t len);

/* Sum of DBSIZE over the shards, asked directly. */
long long fixture_shards_dbsize(fixture *f);

/* Cross-shard transaction records (proxy/twopc.c) in the store (db 15) of
 * every shard: locks, stages, index entries, commit decisions; abort
 * decisions, kept a while by design, are not counted. */
long long fixture_txn_records(fixture *f);

/* Monotonic milliseconds, for bounds on how long something took. */
long long fixture_now_ms(void);
void fixture_sleep_ms(int ms);

/* Raw client socket to port on 127.0.0.1, blocking, TCP_NODELAY; -1 on error. */
int fixture_raw_connect(int port);

/* Writes all of buf; 0, or -1 when the peer closed or reset (not a failure by
 * itself: a proxy may close a client mid-request). */
int fixture_raw_send(int fd, const void *buf, size_t len);

/* Reads into buf (cap bytes, NUL-terminated, so cap - 1 data bytes) until want
 * bytes arrived, the peer closed (*closed = 1; a reset counts as closed), or
 * timeout_ms passed (*closed = 0). Returns the bytes read. */
size_t fixture_raw_read(int fd, char *buf, size_t cap, size_t want, int timeout_ms, int *closed);

/* 1 when s (length len) contains the NUL-terminated needle. */
int fixture_contains(const char *s, size_t len, const char *needle);

/* ---- a process seen from outside ---- */

/* 1 while pid has not exited (it is not reaped). */
int fixture_alive(pid_t pid);

/* Resident set size (VmRSS) and its peak (VmHWM) of a process, in KiB; -1
 * when unknown. */
long fixture_rss_kib(pid_t pid);
long fixture_peak_rss_kib(pid_t pid);

/* 1 when the process runs under AddressSanitizer or valgrind, whose own
 * bookkeeping (quarantine, shadow memory) makes its RSS meaningless as a
 * bound on what the program keeps. */
int fixture_memory_instrumented(pid_t pid);

/* The integer value of an INFO field such as "connected_clients" (asked
 * with a plain INFO), or -1 when absent. */
long long fixture_info_int(redisContext *c, const char *field);

/* 1 when the process's log contains needle. */
int fixture_log_contains(const harness_proc *p, const char *needle);

/* 1 when a SENTINEL REPLICAS reply (NULL: none) lists one replica and its
 * flags are just "slave": known, up, and so a replica the Sentinel can
 * promote. */
int fixture_sentinel_one_good_replica(const redisReply *replicas);

/* Polls INFO on c until field is at least want (bounded: 5 s, times the
 * harness timeout scale); fails the test otherwise. Returns the value seen.
 * The bytes of its own INFO requests are not counted in
 * total_net_input_bytes. */
long long fixture_wait_info_at_least(redisContext *c, const char *field, long long want);

/* Waits until the process's log contains needle (bounded as above); fails
 * the test otherwise. */
void fixture_wait_log(const harness_proc *p, const char *needle);

/* Reserved connections (transactions, blocking commands, subscribers) open
 * to all shards, summed from INFO shards. */
int fixture_reserved_connections(redisContext *c);

/* Polls until `want` reserved connections are open (bounded: 3 s, times
 * the harness timeout scale); fails the test otherwise. */
void fixture_wait_reserved(redisContext *c, int want);

#endif
