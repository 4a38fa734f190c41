/* workers = N: one supervisor process and N worker processes, each a whole
 * proxy with its own event loop and shard connections, sharing the listen
 * port (SO_REUSEPORT). The supervisor forwards reloads to every worker,
 * stops them on SIGTERM/SIGINT and restarts one that dies. The workers meet
 * in a shared memory segment the supervisor maps before forking: counters
 * INFO sums, and the ring each worker routes by, so that no key moves before
 * every worker routes by the new ring (docs/design.md, "Workers"). With
 * workers = 1 none of this exists: the started process serves clients. */
#ifndef PROXY_WORKERS_H
#define PROXY_WORKERS_H

#include <stddef.h>
#include <stdint.h>

#include "proxy/command.h"
#include "proxy/server.h"
#include "ring/ring.h"

/* Runs the supervisor of cfg->workers (> 1) workers, each of which runs
 * worker_main(path) with srv.workers, srv.worker_index and
 * srv.worker_listen_fd set, until SIGTERM or SIGINT has stopped them all.
 * The supervisor opens each worker's listen socket with open_listener (a
 * callback, so that this module stays below the listener's) before the
 * first fork and keeps it: a restarted worker gets the same socket,
 * with the connections that queued while it was down. Returns the exit
 * status: 0, or 1 when the sockets cannot be opened, a worker failed to
 * start (it logged why) and the others were stopped, or a worker did not
 * exit 0 when stopped. */
int workers_supervise(const config *cfg, int (*worker_main)(const char *path),
                      int (*open_listener)(const config *cfg, char *err, size_t errlen));

/* Whether this process is one of several workers. */
static inline int workers_enabled(void)
{
    return srv.workers > 1;
}

/* A worker serves clients: the supervisor's start-up waits for every one. */
void workers_ready(void);

/* Copies this worker's client count and counters into its shared slot, once
 * per loop iteration (cheap: a few cache lines), so a client of another
 * worker sees them at once. */
void workers_publish(void);

/* Periodic: publishes what is too big or too costly for every iteration
 * (command counters, blocked clients). */
void workers_tick(void);

/* Asks the supervisor to send SIGHUP to every other worker: a reload this
 * worker just ran (PROXY RELOAD, the file watcher) reaches them all. */
void workers_reload_others(void);

/* Totals over every worker (the calling one counted live, the others as
 * last published, plus the workers that exited): counters, connected and
 * blocked clients. With one worker, this process's own. */
void workers_totals(server_stats *out, int *nclients, int *blocked);

/* INFO commandstats totals of one command (command.stat). */
command_counters workers_command_totals(unsigned stat);

/* ---- the ring, across workers ---- */

/* A fingerprint of a ring's placement (shard names and point counts): two
 * workers with the same fingerprint place every key alike. */
uint64_t workers_ring_fingerprint(const ring *r);

/* Publishes the ring this worker routes new requests by, and the ring that
 * everything it still has in flight was routed by (0: requests routed by
 * an older ring may still be in flight). */
void workers_publish_ring(uint64_t routing, uint64_t drained);

/* Whether every running worker routes by the ring fp and has nothing in
 * flight routed by another: only then may keys move. Always 1 with one
 * worker. */
int workers_all_drained(uint64_t fp);

/* Whether this worker runs the background key mover (worker 0, or the one
 * process). The others move keys on demand only. */
static inline int workers_runs_mover(void)
{
    return srv.worker_index == 0;
}

/* The background mover's progress, as INFO rebalance shows it: worker 0
 * publishes its own, the other workers (which run no mover) show it. */
typedef struct workers_mover_progress {
    uint64_t sources;      /* source shards */
    uint64_t sources_done; /* of which the pass is complete */
    uint64_t estimate;     /* their DBSIZE at the start */
    uint64_t keys_scanned;
    uint64_t keys_moved;
    uint64_t failures; /* failed batches retried */
} workers_mover_progress;

void workers_publish_mover(const workers_mover_progress *p);
workers_mover_progress workers_mover(void);

/* The mover's worker finished migration id (moving every key): the other
 * workers end theirs when they see it. */
void workers_migration_finished(uint64_t id);
int workers_migration_is_finished(uint64_t id);

#endif
