/* workers = N: the supervisor, and what the workers share (see workers.h).
 *
 * The supervisor owns no event loop and no shard connection: it blocks the
 * signals it handles and takes them with sigtimedwait, so that each one is
 * handled once, in order, with its sender's pid (a worker asking for a
 * reload is not sent its own SIGHUP back). */
#include "proxy/workers.h"

#include <errno.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proxy/log.h"
#include "proxy/request.h"

/* How often the supervisor wakes without a signal: restarts due, start-up
 * progress. */
#define WORKERS_TICK_MS 100
/* First delay before a dead worker is started again; doubled for each
 * death that comes less than WORKERS_STABLE_MS after its start, up to
 * WORKERS_RESTART_MAX_MS, so a worker that crashes at once does not spin. */
#define WORKERS_RESTART_MIN_MS 100
#define WORKERS_RESTART_MAX_MS 10000
#define WORKERS_STABLE_MS      10000

/* One worker's place in the shared segment. The supervisor writes pid and
 * resets the rest before each start; the worker writes the rest. Readers
 * in other processes load fields whole (aligned 64-bit loads), never a
 * consistent snapshot of several. */
typedef struct worker_slot {
    int pid;            /* the worker process, 0 while none runs */
    int ready;          /* it serves clients */
    uint64_t ring;      /* fingerprint of the ring it routes new requests by, 0 = none yet */
    uint64_t drained;   /* the ring all it has in flight was routed by, 0 = not known */
    int nclients;       /* connected clients */
    int blocked;        /* clients in a blocking command (workers_tick) */
    server_stats stats; /* its counters (workers_publish) */
    command_counters *commands; /* its INFO commandstats (workers_tick), in the segment */
} worker_slot;

/* The segment: mapped MAP_SHARED before the first fork, so every worker
 * (restarted ones too) sees the same pages. */
typedef struct workers_shared {
    uint64_t migration_finished;  /* id of the last migration worker 0 finished */
    workers_mover_progress mover; /* worker 0's mover (workers_publish_mover) */
    server_stats retired;         /* counters of workers that exited */
    command_counters *retired_commands;
    worker_slot slot[CONFIG_WORKERS_MAX];
} workers_shared;

static workers_shared *shared;
static size_t ncommand_stats;

/* The supervisor's view of each worker. */
typedef struct worker_proc {
    pid_t pid;              /* 0: not running */
    int listen_fd;          /* its listen socket, -1 once closed (stopping) */
    uint64_t started_ms;    /* when it was forked */
    uint64_t restart_at_ms; /* not running: when to start it again */
    int delay_ms;           /* the next restart's delay */
} worker_proc;

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static worker_slot *my_slot(void)
{
    return &shared->slot[srv.worker_index];
}

/* ---- inside a worker ---- */

void workers_ready(void)
{
    if (!workers_enabled())
        return;
    __atomic_store_n(&my_slot()->ready, 1, __ATOMIC_RELEASE);
}

void workers_publish(void)
{
    worker_slot *w = my_slot();
    w->nclients = srv.nclients;
    w->stats = srv.stats;
}

void workers_tick(void)
{
    worker_slot *w = my_slot();
    int blocked = 0;
    for (const session *s = srv.sessions; s; s = s->next)
        blocked += s->blocked != 0;
    w->blocked = blocked;
    memcpy(w->commands, command_stats, ncommand_stats * sizeof(command_counters));
}

void workers_reload_others(void)
{
    if (!workers_enabled())
        return;
    if (kill(srv.supervisor_pid, SIGUSR1) < 0)
        log_warn("cannot ask the supervisor (pid %d) to reload the other workers: %s",
                 srv.supervisor_pid, strerror(errno));
}

/* Adds the error replies of one kind to to's (a new kind when there is
 * room, else counted as dropped). */
static void errorstat_add(server_stats *to, const server_errorstat *e)
{
    for (size_t i = 0; i < to->nerrorstats; i++)
        if (strcmp(to->errorstats[i].kind, e->kind) == 0) {
            to->errorstats[i].count += e->count;
            return;
        }
    if (to->nerrorstats < SERVER_ERRORSTATS_MAX)
        to->errorstats[to->nerrorstats++] = *e;
    else
        to->errorstats_dropped += e->count;
}

/* Adds the counters of from to to; the sampling fields are not counters. */
static void stats_add(server_stats *to, const server_stats *from)
{
    uint64_t *t = (uint64_t *)to;
    const uint64_t *f = (const uint64_t *)from;
    size_t n = offsetof(server_stats, errorstats) / sizeof(uint64_t);
    for (size_t i = 0; i < n; i++)
        t[i] += f[i];
    for (size_t i = 0; i < from->nerrorstats && i < SERVER_ERRORSTATS_MAX; i++)
        errorstat_add(to, &from->errorstats[i]);
    to->errorstats_dropped += from->errorstats_dropped;
    to->reloads += from->reloads;
    to->reload_failures += from->reload_failures;
    to->ops_per_sec += from->ops_per_sec;
}

void workers_totals(server_stats *out, int *nclients, int *blocked)
{
    *out = srv.stats;
    *nclients = srv.nclients;
    *blocked = 0;
    for (const session *s = srv.sessions; s; s = s->next)
        *blocked += s->blocked != 0;
    if (!workers_enabled())
        return;
    stats_add(out, &shared->retired);
    for (int i = 0; i < srv.workers; i++) {
        const worker_slot *w = &shared->slot[i];
        if (i == srv.worker_index || !__atomic_load_n(&w->pid, __ATOMIC_ACQUIRE))
            continue;
        server_stats st = w->stats;
        stats_add(out, &st);
        *nclients += w->nclients;
        *blocked += w->blocked;
    }
}

/* Adds the counters of from to to. */
static void command_add(command_counters *to, const command_counters *from)
{
    to->calls += from->calls;
    to->rejected_calls += from->rejected_calls;
    to->failed_calls += from->failed_calls;
    to->usec += from->usec;
    for (size_t b = 0; b < HISTOGRAM_BUCKETS; b++)
        to->latency.count[b] += from->latency.count[b];
}

command_counters workers_command_totals(unsigned stat)
{
    command_counters total = command_stats[stat];
    if (!workers_enabled())
        return total;
    command_add(&total, &shared->retired_commands[stat]);
    for (int i = 0; i < srv.workers; i++) {
        const worker_slot *w = &shared->slot[i];
        if (i == srv.worker_index || !__atomic_load_n(&w->pid, __ATOMIC_ACQUIRE))
            continue;
        command_add(&total, &w->commands[stat]);
    }
    return total;
}

uint64_t workers_ring_fingerprint(const ring *r)
{
    /* FNV-1a over each shard's name and point count, in ring order. */
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; r && i < ring_shard_count(r); i++) {
        const char *name = ring_shard_name(r, (uint32_t)i);
        for (const char *p = name; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        uint64_t points = ring_shard_points(r, (uint32_t)i) + 1; /* + 1: never 0 */
        for (int b = 0; b < 8; b++)
            h = (h ^ ((points >> (8 * b)) & 0xff)) * 1099511628211ull;
    }
    return h ? h : 1;
}

void workers_publish_ring(uint64_t routing, uint64_t drained)
{
    if (!workers_enabled())
        return;
    worker_slot *w = my_slot();
    __atomic_store_n(&w->ring, routing, __ATOMIC_RELEASE);
    __atomic_store_n(&w->drained, drained, __ATOMIC_RELEASE);
}

int workers_all_drained(uint64_t fp)
{
    if (!workers_enabled())
        return 1;
    for (int i = 0; i < srv.workers; i++) {
        const worker_slot *w = &shared->slot[i];
        /* A worker that is not running has nothing in flight; when it
         * starts again it reads the file the others read. */
        if (!__atomic_load_n(&w->pid, __ATOMIC_ACQUIRE))
            continue;
        if (__atomic_load_n(&w->ring, __ATOMIC_ACQUIRE) != fp ||
            __atomic_load_n(&w->drained, __ATOMIC_ACQUIRE) != fp)
            return 0;
    }
    return 1;
}

void workers_publish_mover(const workers_mover_progress *p)
{
    if (workers_enabled())
        shared->mover = *p;
}

workers_mover_progress workers_mover(void)
{
    return shared->mover;
}

void workers_migration_finished(uint64_t id)
{
    if (workers_enabled())
        __atomic_store_n(&shared->migration_finished, id, __ATOMIC_RELEASE);
}

int workers_migration_is_finished(uint64_t id)
{
    return workers_enabled() &&
           __atomic_load_n(&shared->migration_finished, __ATOMIC_ACQUIRE) == id;
}

/* ---- the supervisor ---- */

static int map_shared(int nworkers)
{
    ncommand_stats = command_stat_count();
    size_t commands = ncommand_stats * sizeof(command_counters);
    size_t len = sizeof(workers_shared) + (size_t)(nworkers + 1) * commands;
    void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        log_error("workers: cannot map %zu bytes of shared memory: %s", len, strerror(errno));
        return -1;
    }
    shared = mem;
    char *next = (char *)mem + sizeof(workers_shared);
    shared->retired_commands = (command_counters *)next;
    for (int i = 0; i < nworkers; i++)
        shared->slot[i].commands = (command_counters *)(next + (size_t)(i + 1) * commands);
    return 0;
}

/* Folds an exited worker's counters into the retired totals, so INFO's
 * totals do not go back when a worker is restarted. */
static void retire_slot(worker_slot *w)
{
    server_stats st = w->stats;
    st.ops_per_sec = 0;
    stats_add(&shared->retired, &st);
    for (size_t i = 0; i < ncommand_stats; i++) {
        shared->retired_commands[i].calls += w->commands[i].calls;
        shared->retired_commands[i].rejected_calls += w->commands[i].rejected_calls;
    }
}

static void clear_slot(worker_slot *w)
{
    command_counters *commands = w->commands;
    memset(commands, 0, ncommand_stats * sizeof(*commands));
    memset(w, 0, sizeof(*w));
    w->commands = commands;
}

/* Forks worker i. The child never returns. */
static int spawn(worker_proc *procs, int i, int nworkers, const char *path,
                 const sigset_t *child_mask, int (*worker_main)(const char *path))
{
    worker_slot *w = &shared->slot[i];
    clear_slot(w);
    pid_t supervisor = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("workers: cannot start worker %d: fork: %s", i, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* A worker goes when the supervisor does, even by SIGKILL. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != supervisor)
            _exit(1);
        sigprocmask(SIG_SETMASK, child_mask, NULL);
        /* The others' sockets are theirs: a worker that stops closes its
         * own and no longer accepts on any. */
        for (int j = 0; j < nworkers; j++)
            if (j != i && procs[j].listen_fd >= 0)
                close(procs[j].listen_fd);
        srv.workers = nworkers;
        srv.worker_index = i;
        srv.supervisor_pid = (int)supervisor;
        srv.worker_listen_fd = procs[i].listen_fd;
        exit(worker_main(path));
    }
    __atomic_store_n(&w->pid, (int)pid, __ATOMIC_RELEASE);
    procs[i].pid = pid;
    procs[i].started_ms = monotonic_ms();
    log_notice("workers: worker %d started (pid %d)", i, (int)pid);
    return 0;
}

/* Stopping: no new connection queues where no worker will take it. */
static void close_listen_fds(worker_proc *procs, int nworkers)
{
    for (int i = 0; i < nworkers; i++)
        if (procs[i].listen_fd >= 0) {
            close(procs[i].listen_fd);
            procs[i].listen_fd = -1;
        }
}

static void signal_workers(const worker_proc *procs, int nworkers, int sig, pid_t except)
{
    for (int i = 0; i < nworkers; i++)
        if (procs[i].pid > 0 && procs[i].pid != except)
            kill(procs[i].pid, sig);
}

static void describe_exit(int status, char *out, size_t outlen)
{
    if (WIFSIGNALED(status))
        snprintf(out, outlen, "killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(out, outlen, "exited with status %d", WEXITSTATUS(status));
}

/* The supervisor's state between signals. */
typedef struct supervisor {
    worker_proc procs[CONFIG_WORKERS_MAX];
    int nworkers;
    int starting; /* not every worker has been ready yet */
    int stopping; /* SIGTERM or SIGINT seen */
    int failed;   /* a worker failed to start: exit 1 */
} supervisor;

/* Reaps exited workers: during start-up or a stop, noted; otherwise
 * scheduled for a restart, with a delay that grows while they keep dying
 * young. */
static void reap(supervisor *sv)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < sv->nworkers; i++) {
            worker_proc *p = &sv->procs[i];
            if (p->pid != pid)
                continue;
            worker_slot *w = &shared->slot[i];
            int was_ready = w->ready;
            retire_slot(w);
            __atomic_store_n(&w->pid, 0, __ATOMIC_RELEASE);
            p->pid = 0;
            char how[80];
            describe_exit(status, how, sizeof(how));
            if (sv->stopping) {
                /* As one process would: a worker that did not stop cleanly
                 * (a sanitizer's report, a crash while stopping) makes the
                 * exit status 1. */
                int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
                if (!clean)
                    sv->failed = 1;
                log_at(clean ? CONFIG_LOG_INFO : CONFIG_LOG_WARN, "workers: worker %d (pid %d) %s",
                       i, (int)pid, how);
                break;
            }
            if (sv->starting && !was_ready) {
                log_error("workers: worker %d (pid %d) %s while starting: stopping", i, (int)pid,
                          how);
                sv->failed = 1;
                sv->stopping = 1;
                close_listen_fds(sv->procs, sv->nworkers);
                signal_workers(sv->procs, sv->nworkers, SIGTERM, 0);
                break;
            }
            uint64_t now = monotonic_ms();
            if (now - p->started_ms >= WORKERS_STABLE_MS)
                p->delay_ms = WORKERS_RESTART_MIN_MS;
            else
                p->delay_ms = p->delay_ms ? p->delay_ms * 2 : WORKERS_RESTART_MIN_MS;
            if (p->delay_ms > WORKERS_RESTART_MAX_MS)
                p->delay_ms = WORKERS_RESTART_MAX_MS;
            p->restart_at_ms = now + (uint64_t)p->delay_ms;
            log_warn("workers: worker %d (pid %d) %s after %llu ms; restarting it in %d ms", i,
                     (int)pid, how, (unsigned long long)(now - p->started_ms), p->delay_ms);
            break;
        }
    }
}

static int running_count(const supervisor *sv)
{
    int n = 0;
    for (int i = 0; i < sv->nworkers; i++)
        n += sv->procs[i].pid > 0;
    return n;
}

static void on_supervisor_signal(supervisor *sv, int sig, const siginfo_t *info)
{
    switch (sig) {
    case SIGCHLD:
        reap(sv);
        return;
    case SIGHUP:
        log_notice("workers: SIGHUP: reloading every worker");
        signal_workers(sv->procs, sv->nworkers, SIGHUP, 0);
        return;
    case SIGUSR1:
        /* A worker reloaded (PROXY RELOAD, the file watcher): the others
         * follow. Only workers may ask. */
        for (int i = 0; i < sv->nworkers; i++)
            if (sv->procs[i].pid > 0 && sv->procs[i].pid == info->si_pid) {
                log_info("workers: worker %d reloaded: reloading the others", i);
                signal_workers(sv->procs, sv->nworkers, SIGHUP, info->si_pid);
            }
        return;
    case SIGTERM:
    case SIGINT:
        /* A second one is passed on too: the workers then exit at once. */
        log_notice("workers: %s: stopping every worker", sig == SIGINT ? "SIGINT" : "SIGTERM");
        sv->stopping = 1;
        close_listen_fds(sv->procs, sv->nworkers);
        signal_workers(sv->procs, sv->nworkers, sig, 0);
        return;
    default:
        log_error("BUG: workers: unexpected signal %d", sig);
        abort();
    }
}

int workers_supervise(const config *cfg, int (*worker_main)(const char *path),
                      int (*open_listener)(const config *cfg, char *err, size_t errlen))
{
    const char *path = cfg->path;
    int nworkers = cfg->workers;
    if (map_shared(nworkers) < 0)
        return 1;
    supervisor sv = {.nworkers = nworkers, .starting = 1};
    for (int i = 0; i < nworkers; i++) {
        char err[300];
        sv.procs[i].listen_fd = open_listener(cfg, err, sizeof(err));
        if (sv.procs[i].listen_fd < 0) {
            log_error("%s", err);
            close_listen_fds(sv.procs, i);
            return 1;
        }
    }
    sigset_t handled, child_mask;
    sigemptyset(&handled);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGHUP);
    sigaddset(&handled, SIGUSR1);
    sigaddset(&handled, SIGCHLD);
    sigprocmask(SIG_BLOCK, &handled, &child_mask);
    log_notice("ringproxy %s supervisor: starting %d workers, config %s", RINGPROXY_VERSION,
               nworkers, path);
    for (int i = 0; i < nworkers && !sv.stopping; i++)
        if (spawn(sv.procs, i, nworkers, path, &child_mask, worker_main) < 0) {
            sv.failed = sv.stopping = 1;
            close_listen_fds(sv.procs, nworkers);
            signal_workers(sv.procs, nworkers, SIGTERM, 0);
        }
    while (!sv.stopping || running_count(&sv) > 0) {
        siginfo_t info;
        struct timespec tick = {0, WORKERS_TICK_MS * 1000000L};
        int sig = sigtimedwait(&handled, &info, &tick);
        if (sig > 0)
            on_supervisor_signal(&sv, sig, &info);
        reap(&sv); /* SIGCHLDs coalesce: look for every exit */
        if (sv.starting) {
            int ready = 0;
            for (int i = 0; i < nworkers; i++)
                ready += __atomic_load_n(&shared->slot[i].ready, __ATOMIC_ACQUIRE);
            if (ready == nworkers) {
                sv.starting = 0;
                log_notice("workers: %d workers serving", nworkers);
            }
        }
        if (sv.stopping)
            continue;
        uint64_t now = monotonic_ms();
        for (int i = 0; i < nworkers; i++)
            if (sv.procs[i].pid == 0 && now >= sv.procs[i].restart_at_ms &&
                spawn(sv.procs, i, nworkers, path, &child_mask, worker_main) < 0)
                sv.procs[i].restart_at_ms = now + WORKERS_RESTART_MAX_MS;
    }
    close_listen_fds(sv.procs, nworkers);
    log_notice("ringproxy stopped");
    return sv.failed ? 1 : 0;
}
