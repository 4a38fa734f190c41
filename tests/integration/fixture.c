/* Shared fixture of the proxy data-path tests; see fixture.h. */
#include "fixture.h"

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

/* How much of an unexpected reply a failure message shows. */
#define SHOW_MAX 200
/* fixture_wait_*: how long a condition may take to come true (times the
 * harness timeout scale), and how often it is checked meanwhile. */
#define FIXTURE_WAIT_MS 5000
#define FIXTURE_POLL_MS 20

fixture *fixture_start(const char *extra_proxy_lines)
{
    return fixture_start_some(extra_proxy_lines, FIXTURE_SHARDS);
}

static fixture *start(const char *extra_proxy_lines, size_t nshards_in_ini, int nofile);

fixture *fixture_start_some(const char *extra_proxy_lines, size_t nshards_in_ini)
{
    return start(extra_proxy_lines, nshards_in_ini, 0);
}

fixture *fixture_start_nofile(const char *extra_proxy_lines, int nofile)
{
    return start(extra_proxy_lines, FIXTURE_SHARDS, nofile);
}

static fixture *start(const char *extra_proxy_lines, size_t nshards_in_ini, int nofile)
{
    if (nshards_in_ini < 1 || nshards_in_ini > FIXTURE_SHARDS) {
        return NULL;
    }
    fixture *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        return NULL;
    }
    int started = 0;
    for (; started < FIXTURE_SHARDS; started++) {
        if (harness_redis_start(&f->shards[started]) == -1) {
            goto fail;
        }
    }
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        f->direct[i] = harness_connect(f->shards[i].port);
        f->direct_pid[i] = f->shards[i].pid;
        if (f->direct[i] == NULL) {
            goto fail;
        }
    }
    char *ini = harness_ini(f->shards, nshards_in_ini, extra_proxy_lines);
    if (ini == NULL) {
        goto fail;
    }
    int rc = harness_ringproxy_start_nofile(&f->proxy, ini, nofile);
    free(ini);
    if (rc == -1) {
        goto fail;
    }
    return f;
fail:
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        if (f->direct[i] != NULL) {
            redisFree(f->direct[i]);
        }
    }
    for (int i = 0; i < started; i++) {
        harness_proc_stop(&f->shards[i], SIGTERM);
    }
    free(f);
    return NULL;
}

int fixture_stop(fixture *f)
{
    if (f == NULL) {
        return -1;
    }
    int ok = 1; /* a proxy a test already stopped is checked by that test */
    if (f->proxy.pid != 0) {
        int status = harness_proc_stop(&f->proxy, SIGTERM);
        ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok) {
            fprintf(stderr, "fixture: ringproxy did not exit 0 on SIGTERM (status %#x)\n",
                    (unsigned)status);
        }
    }
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        if (f->direct[i] != NULL) {
            redisFree(f->direct[i]);
        }
        if (f->shards[i].pid != 0) {
            harness_proc_stop(&f->shards[i], SIGTERM);
        }
    }
    for (int i = 0; i < FIXTURE_OWNED_MAX; i++) {
        free(f->owned[i]);
        if (f->clients[i] != NULL) {
            redisFree(f->clients[i]);
        }
    }
    free(f);
    return ok ? 0 : -1;
}

/* The index of slot value in table (NULL: a free one), or -1. */
static int find_slot(void *const *table, const void *value)
{
    for (int i = 0; i < FIXTURE_OWNED_MAX; i++) {
        if (table[i] == value) {
            return i;
        }
    }
    return -1;
}

redisContext *fixture_client(fixture *f)
{
    int slot = find_slot((void *const *)f->clients, NULL);
    if (slot == -1) {
        fail_msg("more than %d clients open at once", FIXTURE_OWNED_MAX);
    }
    redisContext *c = harness_connect(f->proxy.port);
    if (c == NULL) {
        fail_msg("cannot connect to ringproxy on port %d", f->proxy.port);
    }
    f->clients[slot] = c;
    return c;
}

void fixture_close(fixture *f, redisContext *c)
{
    if (c == NULL) {
        return;
    }
    int slot = find_slot((void *const *)f->clients, c);
    assert_true(slot != -1);
    f->clients[slot] = NULL;
    redisFree(c);
}

void *fixture_alloc(fixture *f, size_t len)
{
    int slot = find_slot(f->owned, NULL);
    if (slot == -1) {
        fail_msg("more than %d buffers held at once", FIXTURE_OWNED_MAX);
    }
    void *p = calloc(1, len > 0 ? len : 1);
    if (p == NULL) {
        fail_msg("out of memory for %zu bytes", len);
    }
    f->owned[slot] = p;
    return p;
}

void fixture_free(fixture *f, void *p)
{
    if (p == NULL) {
        return;
    }
    int slot = find_slot(f->owned, p);
    assert_true(slot != -1);
    f->owned[slot] = NULL;
    free(p);
}

long long fixture_bound_ms(long long ms)
{
    return ms * harness_timeout_scale();
}

struct timeval fixture_bound_tv(long long ms)
{
    long long bound = fixture_bound_ms(ms);
    return (struct timeval){(time_t)(bound / 1000), (suseconds_t)(bound % 1000 * 1000)};
}

redisContext *fixture_shard(fixture *f, int i)
{
    assert_true(i >= 0 && i < FIXTURE_SHARDS);
    /* A restarted shard is a new process: the old connection is dead even
     * if hiredis has not noticed yet. */
    if (f->direct[i] != NULL && (f->direct[i]->err != 0 || f->direct_pid[i] != f->shards[i].pid)) {
        redisFree(f->direct[i]);
        f->direct[i] = NULL;
    }
    if (f->direct[i] == NULL) {
        f->direct[i] = harness_connect(f->shards[i].port);
        f->direct_pid[i] = f->shards[i].pid;
    }
    if (f->direct[i] == NULL) {
        fail_msg("cannot connect to shard s%d on port %d", i + 1, f->shards[i].port);
    }
    return f->direct[i];
}

/* Printable rendering of a reply for failure messages. */
static void show(const redisReply *r, char *out, size_t cap)
{
    if (r == NULL) {
        snprintf(out, cap, "(no reply)");
        return;
    }
    const char *kind = "?";
    switch (r->type) {
    case REDIS_REPLY_STRING:
        kind = "string";
        break;
    case REDIS_REPLY_STATUS:
        kind = "status";
        break;
    case REDIS_REPLY_ERROR:
        kind = "error";
        break;
    case REDIS_REPLY_INTEGER:
        snprintf(out, cap, "integer %lld", r->integer);
        return;
    case REDIS_REPLY_NIL:
        snprintf(out, cap, "nil");
        return;
    case REDIS_REPLY_ARRAY:
        snprintf(out, cap, "array of %zu", (size_t)r->elements);
        return;
    }
    size_t n = snprintf(out, cap, "%s (%zu bytes) \"", kind, (size_t)r->len);
    for (size_t i = 0; i < r->len && n + 6 < cap && i < SHOW_MAX; i++) {
        unsigned char ch = (unsigned char)r->str[i];
        n += isprint(ch) ? snprintf(out + n, cap - n, "%c", ch)
                         : snprintf(out + n, cap - n, "\\x%02x", ch);
    }
    snprintf(out + n, cap - n, "\"");
}

static void check_reply(redisContext *c, redisReply *r)
{
    if (r == NULL) {
        fail_msg("no reply: %s", c->errstr[0] != '\0' ? c->errstr : "connection error");
    }
}

redisReply *fixture_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    check_reply(c, r);
    return r;
}

redisReply *fixture_cmd_argv(redisContext *c, int argc, const char **argv, const size_t *lens)
{
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    check_reply(c, r);
    return r;
}

redisReply *fixture_next_reply(redisContext *c)
{
    void *reply = NULL;
    if (redisGetReply(c, &reply) != REDIS_OK) {
        reply = NULL;
    }
    check_reply(c, reply);
    return reply;
}

void fixture_expect_status(redisReply *r, const char *status)
{
    char got[SHOW_MAX + 64];
    show(r, got, sizeof(got));
    if (r == NULL || r->type != REDIS_REPLY_STATUS || strcmp(r->str, status) != 0) {
        freeReplyObject(r);
        fail_msg("expected +%s, got %s", status, got);
    }
    freeReplyObject(r);
}

void fixture_expect_int(redisReply *r, long long value)
{
    char got[SHOW_MAX + 64];
    show(r, got, sizeof(got));
    if (r == NULL || r->type != REDIS_REPLY_INTEGER || r->integer != value) {
        freeReplyObject(r);
        fail_msg("expected :%lld, got %s", value, got);
    }
    freeReplyObject(r);
}

void fixture_expect_str(redisReply *r, const char *str)
{
    fixture_expect_bin(r, str, strlen(str));
}

void fixture_expect_bin(redisReply *r, const void *bytes, size_t len)
{
    char got[SHOW_MAX + 64];
    show(r, got, sizeof(got));
    if (r == NULL || r->type != REDIS_REPLY_STRING || r->len != len ||
        memcmp(r->str, bytes, len) != 0) {
        freeReplyObject(r);
        fail_msg("expected a %zu-byte bulk string, got %s", len, got);
    }
    freeReplyObject(r);
}

void fixture_expect_nil(redisReply *r)
{
    char got[SHOW_MAX + 64];
    show(r, got, sizeof(got));
    if (r == NULL || r->type != REDIS_REPLY_NIL) {
        freeReplyObject(r);
        fail_msg("expected nil, got %s", got);
    }
    freeReplyObject(r);
}

void fixture_expect_error(redisReply *r, const char *prefix)
{
    char got[SHOW_MAX + 64];
    show(r, got, sizeof(got));
    if (r == NULL || r->type != REDIS_REPLY_ERROR || strncmp(r->str, prefix, strlen(prefix)) != 0) {
        freeReplyObject(r);
        fail_msg("expected an error starting with \"%s\", got %s", prefix, got);
    }
    freeReplyObject(r);
}

void fixture_expect_array(const redisReply *r, size_t n)
{
    char got[SHOW_MAX + 64];
    show(r, got, sizeof(got));
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        fail_msg("expected an array of %zu, got %s", n, got);
    }
}

static void flatten(const redisReply *r, char *out, size_t cap, size_t *used)
{
    int n = 0;
    switch (r->type) {
    case REDIS_REPLY_ARRAY:
        for (size_t i = 0; i < r->elements; i++) {
            flatten(r->element[i], out, cap, used);
        }
        return;
    case REDIS_REPLY_INTEGER:
        n = snprintf(out + *used, cap - *used, "%lld ", r->integer);
        break;
    case REDIS_REPLY_NIL:
        n = snprintf(out + *used, cap - *used, "(nil) ");
        break;
    default:
        n = snprintf(out + *used, cap - *used, "%.*s ", (int)r->len, r->str);
        break;
    }
    if (n > 0) {
        *used = *used + (size_t)n < cap ? *used + (size_t)n : cap - 1;
    }
}

void fixture_reply_text(const redisReply *r, char *out, size_t cap)
{
    size_t used = 0;
    out[0] = '\0';
    flatten(r, out, cap, &used);
}

/* Shard index of the first word of text equal to a shard name "s1".."sN". */
static int first_shard_name(const char *text)
{
    for (const char *p = text; *p != '\0'; p++) {
        if (*p != 's' || (p > text && isalnum((unsigned char)p[-1]))) {
            continue;
        }
        char *end;
        long n = strtol(p + 1, &end, 10);
        if (end != p + 1 && !isalnum((unsigned char)*end) && isdigit((unsigned char)p[1]) &&
            n >= 1 && n <= FIXTURE_SHARDS) {
            return (int)n - 1;
        }
    }
    return -1;
}

int fixture_owner(redisContext *proxy_conn, const void *key, size_t len)
{
    const char *argv[] = {"PROXY", "RING", key};
    size_t lens[] = {5, 4, len};
    redisReply *r = fixture_cmd_argv(proxy_conn, 3, argv, lens);
    char text[1024];
    fixture_reply_text(r, text, sizeof(text));
    char got[SHOW_MAX + 64];
    show(r, got, sizeof(got));
    freeReplyObject(r);
    int owner = first_shard_name(text);
    if (owner == -1) {
        fail_msg("PROXY RING named no shard s1..s%d: %s", FIXTURE_SHARDS, got);
    }
    return owner;
}

void fixture_key_on_shard(redisContext *proxy_conn, const char *prefix, int shard, char *out,
                          size_t cap)
{
    for (int i = 0; i < FIXTURE_KEY_SEARCH; i++) {
        snprintf(out, cap, "%s:%d", prefix, i);
        if (fixture_owner(proxy_conn, out, strlen(out)) == shard) {
            return;
        }
    }
    fail_msg("no key %s:0..%d is owned by shard s%d", prefix, FIXTURE_KEY_SEARCH - 1, shard + 1);
}

unsigned fixture_holders(fixture *f, const void *key, size_t len)
{
    unsigned mask = 0;
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        const char *argv[] = {"EXISTS", key};
        size_t lens[] = {6, len};
        redisReply *r = fixture_cmd_argv(fixture_shard(f, i), 2, argv, lens);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        if (r->integer != 0) {
            mask |= 1u << i;
        }
        freeReplyObject(r);
    }
    return mask;
}

long long fixture_shards_dbsize(fixture *f)
{
    long long sum = 0;
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        redisReply *r = fixture_cmd(fixture_shard(f, i), "DBSIZE");
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        sum += r->integer;
        freeReplyObject(r);
    }
    return sum;
}

long long fixture_txn_records(fixture *f)
{
    long long n = 0;
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        redisReply *r = fixture_cmd(fixture_shard(f, i), "EVAL %s 0",
                                    "redis.call('SELECT', 15) local n = 0 "
                                    "for _, k in ipairs(redis.call('KEYS', 'ringproxy:txn:*')) do "
                                    "if redis.call('TYPE', k).ok ~= 'string' or "
                                    "redis.call('GET', k) ~= 'abort' then n = n + 1 end end "
                                    "redis.call('SELECT', 0) return n");
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        n += r->integer;
        freeReplyObject(r);
    }
    return n;
}

long long fixture_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fixture_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

int fixture_raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

int fixture_raw_send(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

size_t fixture_raw_read(int fd, char *buf, size_t cap, size_t want, int timeout_ms, int *closed)
{
    size_t got = 0;
    long long deadline = fixture_now_ms() + timeout_ms;
    *closed = 0;
    if (want > cap - 1) {
        want = cap - 1;
    }
    while (got < want) {
        long long left = deadline - fixture_now_ms();
        if (left <= 0) {
            break;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready = poll(&pfd, 1, (int)left);
        if (ready == -1 && errno == EINTR) {
            continue;
        }
        if (ready <= 0) {
            break;
        }
        ssize_t n = recv(fd, buf + got, cap - 1 - got, 0);
        if (n == -1 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            *closed = 1;
            break;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    return got;
}

int fixture_contains(const char *s, size_t len, const char *needle)
{
    return memmem(s, len, needle, strlen(needle)) != NULL;
}

int fixture_alive(pid_t pid)
{
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) == -1) {
        return 0;
    }
    return info.si_pid == 0;
}

/* A "Name:   123 kB" line of /proc/<pid>/status, or -1. */
static long status_kib(pid_t pid, const char *name)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return -1;
    }
    char line[256];
    long kib = -1;
    size_t n = strlen(name);
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, name, n) == 0 && line[n] == ':') {
            kib = strtol(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

long fixture_rss_kib(pid_t pid)
{
    return status_kib(pid, "VmRSS");
}

long fixture_peak_rss_kib(pid_t pid)
{
    return status_kib(pid, "VmHWM");
}

int fixture_memory_instrumented(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    char line[512];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        found = strstr(line, "libasan") != NULL || strstr(line, "vgpreload") != NULL;
    }
    fclose(f);
    if (!found) {
        /* valgrind's tool is the process image itself. */
        snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
        f = fopen(path, "r");
        if (f != NULL) {
            found = fgets(line, sizeof(line), f) != NULL && strstr(line, "memcheck") != NULL;
            fclose(f);
        }
    }
    return found;
}

long long fixture_info_int(redisContext *c, const char *field)
{
    redisReply *r = fixture_cmd(c, "INFO");
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        fail_msg("INFO did not answer a bulk string");
    }
    long long value = -1;
    char pattern[96];
    int n = snprintf(pattern, sizeof(pattern), "\n%s:", field);
    const char *p = memmem(r->str, r->len, pattern, (size_t)n);
    if (p != NULL) {
        value = atoll(p + n);
    }
    freeReplyObject(r);
    return value;
}

int fixture_sentinel_one_good_replica(const redisReply *replicas)
{
    if (!replicas || replicas->type != REDIS_REPLY_ARRAY || replicas->elements != 1)
        return 0;
    const redisReply *fields = replicas->element[0];
    int good = 0;
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (strcmp(fields->element[i]->str, "flags") == 0)
            good = strcmp(fields->element[i + 1]->str, "slave") == 0;
    return good;
}

int fixture_log_contains(const harness_proc *p, const char *needle)
{
    FILE *f = fopen(p->log, "r");
    if (f == NULL) {
        print_error("fixture: cannot read %s: %s\n", p->log, strerror(errno));
        return 0;
    }
    /* Lines are short; a needle split across two reads is found by
     * keeping the tail of the previous one. */
    size_t keep = strlen(needle);
    char buf[65536];
    if (keep == 0 || keep > sizeof(buf) / 2) {
        fclose(f);
        return 0;
    }
    size_t have = 0;
    int found = 0;
    while (!found) {
        size_t n = fread(buf + have, 1, sizeof(buf) - have, f);
        if (n == 0) {
            break;
        }
        have += n;
        found = memmem(buf, have, needle, keep) != NULL;
        if (have > keep) {
            memmove(buf, buf + have - keep, keep);
            have = keep;
        }
    }
    fclose(f);
    return found;
}

int fixture_reserved_connections(redisContext *c)
{
    redisReply *r = fixture_cmd(c, "INFO shards");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    int total = 0;
    for (const char *p = strstr(r->str, "reserved="); p; p = strstr(p + 1, "reserved=")) {
        total += atoi(p + 9);
    }
    freeReplyObject(r);
    return total;
}

long long fixture_wait_info_at_least(redisContext *c, const char *field, long long want)
{
    /* What hiredis sends for INFO: *1\r\n$4\r\nINFO\r\n. */
    static const long long info_request_bytes = 14;
    int own = strcmp(field, "total_net_input_bytes") == 0;
    long long deadline = fixture_now_ms() + fixture_bound_ms(FIXTURE_WAIT_MS);
    long long polls = 0, value;
    while ((value = fixture_info_int(c, field) - (own ? ++polls * info_request_bytes : 0)) < want &&
           fixture_now_ms() < deadline) {
        fixture_sleep_ms(FIXTURE_POLL_MS);
    }
    if (value < want) {
        fail_msg("INFO %s stayed at %lld, below %lld, for %lld ms", field, value, want,
                 fixture_bound_ms(FIXTURE_WAIT_MS));
    }
    return value;
}

void fixture_wait_log(const harness_proc *p, const char *needle)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(FIXTURE_WAIT_MS);
    while (!fixture_log_contains(p, needle) && fixture_now_ms() < deadline) {
        fixture_sleep_ms(FIXTURE_POLL_MS);
    }
    if (!fixture_log_contains(p, needle)) {
        fail_msg("\"%s\" not in %s after %lld ms", needle, p->log,
                 fixture_bound_ms(FIXTURE_WAIT_MS));
    }
}

void fixture_wait_reserved(redisContext *c, int want)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    int now;
    while ((now = fixture_reserved_connections(c)) != want && fixture_now_ms() < deadline) {
        fixture_sleep_ms(20);
    }
    assert_int_equal(now, want);
}
