/* The internal-state store: hidden records the proxy keeps on each shard
 * (lock holds and counters today), in a reserved database (store_db) that
 * clients cannot reach through the proxy, that a client's FLUSHALL does not
 * empty and that rebalancing never scans. Reached over one control (ctlconn)
 * connection per shard, on the event loop, never blocking it.
 *
 * Each shard's store carries a marker record. A shard whose marker is
 * missing (it restarted empty, or its store was flushed behind the proxy's
 * back) is UNRESTORED: a module's restore hook must copy its records back
 * from the other shards before the store writes the marker and the shard
 * counts again. Every script run through store_eval checks the marker
 * first, so a loss is noticed on the first call after it. */
#ifndef PROXY_STORE_H
#define PROXY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "config/config.h"

/* What the proxy knows of one shard's store. */
typedef enum store_state {
    STORE_DOWN = 0,   /* not connected: calls are refused, reconnect pending */
    STORE_CHECKING,   /* connected: selecting store_db, reading the marker */
    STORE_UNRESTORED, /* marker missing: counts toward nothing until restored */
    STORE_RESTORING,  /* the restore hook runs */
    STORE_READY,      /* marker present on this connection's server */
} store_state;

/* A Lua script run on the store. KEYS[1] is always the marker (prepended by
 * store_eval); the body starts with STORE_SCRIPT_GUARD so that a shard that
 * lost its store answers an error instead of a wrong result. */
typedef struct store_script {
    const char *body;
    char sha[41]; /* from SCRIPT LOAD; empty until known (EVAL is sent) */
} store_script;

#define STORE_SCRIPT_GUARD                                                                         \
    "if redis.call('EXISTS', KEYS[1]) == 0 then "                                                  \
    "return redis.error_reply('NOMARKER store marker missing') end\n"

/* A reply to a store call: reply is NULL when the call failed (connection
 * lost, timeout, shutdown). Called exactly once per accepted call, never
 * from inside the store_* call that sent it. */
typedef void (*store_reply_fn)(void *privdata, size_t shard, const redisReply *reply);

/* A module's restore: called for a shard found UNRESTORED; must end with
 * store_restored(shard, ok) (at once or later). */
typedef void (*store_restore_fn)(size_t shard);

/* Registers a script (before store_start); it is loaded on every
 * connection so that EVALSHA finds it. */
void store_register_script(store_script *s);

/* Registers the restore hook (one; the lock module's). Without one a
 * shard's marker is simply written back. */
void store_set_restore_hook(store_restore_fn fn);

/* Connects to every shard of cfg (more may join: store_add_shard). 0, or
 * -1 with err. */
__attribute__((warn_unused_result)) int store_start(const config *cfg, char *err, size_t errlen);

/* Adds a shard that a reload brought in (the ones of the file at start
 * come with store_start) and starts connecting it; its index stays
 * valid. The index of the shard (also when it was there already), or -1
 * when the store is full or not started. */
int store_add_shard(const config_shard *cs);

/* Points the store of shard name at its new address (a sentinel shard's
 * master moved): the old connection is dropped and the new server checked
 * as on any connect. Nothing when the address is the same. */
void store_shard_moved(const char *name, const char *host, uint16_t port);

/* Fails every pending call and closes the connections. */
void store_shutdown(void);

/* Shards of the store, their names, and the index of a name (-1 if none). */
size_t store_count(void);
const char *store_name(size_t shard);
int store_index(const char *name);

store_state store_shard_state(size_t shard);
const char *store_state_name(store_state st);

/* Ends a restore: ok writes the marker (READY once it is acknowledged);
 * otherwise the shard is UNRESTORED again and the hook retried later. */
void store_restored(size_t shard, int ok);

/* Sends one command on shard's store connection. 0 when sent (fn runs
 * once later), -1 when the shard is not connected (fn is not called). A
 * call needs no READY state: the restore reads and writes with it. */
__attribute__((warn_unused_result)) int store_call(size_t shard, store_reply_fn fn, void *privdata,
                                                   int argc, const char **argv,
                                                   const size_t *argvlen);

/* Runs script s with the marker as KEYS[1], then nkeys keys and the other
 * arguments from argv (nkeys keys first). EVALSHA, and EVAL again when the
 * shard answers NOSCRIPT. A NOMARKER error turns the shard UNRESTORED
 * before fn sees it. As store_call. */
__attribute__((warn_unused_result)) int store_eval(size_t shard, store_script *s, store_reply_fn fn,
                                                   void *privdata, int nkeys, int argc,
                                                   const char **argv, const size_t *argvlen);

/* Compare-and-set of one record: sets key to value when it holds expected
 * (NULL: when it does not exist). The reply is integer 1 (set) or 0. As
 * store_call. */
__attribute__((warn_unused_result)) int store_cas(size_t shard, const char *key,
                                                  const char *expected, const char *value,
                                                  store_reply_fn fn, void *privdata);

#endif
