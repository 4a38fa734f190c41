/* Cross-shard transactions by two-phase commit (cross_shard = atomic): the
 * proxy is the coordinator, the shards are the participants, and every
 * record of a transaction (key locks, the staged commands, the decision)
 * lives in the hidden store (store.h), so any proxy can finish what a
 * crashed one left. docs/transactions.md has the protocol and what it
 * guarantees.
 *
 * Keys of a transaction this proxy runs are locked in the proxy too: a
 * request touching one waits (twopc_wait) until the transaction is over,
 * so no client of this proxy sees half of a commit. */
#ifndef PROXY_TWOPC_H
#define PROXY_TWOPC_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "proxy/request.h"
#include "proxy/resp.h"

/* What a transaction writes, and how its reply is made. */
typedef enum twopc_kind {
    TWOPC_MSET,   /* +OK */
    TWOPC_MSETNX, /* :1 when no key existed on any shard (all set), else :0 (none set) */
    TWOPC_DEL,    /* DEL, UNLINK: the number of keys removed */
    TWOPC_EXEC,   /* MULTI ... EXEC: an array, one reply per queued command */
} twopc_kind;

/* One command of a MULTI ... EXEC and the shard (ring index) its keys
 * are on. */
typedef struct twopc_cmd {
    size_t argc;
    const resp_arg *argv;
    uint32_t shard;
    size_t nkeys; /* its keys: their indexes in argv */
    const size_t *key_pos;
} twopc_cmd;

/* A queued command with no key: it runs on the transaction's first shard. */
#define TWOPC_ANY_SHARD UINT32_MAX

/* EXEC after WATCH: the check of the WATCHes, run once every participant
 * prepared and before the commit is decided. It calls done(ctx, verdict)
 * exactly once, now or later. Called with done NULL instead when the
 * transaction ended (answered) without reaching the check: the WATCHes
 * are to be dropped. */
typedef enum twopc_verdict {
    TWOPC_GATE_PASS, /* no watched key changed: the commit is decided */
    TWOPC_GATE_NIL,  /* a watched key changed: aborted, EXEC answers nil */
    TWOPC_GATE_FAIL, /* the check could not run: aborted, EXEC answers EXECABORT */
} twopc_verdict;
typedef void (*twopc_gate_done_fn)(void *ctx, twopc_verdict verdict);
typedef void (*twopc_gate_fn)(request *req, twopc_gate_done_fn done, void *ctx);

/* EXEC of a MULTI whose commands (bytes: their multibulk requests, one
 * after the other; shards: each one's ring shard or TWOPC_ANY_SHARD) touch
 * several shards: their keys found again, then twopc_exec. A command that
 * cannot run inside the commit's script (EVAL, FCALL and the like) answers
 * -EXECABORT with the reason. gate: NULL, or the WATCH check (above). 1
 * when the transaction started (req answered later), 0 when req was
 * answered at once (gate not called). */
int twopc_exec_queued(request *req, const char *bytes, size_t len, const uint32_t *shards, size_t n,
                      twopc_gate_fn gate);

/* Routes a request again once the keys it waited for are free (the
 * router's entry point): argv and raw point into the request's saved
 * bytes. */
typedef void (*twopc_reroute_fn)(request *req, size_t argc, const resp_arg *argv, const char *raw,
                                 size_t raw_len);

/* Registers the scripts with the store and reads the test-only crash point
 * (RINGPROXY_TXN_CRASH_AT). Call before store_start. */
void twopc_start(const config *cfg);

/* Runs a write whose keys span shards (MSET, MSETNX, DEL, UNLINK) as one
 * transaction and answers req through req->on_done: prepare on every
 * participant, the decision on the first, commit everywhere. argv's keys
 * are at key_pos[0..nkeys), on ring shards key_shard[], each followed by
 * step - 1 values. Everything it needs is copied. */
void twopc_split(request *req, twopc_kind kind, size_t argc, const resp_arg *argv,
                 const size_t *key_pos, const uint32_t *key_shard, size_t nkeys, size_t step);

/* Runs the queued commands of a MULTI as one transaction over their
 * shards; answers req with EXEC's array (one reply per command, in the
 * client's order). Everything it needs is copied. */
void twopc_exec(request *req, const twopc_cmd *cmds, size_t ncmds);

/* Whether a key is locked by a transaction of this proxy that is not over
 * (a request touching it must wait). Only worth asking while
 * srv.twopc_holding is not 0. */
int twopc_key_locked(const char *key, size_t len);

/* Parks req until the transactions holding its keys are over, then calls
 * reroute with a copy of bytes; after request_timeout (or 2 s when that is
 * 0) it is answered -TRYAGAIN instead. */
void twopc_wait(request *req, const char *bytes, size_t len, twopc_reroute_fn reroute);

/* Stops the timers; transactions still running are left to recovery.
 * Call before store_shutdown. */
void twopc_shutdown(void);

#endif
