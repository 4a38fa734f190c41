/* ringproxy: a sharding proxy for Redis. Start-up, signals, the maintenance
 * timer and the event loop. */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "config/config.h"
#include "proxy/access.h"
#include "proxy/backend.h"
#include "proxy/client.h"
#include "proxy/dns.h"
#include "proxy/epoch.h"
#include "proxy/listener.h"
#include "proxy/lock.h"
#include "proxy/metrics.h"
#include "proxy/log.h"
#include "proxy/pause.h"
#include "proxy/pubsub.h"
#include "proxy/rebalance.h"
#include "proxy/reload.h"
#include "proxy/replica.h"
#include "proxy/request.h"
#include "proxy/resolver.h"
#include "proxy/sentinel.h"
#include "proxy/server.h"
#include "proxy/store.h"
#include "proxy/twopc.h"
#include "proxy/workers.h"
#include "proxy/tls.h"

/* Period of the maintenance timer: timeouts fire within this of their due. */
#define MAINTENANCE_MS 100
/* Below this many commands per second the proxy counts as quiet and returns
 * freed memory to the system once a second. */
#define MAINTENANCE_TRIM_BELOW_OPS 1000
/* How often the config file is checked for changes on disk. */
#define CONFIG_WATCH_MS 1000
/* How long a stopping proxy waits for in-flight requests to be answered. */
#define SHUTDOWN_GRACE_MS 5000

server srv;

static struct event ev_maintenance;
static struct event ev_sigterm, ev_sigint, ev_sighup;
static int loop_done;
static uint64_t stop_deadline_us;
static uint64_t next_watch_us;

static void usage(FILE *out)
{
    fprintf(out, "Usage: ringproxy [-c FILE] [-t] [-v] [-h]\n"
                 "  -c FILE  config file (default: proxy.ini)\n"
                 "  -t       check the config file and exit (0 valid, 1 invalid)\n"
                 "  -v       print the version and exit\n"
                 "  -h       print this help and exit\n");
}

static void do_reload(const char *why)
{
    char err[600];
    (void)!reload_config(why, err, sizeof(err));
}

static void on_maintenance(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    server_clock_update();
    uint64_t now = srv.now_us;
    backend_tick();
    client_tick();
    pubsub_tick();
    rebalance_tick();
    sentinel_tick();
    dns_tick();
    resolver_tick();
    replica_tick();
    if (rebalance_take_queued_reload())
        do_reload("queued during the rebalance");
    server_stats *st = &srv.stats;
    if (now - st->ops_sample_us >= 1000000) {
        if (st->ops_sample_us)
            st->ops_per_sec =
                (st->commands - st->ops_sample_commands) * 1000000u / (now - st->ops_sample_us);
        st->ops_sample_us = now;
        st->ops_sample_commands = st->commands;
        /* Quiet now: give freed memory back to the system, so one burst
         * (a big value, a deep pipeline, many clients) does not pin RSS. */
        if (st->ops_per_sec < MAINTENANCE_TRIM_BELOW_OPS) {
            request_trim_cache();
            malloc_trim(0);
        }
    }
    if (workers_enabled())
        workers_tick();
    /* With several workers, worker 0 alone watches the file and the
     * supervisor passes the reload on, so each edit is read once by each. */
    if (srv.cfg->watch_config && workers_runs_mover() && now >= next_watch_us) {
        next_watch_us = now + CONFIG_WATCH_MS * 1000;
        if (reload_file_changed()) {
            do_reload("file changed on disk");
            workers_reload_others();
        }
    }
    if (srv.stopping) {
        int busy = client_busy_count();
        if (busy == 0 || now >= stop_deadline_us) {
            if (busy)
                log_warn("shutdown: %d clients still waiting after %d ms, closing them", busy,
                         SHUTDOWN_GRACE_MS);
            loop_done = 1;
        }
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    server_clock_update();
    if (sig == SIGHUP) {
        do_reload("SIGHUP");
        return;
    }
    if (srv.stopping) {
        log_notice("%s while stopping: exiting now", sig == SIGINT ? "SIGINT" : "SIGTERM");
        loop_done = 1;
        return;
    }
    log_notice("%s: no new clients, finishing in-flight requests",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
    srv.stopping = 1;
    listener_stop();
    stop_deadline_us = server_now_us() + SHUTDOWN_GRACE_MS * 1000u;
}

static int check_config(const char *path)
{
    config *cfg = NULL;
    char err[600];
    if (config_load(path, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    /* The ring has limits of its own (total weight): build it too. */
    ring *r = config_ring(cfg, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "%s: %s\n", path, err);
        config_free(cfg);
        return 1;
    }
    ring_free(r);
    /* and the users: a rule may name a command the table does not know */
    access_set *users = access_build(cfg, err, sizeof(err));
    if (!users) {
        fprintf(stderr, "%s\n", err);
        config_free(cfg);
        return 1;
    }
    access_free(users);
    /* and the TLS files: a certificate or key that does not load */
    if (tls_configure(cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: %s\n", path, err);
        config_free(cfg);
        return 1;
    }
    tls_shutdown();
    printf("%s: ok, %zu shard%s\n", path, cfg->nshards, cfg->nshards == 1 ? "" : "s");
    config_free(cfg);
    return 0;
}

/* Starts what serves clients, taking cfg: shards, ring and any unfinished
 * rebalance, the lock store, the listener. 0, or -1 after logging why with
 * everything started stopped again. */
static int start_services(config *cfg)
{
    char err[600];
    /* The fleet's ring epoch registers its store scripts, and puts the
     * rebalance in fleet mode before a migration can resume. */
    epoch_register();
    if (reload_start(cfg, err, sizeof(err)) < 0) {
        log_error("%s", err);
        reload_shutdown();
        return -1;
    }
    /* The lock and transaction modules register their scripts before the
     * store connects. */
    twopc_start(cfg);
    if (lock_start(cfg, err, sizeof(err)) < 0 || store_start(cfg, err, sizeof(err)) < 0) {
        log_error("%s", err);
        twopc_shutdown();
        lock_free();
        reload_shutdown();
        return -1;
    }
    epoch_start();
    if (listener_start(cfg->listen_host, cfg->listen_port, cfg->tcp_backlog, 0, err, sizeof(err)) <
            0 ||
        (cfg->tls_listen_host && listener_start(cfg->tls_listen_host, cfg->tls_listen_port,
                                                cfg->tcp_backlog, 1, err, sizeof(err)) < 0) ||
        metrics_start(cfg, err, sizeof(err)) < 0) {
        listener_stop();
        log_error("%s", err);
        epoch_shutdown();
        lock_shutdown();
        twopc_shutdown();
        store_shutdown();
        lock_free();
        reload_shutdown();
        return -1;
    }
    return 0;
}

/* Signals and the maintenance timer. */
static void add_events(void)
{
    evsignal_assign(&ev_sigterm, srv.base, SIGTERM, on_signal, NULL);
    evsignal_assign(&ev_sigint, srv.base, SIGINT, on_signal, NULL);
    evsignal_assign(&ev_sighup, srv.base, SIGHUP, on_signal, NULL);
    event_add(&ev_sigterm, NULL);
    event_add(&ev_sigint, NULL);
    event_add(&ev_sighup, NULL);
    event_assign(&ev_maintenance, srv.base, -1, EV_PERSIST, on_maintenance, NULL);
    struct timeval tick = {0, MAINTENANCE_MS * 1000};
    event_add(&ev_maintenance, &tick);
}

/* One loop iteration runs every ready callback, then writes what they
 * queued: requests from many clients leave in one write per backend
 * connection, replies to many requests in one write per client. */
static void run_loop(void)
{
    while (!loop_done) {
        srv.loop_iteration++;
        if (event_base_loop(srv.base, EVLOOP_ONCE) < 0) {
            log_error("event loop failed");
            break;
        }
        while (backend_flush_pending() + client_flush_pending() > 0)
            ;
        if (workers_enabled())
            workers_publish();
    }
}

static void stop_services(void)
{
    client_close_all();
    pause_shutdown();
    listener_stop();
    metrics_stop();
    event_del(&ev_maintenance);
    event_del(&ev_sigterm);
    event_del(&ev_sigint);
    event_del(&ev_sighup);
    dns_shutdown();
    epoch_shutdown();
    lock_shutdown();
    twopc_shutdown();
    store_shutdown();
    lock_free();
    reload_shutdown();
    /* Last of the connections' owners: every lookup is cancelled by now,
     * and one more turn of the loop delivers the cancellations. */
    resolver_shutdown();
    tls_shutdown();
    request_trim_cache();
}

/* Serves clients with cfg (taken) until stopped: the one process, or one
 * worker. Returns the exit status. */
static int serve(config *cfg)
{
    log_set_level(cfg->log_level);
    signal(SIGPIPE, SIG_IGN);
    srv.base = event_base_new();
    if (!srv.base) {
        log_error("cannot create the event loop");
        config_free(cfg);
        return 1;
    }
    srv.start_time = time(NULL);
    srv.now_us = server_now_us();
    if (start_services(cfg) < 0) {
        event_base_free(srv.base);
        return 1;
    }
    add_events();
    if (!rebalance_running()) {
        uint64_t fp = workers_ring_fingerprint(srv.ring);
        workers_publish_ring(fp, fp);
    }
    workers_ready();
    if (workers_enabled())
        log_notice("ringproxy %s worker %d of %d listening on %s:%d, %zu shards, config %s",
                   RINGPROXY_VERSION, srv.worker_index, srv.workers, srv.cfg->listen_host,
                   srv.cfg->listen_port, srv.nshards, srv.cfg->path);
    else
        log_notice("ringproxy %s listening on %s:%d, %zu shards, config %s", RINGPROXY_VERSION,
                   srv.cfg->listen_host, srv.cfg->listen_port, srv.nshards, srv.cfg->path);
    if (srv.cfg->tls_listen_host)
        log_notice("TLS clients on %s:%d (tls_auth_clients = %s)", srv.cfg->tls_listen_host,
                   srv.cfg->tls_listen_port, config_tls_auth_name(srv.cfg->tls_auth_clients));
    run_loop();
    stop_services();
    event_base_free(srv.base);
    log_notice(workers_enabled() ? "worker stopped" : "ringproxy stopped");
    return 0;
}

/* A worker reads the file itself: one restarted later gets the config the
 * others run now, reloads included. */
static int run_worker(const char *path)
{
    config *cfg = NULL;
    char err[600];
    if (config_load(path, &cfg, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return 1;
    }
    return serve(cfg);
}

/* A worker's listen socket, opened by the supervisor: SO_REUSEPORT, so
 * that the workers' sockets share the port. */
static int open_worker_listener(const config *cfg, char *err, size_t errlen)
{
    return listener_open(cfg->listen_host, cfg->listen_port, cfg->tcp_backlog, 1, err, errlen);
}

static int run(const char *path)
{
    config *cfg = NULL;
    char err[600];
    if (config_load(path, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (cfg->workers == 1)
        return serve(cfg);
    log_set_level(cfg->log_level);
    signal(SIGPIPE, SIG_IGN);
    int status = workers_supervise(cfg, run_worker, open_worker_listener);
    config_free(cfg);
    return status;
}

int main(int argc, char **argv)
{
    const char *path = "proxy.ini";
    int test_only = 0, opt;
    while ((opt = getopt(argc, argv, "c:tvh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            test_only = 1;
            break;
        case 'v':
            printf("ringproxy %s\n", RINGPROXY_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ringproxy: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 1;
    }
    if (test_only)
        return check_config(path);
    return run(path);
}
