/* A fake shard for the failures a real redis-server cannot be made to show
 * on demand: a forked child that speaks RESP on a loopback port and answers
 * by the prefix of the key (argv[1]) before its first ':':
 *
 *   loading:...   -LOADING Redis is loading the dataset in memory
 *   busy:...      -BUSY Redis is busy running a script. ...
 *   oom:...       -OOM command not allowed when used memory > 'maxmemory'.
 *   half:...      the first half of a 1000-byte bulk reply, then a close
 *   garbage:...   a line that is no RESP reply at all ("@garbage")
 *   anything else GET: the key itself as a bulk string; other commands +OK
 *
 * PING answers +PONG. Requests are read with the proxy's own scanner. The
 * child dies with the test process and is stopped by its pid. */
#ifndef TESTS_FAKE_SHARD_H
#define TESTS_FAKE_SHARD_H

#include <sys/types.h>

/* The exact error lines (without '-' and CRLF) the fake answers. */
#define FAKE_LOADING "LOADING Redis is loading the dataset in memory"
#define FAKE_BUSY                                                                                  \
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."
#define FAKE_OOM "OOM command not allowed when used memory > 'maxmemory'."

typedef struct fake_shard {
    pid_t pid; /* 0 when not running */
    int port;
} fake_shard;

/* Binds a free loopback port and forks the fake onto it. 0 or -1. */
int fake_shard_start(fake_shard *s);

/* Kills the fake (by pid) and reaps it. */
void fake_shard_stop(fake_shard *s);

#endif
