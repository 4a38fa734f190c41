/* The internal-state store (see store.h): one control connection (ctlconn) per
 * shard, SELECTed to store_db, with its own call timeouts and reconnects. */
#include "proxy/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <hiredis/hiredis.h>

#include "proxy/ctlconn.h"
#include "proxy/log.h"
#include "proxy/server.h"

/* The marker record of a shard's store: present while the store holds
 * what was written to it; its value names the proxy that wrote it. */
#define STORE_MARKER_KEY "ringproxy:store:marker"
/* How often timeouts, reconnects and restores are looked at. */
#define STORE_TICK_MS 20
/* A store call unanswered this long fails, and its connection is reset,
 * when request_timeout is 0 (no limit for clients; the store needs one). */
#define STORE_DEFAULT_TIMEOUT_MS 2000
/* An UNRESTORED shard's restore is retried this often. */
#define STORE_RESTORE_RETRY_US 200000u
/* Scripts the modules may register. */
#define STORE_MAX_SCRIPTS 32
/* Shards the store can hold, counting those added at run time
 * (store_add_shard): the table is allocated once, since connections and
 * calls point into it. */
#define STORE_MAX_SHARDS 1024

/* One call in flight on a shard's connection. */
typedef struct pending {
    struct pending *next;
    struct store_shard *sh;
    store_reply_fn fn;
    void *privdata;
    uint64_t sent_us;
    char *eval_cmd; /* store_eval: the EVAL form, sent again on NOSCRIPT */
    size_t eval_len;
} pending;

typedef struct store_shard {
    size_t index;
    char *name;
    char *host;
    int port;
    ctlconn *ac; /* NULL when not connected */
    store_state state;
    pending *head; /* calls in flight, oldest first */
    pending *tail;
    uint64_t retry_at_us; /* next connect (DOWN) or restore (UNRESTORED) */
    int backoff_ms;
    int setup_failed;   /* AUTH or SELECT failed on this connection */
    int restore_logged; /* the missing marker was logged (once per loss) */
} store_shard;

static struct {
    store_shard *shards;
    size_t n;
    size_t cap; /* room in shards[] */
    int db;
    char *password;
    char *user; /* backend_user, NULL for Redis's default user */
    int timeout_ms;
    int reconnect_min_ms;
    int reconnect_max_ms;
    store_script *scripts[STORE_MAX_SCRIPTS];
    size_t nscripts;
    store_restore_fn restore;
    struct event tick;
    int started;
    char instance[40]; /* this proxy's marker value */
} st;

static store_script cas_script = {
    .body = STORE_SCRIPT_GUARD "local cur = redis.call('GET', KEYS[2])\n"
                               "if ARGV[1] == '1' then\n"
                               "  if cur then return 0 end\n"
                               "elseif cur ~= ARGV[2] then return 0 end\n"
                               "redis.call('SET', KEYS[2], ARGV[3])\n"
                               "return 1\n",
};

const char *store_state_name(store_state s)
{
    switch (s) {
    case STORE_DOWN:
        return "down";
    case STORE_CHECKING:
        return "checking";
    case STORE_UNRESTORED:
        return "unrestored";
    case STORE_RESTORING:
        return "restoring";
    case STORE_READY:
        return "ready";
    }
    return "?";
}

/* The one place a shard's state changes, logged when it matters. */
static void set_state(store_shard *sh, store_state to)
{
    if (sh->state == to)
        return;
    if (to == STORE_READY || sh->state == STORE_READY)
        log_notice("store: shard %s %s -> %s", sh->name, store_state_name(sh->state),
                   store_state_name(to));
    sh->state = to;
}

/* ---- calls ---- */

static void unlink_pending(pending *p)
{
    store_shard *sh = p->sh;
    pending **link = &sh->head, *prev = NULL;
    while (*link && *link != p) {
        prev = *link;
        link = &(*link)->next;
    }
    if (!*link)
        return;
    *link = p->next;
    if (sh->tail == p)
        sh->tail = prev;
    p->next = NULL;
}

static void on_reply(ctlconn *ac, void *reply, void *privdata);

static int send_formatted(store_shard *sh, pending *p, const char *cmd, size_t len)
{
    if (!sh->ac || ctlconn_formatted_command(sh->ac, on_reply, p, cmd, len) != REDIS_OK)
        return -1;
    p->sent_us = server_now_us();
    if (sh->tail)
        sh->tail->next = p;
    else
        sh->head = p;
    sh->tail = p;
    return 0;
}

static void on_reply(ctlconn *ac, void *reply, void *privdata)
{
    (void)ac;
    pending *p = privdata;
    store_shard *sh = p->sh;
    redisReply *r = reply;
    unlink_pending(p);
    if (r && r->type == REDIS_REPLY_ERROR && p->eval_cmd && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        /* The server lost its script cache (restart, SCRIPT FLUSH): the
         * same call as EVAL, which caches it again. */
        char *cmd = p->eval_cmd;
        size_t len = p->eval_len;
        p->eval_cmd = NULL;
        int sent = send_formatted(sh, p, cmd, len);
        free(cmd);
        if (sent == 0)
            return;
        r = NULL;
    }
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOMARKER", 8) == 0 &&
        sh->state == STORE_READY) {
        log_warn("store: shard %s lost its store (marker missing): it counts again once restored",
                 sh->name);
        set_state(sh, STORE_UNRESTORED);
        sh->retry_at_us = 0;
    }
    p->fn(p->privdata, sh->index, r);
    free(p->eval_cmd);
    free(p);
}

static pending *new_pending(store_shard *sh, store_reply_fn fn, void *privdata)
{
    pending *p = calloc(1, sizeof(*p));
    if (!p)
        abort(); /* small allocations abort, as everywhere in the proxy */
    p->sh = sh;
    p->fn = fn;
    p->privdata = privdata;
    return p;
}

/* Connected: a connection still connecting (DOWN) takes no calls. */
static int connected(size_t shard)
{
    return shard < st.n && st.shards[shard].ac && st.shards[shard].state != STORE_DOWN;
}

int store_call(size_t shard, store_reply_fn fn, void *privdata, int argc, const char **argv,
               const size_t *argvlen)
{
    if (!connected(shard))
        return -1;
    store_shard *sh = &st.shards[shard];
    char *cmd = NULL;
    long long len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        return -1;
    pending *p = new_pending(sh, fn, privdata);
    int rc = send_formatted(sh, p, cmd, (size_t)len);
    free(cmd);
    if (rc < 0)
        free(p);
    return rc;
}

/* Most arguments a store script takes (keys and values together). */
#define STORE_EVAL_MAX_ARGS 4096

int store_eval(size_t shard, store_script *s, store_reply_fn fn, void *privdata, int nkeys,
               int argc, const char **argv, const size_t *argvlen)
{
    if (!connected(shard) || argc < 0 || argc > STORE_EVAL_MAX_ARGS)
        return -1;
    store_shard *sh = &st.shards[shard];
    int total = argc + 4;
    const char **av = malloc(sizeof(*av) * (size_t)total);
    size_t *al = malloc(sizeof(*al) * (size_t)total);
    if (!av || !al)
        abort();
    char numkeys[16];
    snprintf(numkeys, sizeof(numkeys), "%d", nkeys + 1);
    av[0] = "EVAL";
    av[1] = s->body;
    av[2] = numkeys;
    av[3] = STORE_MARKER_KEY;
    for (int i = 0; i < 4; i++)
        al[i] = strlen(av[i]);
    if (argc > 0) {
        memcpy(av + 4, argv, sizeof(*av) * (size_t)argc);
        memcpy(al + 4, argvlen, sizeof(*al) * (size_t)argc);
    }
    char *eval_cmd = NULL;
    long long eval_len = redisFormatCommandArgv(&eval_cmd, total, av, al);
    char *sha_cmd = NULL;
    long long sha_len = -1;
    if (s->sha[0] && eval_len >= 0) {
        av[0] = "EVALSHA";
        av[1] = s->sha;
        al[0] = 7;
        al[1] = strlen(s->sha);
        sha_len = redisFormatCommandArgv(&sha_cmd, total, av, al);
    }
    free(av);
    free(al);
    if (eval_len < 0) {
        free(sha_cmd);
        return -1;
    }
    pending *p = new_pending(sh, fn, privdata);
    int rc;
    if (sha_len >= 0) {
        p->eval_cmd = eval_cmd;
        p->eval_len = (size_t)eval_len;
        rc = send_formatted(sh, p, sha_cmd, (size_t)sha_len);
        free(sha_cmd);
    } else {
        rc = send_formatted(sh, p, eval_cmd, (size_t)eval_len);
        free(eval_cmd);
    }
    if (rc < 0) {
        free(p->eval_cmd);
        free(p);
    }
    return rc;
}

int store_cas(size_t shard, const char *key, const char *expected, const char *value,
              store_reply_fn fn, void *privdata)
{
    const char *argv[4] = {key, expected ? "0" : "1", expected ? expected : "", value};
    size_t argvlen[4];
    for (int i = 0; i < 4; i++)
        argvlen[i] = strlen(argv[i]);
    return store_eval(shard, &cas_script, fn, privdata, 1, 4, argv, argvlen);
}

/* ---- connection set-up: AUTH, SELECT, SCRIPT LOAD, the marker ---- */

static void drop_connection(store_shard *sh, const char *why)
{
    ctlconn *ac = sh->ac;
    if (!ac)
        return;
    log_warn("store: shard %s: %s; reconnecting", sh->name, why);
    /* Forgotten first: the failed calls' callbacks may send again, and must
     * find the shard down rather than this context half freed. */
    sh->ac = NULL;
    ac->data = NULL;
    set_state(sh, STORE_DOWN);
    sh->retry_at_us = server_now_us() + (uint64_t)sh->backoff_ms * 1000u;
    ctlconn_free(ac);
}

static void on_setup_reply(void *privdata, size_t shard, const redisReply *r)
{
    (void)privdata;
    store_shard *sh = &st.shards[shard];
    if (r && r->type == REDIS_REPLY_ERROR && !sh->setup_failed) {
        sh->setup_failed = 1;
        log_error("store: shard %s: %s (store_db = %d)", sh->name, r->str, st.db);
    }
}

static void on_script_loaded(void *privdata, size_t shard, const redisReply *r)
{
    (void)shard;
    store_script *s = privdata;
    if (r && r->type == REDIS_REPLY_STRING && r->len < sizeof(s->sha)) {
        memcpy(s->sha, r->str, r->len);
        s->sha[r->len] = '\0';
    }
}

static void start_restore(store_shard *sh)
{
    set_state(sh, STORE_RESTORING);
    if (st.restore)
        st.restore(sh->index);
    else
        store_restored(sh->index, 1);
}

static void on_marker(void *privdata, size_t shard, const redisReply *r)
{
    (void)privdata;
    store_shard *sh = &st.shards[shard];
    if (!r || sh->state != STORE_CHECKING)
        return;
    if (sh->setup_failed || r->type == REDIS_REPLY_ERROR) {
        drop_connection(sh, "set-up failed");
        return;
    }
    sh->backoff_ms = st.reconnect_min_ms;
    if (r->type == REDIS_REPLY_STRING) {
        sh->restore_logged = 0;
        set_state(sh, STORE_READY);
        return;
    }
    if (!sh->restore_logged)
        log_warn("store: shard %s has no store marker (new, or restarted empty): restoring it",
                 sh->name);
    sh->restore_logged = 1;
    set_state(sh, STORE_UNRESTORED);
    start_restore(sh);
}

/* Reads the marker again: on_marker restores the shard or finds it READY. */
static void check_marker(store_shard *sh)
{
    const char *get[2] = {"GET", STORE_MARKER_KEY};
    size_t getlen[2] = {3, strlen(STORE_MARKER_KEY)};
    set_state(sh, STORE_CHECKING);
    if (store_call(sh->index, on_marker, NULL, 2, get, getlen) < 0)
        drop_connection(sh, "cannot read the marker");
}

static void send_setup(store_shard *sh)
{
    int fail = 0;
    sh->setup_failed = 0;
    if (st.password) {
        const char *argv[3] = {"AUTH", st.user ? st.user : st.password, st.password};
        size_t argvlen[3] = {4, strlen(argv[1]), strlen(st.password)};
        fail |= store_call(sh->index, on_setup_reply, NULL, st.user ? 3 : 2, argv, argvlen);
    }
    char db[16];
    snprintf(db, sizeof(db), "%d", st.db);
    const char *select[2] = {"SELECT", db};
    size_t selectlen[2] = {6, strlen(db)};
    fail |= store_call(sh->index, on_setup_reply, NULL, 2, select, selectlen);
    for (size_t i = 0; i < st.nscripts; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", st.scripts[i]->body};
        size_t argvlen[3] = {6, 4, strlen(st.scripts[i]->body)};
        fail |= store_call(sh->index, on_script_loaded, st.scripts[i], 3, argv, argvlen);
    }
    if (fail)
        drop_connection(sh, "cannot send the set-up");
    else
        check_marker(sh);
}

static void on_connect(const ctlconn *ac, int status)
{
    store_shard *sh = ac->data;
    if (!sh)
        return;
    if (status != REDIS_OK) {
        log_debug("store: shard %s: connect failed: %s", sh->name, ac->errstr);
        sh->ac = NULL; /* ctlconn frees it */
        set_state(sh, STORE_DOWN);
        sh->retry_at_us = server_now_us() + (uint64_t)sh->backoff_ms * 1000u;
        sh->backoff_ms =
            sh->backoff_ms * 2 > st.reconnect_max_ms ? st.reconnect_max_ms : sh->backoff_ms * 2;
        return;
    }
    set_state(sh, STORE_CHECKING);
    send_setup(sh);
}

static void on_disconnect(const ctlconn *ac, int status)
{
    (void)status;
    store_shard *sh = ac->data;
    if (!sh || sh->ac != ac)
        return; /* dropped by drop_connection, which did this itself */
    log_warn("store: shard %s: connection lost", sh->name);
    sh->ac = NULL;
    set_state(sh, STORE_DOWN);
    sh->retry_at_us = server_now_us() + (uint64_t)sh->backoff_ms * 1000u;
}

static void connect_shard(store_shard *sh)
{
    if (!sh->port)
        return; /* a sentinel shard whose master is not known yet */
    ctlconn *ac = ctlconn_connect(sh->host, sh->port, CTLCONN_SHARD);
    if (!ac)
        return;
    if (ac->err) {
        ctlconn_free(ac);
        sh->retry_at_us = server_now_us() + (uint64_t)sh->backoff_ms * 1000u;
        return;
    }
    ac->data = sh;
    ctlconn_set_connect_callback(ac, on_connect);
    ctlconn_set_disconnect_callback(ac, on_disconnect);
    sh->ac = ac;
}

static void on_marker_written(void *privdata, size_t shard, const redisReply *r)
{
    (void)privdata;
    store_shard *sh = &st.shards[shard];
    if (sh->state != STORE_RESTORING)
        return;
    if (r && r->type == REDIS_REPLY_STATUS) {
        set_state(sh, STORE_READY);
        return;
    }
    set_state(sh, STORE_UNRESTORED);
    sh->retry_at_us = server_now_us() + STORE_RESTORE_RETRY_US;
}

void store_restored(size_t shard, int ok)
{
    if (shard >= st.n)
        return;
    store_shard *sh = &st.shards[shard];
    if (sh->state != STORE_RESTORING)
        return; /* the connection went meanwhile: checked again on reconnect */
    if (!ok) {
        set_state(sh, STORE_UNRESTORED);
        sh->retry_at_us = server_now_us() + STORE_RESTORE_RETRY_US;
        return;
    }
    /* SET, not a compare: any proxy's marker says the same thing. */
    const char *argv[3] = {"SET", STORE_MARKER_KEY, st.instance};
    size_t argvlen[3] = {3, strlen(STORE_MARKER_KEY), strlen(st.instance)};
    if (store_call(shard, on_marker_written, NULL, 3, argv, argvlen) < 0)
        set_state(sh, STORE_UNRESTORED);
}

/* ---- the periodic tick: timeouts, reconnects, restores ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    uint64_t now = server_now_us();
    uint64_t timeout_us = (uint64_t)st.timeout_ms * 1000u;
    for (size_t i = 0; i < st.n; i++) {
        store_shard *sh = &st.shards[i];
        if (sh->head && now - sh->head->sent_us > timeout_us) {
            char why[64];
            snprintf(why, sizeof(why), "no reply in %d ms", st.timeout_ms);
            drop_connection(sh, why);
        }
        if (sh->state == STORE_DOWN && !sh->ac && now >= sh->retry_at_us)
            connect_shard(sh);
        else if (sh->state == STORE_UNRESTORED && sh->ac && now >= sh->retry_at_us)
            check_marker(sh); /* another proxy may have restored it meanwhile */
    }
}

/* ---- start, stop, accessors ---- */

void store_register_script(store_script *s)
{
    for (size_t i = 0; i < st.nscripts; i++)
        if (st.scripts[i] == s)
            return;
    if (st.nscripts < STORE_MAX_SCRIPTS)
        st.scripts[st.nscripts++] = s;
    else
        abort(); /* a build with more scripts than the table: raise STORE_MAX_SCRIPTS */
}

void store_set_restore_hook(store_restore_fn fn)
{
    st.restore = fn;
}

/* Appends a shard (st.n < st.cap) and starts connecting it. A sentinel
 * shard has no address in the config: it gets one from store_shard_moved
 * once the Sentinels name its master. */
static size_t add_shard(const config_shard *cs)
{
    store_shard *sh = &st.shards[st.n];
    sh->index = st.n++;
    sh->name = strdup(cs->name);
    sh->host = strdup(cs->host ? cs->host : "");
    if (!sh->name || !sh->host)
        abort();
    /* A name: dns.c resolves it and calls store_shard_moved with the
     * address (nothing here resolves a name with a blocking getaddrinfo). */
    sh->port = config_host_is_name(cs->host) ? 0 : cs->port;
    sh->backoff_ms = st.reconnect_min_ms;
    connect_shard(sh);
    return sh->index;
}

int store_add_shard(const config_shard *cs)
{
    int i = store_index(cs->name);
    if (i >= 0 || !st.started)
        return i;
    if (st.n == st.cap) {
        log_warn("store: more than %zu shards; %s has no store until a restart", st.cap, cs->name);
        return -1;
    }
    log_notice("store: shard %s joins the store", cs->name);
    return (int)add_shard(cs);
}

int store_start(const config *cfg, char *err, size_t errlen)
{
    store_register_script(&cas_script);
    st.cap = cfg->nshards > STORE_MAX_SHARDS ? cfg->nshards : STORE_MAX_SHARDS;
    st.shards = calloc(st.cap, sizeof(*st.shards));
    if (!st.shards) {
        snprintf(err, errlen, "store: out of memory");
        return -1;
    }
    st.db = cfg->store_db;
    st.password = cfg->backend_password ? strdup(cfg->backend_password) : NULL;
    st.user = cfg->backend_user ? strdup(cfg->backend_user) : NULL;
    st.timeout_ms = cfg->request_timeout_ms ? cfg->request_timeout_ms : STORE_DEFAULT_TIMEOUT_MS;
    st.reconnect_min_ms = cfg->reconnect_min_ms;
    st.reconnect_max_ms = cfg->reconnect_max_ms;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(st.instance, sizeof(st.instance), "%ld-%ld-%d", (long)ts.tv_sec, (long)ts.tv_nsec,
             (int)getpid());
    for (size_t i = 0; i < cfg->nshards; i++)
        add_shard(&cfg->shards[i]);
    event_assign(&st.tick, srv.base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, STORE_TICK_MS * 1000};
    event_add(&st.tick, &tv);
    st.started = 1;
    return 0;
}

void store_shutdown(void)
{
    if (!st.started)
        return;
    event_del(&st.tick);
    for (size_t i = 0; i < st.n; i++) {
        store_shard *sh = &st.shards[i];
        ctlconn *ac = sh->ac;
        sh->ac = NULL;
        set_state(sh, STORE_DOWN);
        if (ac) {
            ac->data = NULL;
            ctlconn_free(ac);
        }
    }
    for (size_t i = 0; i < st.n; i++) {
        free(st.shards[i].name);
        free(st.shards[i].host);
    }
    free(st.shards);
    free(st.password);
    free(st.user);
    memset(&st, 0, sizeof(st));
}

void store_shard_moved(const char *name, const char *host, uint16_t port)
{
    int i = store_index(name);
    if (i < 0)
        return;
    store_shard *sh = &st.shards[i];
    if (sh->port == port && strcmp(sh->host, host) == 0)
        return;
    char *copy = strdup(host);
    if (!copy)
        abort();
    /* Calls in flight on the old master fail; the new one is checked
     * (marker, restore) like any shard that connects. */
    drop_connection(sh, "the shard's master moved");
    free(sh->host);
    sh->host = copy;
    sh->port = port;
    sh->backoff_ms = st.reconnect_min_ms;
    sh->retry_at_us = 0;
    if (sh->state == STORE_DOWN && !sh->ac)
        connect_shard(sh);
}

size_t store_count(void)
{
    return st.n;
}

const char *store_name(size_t shard)
{
    return shard < st.n ? st.shards[shard].name : "?";
}

int store_index(const char *name)
{
    for (size_t i = 0; i < st.n; i++)
        if (strcmp(st.shards[i].name, name) == 0)
            return (int)i;
    return -1;
}

store_state store_shard_state(size_t shard)
{
    return shard < st.n ? st.shards[shard].state : STORE_DOWN;
}
