/* Integration-test harness: starts real redis-server, nutcracker and
 * ringproxy processes on free loopback ports, each in a private temp dir,
 * tracked by PID and stopped by PID (never by name). */
#ifndef TESTS_HARNESS_H
#define TESTS_HARNESS_H

#include <stddef.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

/* Every child runs in its own session, dies with the test process, and is
 * stopped at exit (atexit, SIGINT, SIGTERM) if the test did not stop it. The
 * first start also makes the test process ignore SIGPIPE: a peer that closes
 * is something a test checks, not a reason to die.
 *
 * One child process. */
typedef struct harness_proc {
    pid_t pid;     /* 0 when not running */
    int port;      /* the port it listens on */
    char dir[256]; /* private temp dir (config, logs) */
    char log[300]; /* path of its stderr/stdout log */
    int nofile;    /* RLIMIT_NOFILE it runs with, 0 = the test's own */
    char ip[16];   /* the loopback address it listens on, "" = 127.0.0.1 */
} harness_proc;

/* The factor (1 to 100) by which the harness stretches its start, stop and
 * connection timeouts, and tests their time bounds: $HARNESS_TIMEOUT_SCALE
 * (1 when unset; for a slow tool such as valgrind), times 3 when the tests
 * are built with ASan, times how many times slower than the reference the
 * machine measures once per process (CPU probe and load average, 1 to 8;
 * skipped when $HARNESS_TIMEOUT_AUTO is 0). Printed to stderr when above 1.
 * Waits end as soon as what they wait for happens, so a large factor costs
 * time only when a test is failing. */
int harness_timeout_scale(void);

/* A free loopback TCP port from a range unlikely to collide with other
 * software (checked by binding it). Never returns the same port twice in one
 * process. Aborts the test run if none is found. */
int harness_free_port(void);

/* Starts redis-server on a free port (no persistence), waits until it answers
 * PING (bounded: 5 s). Returns 0 or -1. */
int harness_redis_start(harness_proc *p);

/* Starts redis-server listening on ip:port only (ip another loopback
 * address such as 127.0.0.2, so that two servers share a port number),
 * and waits until it answers PING there. Returns 0 or -1. */
int harness_redis_start_at(harness_proc *p, const char *ip, int port);

/* Starts redis-server listening only with TLS (--port 0 --tls-port N,
 * tls-cluster on for MIGRATE) with cert_dir's server.crt, server.key and
 * ca.crt, requiring clients' certificates when auth_clients; waits until it
 * accepts a connection (bounded: 5 s). Returns 0 or -1. */
int harness_redis_start_tls(harness_proc *p, const char *cert_dir, int auth_clients);

/* Starts redis-server again on p->port (a fresh, empty temp dir) after
 * harness_proc_stop, e.g. to bring back a killed shard at the same address.
 * Waits until it answers PING. Returns 0 or -1. */
int harness_redis_restart(harness_proc *p);

/* Starts redis-server on a free port as a replica of the redis-server on
 * 127.0.0.1:master_port (REPLICAOF); waits until it answers PING, not until
 * it has synced. Returns 0 or -1. */
int harness_replica_start(harness_proc *p, int master_port);

/* Starts redis-sentinel on a free port with conf_body ("%PORT%" replaced by
 * that port) after its own port, bind and dir lines, in a config file of
 * its own that it may rewrite. Waits until it answers PING. 0 or -1. */
int harness_sentinel_start(harness_proc *p, const char *conf_body);

/* The same with TLS only (port 0, tls-port N; tls-replication yes, so that
 * it talks TLS to the masters, replicas and other Sentinels too) with
 * cert_dir's server.crt, server.key and ca.crt, requiring clients'
 * certificates when auth_clients; waits until it accepts a connection. */
int harness_sentinel_start_tls(harness_proc *p, const char *cert_dir, int auth_clients,
                               const char *conf_body);

/* Starts nutcracker with the given YAML pool body; "%PORT%" in yaml is
 * replaced by the listen port chosen. Waits for the port. */
int harness_nutcracker_start(harness_proc *p, const char *yaml);

/* Writes ini_text to <dir>/proxy.ini ("%PORT%" replaced by a free port) and
 * starts the ringproxy binary named by $RINGPROXY_BIN (default ./ringproxy)
 * with -c on it; waits until it answers PING. Returns 0 or -1. */
int harness_ringproxy_start(harness_proc *p, const char *ini_text);

/* Same, with the proxy's RLIMIT_NOFILE lowered to nofile descriptors (kept
 * across harness_ringproxy_restart), to test running out of them. */
int harness_ringproxy_start_nofile(harness_proc *p, const char *ini_text, int nofile);

/* Stops a running ringproxy with sig (as harness_proc_stop, but its dir
 * stays: the config and anything the proxy wrote next to it), then starts it
 * again on the same port with the same config file, its output appended to
 * the same log. Waits until it answers PING. Returns 0 or -1. */
int harness_ringproxy_restart(harness_proc *p, int sig);

/* Sends sig to the process (0: none, just wait for an exit already under
 * way) and waits for it (bounded: 5 s, then SIGKILL),
 * kills anything left in its process group, and removes its temp dir (kept if
 * $HARNESS_KEEP_DIRS is set). Returns the exit status as from waitpid, or -1. */
int harness_proc_stop(harness_proc *p, int sig);

/* Copies the last max_bytes of the process's log to stderr (to explain a
 * failure before the log is removed with its dir). */
void harness_dump_log(const harness_proc *p, size_t max_bytes);

/* Connects with hiredis, 2 s timeout on connect and commands (times the
 * timeout scale). NULL on failure. */
redisContext *harness_connect(int port);

/* Waits (bounded by timeout_ms) until a TCP port answers PING. 0 or -1. */
int harness_wait_ping(int port, int timeout_ms);

/* Builds an ini for ringproxy listening on %PORT% over the given redis
 * shards, named s1..sN, with extra [proxy] lines (may be NULL). Returns a
 * malloc'd string. */
char *harness_ini(const harness_proc *shards, size_t nshards, const char *extra_proxy_lines);

#endif
