/* Online rebalancing: after the shard list changes, keys whose owner changed
 * are moved with stock MIGRATE, on demand (before a request touches them) and
 * by a background mover that SCANs every shard losing ranges. The old ring
 * stays in force for lookups of where a key still is until the mover has
 * made one complete pass over every source. */
#ifndef PROXY_REBALANCE_H
#define PROXY_REBALANCE_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/backend.h"
#include "proxy/buf.h"
#include "proxy/request.h"
#include "ring/ring.h"

/* Starts moving keys from old_shards (placed by old_ring, in old_ring's
 * order) to srv.shards (placed by srv.ring). Takes ownership of old_ring and
 * of the old_shards array; shards in it that are not in srv.shards are
 * closed when the move ends. state_text is what to persist so a restarted
 * proxy resumes (an ini with the old shard list). 0, or -1 with err. */
__attribute__((warn_unused_result)) int rebalance_start(ring *old_ring, shard **old_shards,
                                                        size_t n_old, const char *state_text,
                                                        char *err, size_t errlen);

/* Whether a migration runs. */
int rebalance_running(void);

/* During a migration: the shard that held a key of this hash under the old
 * ring (where the key still is unless it was moved). NULL when idle. */
shard *rebalance_old_owner(uint32_t hash);

/* Requests that must move keys wait until the proxy has seen every request
 * sent under the old ring answered (so none of them can land on a source
 * after its key moved). Returns 1 and calls resume(req) later when the
 * barrier is still up, 0 when the caller can go on now. */
int rebalance_wait_barrier(request *req, void (*resume)(request *req));

/* Appends the start of a MIGRATE of nkeys keys to target: the multibulk
 * header and every argument up to KEYS (with AUTH when the shards have a
 * password); the caller appends the nkeys keys as bulks and checks
 * buf_failed(out) once done. The one encoding of MIGRATE, for the mover and
 * for on-demand moves. */
void rebalance_migrate_head(buf *out, const shard *target, size_t nkeys);

/* MIGRATE admission. Redis runs MIGRATE synchronously: the source waits,
 * serving nobody, until the target has answered. Two shards migrating to
 * each other at once (a ring edit that moves keys both ways, as undoing one
 * does) wait on each other until migrate_timeout, fail, and are retried
 * into the same embrace. So a MIGRATE from one shard to another is sent
 * only while the source is the target of none in flight and the target the
 * source of none: no shard is ever both, so none waits on one that waits.
 *
 * rebalance_migrate_admit counts the MIGRATE in flight and returns 1, or
 * returns 0 when it must wait; every admitted one is released once, when
 * its reply (or its failure) arrives. */
int rebalance_migrate_admit(shard *from, shard *to);
void rebalance_migrate_release(shard *from, shard *to);

/* Calls retry(arg) after MIGRATEs are released, in the order of the calls
 * to this, until it returns 1 (it sent what waited, or gave up). */
void rebalance_migrate_wait(int (*retry)(void *arg), void *arg);

/* Counts keys moved on demand (for INFO). */
void rebalance_count_on_demand(size_t moved, size_t busykey_deleted);

/* Appends the INFO rebalance section (Redis INFO format). 0 or -1; a
 * failure is also kept in b (buf_failed). */
int rebalance_info(buf *b);

/* A source shard now has another address (a failover): its SCAN cursor
 * means nothing on the new master, so the mover scans it again from the
 * start, on a new control connection (a batch in flight fails and is
 * retried). */
void rebalance_source_readdressed(const shard *s);

/* Periodic: drives the mover (rate limit, retries, stalls). */
void rebalance_tick(void);

/* A reload arrived during a migration: it is applied when the migration
 * ends. Returns 1 when one is due now (and clears the flag). */
void rebalance_queue_reload(void);
int rebalance_take_queued_reload(void);

/* Path of the state file for a config file. */
void rebalance_state_path(const char *config_path, char *out, size_t outlen);

/* ---- several proxies (docs/rebalancing.md, "Several proxies") ----
 * epoch.c keeps the fleet's ring epoch on the shards and tells the local
 * migration what the fleet allows. */

/* Turns the fleet mode on (before any migration starts): every migration's
 * barrier then also waits for rebalance_fleet_ready(), and its mover runs
 * only after rebalance_set_mover(1). on_finished is called when this
 * proxy's movers complete their passes (the migration has just ended). */
void rebalance_fleet_enable(void (*on_finished)(void));

/* The ring the running migration moves from, by fingerprint and as
 * proxy.ini text (set by the one who starts it); "" when idle. */
void rebalance_set_old_ring(const char *fp, const char *text);
const char *rebalance_old_fp(void);
const char *rebalance_old_text(void);

/* Every shard is fenced against proxies on another ring: keys may move. */
void rebalance_fleet_ready(void);
int rebalance_fleet_ready_seen(void);

/* Whether this proxy runs the mover (it holds the fleet's lease). */
void rebalance_set_mover(int on);

/* The movers' progress as "s1=<cursor>,s2=done" (what a proxy taking over
 * resumes from); its length. */
size_t rebalance_progress(char *out, size_t outlen);
void rebalance_resume_progress(const char *progress);

/* The fleet's migration completed (another proxy's movers ended it). */
void rebalance_fleet_done(void);

/* Ends the running migration without moving more (the fleet took another
 * ring); requests waiting for its barrier get -TRYAGAIN why. */
void rebalance_abort(const char *why);

/* Abandons the running move for another one the caller starts at once
 * (the shards record another previous ring): the requests waiting at its
 * barrier are held, not failed, until rebalance_adopt_held hands them to
 * the next move's barrier (or routes them, if none waits; or answers them
 * -TRYAGAIN if no move started). */
void rebalance_abandon_holding(const char *why);
void rebalance_adopt_held(void);

/* Stops the mover and frees everything (exit). The state file stays, so a
 * restart resumes. */
void rebalance_shutdown(void);

#endif
