/* Transactions (MULTI, EXEC, DISCARD, WATCH, UNWATCH) and blocking commands:
 * what cannot run on the shared shard connections runs on one connection
 * reserved for the client (backend_reserve), to one shard. The router finds
 * the shard; this module decides what goes on the reserved connection and
 * keeps the client's order across it and the shared ones. */
#ifndef PROXY_TXN_H
#define PROXY_TXN_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/request.h"

/* The connection a request's part for shard s must take: the client's
 * reserved connection while its state lives there (WATCH, MULTI, a blocking
 * command), so that it runs in the client's order; NULL for the shared
 * pool. */
backend_conn *txn_conn_for(const session *sess, const shard *s);

/* Sends fragment f of req to shard i: over the client's reserved
 * connection while its transaction or WATCH is on that shard (so it runs in
 * the client's order), else over the shared pool (hint picks the
 * connection). */
void txn_send_to_shard(request *req, uint32_t i, uint64_t hint, fragment *f, const char *bytes,
                       size_t len);

/* Whether the client is between MULTI and EXEC/DISCARD: every command is
 * then queued on the transaction's shard (txn_queue). */
int txn_in_multi(const session *sess);

/* Commands queued so far in a MULTI, -1 outside one (CLIENT LIST). */
int txn_multi_count(const session *sess);

/* Whether the client has WATCHed keys (CLIENT LIST's flags). */
int txn_watching(const session *sess);

/* The reserved connection a blocked client's command waits on, NULL when
 * it is not blocked (CLIENT UNBLOCK). */
backend_conn *txn_blocked_conn(const session *sess);

/* Queues one command of a transaction: s is its keys' shard, or NULL for a
 * keyless command (it runs on the transaction's shard, or waits in the
 * proxy until a keyed command picks one). A keyed command on another shard
 * than the transaction's gets -CROSSSLOT and aborts the transaction.
 * Answers req. */
void txn_queue(request *req, shard *s, const char *bytes, size_t len);

/* An error was answered for a command given inside MULTI (unknown, wrong
 * arity, not possible through the proxy): EXEC will answer EXECABORT, as
 * Redis does. */
void txn_abort(session *sess);

/* MULTI, EXEC, DISCARD, WATCH (s: its keys' shard) and UNWATCH outside a
 * transaction's queue. Answers req. */
void txn_command(request *req, command_id id, shard *s, const char *bytes, size_t len);

/* A command that blocks on shard s (block_us: its own timeout, UINT64_MAX
 * for none) goes on the reserved connection; the client's next requests
 * wait for its reply. Answers req. */
void txn_blocking(request *req, shard *s, uint64_t block_us, const char *bytes, size_t len);

/* cross_shard = atomic: WATCH whose keys (argv[key_pos[i]], on ring
 * shards key_shard[i]) span shards: a WATCH of each shard's keys on a
 * connection held for it until EXEC, DISCARD, UNWATCH or RESET; EXEC then
 * checks them all before running the transaction (docs/transactions.md). */
void txn_watch_across(request *req, const resp_arg *argv, const size_t *key_pos,
                      const uint32_t *key_shard, size_t nkeys);

/* RESET: ends a transaction or WATCH (undoing it on the shard first) and
 * answers +RESET; a lingering connection stays. */
void txn_reset(request *req);

/* The client left: the reserved connection closes (what is
 * in flight on it gets an error) and the transaction state goes. */
void txn_end(session *sess);

#endif
