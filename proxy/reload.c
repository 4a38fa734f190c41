/* Applying a config: the first one at start-up, and a new one on reload.
 * Shards are matched by name, so a re-addressed shard keeps its place on the
 * ring; a change of the ring itself (a shard added, removed or re-weighted)
 * starts a rebalance that moves the keys whose owner changed. */
#include "proxy/reload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proxy/access.h"
#include "proxy/backend.h"
#include "proxy/dns.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/replica.h"
#include "proxy/sentinel.h"
#include "proxy/server.h"
#include "proxy/slowlog.h"
#include "proxy/tls.h"

/* The config file as last read, to notice edits (reload_file_changed). */
static struct stat config_stat;

static void remember_config_stat(void)
{
    if (stat(srv.cfg->path, &config_stat) < 0)
        memset(&config_stat, 0, sizeof(config_stat));
}

int reload_file_changed(void)
{
    struct stat st;
    if (!srv.cfg || stat(srv.cfg->path, &st) < 0)
        return 0;
    /* An editor's write-then-rename changes the inode; an in-place write the
     * mtime or size. */
    return st.st_ino != config_stat.st_ino || st.st_size != config_stat.st_size ||
           st.st_mtim.tv_sec != config_stat.st_mtim.tv_sec ||
           st.st_mtim.tv_nsec != config_stat.st_mtim.tv_nsec;
}

static shard *find_shard(const char *name)
{
    for (size_t i = 0; i < srv.nshards; i++)
        if (strcmp(srv.shards[i]->name, name) == 0)
            return srv.shards[i];
    return NULL;
}

/* The state a restarted proxy needs to resume a migration: the old shard
 * list and placement settings, in proxy.ini format so config_load reads it. */
char *reload_ring_text(const config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out)
        return NULL;
    char addr[CONFIG_ADDR_MAX];
    fprintf(out, "; ringproxy rebalance state: the shard list keys are being moved away from.\n"
                 "; Written when a migration starts, removed when it ends.\n[proxy]\n");
    config_format_addr(cfg->listen_host, cfg->listen_port, addr, sizeof(addr));
    fprintf(out, "listen = %s\n", addr);
    fprintf(out, "hash = %s\ncompat = %s\n", hash_name(cfg->hash),
            cfg->compat == RING_TWEMPROXY ? "twemproxy" : "none");
    if (cfg->hash_tag_open)
        fprintf(out, "hash_tag = %c%c\n", cfg->hash_tag_open, cfg->hash_tag_close);
    else
        fprintf(out, "hash_tag =\n");
    /* Sentinel lines need Sentinels to load: the ring's text names them
     * (they do not place keys: the fingerprint leaves them out). */
    for (size_t i = 0; i < cfg->sentinels.n; i++) {
        config_format_addr(cfg->sentinels.addrs[i].host, cfg->sentinels.addrs[i].port, addr,
                           sizeof(addr));
        fprintf(out, "%s%s", i ? ", " : "sentinels = ", addr);
    }
    if (cfg->sentinels.n)
        fprintf(out, "\n");
    fprintf(out, "[shards]\n");
    for (size_t i = 0; i < cfg->nshards; i++) {
        const config_shard *cs = &cfg->shards[i];
        if (cs->sentinel_master) {
            fprintf(out, "%s = sentinel:%s weight=%u\n", cs->name, cs->sentinel_master,
                    (unsigned)cs->weight);
            continue;
        }
        config_format_addr(cs->host, cs->port, addr, sizeof(addr));
        fprintf(out, "%s = %s weight=%u\n", cs->name, addr, (unsigned)cs->weight);
    }
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* The ring's fingerprint: FNV-1a (64 bits) over what places keys (hash,
 * hash tags, compat, then each shard's name and weight in name order), so
 * two files that route every key alike have the same one whatever their
 * addresses, line order or other settings. */
void reload_ring_fingerprint(const config *cfg, char *out, size_t outlen)
{
    uint64_t h = 1469598103934665603ull;
    char line[300];
    size_t *order = calloc(cfg->nshards ? cfg->nshards : 1, sizeof(*order));
    if (!order)
        abort();
    for (size_t i = 0; i < cfg->nshards; i++) {
        size_t j = i;
        while (j > 0 && strcmp(cfg->shards[order[j - 1]].name, cfg->shards[i].name) > 0) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    for (size_t i = 0; i <= cfg->nshards; i++) {
        int n = i == 0 ? snprintf(line, sizeof(line), "%s %d %c%c\n", hash_name(cfg->hash),
                                  (int)cfg->compat, cfg->hash_tag_open ? cfg->hash_tag_open : '-',
                                  cfg->hash_tag_close ? cfg->hash_tag_close : '-')
                       : snprintf(line, sizeof(line), "%s %u\n", cfg->shards[order[i - 1]].name,
                                  (unsigned)cfg->shards[order[i - 1]].weight);
        for (int k = 0; k > -1 && k < n && k < (int)sizeof(line); k++) {
            h ^= (unsigned char)line[k];
            h *= 1099511628211ull;
        }
    }
    free(order);
    snprintf(out, outlen, "%016llx", (unsigned long long)h);
}

/* Starts moving keys from old_cfg's ring (taken) to the running one. */
static int resume_from(config *old_cfg, const char *from, char *err, size_t errlen)
{
    char old_fp[24];
    reload_ring_fingerprint(old_cfg, old_fp, sizeof(old_fp));
    char *old_text = reload_ring_text(old_cfg);
    ring *old_ring = config_ring(old_cfg, err, errlen);
    shard **old_shards = calloc(old_cfg->nshards, sizeof(*old_shards));
    if (!old_ring || !old_shards || !old_text) {
        ring_free(old_ring);
        free(old_shards);
        free(old_text);
        config_free(old_cfg);
        return -1;
    }
    for (size_t i = 0; i < old_cfg->nshards; i++) {
        old_shards[i] = find_shard(old_cfg->shards[i].name);
        if (!old_shards[i]) {
            old_shards[i] =
                backend_shard_new(&old_cfg->shards[i], srv.cfg->backend_connections, err, errlen);
            if (!old_shards[i]) {
                for (size_t j = 0; j < i; j++)
                    if (!find_shard(old_shards[j]->name))
                        backend_shard_free(old_shards[j]);
                free(old_shards);
                ring_free(old_ring);
                free(old_text);
                config_free(old_cfg);
                return -1;
            }
            backend_shard_start(old_shards[i]);
        }
    }
    log_notice("resuming the rebalance recorded in %s (%zu old shards)", from, old_cfg->nshards);
    size_t n_old = old_cfg->nshards;
    config_free(old_cfg);
    int rc = rebalance_start(old_ring, old_shards, n_old, NULL, err, errlen);
    if (rc == 0)
        rebalance_set_old_ring(old_fp, old_text);
    free(old_text);
    return rc;
}

/* A proxy stopped mid-migration left the old shard list next to its config:
 * resume moving keys from it (the shards' record, epoch.c, has the last
 * word: a different old ring there replaces this one). */
static int resume_rebalance(char *err, size_t errlen)
{
    char path[4200];
    rebalance_state_path(srv.cfg->path, path, sizeof(path));
    if (access(path, F_OK) != 0)
        return 0;
    config *old_cfg = NULL;
    char detail[600];
    if (config_load(path, &old_cfg, detail, sizeof(detail)) < 0) {
        snprintf(err, errlen, "cannot resume the rebalance recorded in %s: %s", path, detail);
        return -1;
    }
    return resume_from(old_cfg, path, err, errlen);
}

int reload_fleet_rebalance(const char *old_ring_text, char *err, size_t errlen)
{
    config *old_cfg = NULL;
    char detail[600];
    if (config_load_string(old_ring_text, "the shards' record", &old_cfg, detail, sizeof(detail)) <
        0) {
        snprintf(err, errlen, "cannot read the previous ring the shards hold: %s", detail);
        return -1;
    }
    rebalance_abandon_holding("the shards move keys from another ring: moving from theirs");
    /* Reserved connections were pinned by the ring this proxy ran. */
    backend_reserved_close_all("unavailable: the shard ring changed");
    int rc = resume_from(old_cfg, "the shards' record", err, errlen);
    rebalance_adopt_held();
    return rc;
}

/* A config read and checked, with everything switching to it needs built:
 * preparing it is the one step of a reload that can fail, and it changes
 * nothing that runs; committing it cannot fail. */
typedef struct reload_plan {
    config *cfg;        /* the new config */
    ring *ring;         /* its ring */
    shard **shards;     /* in cfg->shards order: a running shard kept (same name
                           and address) or a new object */
    size_t fresh;       /* new objects among shards (new or re-addressed) */
    int ring_changed;   /* some hash changes owner: keys must move */
    char changes[400];  /* what changed on the ring, for the log */
    char *state;        /* ring_changed: the running ring as a state file */
    char old_fp[24];    /* ring_changed: the running ring's fingerprint */
    shard **old_shards; /* ring_changed: the running ring's shards, for the mover */
    access_set *access; /* cfg's users, compiled */
} reload_plan;

static int is_running_shard(const shard *s)
{
    for (size_t i = 0; i < srv.nshards; i++)
        if (srv.shards[i] == s)
            return 1;
    return 0;
}

/* Frees what a plan built and nothing that runs (kept shards stay). */
static void plan_free(reload_plan *p)
{
    for (size_t i = 0; p->shards && i < p->cfg->nshards; i++)
        if (p->shards[i] && !is_running_shard(p->shards[i]))
            backend_shard_free(p->shards[i]);
    free(p->shards);
    free(p->old_shards);
    free(p->state);
    ring_free(p->ring);
    access_free(p->access);
    config_free(p->cfg);
}

/* Whether any hash has another owner on next than on running: decided by
 * the rings themselves, never by settings copied into long-lived objects. */
static int ring_moves_keys(const ring *running, const ring *next, int *moves)
{
    ring_range *ranges = NULL;
    size_t n = 0;
    if (ring_diff(running, next, &ranges, &n) < 0)
        return -1;
    free(ranges);
    *moves = n > 0;
    return 0;
}

/* Names the ring edits between the running config and next ("s4 added, s1
 * re-weighted 2 -> 1"), from the two configs' shard lists. */
static void describe_ring_changes(const config *running, const config *next, char *out,
                                  size_t outlen)
{
    size_t o = 0;
    int n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < next->nshards && o < outlen; i++) {
        const config_shard *now = &next->shards[i];
        const config_shard *was = config_find_shard(running, now->name);
        if (!was)
            o += (size_t)snprintf(out + o, outlen - o, "%s%s added", n++ ? ", " : "", now->name);
        else if (was->weight != now->weight)
            o += (size_t)snprintf(out + o, outlen - o, "%s%s re-weighted %u -> %u", n++ ? ", " : "",
                                  now->name, (unsigned)was->weight, (unsigned)now->weight);
    }
    for (size_t i = 0; i < running->nshards && o < outlen; i++)
        if (!config_find_shard(next, running->shards[i].name))
            o += (size_t)snprintf(out + o, outlen - o, "%s%s removed", n++ ? ", " : "",
                                  running->shards[i].name);
}

/* Whether a shard kept by name gets a new address (the migration holds the
 * old shard objects, so that waits for it to end). */
static int addresses_change(const config *next)
{
    for (size_t i = 0; i < next->nshards; i++) {
        const shard *s = find_shard(next->shards[i].name);
        if (s && !backend_shard_same_source(s, &next->shards[i]))
            return 1;
    }
    return 0;
}

/* The shards of p->cfg: a running shard with the same name and address is
 * kept with its connections; anything else is a new object. */
static int plan_shards(reload_plan *p, char *err, size_t errlen)
{
    p->shards = calloc(p->cfg->nshards, sizeof(*p->shards));
    if (!p->shards) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < p->cfg->nshards; i++) {
        const config_shard *cs = &p->cfg->shards[i];
        shard *old = find_shard(cs->name);
        if (old && backend_shard_same_source(old, cs)) {
            p->shards[i] = old;
            continue;
        }
        p->shards[i] = backend_shard_new(cs, p->cfg->backend_connections, err, errlen);
        if (!p->shards[i])
            return -1;
        p->fresh++;
    }
    return 0;
}

/* For a ring change: the running ring's shards as the mover sees them (a
 * shard kept by name is its new object: a re-addressed shard's data moved
 * with it; a removed one stays open until its keys are moved off), and the
 * state file that lets a restarted proxy resume. */
static int plan_rebalance(reload_plan *p, char *err, size_t errlen)
{
    p->state = reload_ring_text(srv.cfg);
    reload_ring_fingerprint(srv.cfg, p->old_fp, sizeof(p->old_fp));
    p->old_shards = calloc(srv.nshards ? srv.nshards : 1, sizeof(*p->old_shards));
    if (!p->state || !p->old_shards) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < srv.nshards; i++) {
        const config_shard *cs = config_find_shard(p->cfg, srv.shards[i]->name);
        p->old_shards[i] = cs ? p->shards[cs - p->cfg->shards] : srv.shards[i];
    }
    return 0;
}

/* Builds everything cfg needs (taking cfg) and decides whether keys must
 * move. Nothing running changes. 0, or -1 with err and nothing left over. */
static int plan_prepare(config *cfg, reload_plan *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    p->cfg = cfg;
    p->ring = config_ring(cfg, err, errlen);
    if (!p->ring || !(p->access = access_build(cfg, err, errlen)) ||
        plan_shards(p, err, errlen) < 0)
        goto fail;
    if (srv.ring) {
        if (ring_moves_keys(srv.ring, p->ring, &p->ring_changed) < 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        describe_ring_changes(srv.cfg, cfg, p->changes, sizeof(p->changes));
    }
    if (p->ring_changed && plan_rebalance(p, err, errlen) < 0)
        goto fail;
    return 0;
fail:
    plan_free(p);
    memset(p, 0, sizeof(*p));
    return -1;
}

/* Retires the running shards the plan does not keep (they finish what
 * was sent to them), except those a migration still reads from. */
static void close_dropped_shards(const reload_plan *p)
{
    for (size_t i = 0; i < srv.nshards; i++) {
        const config_shard *cs = config_find_shard(p->cfg, srv.shards[i]->name);
        shard *now = cs ? p->shards[cs - p->cfg->shards] : NULL;
        if (now == srv.shards[i] || (!now && p->ring_changed))
            continue;
        log_notice("shard %s: %s, closing its connections once their requests are answered",
                   srv.shards[i]->label, now ? "address changed" : "removed");
        backend_shard_retire(srv.shards[i]);
    }
}

/* Swaps the plan into srv and starts the new shards. Cannot fail; takes
 * everything but state and old_shards, which the caller hands on. */
static void plan_commit(reload_plan *p)
{
    close_dropped_shards(p);
    free(srv.shards);
    config *old_cfg = srv.cfg;
    srv.cfg = p->cfg;
    slowlog_configure(srv.cfg->slowlog_slower_than);
    srv.shards = p->shards;
    srv.nshards = p->cfg->nshards;
    srv.ring = p->ring;
    /* before the old config goes: sessions' users point into it */
    access_commit(p->access);
    config_free(old_cfg);
    /* New connections name themselves after the ring and check it; the
     * ring ran so far stays acceptable while this proxy proposes the new
     * one (its own connections opened before the reload run it too). Two
     * edits before the first is proposed: the shards still hold the ring
     * before both, and that one stays acceptable. */
    char fp[sizeof(srv.ring_fp)];
    reload_ring_fingerprint(srv.cfg, fp, sizeof(fp));
    if (strcmp(fp, srv.ring_fp) != 0) {
        if (!srv.ring_fp_prev[0])
            memcpy(srv.ring_fp_prev, srv.ring_fp, sizeof(srv.ring_fp_prev));
        memcpy(srv.ring_fp, fp, sizeof(srv.ring_fp));
    }
    for (size_t i = 0; i < srv.nshards; i++)
        backend_shard_start(srv.shards[i]);
    sentinel_sync();
    dns_sync();
    remember_config_stat();
    p->cfg = NULL;
    p->shards = NULL;
    p->ring = NULL;
    p->access = NULL;
}

void reload_new_instance_id(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(srv.instance_id, sizeof(srv.instance_id), "%x%05x",
             (unsigned)((unsigned)ts.tv_sec ^ ((unsigned)getpid() << 16)),
             (unsigned)(ts.tv_nsec / 10000));
}

int reload_start(config *cfg, char *err, size_t errlen)
{
    reload_new_instance_id();
    reload_plan p;
    /* The TLS contexts come first: the shards' connections use them. */
    if (tls_configure(cfg, err, errlen) < 0) {
        config_free(cfg);
        return -1;
    }
    if (plan_prepare(cfg, &p, err, errlen) < 0)
        return -1;
    plan_commit(&p);
    return resume_rebalance(err, errlen);
}

/* The answer to a ring or address edit made while keys move. */
#define REBALANCE_QUEUED                                                                           \
    "a rebalance is running; this reload is queued and the file is read again when "               \
    "rebalance_state is idle"

#define FLEET_QUEUED                                                                               \
    "the shards still fence or move keys to this proxy's ring (rebalance_fleet_state); this "      \
    "reload is queued and the file is read again when rebalance_fleet_state is idle"

static int reject(char *err, size_t errlen, const char *fmt, const char *detail)
{
    snprintf(err, errlen, fmt, detail);
    snprintf(srv.last_reload_error, sizeof(srv.last_reload_error), "%s", err);
    srv.last_reload_time = time(NULL);
    srv.stats.reload_failures++;
    log_warn("reload rejected, running config kept: %s", err);
    return -1;
}

/* Reads and checks the file: a config that may replace the running one, or
 * NULL with the reason in err. */
static config *read_next_config(char *err, size_t errlen)
{
    config *next = NULL;
    char detail[200];
    if (config_load(srv.cfg->path, &next, err, errlen) < 0)
        return NULL;
    if (config_fixed_changes(srv.cfg, next, detail, sizeof(detail)) > 0) {
        snprintf(err, errlen, "these keys cannot change at run time (restart to apply): %s",
                 detail);
        config_free(next);
        return NULL;
    }
    return next;
}

/* Starts moving keys from the running ring to the one just committed. */
static int start_rebalance(reload_plan *p, ring *old_ring, size_t n_old, char *err, size_t errlen)
{
    /* What is pinned to a shard by the old ring cannot follow its keys and
     * channels to their new owners: transactions and WATCHes end (EXEC
     * answers EXECABORT), blocked commands get an error, subscribers are
     * closed so that they subscribe again on the new ring. */
    backend_reserved_close_all("unavailable: the shard ring changed");
    int rc = rebalance_start(old_ring, p->old_shards, n_old, p->state, err, errlen);
    p->old_shards = NULL;
    if (rc == 0)
        rebalance_set_old_ring(p->old_fp, p->state);
    if (rc < 0) {
        /* The new ring is in force but keys cannot be moved: say so loudly. */
        snprintf(srv.last_reload_error, sizeof(srv.last_reload_error), "rebalance: %s", err);
        log_error("rebalance could not start: %s", err);
    }
    return rc;
}

/* Whether the plan's ring is another than the one running (names,
 * weights, hashing: what the shards' ring record tells apart). */
static int fingerprint_changes(const reload_plan *p)
{
    char fp[sizeof(srv.ring_fp)];
    reload_ring_fingerprint(p->cfg, fp, sizeof(fp));
    return strcmp(fp, srv.ring_fp) != 0;
}

/* Switches to a prepared plan: certificates, the config, the ring, and
 * the move of keys its ring needs. 0, or -1 with err (nothing switched
 * when the certificates fail). */
static int apply_plan(reload_plan *p, char *err, size_t errlen)
{
    char detail[600];
    /* Certificates and keys are read again on every reload, changed or
     * not: connections already open keep the context they were made with,
     * new ones get the new files. A file that fails keeps everything. */
    if (tls_configure(p->cfg, detail, sizeof(detail)) < 0) {
        plan_free(p);
        return reject(err, errlen, "%s", detail);
    }
    if (p->ring_changed)
        log_notice("shard ring changes: %s", p->changes[0] ? p->changes : "placement");
    ring *old_ring = srv.ring;
    size_t n_old = srv.nshards, fresh = p->fresh;
    plan_commit(p);
    log_set_level(srv.cfg->log_level);
    srv.config_epoch++;
    srv.stats.reloads++;
    srv.last_reload_time = time(NULL);
    srv.last_reload_error[0] = '\0';
    log_notice("config reloaded (epoch %llu, %zu shards, %zu new or re-addressed)",
               (unsigned long long)srv.config_epoch, srv.nshards, fresh);
    int rc = 0;
    if (p->ring_changed)
        rc = start_rebalance(p, old_ring, n_old, err, errlen);
    else
        ring_free(old_ring);
    free(p->state);
    return rc;
}

int reload_config(const char *why, char *err, size_t errlen)
{
    log_notice("reloading %s (%s)", srv.cfg->path, why);
    /* Read before parsing: an edit made while this runs is noticed again. */
    remember_config_stat();
    char detail[600];
    config *next = read_next_config(detail, sizeof(detail));
    if (!next)
        return reject(err, errlen, "%s", detail);
    if (rebalance_running() && addresses_change(next)) {
        config_free(next);
        rebalance_queue_reload();
        return reject(err, errlen, "%s", REBALANCE_QUEUED);
    }
    reload_plan p;
    if (plan_prepare(next, &p, detail, sizeof(detail)) < 0)
        return reject(err, errlen, "%s", detail);
    /* The shards' record tells every ring apart, also one whose change
     * moves no key: such an edit waits for a move as well. */
    int fleet_queued = (rebalance_running() || srv.fleet_moving) && fingerprint_changes(&p);
    if ((rebalance_running() && p.ring_changed) || fleet_queued) {
        /* One migration at a time: the file is read again when it ends, so
         * the latest edit is the one applied. Other changes (timeouts,
         * migrate_rate, ...) apply at once, so a slow migration can be tuned.
         * The shards' record of the fleet's ring counts every change of
         * the ring, even one that moves no key. */
        plan_free(&p);
        rebalance_queue_reload();
        return reject(err, errlen, "%s", rebalance_running() ? REBALANCE_QUEUED : FLEET_QUEUED);
    }
    return apply_plan(&p, err, errlen);
}

int reload_adopt_ring(const char *ring_text, char *err, size_t errlen)
{
    char detail[600];
    config *from = NULL, *next = NULL;
    if (config_load_string(ring_text, "the shards' record", &from, detail, sizeof(detail)) < 0) {
        snprintf(err, errlen, "cannot read the ring the shards hold: %s", detail);
        return -1;
    }
    next = read_next_config(detail, sizeof(detail));
    int rc = next ? config_with_ring(next, from, detail, sizeof(detail)) : -1;
    config_free(from);
    reload_plan p;
    if (rc < 0 || plan_prepare(next, &p, detail, sizeof(detail)) < 0) {
        if (rc < 0)
            config_free(next);
        snprintf(err, errlen, "cannot run the ring the shards move keys to: %s", detail);
        return -1;
    }
    log_notice("running the shards' ring until their move ends; %s is applied after it",
               srv.cfg->path);
    /* A move this proxy started toward its file's ring (resumed from its
     * state file) gives way; its waiting requests wait for the next. */
    rebalance_abandon_holding("the shards move keys to another ring: running theirs");
    /* The file is read again once the move ends, and proposed then. */
    rebalance_queue_reload();
    rc = apply_plan(&p, err, errlen);
    rebalance_adopt_held();
    return rc;
}

void reload_shutdown(void)
{
    dns_shutdown();
    replica_shutdown();
    sentinel_shutdown();
    rebalance_shutdown();
    backend_retired_free_all();
    for (size_t i = 0; i < srv.nshards; i++)
        backend_shard_free(srv.shards[i]);
    free(srv.shards);
    srv.shards = NULL;
    srv.nshards = 0;
    ring_free(srv.ring);
    srv.ring = NULL;
    access_free(srv.access);
    srv.access = NULL;
    config_free(srv.cfg);
    srv.cfg = NULL;
}
