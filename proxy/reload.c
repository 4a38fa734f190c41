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

#include "proxy/backend.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/server.h"

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

static ring *build_ring(const config *cfg, char *err, size_t errlen)
{
    ring_shard_spec *specs = calloc(cfg->nshards, sizeof(*specs));
    if (!specs) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < cfg->nshards; i++) {
        specs[i].name = cfg->shards[i].name;
        specs[i].weight = cfg->shards[i].weight;
    }
    ring *r = ring_build(specs, cfg->nshards, cfg->compat, err, errlen);
    free(specs);
    return r;
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
static char *state_text(const config *cfg)
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
    fprintf(out, "[shards]\n");
    for (size_t i = 0; i < cfg->nshards; i++) {
        const config_shard *cs = &cfg->shards[i];
        config_format_addr(cs->host, cs->port, addr, sizeof(addr));
        fprintf(out, "%s = %s weight=%u\n", cs->name, addr, (unsigned)cs->weight);
    }
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* A proxy stopped mid-migration left the old shard list next to its config:
 * resume moving keys from it. */
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
    ring *old_ring = build_ring(old_cfg, err, errlen);
    shard **old_shards = calloc(old_cfg->nshards, sizeof(*old_shards));
    if (!old_ring || !old_shards) {
        ring_free(old_ring);
        free(old_shards);
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
                config_free(old_cfg);
                return -1;
            }
            backend_shard_start(old_shards[i]);
        }
    }
    log_notice("resuming the rebalance recorded in %s (%zu old shards)", path, old_cfg->nshards);
    size_t n_old = old_cfg->nshards;
    config_free(old_cfg);
    return rebalance_start(old_ring, old_shards, n_old, NULL, err, errlen);
}

int reload_start(config *cfg, char *err, size_t errlen)
{
    ring *r = build_ring(cfg, err, errlen);
    shard **shards = r ? calloc(cfg->nshards, sizeof(*shards)) : NULL;
    if (!shards) {
        if (r)
            snprintf(err, errlen, "out of memory");
        ring_free(r);
        config_free(cfg);
        return -1;
    }
    srv.cfg = cfg;
    for (size_t i = 0; i < cfg->nshards; i++) {
        shards[i] = backend_shard_new(&cfg->shards[i], cfg->backend_connections, err, errlen);
        if (!shards[i]) {
            for (size_t j = 0; j < i; j++)
                backend_shard_free(shards[j]);
            free(shards);
            ring_free(r);
            srv.cfg = NULL;
            config_free(cfg);
            return -1;
        }
    }
    srv.ring = r;
    srv.shards = shards;
    srv.nshards = cfg->nshards;
    remember_config_stat();
    for (size_t i = 0; i < cfg->nshards; i++)
        backend_shard_start(shards[i]);
    return resume_rebalance(err, errlen);
}

/* Describes how the ring of next differs from the running one, or returns 0
 * when only addresses (or nothing) changed. */
static int ring_changes(const config *next, char *out, size_t outlen)
{
    size_t o = 0;
    int n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < next->nshards; i++) {
        shard *s = find_shard(next->shards[i].name);
        if (!s) {
            o += (size_t)snprintf(out + o, outlen - o, "%s%s added", n++ ? ", " : "",
                                  next->shards[i].name);
        } else if (s->weight != next->shards[i].weight) {
            o +=
                (size_t)snprintf(out + o, outlen - o, "%s%s re-weighted", n++ ? ", " : "", s->name);
        }
        if (o >= outlen)
            return n;
    }
    for (size_t i = 0; i < srv.nshards && o < outlen; i++) {
        int kept = 0;
        for (size_t j = 0; j < next->nshards; j++)
            kept |= strcmp(next->shards[j].name, srv.shards[i]->name) == 0;
        if (!kept)
            o += (size_t)snprintf(out + o, outlen - o, "%s%s removed", n++ ? ", " : "",
                                  srv.shards[i]->name);
    }
    if (next->compat != srv.cfg->compat || next->hash != srv.cfg->hash)
        n++;
    return n;
}

/* Whether a shard kept by name gets a new address (the migration holds the
 * old shard objects, so that waits for it to end). */
static int addresses_change(const config *next)
{
    for (size_t i = 0; i < next->nshards; i++) {
        const shard *s = find_shard(next->shards[i].name);
        if (s && (strcmp(s->host, next->shards[i].host) != 0 || s->port != next->shards[i].port))
            return 1;
    }
    return 0;
}

static int reject(char *err, size_t errlen, const char *fmt, const char *detail)
{
    snprintf(err, errlen, fmt, detail);
    snprintf(srv.last_reload_error, sizeof(srv.last_reload_error), "%s", err);
    srv.last_reload_time = time(NULL);
    log_warn("reload rejected, running config kept: %s", err);
    return -1;
}

/* Frees the first n shards of a new shard list that are not live ones. */
static void free_new_shards(shard **shards, size_t n, const config *next)
{
    for (size_t j = 0; j < n; j++)
        if (shards[j] != find_shard(next->shards[j].name))
            backend_shard_free(shards[j]);
}

/* The shard objects for next's shard list, in its order. Same name and
 * address: the live shard and its connections are kept; a new address: a
 * new shard object (the old one is closed once next is in force). *fresh
 * counts the new ones. NULL with detail when out of memory. */
static shard **new_shard_list(const config *next, size_t *fresh, char *detail, size_t len)
{
    shard **shards = calloc(next->nshards, sizeof(*shards));
    if (!shards) {
        snprintf(detail, len, "out of memory");
        return NULL;
    }
    *fresh = 0;
    for (size_t i = 0; i < next->nshards; i++) {
        const config_shard *cs = &next->shards[i];
        shard *old = find_shard(cs->name);
        if (old && strcmp(old->host, cs->host) == 0 && old->port == cs->port) {
            shards[i] = old;
            continue;
        }
        shards[i] = backend_shard_new(cs, next->backend_connections, detail, len);
        if (!shards[i]) {
            free_new_shards(shards, i, next);
            free(shards);
            return NULL;
        }
        (*fresh)++;
    }
    return shards;
}

/* Closes the live shards that next's list (shards) drops or re-addresses.
 * With old_shards (a ring change), fills it with the old ring's shards
 * instead: a shard kept by name is the new object (a re-addressed shard's
 * data moved with it), and a removed one stays open until its keys are
 * moved off. */
static void retire_old_shards(const config *next, shard **shards, shard **old_shards)
{
    for (size_t i = 0; i < srv.nshards; i++) {
        shard *now = NULL;
        for (size_t j = 0; j < next->nshards; j++)
            if (strcmp(next->shards[j].name, srv.shards[i]->name) == 0)
                now = shards[j];
        if (old_shards)
            old_shards[i] = now ? now : srv.shards[i];
        if (now == srv.shards[i] || (!now && old_shards))
            continue;
        log_notice("shard %s: %s, closing its connections", srv.shards[i]->label,
                   now ? "address changed" : "removed");
        backend_shard_free(srv.shards[i]);
    }
}

/* Puts next, its shards and ring in force and starts the new shards;
 * returns the ring it replaces. */
static ring *install(config *next, shard **shards, ring *r)
{
    free(srv.shards);
    ring *old_ring = srv.ring;
    config *old_cfg = srv.cfg;
    srv.cfg = next;
    srv.shards = shards;
    srv.nshards = next->nshards;
    srv.ring = r;
    config_free(old_cfg);
    for (size_t i = 0; i < srv.nshards; i++)
        backend_shard_start(srv.shards[i]);
    log_set_level(next->log_level);
    srv.config_epoch++;
    srv.last_reload_time = time(NULL);
    srv.last_reload_error[0] = '\0';
    return old_ring;
}

int reload_config(const char *why, char *err, size_t errlen)
{
    config *next = NULL;
    char detail[400];
    log_notice("reloading %s (%s)", srv.cfg->path, why);
    /* Read before parsing: an edit made while this runs is noticed again. */
    remember_config_stat();
    if (config_load(srv.cfg->path, &next, detail, sizeof(detail)) < 0)
        return reject(err, errlen, "%s", detail);
    if (config_fixed_changes(srv.cfg, next, detail, sizeof(detail)) > 0) {
        config_free(next);
        return reject(err, errlen, "these keys cannot change at run time (restart to apply): %s",
                      detail);
    }
    int ring_changed = ring_changes(next, detail, sizeof(detail)) > 0;
    if (rebalance_running() && (ring_changed || addresses_change(next))) {
        /* One migration at a time: the file is read again when it ends, so
         * the latest edit is the one applied. Other changes (timeouts,
         * migrate_rate, ...) apply at once, so a slow migration can be tuned. */
        config_free(next);
        rebalance_queue_reload();
        return reject(err, errlen, "%s",
                      "a rebalance is running; this reload is queued and the file is read "
                      "again when rebalance_state is idle");
    }
    if (ring_changed)
        log_notice("shard ring changes: %s", detail);
    char *state = ring_changed ? state_text(srv.cfg) : NULL;
    ring *r = !ring_changed || state ? build_ring(next, err, errlen) : NULL;
    if (!r) {
        free(state);
        config_free(next);
        return reject(err, errlen, "%s", "out of memory");
    }
    size_t fresh;
    shard **shards = new_shard_list(next, &fresh, detail, sizeof(detail));
    size_t n_old = srv.nshards;
    shard **old_shards = shards && ring_changed ? calloc(n_old, sizeof(*old_shards)) : NULL;
    if (!shards || (ring_changed && !old_shards)) {
        if (shards)
            free_new_shards(shards, next->nshards, next);
        free(shards);
        ring_free(r);
        free(state);
        config_free(next);
        return reject(err, errlen, "%s", shards ? "out of memory" : detail);
    }
    retire_old_shards(next, shards, old_shards);
    ring *old_ring = install(next, shards, r);
    log_notice("config reloaded (epoch %llu, %zu shards, %zu new or re-addressed)",
               (unsigned long long)srv.config_epoch, srv.nshards, fresh);
    if (!ring_changed) {
        ring_free(old_ring);
        return 0;
    }
    /* What is pinned to a shard by the old ring cannot follow its keys and
     * channels to their new owners: transactions and WATCHes end (EXEC
     * answers EXECABORT), blocked commands get an error, subscribers are
     * closed so that they subscribe again on the new ring. */
    backend_reserved_close_all("unavailable: the shard ring changed");
    int rc = rebalance_start(old_ring, old_shards, n_old, state, err, errlen);
    free(state);
    if (rc < 0) {
        /* The new ring is in force but keys cannot be moved: say so loudly;
         * requests still find their keys through the old ring's shards only
         * after a successful start, so this is reported as a failed reload. */
        snprintf(srv.last_reload_error, sizeof(srv.last_reload_error), "rebalance: %s", err);
        log_error("rebalance could not start: %s", err);
        return -1;
    }
    return 0;
}

void reload_shutdown(void)
{
    rebalance_shutdown();
    for (size_t i = 0; i < srv.nshards; i++)
        backend_shard_free(srv.shards[i]);
    free(srv.shards);
    srv.shards = NULL;
    srv.nshards = 0;
    ring_free(srv.ring);
    srv.ring = NULL;
    config_free(srv.cfg);
    srv.cfg = NULL;
}
