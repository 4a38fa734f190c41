/* A fake shard for the failures a real redis-server cannot be made to show
 * on demand: a forked child that speaks RESP on a loopback port and answers
 * by the prefix of the key (argv[1]) before its first ':':
 *
 *   loading:...   -LOADING Redis is loading the dataset in memory
 *   busy:...      -BUSY Redis is busy running a script. ...
 *   oom:...       -OOM command not allowed when used memory > 'maxmemory'.
 *   half:...      the first half of a 1000-byte bulk reply, then a close
 *   stall:...     the first half of a 1000-byte bulk reply, then silence:
 *                 the connection is read (FAKE_SLOW_READ_CHUNK bytes every
 *                 FAKE_SILENT_READ_GAP_MS, thrown away) but never answered
 *   slow:...      a FAKE_SLOW_BULK-byte bulk reply (byte i is 'a' + i % 26),
 *                 sent in FAKE_SLOW_CHUNKS pieces FAKE_SLOW_GAP_MS apart
 *   slowread:...  +OK, but the request is read slowly: FAKE_SLOW_READ_CHUNK
 *                 bytes every FAKE_SLOW_READ_GAP_MS
 *   garbage:...   a line that is no RESP reply at all ("@garbage")
 *   anything else GET: the key itself as a bulk string; other commands +OK
 *
 * PING answers +PONG. Requests are read with the proxy's own scanner; one
 * connection is served at a time while a slow reply or read goes on. The
 * child dies with the test process and is stopped by its pid. */
#ifndef TESTS_FAKE_SHARD_H
#define TESTS_FAKE_SHARD_H

#include <sys/types.h>

/* The exact error lines (without '-' and CRLF) the fake answers. */
#define FAKE_LOADING "LOADING Redis is loading the dataset in memory"
#define FAKE_BUSY                                                                                  \
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."
#define FAKE_OOM "OOM command not allowed when used memory > 'maxmemory'."

/* The slow: reply, 2 MiB in 16 pieces 100 ms apart (1.5 s in all): each
 * gap well under a 500 ms request timeout, the whole well over it. */
#define FAKE_SLOW_BULK   (2 * 1024 * 1024)
#define FAKE_SLOW_CHUNKS 16
#define FAKE_SLOW_GAP_MS 100
/* The slowread: request's pace, 1 MiB every 25 ms (40 MiB/s; every read
 * takes at most 1 MiB): slow enough that a big request takes far longer
 * than a 500 ms request timeout to go out, fast enough that the proxy's
 * socket send buffer (up to 4 MiB) drains well within it. */
#define FAKE_SLOW_READ_CHUNK  (1024 * 1024)
#define FAKE_SLOW_READ_GAP_MS 25
/* A stalled connection takes requests at half that pace (20 MiB/s). */
#define FAKE_SILENT_READ_GAP_MS 50
/* Largest request the fake takes (a bigger one closes the connection). */
#define FAKE_MAX_REQUEST (64 * 1024 * 1024)

typedef struct fake_shard {
    pid_t pid; /* 0 when not running */
    int port;
} fake_shard;

/* Binds a free loopback port and forks the fake onto it. 0 or -1. */
int fake_shard_start(fake_shard *s);

/* Kills the fake (by pid) and reaps it. */
void fake_shard_stop(fake_shard *s);

#endif
