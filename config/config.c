/* proxy.ini loader. One table of [proxy] keys drives defaults, parsing,
 * validation, the reload check and the documentation; [shards] lines are
 * parsed here too. inih splits the file into sections and name = value pairs;
 * our own line reader feeds it, so that line numbers, over-long lines and
 * syntax errors are reported exactly. Pure: no sockets, no libevent. */
#include "config/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

/* A file this large is not a proxy.ini (40k shard lines fit in 1 MiB); the
 * cap keeps a wrong path (a log, a device) from being read into memory. */
#define CONFIG_MAX_FILE_BYTES (16 * 1024 * 1024)

/* inih needs room for "\r\n" and the NUL after the text of a line. */
#define CONFIG_MAX_LINE_TEXT (CONFIG_MAX_LINE - 3)

/* Shard names appear in INFO, logs and error replies: a short, safe charset
 * keeps them printable and unambiguous. */
#define SHARD_NAME_MAX 64

/* Points on the ring grow with the weight; the cap keeps a typo (or a weight
 * given in bytes) from building a ring of billions of points. */
#define SHARD_WEIGHT_MAX 10000

/* Byte limits stop at 1 TiB: far above any real request or reply, and sums
 * of a few of them still fit in int64_t. */
#define BYTES_MAX ((int64_t)1 << 40)

/* Sentinels in the sentinels list: a deployment runs 3 or 5; the line
 * length limit allows about this many anyway. */
#define SENTINELS_MAX 16

/* The prefix of a [shards] value that names a Sentinel master. */
#define SENTINEL_PREFIX "sentinel:"

/* Longest hostname (RFC 1035). */
#define HOST_NAME_MAX_LEN 253

typedef enum key_type {
    KEY_INT,    /* int field: a whole number in [min, max] */
    KEY_INT64,  /* int64_t field: a whole number in [min, max] */
    KEY_BYTES,  /* int64_t field: a byte count in [min, max], kb/mb/gb suffixes */
    KEY_BOOL,   /* int field: yes/no, true/false, on/off, 1/0 */
    KEY_ENUM,   /* enum field: one of enum_name(0 .. enum_count - 1) */
    KEY_ADDR,   /* char *host at offset, uint16_t port at offset2 */
    KEY_TAG,    /* char open at offset, char close at offset2; empty = tags off */
    KEY_SECRET, /* char * field: a password, NULL when empty; never printed */
    KEY_NAME,   /* char * field: a name (e.g. an ACL user), NULL when empty */
    KEY_SHARD,  /* char * field: the name of a shard of [shards], NULL when empty */
    KEY_ADDRS,  /* config_addr_list field: comma-separated host:port, empty = none */
    KEY_SHARDS, /* char * field: "all" or a comma-separated list of shards of [shards] */
    KEY_PATH,   /* char * field: a file's path; with an empty default, empty = none */
} key_type;

typedef struct config_key {
    const char *name;
    key_type type;
    const char *default_value; /* text, parsed like a value from the file */
    const char *unit;          /* "ms", "s", "bytes", or "" for a plain count */
    int64_t min, max;          /* numeric types */
    const char *(*enum_name)(int value);
    int enum_count;
    bool reloadable; /* false: a change needs a restart */
    const char *description;
    size_t offset;  /* field in struct config */
    size_t offset2; /* second field of KEY_ADDR and KEY_TAG */
} config_key;

/* offsetof() that refuses to compile when the field is not of type T: the
 * table writes each field through a T pointer. */
// clang-format off
#define FIELD(field, T) \
    (offsetof(config, field) + \
     0 * sizeof(char[_Generic(((config *)0)->field, T: 1, default: -1)]))
// clang-format on

#define RELOAD  true
#define RESTART false

#define INT_KEY(name_, field, def, unit_, lo, hi, reload, desc)                                    \
    {                                                                                              \
        .name = name_, .type = KEY_INT, .default_value = def, .unit = unit_, .min = lo, .max = hi, \
        .reloadable = reload, .description = desc, .offset = FIELD(field, int)                     \
    }
#define INT64_KEY(name_, field, def, unit_, lo, hi, reload, desc)                                  \
    {                                                                                              \
        .name = name_, .type = KEY_INT64, .default_value = def, .unit = unit_, .min = lo,          \
        .max = hi, .reloadable = reload, .description = desc, .offset = FIELD(field, int64_t)      \
    }
#define BYTES_KEY(name_, field, def, reload, desc)                                                 \
    {                                                                                              \
        .name = name_, .type = KEY_BYTES, .default_value = def, .unit = "bytes", .min = 1,         \
        .max = BYTES_MAX, .reloadable = reload, .description = desc,                               \
        .offset = FIELD(field, int64_t)                                                            \
    }
#define BOOL_KEY(name_, field, def, reload, desc)                                                  \
    {                                                                                              \
        .name = name_, .type = KEY_BOOL, .default_value = def, .unit = "", .reloadable = reload,   \
        .description = desc, .offset = FIELD(field, int)                                           \
    }
#define ENUM_KEY(name_, field, T, names, count, def, reload, desc)                                 \
    {                                                                                              \
        .name = name_, .type = KEY_ENUM, .default_value = def, .unit = "", .enum_name = names,     \
        .enum_count = count, .reloadable = reload, .description = desc, .offset = FIELD(field, T)  \
    }

/* Enum fields are read and written as int. */
_Static_assert(sizeof(hash_kind) == sizeof(int), "hash_kind is stored as an int");
_Static_assert(sizeof(ring_mode) == sizeof(int), "ring_mode is stored as an int");
_Static_assert(sizeof(config_log_level) == sizeof(int), "config_log_level is stored as an int");
_Static_assert(sizeof(config_read_from) == sizeof(int), "config_read_from is stored as an int");
_Static_assert(sizeof(config_cross_shard) == sizeof(int), "config_cross_shard is stored as an int");

#define PATH_KEY(name_, field, reload, desc)                                                       \
    {                                                                                              \
        .name = name_, .type = KEY_PATH, .default_value = "", .unit = "", .reloadable = reload,    \
        .description = desc, .offset = FIELD(field, char *)                                        \
    }

static const char *hash_kind_name(int value)
{
    return hash_name((hash_kind)value);
}

static const char *compat_name(int value)
{
    switch (value) {
    case RING_DEFAULT:
        return "none";
    case RING_TWEMPROXY:
        return "twemproxy";
    default:
        return "?";
    }
}

static const char *log_level_name(int value)
{
    return config_log_level_name((config_log_level)value);
}

/* Every [proxy] key, in the order the documentation lists them. */
static const config_key config_keys[] = {
    {.name = "listen",
     .type = KEY_ADDR,
     .default_value = "127.0.0.1:6380",
     .unit = "",
     .reloadable = RESTART,
     .description = "address clients connect to; IPv6 as [::1]:6380",
     .offset = FIELD(listen_host, char *),
     .offset2 = FIELD(listen_port, uint16_t)},
    ENUM_KEY("hash", hash, hash_kind, hash_kind_name, HASH_KIND_COUNT, "murmur3", RESTART,
             "how keys are hashed to ring positions"),
    {.name = "hash_tag",
     .type = KEY_TAG,
     .default_value = "{}",
     .unit = "",
     .reloadable = RESTART,
     .description = "hash only the text between these chars; empty = whole key",
     .offset = FIELD(hash_tag_open, char),
     .offset2 = FIELD(hash_tag_close, char)},
    ENUM_KEY("compat", compat, ring_mode, compat_name, RING_TWEMPROXY + 1, "none", RESTART,
             "twemproxy = as nutcracker 0.5.0 (default fnv1a_64, no tag)"),
    INT_KEY("backend_connections", backend_connections, "1", "", 1, 256, RESTART,
            "connections the proxy keeps to each shard"),
    INT_KEY("connect_timeout", connect_timeout_ms, "1000", "ms", 1, 3600000, RELOAD,
            "time allowed to connect to a shard"),
    INT_KEY("request_timeout", request_timeout_ms, "2000", "ms", 0, 3600000, RELOAD,
            "time a request may wait with no bytes of it or its reply moving; 0 = no limit"),
    INT_KEY("reconnect_min", reconnect_min_ms, "100", "ms", 1, 3600000, RELOAD,
            "first delay before reconnecting to a failed shard"),
    INT_KEY("reconnect_max", reconnect_max_ms, "5000", "ms", 1, 3600000, RELOAD,
            "the reconnect delay doubles up to this"),
    INT_KEY("max_clients", max_clients, "10000", "", 1, 1000000, RELOAD,
            "client connections at once; more are refused"),
    BYTES_KEY("max_bulk_len", max_bulk_len, "512mb", RELOAD,
              "largest bulk string in a request; larger closes the client"),
    INT64_KEY("max_args", max_args, "1048576", "", 1, INT32_MAX, RELOAD,
              "most arguments in one request; more closes the client"),
    BYTES_KEY("max_inline_len", max_inline_len, "64kb", RELOAD,
              "longest inline (non-RESP) command line"),
    BYTES_KEY("max_query_buffer", max_query_buffer, "1gb", RELOAD,
              "unparsed request bytes held per client; more closes it"),
    BYTES_KEY("client_output_pause", client_output_pause, "16mb", RELOAD,
              "pause a client's requests while this much reply data waits for it"),
    BYTES_KEY("max_client_output", max_client_output, "1gb", RELOAD,
              "close a client once this much reply data (and requests held) waits for it"),
    BYTES_KEY("max_pubsub_output", max_pubsub_output, "32mb", RELOAD,
              "close a subscribed client once this much unread data waits for it"),
    INT_KEY("backend_max_inflight", backend_max_inflight, "100000", "", 1, INT_MAX, RELOAD,
            "requests waiting on one shard connection; more get an error"),
    INT_KEY("idle_timeout", idle_timeout_s, "0", "s", 0, 604800, RELOAD,
            "close clients that send no whole request this long; 0 = never"),
    INT_KEY("tcp_backlog", tcp_backlog, "511", "", 1, 65535, RESTART,
            "listen(2) backlog of the client socket"),
    INT_KEY("workers", workers, "1", "", 1, CONFIG_WORKERS_MAX, RESTART,
            "processes serving clients on the listen port (docs/design.md)"),
    ENUM_KEY("log_level", log_level, config_log_level, log_level_name, CONFIG_LOG_ERROR + 1, "info",
             RELOAD, "least severe message logged"),
    BOOL_KEY("watch_config", watch_config, "yes", RELOAD, "reload when this file changes on disk"),
    {.name = "requirepass",
     .type = KEY_SECRET,
     .default_value = "",
     .unit = "",
     .reloadable = RELOAD,
     .description = "the default user's password, for AUTH (or a [users] default line)",
     .offset = FIELD(requirepass, char *)},
    {.name = "backend_user",
     .type = KEY_NAME,
     .default_value = "",
     .unit = "",
     .reloadable = RESTART,
     .description = "ACL user for AUTH on the shards, with backend_password",
     .offset = FIELD(backend_user, char *)},
    {.name = "backend_password",
     .type = KEY_SECRET,
     .default_value = "",
     .unit = "",
     .reloadable = RESTART,
     .description = "password of the shards, for AUTH and MIGRATE",
     .offset = FIELD(backend_password, char *)},
    INT_KEY("migrate_batch", migrate_batch, "1000", "keys", 1, 100000, RELOAD,
            "keys per SCAN and MIGRATE batch while rebalancing"),
    INT_KEY("migrate_rate", migrate_rate, "0", "keys/s", 0, 100000000, RELOAD,
            "keys moved per second while rebalancing; 0 = no limit"),
    INT_KEY("migrate_timeout", migrate_timeout_ms, "5000", "ms", 1, 3600000, RELOAD,
            "MIGRATE timeout for one batch; raise it for big keys"),
    BOOL_KEY("allow_flush", allow_flush, "yes", RELOAD,
             "FLUSHDB and FLUSHALL empty db 0 of every shard; no = refuse them"),
    BOOL_KEY("allow_config_set", allow_config_set, "no", RELOAD,
             "CONFIG SET of a Redis parameter is applied to every shard; no = refuse it"),
    {.name = "script_default_shard",
     .type = KEY_SHARD,
     .default_value = "",
     .unit = "",
     .reloadable = RELOAD,
     .description = "shard of EVAL, EVALSHA and FCALL calls with no keys",
     .offset = FIELD(script_default_shard, char *)},
    {.name = "sentinels",
     .type = KEY_ADDRS,
     .default_value = "",
     .unit = "",
     .reloadable = RELOAD,
     .description = "Sentinels asked for the master of each sentinel:NAME shard",
     .offset = FIELD(sentinels, config_addr_list)},
    {.name = "sentinel_password",
     .type = KEY_SECRET,
     .default_value = "",
     .unit = "",
     .reloadable = RELOAD,
     .description = "password of the Sentinels",
     .offset = FIELD(sentinel_password, char *)},
    INT_KEY("sentinel_poll", sentinel_poll_ms, "1000", "ms", 100, 3600000, RELOAD,
            "ask the Sentinels for each master this often, besides pub/sub"),
    INT_KEY("min_replicas_to_ack", min_replicas_to_ack, "0", "", 0, 16, RELOAD,
            "answer a write once this many replicas have it (WAIT); 0 = at once"),
    INT_KEY("min_replicas_timeout", min_replicas_timeout_ms, "1000", "ms", 1, 60000, RELOAD,
            "WAIT timeout of min_replicas_to_ack; later = -NOREPLICAS"),
    ENUM_KEY("read_from", read_from, config_read_from, config_read_from_name,
             CONFIG_READ_FROM_COUNT, "master", RELOAD,
             "where read-only commands go (docs/failover.md)"),
    INT_KEY("dns_refresh", dns_refresh_ms, "30000", "ms", 0, 86400000, RELOAD,
            "resolve shards named by hostname again this often; 0 = on reconnect only"),
    {.name = "dns_hosts_file",
     .type = KEY_PATH,
     .default_value = "/etc/hosts",
     .unit = "",
     .reloadable = RELOAD,
     .description = "hosts file of those lookups, read again when it changes",
     .offset = FIELD(dns_hosts_file, char *)},
    {.name = "dns_resolv_conf",
     .type = KEY_PATH,
     .default_value = "/etc/resolv.conf",
     .unit = "",
     .reloadable = RELOAD,
     .description = "nameservers and options of those lookups, read again when it changes",
     .offset = FIELD(dns_resolv_conf, char *)},
    INT_KEY("store_db", store_db, "15", "", 1, 1000000, RESTART,
            "database on each shard for the proxy's hidden records (locks)"),
    {.name = "lock_shards",
     .type = KEY_SHARDS,
     .default_value = "all",
     .unit = "",
     .reloadable = RESTART,
     .description = "shards holding LOCK.* state; odd count >= 3",
     .offset = FIELD(lock_shards, char *)},
    ENUM_KEY("cross_shard", cross_shard, config_cross_shard, config_cross_shard_name,
             CONFIG_CROSS_SHARD_COUNT, "best_effort", RELOAD,
             "MSET/DEL/MSETNX/MULTI over shards (docs/transactions.md)"),
    INT_KEY("txn_recovery_after", txn_recovery_after_ms, "5000", "ms", 100, 3600000, RELOAD,
            "a cross-shard transaction prepared this long ago is finished by recovery"),
    {.name = "tls_listen",
     .type = KEY_ADDR,
     .default_value = "",
     .unit = "",
     .reloadable = RESTART,
     .description = "address TLS clients connect to (docs/tls.md)",
     .offset = FIELD(tls_listen_host, char *),
     .offset2 = FIELD(tls_listen_port, uint16_t)},
    PATH_KEY("tls_cert_file", tls_cert_file, RELOAD,
             "certificate (PEM) tls_listen shows; reread on reload"),
    PATH_KEY("tls_key_file", tls_key_file, RELOAD, "private key (PEM) of tls_cert_file"),
    PATH_KEY("tls_ca_cert_file", tls_ca_cert_file, RELOAD,
             "CA certificates (PEM) that sign client certificates"),
    ENUM_KEY("tls_auth_clients", tls_auth_clients, int, config_tls_auth_name, CONFIG_TLS_AUTH_COUNT,
             "no", RELOAD, "TLS clients must show a certificate signed by tls_ca_cert_file"),
    BOOL_KEY("tls_shards", tls_shards, "no", RESTART, "connect to every shard over TLS"),
    PATH_KEY("tls_shards_ca_cert_file", tls_shards_ca_cert_file, RELOAD,
             "CA certificates (PEM) that sign the shards' certificates"),
    PATH_KEY("tls_shards_cert_file", tls_shards_cert_file, RELOAD,
             "certificate (PEM) the proxy shows to shards that ask for one"),
    PATH_KEY("tls_shards_key_file", tls_shards_key_file, RELOAD,
             "private key (PEM) of tls_shards_cert_file"),
    BOOL_KEY("tls_sentinels", tls_sentinels, "no", RELOAD,
             "connect to the Sentinels over TLS, with the tls_shards_* files"),
    INT64_KEY("slowlog_slower_than", slowlog_slower_than, "10000", "us", -1, 3600000000LL, RELOAD,
              "SLOWLOG keeps requests this slow in the proxy; -1 = off, 0 = all"),
    INT_KEY("slowlog_max_len", slowlog_max_len, "128", "", 0, 1000000, RELOAD,
            "SLOWLOG entries kept; the oldest go first"),
    {.name = "metrics_listen",
     .type = KEY_ADDR,
     .default_value = "",
     .unit = "",
     .reloadable = RESTART,
     .description = "serve Prometheus GET /metrics over HTTP here",
     .offset = FIELD(metrics_host, char *),
     .offset2 = FIELD(metrics_port, uint16_t)},
};

#define NKEYS (sizeof(config_keys) / sizeof(config_keys[0]))

/* Pairs of keys where the first must not exceed the second. */
static const struct key_order {
    const char *low;
    const char *high;
} key_orders[] = {
    {"reconnect_min", "reconnect_max"},
    {"client_output_pause", "max_client_output"},
};

/* State of one load. */
typedef struct load_ctx {
    const char *name; /* file name for messages */
    const char *pos;  /* next unread byte of the text */
    const char *end;
    int line;              /* number of the line last handed to inih */
    int key_line[NKEYS];   /* where each [proxy] key was set, 0 = default */
    int shards_line;       /* where the (first) [shards] header is, 0 = none */
    int default_user_line; /* where [users] last set the default user, 0 = nowhere */
    size_t shard_cap;
    config *cfg;
    char *err;
    size_t errlen;
    bool failed; /* err holds the first error; stop */
} load_ctx;

/* Records the first error as "name:line: message" ("name: message" when line
 * is 0). Control bytes from the file are escaped so the message stays one
 * printable line. */
__attribute__((format(printf, 3, 4))) static void fail(load_ctx *ctx, int line, const char *fmt,
                                                       ...)
{
    if (ctx->failed)
        return;
    ctx->failed = true;
    if (ctx->errlen == 0)
        return;

    char msg[1024];
    int n = line > 0 ? snprintf(msg, sizeof(msg), "%s:%d: ", ctx->name, line)
                     : snprintf(msg, sizeof(msg), "%s: ", ctx->name);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof(msg)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
        va_end(ap);
    }

    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        bool control = *p < 0x20 || *p == 0x7f;
        if (o + (control ? 4 : 1) >= ctx->errlen)
            break;
        if (control) {
            ctx->err[o++] = '\\';
            ctx->err[o++] = 'x';
            ctx->err[o++] = hex[*p >> 4];
            ctx->err[o++] = hex[*p & 15];
        } else {
            ctx->err[o++] = (char)*p;
        }
    }
    ctx->err[o] = '\0';
}

static void *field_of(config *cfg, size_t offset)
{
    return (char *)cfg + offset;
}

static const void *const_field_of(const config *cfg, size_t offset)
{
    return (const char *)cfg + offset;
}

static const config_key *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(config_keys[i].name, name) == 0)
            return &config_keys[i];
    return NULL;
}

/* Numeric value of a KEY_INT/INT64/BYTES/BOOL/ENUM field. */
static int64_t key_number(const config_key *key, const config *cfg)
{
    const void *p = const_field_of(cfg, key->offset);
    switch (key->type) {
    case KEY_INT64:
    case KEY_BYTES: {
        int64_t v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    case KEY_INT:
    case KEY_BOOL:
    case KEY_ENUM: {
        int v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    case KEY_ADDR:
    case KEY_TAG:
    case KEY_SECRET:
    case KEY_NAME:
    case KEY_SHARD:
    case KEY_ADDRS:
    case KEY_SHARDS:
    case KEY_PATH:
        break;
    }
    abort(); /* not a number: a bug in the caller */
}

/* Formats a byte count with the largest suffix that divides it exactly, so
 * that documented limits read as 512mb rather than 536870912. */
static void format_bytes(int64_t v, char *buf, size_t buflen)
{
    static const struct {
        const char *suffix;
        int64_t scale;
    } units[] = {{"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (v != 0 && v % units[i].scale == 0) {
            snprintf(buf, buflen, "%lld%s", (long long)(v / units[i].scale), units[i].suffix);
            return;
        }
    }
    snprintf(buf, buflen, "%lld", (long long)v);
}

/* "0..3600000" or "1..1024gb". */
static void format_range(const config_key *key, char *buf, size_t buflen)
{
    if (key->type == KEY_BYTES) {
        char lo[24], hi[24];
        format_bytes(key->min, lo, sizeof(lo));
        format_bytes(key->max, hi, sizeof(hi));
        snprintf(buf, buflen, "%s..%s", lo, hi);
    } else {
        snprintf(buf, buflen, "%lld..%lld", (long long)key->min, (long long)key->max);
    }
}

/* The accepted values of a key, for documentation: "ms, 0..3600000",
 * "murmur3, fnv1a_64, crc32, md5, murmur", "host:port". */
static void describe_values(const config_key *key, char *buf, size_t buflen)
{
    char range[80];
    size_t n = 0;
    buf[0] = '\0';
    switch (key->type) {
    case KEY_INT:
    case KEY_INT64:
    case KEY_BYTES:
        format_range(key, range, sizeof(range));
        if (key->unit[0])
            snprintf(buf, buflen, "%s, %s", key->unit, range);
        else
            snprintf(buf, buflen, "%s", range);
        return;
    case KEY_BOOL:
        snprintf(buf, buflen, "yes, no");
        return;
    case KEY_ENUM:
        for (int i = 0; i < key->enum_count && n < buflen; i++) {
            int w = snprintf(buf + n, buflen - n, "%s%s", i ? ", " : "", key->enum_name(i));
            if (w < 0)
                return;
            n += (size_t)w;
        }
        return;
    case KEY_ADDR:
        snprintf(buf, buflen, key->default_value[0] ? "host:port" : "host:port, empty = none");
        return;
    case KEY_TAG:
        snprintf(buf, buflen, "2 chars or empty");
        return;
    case KEY_SECRET:
        snprintf(buf, buflen, "a password, empty = none");
        return;
    case KEY_NAME:
        snprintf(buf, buflen, "a name, empty = none");
        return;
    case KEY_SHARD:
        snprintf(buf, buflen, "a shard name, empty = the first");
        return;
    case KEY_ADDRS:
        snprintf(buf, buflen, "host:port list, empty = none");
        return;
    case KEY_SHARDS:
        snprintf(buf, buflen, "all or a comma list");
        return;
    case KEY_PATH:
        snprintf(buf, buflen, key->default_value[0] ? "a file path" : "a file, empty = none");
        return;
    }
}

/* Parses a decimal integer, with a kb/mb/gb suffix (powers of 1024) when
 * allow_suffix. Returns 0, -1 when text is not such a number, -2 when it does
 * not fit in int64_t. */
static int parse_number(const char *text, bool allow_suffix, int64_t *out)
{
    const char *p = text;
    bool negative = *p == '-';
    if (negative)
        p++;
    if (!isdigit((unsigned char)*p))
        return -1;
    int64_t v = 0;
    bool overflow = false;
    for (; isdigit((unsigned char)*p); p++) {
        if (!overflow &&
            (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v)))
            overflow = true;
    }
    int64_t scale = 1;
    if (*p && allow_suffix) {
        if (strcasecmp(p, "kb") == 0)
            scale = (int64_t)1 << 10;
        else if (strcasecmp(p, "mb") == 0)
            scale = (int64_t)1 << 20;
        else if (strcasecmp(p, "gb") == 0)
            scale = (int64_t)1 << 30;
        else
            return -1;
        p += 2;
    }
    if (*p)
        return -1;
    if (overflow || __builtin_mul_overflow(v, scale, &v))
        return -2;
    *out = negative ? -v : v;
    return 0;
}

/* Port text "1".."65535". Returns 0 or -1 with a reason. */
static int parse_port(const char *text, uint16_t *port, char *why, size_t whylen)
{
    int64_t v;
    if (*text == '\0') {
        snprintf(why, whylen, "missing port");
        return -1;
    }
    int rc = *text == '-' ? -1 : parse_number(text, false, &v);
    if (rc == -1) {
        snprintf(why, whylen, "port '%s' is not a number", text);
        return -1;
    }
    if (rc == -2 || v < 1 || v > 65535) {
        snprintf(why, whylen, "port %s is out of range 1..65535", text);
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

static bool is_ipv4_like(const char *host)
{
    for (const char *p = host; *p; p++)
        if (!isdigit((unsigned char)*p) && *p != '.')
            return false;
    return true;
}

/* Splits "host:port" or "[ipv6]:port". On success *host is malloc'd, without
 * brackets. Returns 0, or -1 with a reason (or "out of memory"). */
static int parse_addr(const char *text, char **host, uint16_t *port, char *why, size_t whylen)
{
    const char *host_start, *host_end, *port_text;
    if (text[0] == '[') {
        host_start = text + 1;
        host_end = strchr(host_start, ']');
        if (!host_end) {
            snprintf(why, whylen, "missing ']' after the IPv6 address");
            return -1;
        }
        if (host_end[1] != ':') {
            snprintf(why, whylen, host_end[1] ? "expected ':' after ']'" : "missing port");
            return -1;
        }
        port_text = host_end + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon) {
            snprintf(why, whylen, "missing port");
            return -1;
        }
        host_start = text;
        host_end = colon;
        if (memchr(text, ':', (size_t)(colon - text))) {
            snprintf(why, whylen, "an IPv6 address needs brackets, as in [::1]:7001");
            return -1;
        }
        port_text = colon + 1;
    }

    size_t len = (size_t)(host_end - host_start);
    if (len == 0) {
        snprintf(why, whylen, "missing host");
        return -1;
    }
    if (len > HOST_NAME_MAX_LEN) {
        snprintf(why, whylen, "host is longer than %d characters", HOST_NAME_MAX_LEN);
        return -1;
    }
    char name[HOST_NAME_MAX_LEN + 1];
    memcpy(name, host_start, len);
    name[len] = '\0';

    unsigned char bin[16];
    if (text[0] == '[') {
        if (inet_pton(AF_INET6, name, bin) != 1) {
            snprintf(why, whylen, "'%s' is not an IPv6 address", name);
            return -1;
        }
    } else if (is_ipv4_like(name)) {
        if (inet_pton(AF_INET, name, bin) != 1) {
            snprintf(why, whylen, "'%s' is not an IPv4 address", name);
            return -1;
        }
    } else {
        for (const char *p = name; *p; p++) {
            if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_') {
                snprintf(why, whylen, "'%s' is not a hostname or IP address", name);
                return -1;
            }
        }
    }

    if (parse_port(port_text, port, why, whylen) != 0)
        return -1;
    *host = strdup(name);
    if (!*host) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

/* Whether two hosts name the same address: IP literals compare by value, so
 * [::1] and [0:0::1] match; hostnames compare without case. */
static bool same_host(const char *a, const char *b)
{
    unsigned char ba[16], bb[16];
    if (inet_pton(AF_INET, a, ba) == 1 && inet_pton(AF_INET, b, bb) == 1)
        return memcmp(ba, bb, 4) == 0;
    if (inet_pton(AF_INET6, a, ba) == 1 && inet_pton(AF_INET6, b, bb) == 1)
        return memcmp(ba, bb, 16) == 0;
    return strcasecmp(a, b) == 0;
}

void config_format_addr(const char *host, uint16_t port, char *buf, size_t buflen)
{
    if (strchr(host, ':'))
        snprintf(buf, buflen, "[%s]:%u", host, (unsigned)port);
    else
        snprintf(buf, buflen, "%s:%u", host, (unsigned)port);
}

static void addr_list_free(config_addr_list *list)
{
    for (size_t i = 0; i < list->n; i++)
        free(list->addrs[i].host);
    free(list->addrs);
    list->addrs = NULL;
    list->n = 0;
}

/* Parses "host:port, host:port" (spaces around commas allowed) into list.
 * Returns 0, or -1 with a reason and list empty. */
static int parse_addr_list(const char *text, config_addr_list *list, char *why, size_t whylen)
{
    char copy[CONFIG_MAX_LINE];
    snprintf(copy, sizeof(copy), "%s", text);
    list->addrs = calloc(SENTINELS_MAX, sizeof(*list->addrs));
    list->n = 0;
    if (!list->addrs) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*item))
            item++;
        char *end = item + strlen(item);
        while (end > item && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (!*item)
            continue;
        if (list->n == SENTINELS_MAX) {
            snprintf(why, whylen, "more than %d addresses", SENTINELS_MAX);
            addr_list_free(list);
            return -1;
        }
        char reason[320];
        config_addr *a = &list->addrs[list->n];
        if (parse_addr(item, &a->host, &a->port, reason, sizeof(reason)) != 0) {
            snprintf(why, whylen, "bad address '%s': %s", item, reason);
            addr_list_free(list);
            return -1;
        }
        list->n++;
        for (size_t i = 0; i + 1 < list->n; i++) {
            if (list->addrs[i].port == a->port && same_host(list->addrs[i].host, a->host)) {
                snprintf(why, whylen, "'%s' is listed twice", item);
                addr_list_free(list);
                return -1;
            }
        }
    }
    if (list->n == 0) {
        free(list->addrs);
        list->addrs = NULL;
    }
    return 0;
}

/* The typed setters below store a non-empty value into field (and, for the
 * two-field types, the one at key->offset2 of cfg). Each returns 0, or -1
 * with a reason in why, as set_key does. */

static int set_number(const config_key *key, const char *value, void *field, char *why,
                      size_t whylen)
{
    int64_t v;
    int rc = parse_number(value, key->type == KEY_BYTES, &v);
    if (rc == -1) {
        if (key->type == KEY_BYTES)
            snprintf(why, whylen, "%s: '%s' is not a size (bytes, or a number with kb, mb or gb)",
                     key->name, value);
        else if (key->unit[0])
            snprintf(why, whylen, "%s: '%s' is not an integer (%s)", key->name, value, key->unit);
        else
            snprintf(why, whylen, "%s: '%s' is not an integer", key->name, value);
        return -1;
    }
    if (rc == -2 || v < key->min || v > key->max) {
        char range[80];
        format_range(key, range, sizeof(range));
        if (key->unit[0])
            snprintf(why, whylen, "%s: %s is out of range %s (%s)", key->name, value, range,
                     key->unit);
        else
            snprintf(why, whylen, "%s: %s is out of range %s", key->name, value, range);
        return -1;
    }
    if (key->type == KEY_INT) {
        int i = (int)v;
        memcpy(field, &i, sizeof(i));
    } else {
        memcpy(field, &v, sizeof(v));
    }
    return 0;
}

static int set_bool(const config_key *key, const char *value, void *field, char *why, size_t whylen)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        int b = -1;
        if (strcasecmp(value, yes[i]) == 0)
            b = 1;
        else if (strcasecmp(value, no[i]) == 0)
            b = 0;
        if (b >= 0) {
            memcpy(field, &b, sizeof(b));
            return 0;
        }
    }
    snprintf(why, whylen, "%s: '%s' is not yes or no", key->name, value);
    return -1;
}

static int set_enum(const config_key *key, const char *value, void *field, char *why, size_t whylen)
{
    char values[128];
    for (int i = 0; i < key->enum_count; i++) {
        if (strcasecmp(value, key->enum_name(i)) == 0) {
            memcpy(field, &i, sizeof(i));
            return 0;
        }
    }
    describe_values(key, values, sizeof(values));
    snprintf(why, whylen, "%s: '%s' is not one of %s", key->name, value, values);
    return -1;
}

/* The host goes to the string at key->offset, the port to key->offset2. */
static int set_addr(const config_key *key, const char *value, config *cfg, char *why, size_t whylen)
{
    char reason[320];
    char *host = NULL;
    uint16_t port = 0;
    /* An address whose default is empty (tls_listen) may be left empty: off. */
    if (value[0] == '\0' && key->default_value[0] == '\0') {
    } else if (parse_addr(value, &host, &port, reason, sizeof(reason)) != 0) {
        snprintf(why, whylen, "%s: bad address '%s': %s", key->name, value, reason);
        return -1;
    }
    char **slot = field_of(cfg, key->offset);
    free(*slot);
    *slot = host;
    memcpy(field_of(cfg, key->offset2), &port, sizeof(port));
    return 0;
}

/* The opening character goes to key->offset, the closing one to
 * key->offset2; an empty value stores two NULs (tags disabled). */
static int set_tag(const config_key *key, const char *value, config *cfg, char *why, size_t whylen)
{
    size_t len = strlen(value);
    bool ok = len == 0 || (len == 2 && value[0] != value[1] && isgraph((unsigned char)value[0]) &&
                           isgraph((unsigned char)value[1]));
    if (!ok) {
        snprintf(why, whylen,
                 "%s: '%s' is not two different characters (like {}), or empty to disable tags",
                 key->name, value);
        return -1;
    }
    char open = len ? value[0] : '\0';
    char close = len ? value[1] : '\0';
    memcpy(field_of(cfg, key->offset), &open, 1);
    memcpy(field_of(cfg, key->offset2), &close, 1);
    return 0;
}

/* A copy of value, or NULL for an empty one, replaces the string in field. */
static int set_string(const config_key *key, const char *value, void *field, char *why,
                      size_t whylen)
{
    char *copy = NULL;
    if (value[0] && !(copy = strdup(value))) {
        snprintf(why, whylen, "%s: out of memory", key->name);
        return -1;
    }
    char **slot = field;
    free(*slot);
    *slot = copy;
    return 0;
}

/* The list replaces the one in field. */
static int set_addrs(const config_key *key, const char *value, void *field, char *why,
                     size_t whylen)
{
    config_addr_list list = {0};
    char reason[512];
    if (parse_addr_list(value, &list, reason, sizeof(reason)) != 0) {
        snprintf(why, whylen, "%s: %s", key->name, reason);
        return -1;
    }
    config_addr_list *slot = field;
    addr_list_free(slot);
    *slot = list;
    return 0;
}

/* Parses value into key's field(s) of cfg. Returns 0, or -1 with a reason
 * (without the file:line prefix) in why. */
static int set_key(const config_key *key, const char *value, config *cfg, char *why, size_t whylen)
{
    void *field = field_of(cfg, key->offset);

    /* An address whose default is empty is optional: empty turns it off. */
    if (value[0] == '\0' && key->type != KEY_TAG && key->type != KEY_SECRET &&
        key->type != KEY_NAME && key->type != KEY_SHARD && key->type != KEY_ADDRS &&
        !((key->type == KEY_PATH || key->type == KEY_ADDR) && key->default_value[0] == '\0')) {
        char values[128];
        describe_values(key, values, sizeof(values));
        snprintf(why, whylen, "%s has no value (expected %s)", key->name, values);
        return -1;
    }

    switch (key->type) {
    case KEY_INT:
    case KEY_INT64:
    case KEY_BYTES:
        return set_number(key, value, field, why, whylen);
    case KEY_BOOL:
        return set_bool(key, value, field, why, whylen);
    case KEY_ENUM:
        return set_enum(key, value, field, why, whylen);
    case KEY_ADDR:
        return set_addr(key, value, cfg, why, whylen);
    case KEY_TAG:
        return set_tag(key, value, cfg, why, whylen);
    case KEY_SECRET:
    case KEY_NAME:
    case KEY_SHARD:
    case KEY_SHARDS:
    case KEY_PATH:
        /* A shard name is checked against [shards] once the whole file is
         * read (validate), since [shards] may come after [proxy]. */
        return set_string(key, value, field, why, whylen);
    case KEY_ADDRS:
        return set_addrs(key, value, field, why, whylen);
    }
    snprintf(why, whylen, "%s: unhandled key type", key->name);
    return -1;
}

static int set_proxy_key(load_ctx *ctx, const char *name, const char *value)
{
    const config_key *key = find_key(name);
    if (!key) {
        fail(ctx, ctx->line, "unknown key '%s' in [proxy]", name);
        return -1;
    }
    size_t i = (size_t)(key - config_keys);
    if (ctx->key_line[i]) {
        fail(ctx, ctx->line, "duplicate key '%s' in [proxy] (first set on line %d)", name,
             ctx->key_line[i]);
        return -1;
    }
    ctx->key_line[i] = ctx->line;
    char why[1024];
    if (set_key(key, value, ctx->cfg, why, sizeof(why)) != 0) {
        fail(ctx, ctx->line, "%s", why);
        return -1;
    }
    return 0;
}

static bool valid_shard_name(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > SHARD_NAME_MAX)
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '.' && *p != '-')
            return false;
    return true;
}

/* Parses the value of a [shards] line, "host:port [weight=N]", into shard.
 * Returns 0 or -1 after fail(). */
static int parse_shard_value(load_ctx *ctx, const char *name, const char *value,
                             config_shard *shard)
{
    char text[CONFIG_MAX_LINE];
    snprintf(text, sizeof(text), "%s", value);
    char *save = NULL;
    char *addr = strtok_r(text, " \t", &save);
    if (!addr) {
        fail(ctx, ctx->line, "shard %s has no address (expected host:port [weight=N])", name);
        return -1;
    }
    char why[1024];
    if (strncmp(addr, SENTINEL_PREFIX, strlen(SENTINEL_PREFIX)) == 0) {
        const char *master = addr + strlen(SENTINEL_PREFIX);
        if (!valid_shard_name(master)) {
            fail(ctx, ctx->line,
                 "shard %s: bad master name '%s' after sentinel: (use 1 to %d of the characters "
                 "A-Z a-z 0-9 _ . -)",
                 name, master, SHARD_NAME_MAX);
            return -1;
        }
        if (!(shard->sentinel_master = strdup(master))) {
            fail(ctx, ctx->line, "out of memory");
            return -1;
        }
    } else if (parse_addr(addr, &shard->host, &shard->port, why, sizeof(why)) != 0) {
        fail(ctx, ctx->line, "shard %s: bad address '%s': %s", name, addr, why);
        return -1;
    }
    bool have_weight = false;
    for (char *word; (word = strtok_r(NULL, " \t", &save));) {
        if (strncmp(word, "read_from=", 10) == 0) {
            int i = 0;
            while (i < CONFIG_READ_FROM_COUNT && strcmp(word + 10, config_read_from_name(i)) != 0)
                i++;
            if (i == CONFIG_READ_FROM_COUNT || shard->read_from >= 0) {
                fail(ctx, ctx->line,
                     "shard %s: read_from must be given once, as master, replica or "
                     "prefer_replica, not '%s'",
                     name, word + 10);
                return -1;
            }
            shard->read_from = i;
            continue;
        }
        if (strncmp(word, "weight=", 7) != 0) {
            fail(ctx, ctx->line,
                 "shard %s: unexpected '%s' after the address (expected weight=N or read_from=X%s)",
                 name, word, word[0] == '#' ? "; comments start with ';'" : "");
            return -1;
        }
        if (have_weight) {
            fail(ctx, ctx->line, "shard %s: weight given twice", name);
            return -1;
        }
        have_weight = true;
        int64_t w;
        const char *w_text = word + 7;
        if (w_text[0] == '-' || parse_number(w_text, false, &w) != 0 || w < 1 ||
            w > SHARD_WEIGHT_MAX) {
            fail(ctx, ctx->line, "shard %s: weight must be an integer 1..%d, not '%s'", name,
                 SHARD_WEIGHT_MAX, w_text);
            return -1;
        }
        shard->weight = (uint32_t)w;
    }
    return 0;
}

static int add_shard(load_ctx *ctx, const char *name, const char *value)
{
    config *cfg = ctx->cfg;
    if (!valid_shard_name(name)) {
        fail(ctx, ctx->line,
             "bad shard name '%s' (use 1 to %d of the characters A-Z a-z 0-9 _ . -)", name,
             SHARD_NAME_MAX);
        return -1;
    }
    if (find_key(name)) {
        fail(ctx, ctx->line, "'%s' is a [proxy] key, but this line is under [shards]", name);
        return -1;
    }
    for (size_t i = 0; i < cfg->nshards; i++) {
        if (strcmp(cfg->shards[i].name, name) == 0) {
            fail(ctx, ctx->line, "duplicate shard name '%s' (first on line %d)", name,
                 cfg->shards[i].line);
            return -1;
        }
    }
    if (cfg->nshards == ctx->shard_cap) {
        size_t cap = ctx->shard_cap ? ctx->shard_cap * 2 : 8;
        config_shard *grown = realloc(cfg->shards, cap * sizeof(*grown));
        if (!grown) {
            fail(ctx, ctx->line, "out of memory");
            return -1;
        }
        cfg->shards = grown;
        ctx->shard_cap = cap;
    }
    config_shard shard = {.weight = 1, .line = ctx->line, .read_from = -1};
    if (parse_shard_value(ctx, name, value, &shard) != 0) {
        free(shard.host);
        free(shard.sentinel_master);
        return -1;
    }
    for (size_t i = 0; i < cfg->nshards; i++) {
        const config_shard *other = &cfg->shards[i];
        if (shard.sentinel_master) {
            if (other->sentinel_master &&
                strcmp(other->sentinel_master, shard.sentinel_master) == 0) {
                fail(ctx, ctx->line, "shards %s and %s (line %d) name the same sentinel master %s",
                     name, other->name, other->line, shard.sentinel_master);
                free(shard.sentinel_master);
                return -1;
            }
            continue;
        }
        if (other->host && other->port == shard.port && same_host(other->host, shard.host)) {
            char addr[CONFIG_ADDR_MAX];
            config_format_addr(shard.host, shard.port, addr, sizeof(addr));
            fail(ctx, ctx->line, "shards %s and %s (line %d) have the same address %s", name,
                 other->name, other->line, addr);
            free(shard.host);
            return -1;
        }
    }
    shard.name = strdup(name);
    if (!shard.name) {
        fail(ctx, ctx->line, "out of memory");
        free(shard.host);
        free(shard.sentinel_master);
        return -1;
    }
    cfg->shards[cfg->nshards++] = shard;
    return 0;
}

/* One line of [users]: `name = rules`. A name's later lines add rules to
 * its first, as repeated ACL SETUSER calls do. */
static int add_user_rules(load_ctx *ctx, const char *name, const char *value)
{
    config *cfg = ctx->cfg;
    if (!acl_valid_user_name(name)) {
        fail(ctx, ctx->line, "user name '%s' must be 1 to %d printable characters without spaces",
             name, ACL_USER_NAME_MAX);
        return -1;
    }
    acl_user *user = (acl_user *)config_find_user(cfg, name, strlen(name));
    if (!user) {
        acl_user *grown = realloc(cfg->users, (cfg->nusers + 1) * sizeof(*grown));
        if (!grown) {
            fail(ctx, 0, "out of memory");
            return -1;
        }
        cfg->users = grown;
        user = &grown[cfg->nusers];
        *user = (acl_user){.line = ctx->line};
        if (!(user->name = strdup(name))) {
            fail(ctx, 0, "out of memory");
            return -1;
        }
        cfg->nusers++;
    }
    char why[256];
    if (acl_user_apply(user, value, why, sizeof(why)) < 0) {
        fail(ctx, ctx->line, "user %s: %s", name, why);
        return -1;
    }
    if (strcmp(name, "default") == 0)
        ctx->default_user_line = ctx->line;
    return 0;
}

/* inih's handler: one name = value pair of the line last read. */
static int on_pair(void *user, const char *section, const char *name, const char *value)
{
    load_ctx *ctx = user;
    if (ctx->failed)
        return 0;
    if (name[0] == '\0') {
        fail(ctx, ctx->line, "missing name before '='");
        return 0;
    }
    if (strcmp(section, "proxy") == 0)
        return set_proxy_key(ctx, name, value) == 0;
    if (strcmp(section, "shards") == 0)
        return add_shard(ctx, name, value) == 0;
    if (strcmp(section, "users") == 0)
        return add_user_rules(ctx, name, value) == 0;
    /* read_line() rejects unknown section headers, so only "" is left */
    fail(ctx, ctx->line, "'%s' is outside any section (put it under [proxy] or [shards])", name);
    return 0;
}

/* inih's rule for where a token ends: at one of chars, or at a ';' that
 * follows whitespace (an inline comment). */
static const char *find_chars_or_comment(const char *s, const char *chars)
{
    bool was_space = false;
    while (*s && !strchr(chars, *s) && !(was_space && *s == ';')) {
        was_space = isspace((unsigned char)*s);
        s++;
    }
    return s;
}

/* Rejects what inih would reject without calling the handler, with a reason:
 * a section header without ']', an unknown section, a line without '='. */
static int check_line(load_ctx *ctx, const char *text)
{
    if (text[0] == '\0' || text[0] == ';' || text[0] == '#')
        return 0;
    if (text[0] == '[') {
        const char *end = find_chars_or_comment(text + 1, "]");
        if (*end != ']') {
            fail(ctx, ctx->line, "section header without ']'");
            return -1;
        }
        size_t len = (size_t)(end - text - 1);
        int shards = len == 6 && memcmp(text + 1, "shards", 6) == 0;
        int users = len == 5 && memcmp(text + 1, "users", 5) == 0;
        if (shards && !ctx->shards_line)
            ctx->shards_line = ctx->line;
        if (!((len == 5 && memcmp(text + 1, "proxy", 5) == 0) || shards || users)) {
            fail(ctx, ctx->line, "unknown section [%.*s] (expected [proxy], [shards] or [users])",
                 (int)len, text + 1);
            return -1;
        }
        return 0;
    }
    const char *end = find_chars_or_comment(text, "=:");
    if (*end != '=' && *end != ':') {
        fail(ctx, ctx->line, "expected 'name = value', a [section] or a ; comment");
        return -1;
    }
    return 0;
}

/* inih's line reader. Hands over one whole line at a time, so ctx->line is
 * the number of the line the handler is called for. Lines reach inih without
 * leading whitespace: inih would read an indented line as the continuation
 * of the previous value, which turns an indented shard line into a bad
 * address of the one above. */
static char *read_line(char *buf, int size, void *stream)
{
    load_ctx *ctx = stream;
    if (ctx->failed || ctx->pos >= ctx->end)
        return NULL;

    const char *start = ctx->pos;
    const char *newline = memchr(start, '\n', (size_t)(ctx->end - start));
    const char *stop = newline ? newline : ctx->end;
    ctx->pos = newline ? newline + 1 : ctx->end;
    ctx->line++;

    if (stop > start && stop[-1] == '\r')
        stop--;
    size_t len = (size_t)(stop - start);
    /* size is inih's line buffer: honour it should a build make it smaller */
    size_t max_text =
        size < CONFIG_MAX_LINE ? (size_t)(size > 3 ? size - 3 : 0) : (size_t)CONFIG_MAX_LINE_TEXT;
    if (len > max_text) {
        fail(ctx, ctx->line, "line is %zu characters long; the limit is %zu", len, max_text);
        return NULL;
    }
    if (memchr(start, '\0', len)) {
        fail(ctx, ctx->line, "line contains a NUL byte");
        return NULL;
    }
    if (ctx->line == 1 && len >= 3 && memcmp(start, "\xef\xbb\xbf", 3) == 0)
        start += 3;
    while (start < stop && isspace((unsigned char)*start))
        start++;

    len = (size_t)(stop - start);
    memcpy(buf, start, len);
    buf[len] = '\0';
    if (check_line(ctx, buf) != 0)
        return NULL;
    buf[len] = '\n';
    buf[len + 1] = '\0';
    return buf;
}

/* Checks that involve several keys; reported at the later of their lines. */
/* Calls fn for each name of a comma-separated list (spaces around names
 * ignored); stops at the first fn that returns non-zero and returns it. */
static int each_listed_name(const char *list, int (*fn)(const char *name, size_t len, void *arg),
                            void *arg)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        int rc = fn(p, (size_t)(last - p), arg);
        if (rc)
            return rc;
        p = *end ? end + 1 : end;
    }
    return 0;
}

static int shard_named(const config *cfg, const char *name, size_t len)
{
    for (size_t j = 0; j < cfg->nshards; j++)
        if (strlen(cfg->shards[j].name) == len && memcmp(cfg->shards[j].name, name, len) == 0)
            return (int)j;
    return -1;
}

struct list_check {
    const config *cfg;
    unsigned char *seen;
    char *bad;
    size_t badlen;
};

static int check_listed_name(const char *name, size_t len, void *arg)
{
    struct list_check *lc = arg;
    int j = len ? shard_named(lc->cfg, name, len) : -1;
    if (j < 0) {
        snprintf(lc->bad, lc->badlen, "'%.*s' is not a shard of [shards]", (int)len, name);
        return -1;
    }
    if (lc->seen[j]++) {
        snprintf(lc->bad, lc->badlen, "'%.*s' is listed twice", (int)len, name);
        return -1;
    }
    return 0;
}

/* A shard list key: "all", or names of [shards], each once. */
static int check_shard_list(const config *cfg, const char *list, char *bad, size_t badlen)
{
    if (!list || strcmp(list, "all") == 0)
        return 0;
    unsigned char *seen = calloc(cfg->nshards ? cfg->nshards : 1, 1);
    if (!seen) {
        snprintf(bad, badlen, "out of memory");
        return -1;
    }
    struct list_check lc = {cfg, seen, bad, badlen};
    int rc = each_listed_name(list, check_listed_name, &lc);
    free(seen);
    return rc ? -1 : 0;
}

struct list_find {
    const char *name;
};

static int is_named(const char *name, size_t len, void *arg)
{
    const struct list_find *lf = arg;
    return strlen(lf->name) == len && memcmp(lf->name, name, len) == 0;
}

int config_host_is_name(const char *host)
{
    unsigned char bin[16];
    return host && host[0] && inet_pton(AF_INET, host, bin) != 1 &&
           inet_pton(AF_INET6, host, bin) != 1;
}

int config_is_lock_shard(const config *cfg, const char *name)
{
    if (!cfg->lock_shards || strcmp(cfg->lock_shards, "all") == 0)
        return shard_named(cfg, name, strlen(name)) >= 0;
    struct list_find lf = {name};
    return each_listed_name(cfg->lock_shards, is_named, &lf) == 1;
}

/* The keys that name shards (script_default_shard, lock_shards, ...)
 * against cfg's [shards]: 0, or -1 with the first key that names another
 * in *bad_key and why in bad. */
static int check_shard_keys(const config *cfg, size_t *bad_key, char *bad, size_t badlen)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const config_key *key = &config_keys[i];
        char *const *name = const_field_of(cfg, key->offset);
        char why[200] = "";
        if (key->type == KEY_SHARD && *name) {
            bool found = false;
            for (size_t j = 0; j < cfg->nshards && !found; j++)
                found = strcmp(cfg->shards[j].name, *name) == 0;
            if (!found)
                snprintf(why, sizeof(why), "'%s' is not a shard of [shards]", *name);
        } else if (key->type == KEY_SHARDS) {
            (void)check_shard_list(cfg, *name, why, sizeof(why));
        }
        if (why[0]) {
            *bad_key = i;
            snprintf(bad, badlen, "%s: %s", key->name, why);
            return -1;
        }
    }
    return 0;
}

/* Each pair of key_orders whose low key is set above its high key fails,
 * at the later of the two lines. Stops at the first failure. */
static void check_key_orders(load_ctx *ctx)
{
    const config *cfg = ctx->cfg;
    for (size_t i = 0; i < sizeof(key_orders) / sizeof(key_orders[0]) && !ctx->failed; i++) {
        const config_key *low = find_key(key_orders[i].low);
        const config_key *high = find_key(key_orders[i].high);
        int64_t lo = key_number(low, cfg), hi = key_number(high, cfg);
        if (lo <= hi)
            continue;
        int line_low = ctx->key_line[low - config_keys];
        int line_high = ctx->key_line[high - config_keys];
        char lo_text[32], hi_text[32];
        if (low->type == KEY_BYTES) {
            format_bytes(lo, lo_text, sizeof(lo_text));
            format_bytes(hi, hi_text, sizeof(hi_text));
        } else {
            snprintf(lo_text, sizeof(lo_text), "%lld%s%s", (long long)lo, low->unit[0] ? " " : "",
                     low->unit);
            snprintf(hi_text, sizeof(hi_text), "%lld%s%s", (long long)hi, high->unit[0] ? " " : "",
                     high->unit);
        }
        fail(ctx, line_low > line_high ? line_low : line_high, "%s (%s) is above %s (%s)",
             low->name, lo_text, high->name, hi_text);
    }
}

/* The line a key was set on, 0 when it has its default. */
static int key_line_of(const load_ctx *ctx, const char *name)
{
    return ctx->key_line[find_key(name) - config_keys];
}

/* TLS keys that only make sense together. Whether the files can be read
 * is the TLS module's check, at start and reload (this module is pure). */
static void check_tls(load_ctx *ctx)
{
    const config *cfg = ctx->cfg;
    if (cfg->tls_listen_host && (!cfg->tls_cert_file || !cfg->tls_key_file))
        fail(ctx, key_line_of(ctx, "tls_listen"),
             "tls_listen needs tls_cert_file and tls_key_file");
    else if (cfg->tls_auth_clients != CONFIG_TLS_AUTH_NO && !cfg->tls_ca_cert_file)
        fail(ctx, key_line_of(ctx, "tls_auth_clients"),
             "tls_auth_clients = %s needs tls_ca_cert_file to check certificates with",
             config_tls_auth_name(cfg->tls_auth_clients));
    else if (cfg->tls_shards && !cfg->tls_shards_ca_cert_file)
        fail(ctx, key_line_of(ctx, "tls_shards"),
             "tls_shards = yes needs tls_shards_ca_cert_file to check the shards' certificates");
    else if (cfg->tls_sentinels && !cfg->tls_shards_ca_cert_file)
        fail(ctx, key_line_of(ctx, "tls_sentinels"),
             "tls_sentinels = yes needs tls_shards_ca_cert_file to check the Sentinels' "
             "certificates");
    else if (!cfg->tls_shards_cert_file != !cfg->tls_shards_key_file)
        fail(ctx,
             key_line_of(ctx, cfg->tls_shards_cert_file ? "tls_shards_cert_file"
                                                        : "tls_shards_key_file"),
             "tls_shards_cert_file and tls_shards_key_file go together");
    else if (cfg->tls_listen_host && cfg->tls_listen_port == cfg->listen_port &&
             same_host(cfg->tls_listen_host, cfg->listen_host))
        fail(ctx, key_line_of(ctx, "tls_listen"), "tls_listen is the same address as listen");
}

static void validate(load_ctx *ctx)
{
    config *cfg = ctx->cfg;
    check_key_orders(ctx);
    if (ctx->failed)
        return;

    /* compat = twemproxy alone means nutcracker's defaults: fnv1a_64 and no
     * hash tag, as a nutcracker pool without hash: or hash_tag: lines. An
     * explicit hash or hash_tag line still wins. */
    const config_key *hash_key = find_key("hash"), *tag_key = find_key("hash_tag");
    if (cfg->compat == RING_TWEMPROXY && !ctx->key_line[hash_key - config_keys])
        cfg->hash = HASH_FNV1A_64;
    if (cfg->compat == RING_TWEMPROXY && !ctx->key_line[tag_key - config_keys])
        cfg->hash_tag_open = cfg->hash_tag_close = 0;

    /* nutcracker has no murmur3: with it, compat = twemproxy would place
     * shards as nutcracker does but send keys elsewhere. */
    if (cfg->compat == RING_TWEMPROXY && cfg->hash == HASH_MURMUR3) {
        const config_key *compat = find_key("compat");
        const config_key *hash = find_key("hash");
        int line_compat = ctx->key_line[compat - config_keys];
        int line_hash = ctx->key_line[hash - config_keys];
        fail(ctx, line_compat > line_hash ? line_compat : line_hash,
             "compat = twemproxy needs one of nutcracker's hashes (fnv1a_64, crc32, md5, murmur), "
             "not murmur3");
        return;
    }

    if (cfg->nshards == 0 && ctx->shards_line) {
        fail(ctx, ctx->shards_line,
             "[shards] has no shards: add lines like 's1 = 127.0.0.1:7001' under it");
        return;
    }
    if (cfg->nshards == 0) {
        fail(ctx, 0, "no shards: add lines like 's1 = 127.0.0.1:7001' under [shards]");
        return;
    }

    size_t bad_key;
    char bad[200];
    if (check_shard_keys(cfg, &bad_key, bad, sizeof(bad)) < 0) {
        fail(ctx, ctx->key_line[bad_key], "%s", bad);
        return;
    }

    /* AUTH user needs a password: Redis has no form for a user alone. */
    if (cfg->backend_user && !cfg->backend_password) {
        fail(ctx, ctx->key_line[find_key("backend_user") - config_keys],
             "backend_user needs backend_password (the user's password on the shards)");
        return;
    }

    /* Two places for one password would leave a reader guessing which
     * counts: requirepass is the default user's password only when [users]
     * does not define that user. */
    const config_key *requirepass = find_key("requirepass");
    if (cfg->requirepass && ctx->default_user_line) {
        int line = ctx->key_line[requirepass - config_keys];
        fail(ctx, line > ctx->default_user_line ? line : ctx->default_user_line,
             "requirepass and a [users] default line both set the default user: keep one "
             "(e.g. 'default = on >password ~* &* +@all')");
        return;
    }

    check_tls(ctx);
    if (ctx->failed)
        return;

    /* A shard at the proxy's own address would forward every request back
     * to the proxy, forever. */
    for (size_t i = 0; i < cfg->nshards; i++) {
        const config_shard *shard = &cfg->shards[i];
        if (shard->sentinel_master && cfg->sentinels.n == 0) {
            fail(ctx, shard->line,
                 "shard %s names sentinel master %s, but [proxy] sentinels lists no Sentinel",
                 shard->name, shard->sentinel_master);
            return;
        }
        if (shard->host && shard->port == cfg->listen_port &&
            same_host(shard->host, cfg->listen_host)) {
            char addr[CONFIG_ADDR_MAX];
            config_format_addr(shard->host, shard->port, addr, sizeof(addr));
            fail(ctx, shard->line, "shard %s is at the proxy's own listen address %s", shard->name,
                 addr);
            return;
        }
    }
}

static int load_text(const char *text, size_t len, const char *name, config **out, char *err,
                     size_t errlen)
{
    load_ctx ctx = {.name = name, .pos = text, .end = text + len, .err = err, .errlen = errlen};
    if (errlen)
        err[0] = '\0';

    config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg || !(cfg->path = strdup(name))) {
        free(cfg);
        fail(&ctx, 0, "out of memory");
        return -1;
    }
    ctx.cfg = cfg;

    for (size_t i = 0; i < NKEYS && !ctx.failed; i++) {
        char why[1024];
        if (set_key(&config_keys[i], config_keys[i].default_value, cfg, why, sizeof(why)) != 0)
            fail(&ctx, 0, "built-in default: %s", why);
    }

    if (!ctx.failed) {
        int rc = ini_parse_stream(read_line, &ctx, on_pair, &ctx);
        if (rc == -2)
            fail(&ctx, 0, "out of memory");
        else if (rc != 0)
            fail(&ctx, rc, "syntax error");
    }
    if (!ctx.failed)
        validate(&ctx);

    if (ctx.failed) {
        config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

int config_load_string(const char *text, const char *name, config **out, char *err, size_t errlen)
{
    return load_text(text, strlen(text), name, out, err, errlen);
}

int config_load(const char *path, config **out, char *err, size_t errlen)
{
    FILE *file = fopen(path, "rb");
    if (!file) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    char *text = malloc(cap);
    const char *problem = NULL;
    int saved_errno = 0;
    while (text) {
        size_t n = fread(text + len, 1, cap - len, file);
        len += n;
        if (n == 0) {
            if (ferror(file)) {
                saved_errno = errno;
                problem = "cannot read";
            }
            break;
        }
        if (len == cap) {
            if (cap >= CONFIG_MAX_FILE_BYTES) {
                problem = "file is too large for a config";
                break;
            }
            char *grown = realloc(text, cap * 2);
            if (!grown) {
                free(text);
                text = NULL;
                break;
            }
            text = grown;
            cap *= 2;
        }
    }
    fclose(file);

    if (!text) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    if (problem) {
        if (saved_errno)
            snprintf(err, errlen, "%s: %s: %s", path, problem, strerror(saved_errno));
        else
            snprintf(err, errlen, "%s: %s (over %d bytes)", path, problem, CONFIG_MAX_FILE_BYTES);
        free(text);
        return -1;
    }
    int rc = load_text(text, len, path, out, err, errlen);
    free(text);
    return rc;
}

const config_shard *config_find_shard(const config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nshards; i++)
        if (strcmp(cfg->shards[i].name, name) == 0)
            return &cfg->shards[i];
    return NULL;
}

const acl_user *config_find_user(const config *cfg, const char *name, size_t len)
{
    for (size_t i = 0; i < cfg->nusers; i++)
        if (strlen(cfg->users[i].name) == len && memcmp(cfg->users[i].name, name, len) == 0)
            return &cfg->users[i];
    return NULL;
}

ring *config_ring(const config *cfg, char *err, size_t errlen)
{
    ring_shard_spec *specs = calloc(cfg->nshards ? cfg->nshards : 1, sizeof(*specs));
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

/* Frees cfg's shard lines. */
static void free_shards(config *cfg)
{
    for (size_t i = 0; i < cfg->nshards; i++) {
        free(cfg->shards[i].name);
        free(cfg->shards[i].host);
        free(cfg->shards[i].sentinel_master);
    }
    free(cfg->shards);
    cfg->shards = NULL;
    cfg->nshards = 0;
}

static char *dup_or_null(const char *s, bool *failed)
{
    char *d = s ? strdup(s) : NULL;
    *failed |= s && !d;
    return d;
}

int config_with_ring(config *cfg, const config *from, char *err, size_t errlen)
{
    config_shard *shards = calloc(from->nshards ? from->nshards : 1, sizeof(*shards));
    if (!shards) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    bool failed = false;
    for (size_t i = 0; i < from->nshards; i++) {
        shards[i] = from->shards[i];
        shards[i].name = dup_or_null(from->shards[i].name, &failed);
        shards[i].host = dup_or_null(from->shards[i].host, &failed);
        shards[i].sentinel_master = dup_or_null(from->shards[i].sentinel_master, &failed);
    }
    config copy = *cfg;
    copy.shards = shards;
    copy.nshards = from->nshards;
    size_t bad_key;
    char bad[200];
    if (failed || check_shard_keys(&copy, &bad_key, bad, sizeof(bad)) < 0) {
        snprintf(err, errlen, "%s", failed ? "out of memory" : bad);
        free_shards(&copy);
        return -1;
    }
    free_shards(cfg);
    cfg->shards = shards;
    cfg->nshards = from->nshards;
    cfg->hash = from->hash;
    cfg->hash_tag_open = from->hash_tag_open;
    cfg->hash_tag_close = from->hash_tag_close;
    cfg->compat = from->compat;
    return 0;
}

void config_free(config *cfg)
{
    if (!cfg)
        return;
    free_shards(cfg);
    free(cfg->listen_host);
    free(cfg->requirepass);
    free(cfg->backend_user);
    free(cfg->backend_password);
    for (size_t i = 0; i < cfg->nusers; i++)
        acl_user_free(&cfg->users[i]);
    free(cfg->users);
    free(cfg->script_default_shard);
    addr_list_free(&cfg->sentinels);
    free(cfg->sentinel_password);
    free(cfg->lock_shards);
    free(cfg->dns_hosts_file);
    free(cfg->dns_resolv_conf);
    free(cfg->tls_listen_host);
    free(cfg->tls_cert_file);
    free(cfg->tls_key_file);
    free(cfg->tls_ca_cert_file);
    free(cfg->tls_shards_ca_cert_file);
    free(cfg->tls_shards_cert_file);
    free(cfg->tls_shards_key_file);
    free(cfg->metrics_host);
    free(cfg->path);
    free(cfg);
}

static bool same_value(const config_key *key, const config *a, const config *b)
{
    switch (key->type) {
    case KEY_ADDR: {
        char *const *host_a = const_field_of(a, key->offset);
        char *const *host_b = const_field_of(b, key->offset);
        if (!*host_a || !*host_b)
            return !*host_a && !*host_b;
        return same_host(*host_a, *host_b) &&
               memcmp(const_field_of(a, key->offset2), const_field_of(b, key->offset2),
                      sizeof(uint16_t)) == 0;
    }
    case KEY_TAG:
        return memcmp(const_field_of(a, key->offset), const_field_of(b, key->offset), 1) == 0 &&
               memcmp(const_field_of(a, key->offset2), const_field_of(b, key->offset2), 1) == 0;
    case KEY_SECRET:
    case KEY_NAME:
    case KEY_SHARD:
    case KEY_SHARDS:
    case KEY_PATH: {
        char *const *sa = const_field_of(a, key->offset);
        char *const *sb = const_field_of(b, key->offset);
        return (!*sa && !*sb) || (*sa && *sb && strcmp(*sa, *sb) == 0);
    }
    case KEY_ADDRS: {
        const config_addr_list *la = const_field_of(a, key->offset);
        const config_addr_list *lb = const_field_of(b, key->offset);
        if (la->n != lb->n)
            return false;
        for (size_t i = 0; i < la->n; i++)
            if (la->addrs[i].port != lb->addrs[i].port ||
                !same_host(la->addrs[i].host, lb->addrs[i].host))
                return false;
        return true;
    }
    default:
        return key_number(key, a) == key_number(key, b);
    }
}

int config_fixed_changes(const config *old_cfg, const config *new_cfg, char *buf, size_t buflen)
{
    int count = 0;
    size_t used = 0;
    if (buflen)
        buf[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        const config_key *key = &config_keys[i];
        if (key->reloadable || same_value(key, old_cfg, new_cfg))
            continue;
        if (used < buflen) {
            int n = snprintf(buf + used, buflen - used, "%s%s", count ? ", " : "", key->name);
            if (n > 0)
                used += (size_t)n;
        }
        count++;
    }
    return count;
}

size_t config_key_count(void)
{
    return NKEYS;
}

const char *config_key_name(size_t i)
{
    return config_keys[i].name;
}

void config_key_value(const config *cfg, size_t i, char *out, size_t outlen)
{
    const config_key *key = &config_keys[i];
    switch (key->type) {
    case KEY_ADDR: {
        char *const *host = const_field_of(cfg, key->offset);
        uint16_t port;
        memcpy(&port, const_field_of(cfg, key->offset2), sizeof(port));
        if (*host)
            config_format_addr(*host, port, out, outlen);
        else
            snprintf(out, outlen, "%s", ""); /* off */
        return;
    }
    case KEY_TAG: {
        const char *open = const_field_of(cfg, key->offset);
        const char *close = const_field_of(cfg, key->offset2);
        if (*open)
            snprintf(out, outlen, "%c%c", *open, *close);
        else
            snprintf(out, outlen, "%s", ""); /* tags off */
        return;
    }
    case KEY_SECRET: {
        char *const *s = const_field_of(cfg, key->offset);
        snprintf(out, outlen, "%s", *s ? "(hidden)" : "");
        return;
    }
    case KEY_NAME:
    case KEY_SHARD:
    case KEY_SHARDS:
    case KEY_PATH: {
        char *const *s = const_field_of(cfg, key->offset);
        snprintf(out, outlen, "%s", *s ? *s : "");
        return;
    }
    case KEY_ADDRS: {
        const config_addr_list *list = const_field_of(cfg, key->offset);
        size_t used = 0;
        if (outlen)
            out[0] = '\0';
        for (size_t j = 0; j < list->n && used < outlen; j++) {
            char addr[CONFIG_ADDR_MAX];
            config_format_addr(list->addrs[j].host, list->addrs[j].port, addr, sizeof(addr));
            int n = snprintf(out + used, outlen - used, "%s%s", j ? ", " : "", addr);
            if (n < 0)
                break;
            used += (size_t)n;
        }
        return;
    }
    case KEY_BOOL:
        snprintf(out, outlen, "%s", key_number(key, cfg) ? "yes" : "no");
        return;
    case KEY_ENUM:
        snprintf(out, outlen, "%s", key->enum_name((int)key_number(key, cfg)));
        return;
    case KEY_BYTES:
        format_bytes(key_number(key, cfg), out, outlen);
        return;
    case KEY_INT:
    case KEY_INT64:
        snprintf(out, outlen, "%lld", (long long)key_number(key, cfg));
        return;
    }
    abort(); /* a key type without a format: a bug here */
}

void config_write_reference(FILE *out)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const config_key *key = &config_keys[i];
        char values[128];
        describe_values(key, values, sizeof(values));
        fprintf(out, "%s; %s = %s\n", i ? "\n" : "", key->name, key->default_value);
        fprintf(out, ";   %s (%s%s)\n", key->description, values,
                key->reloadable ? "" : "; restart to change");
    }
}

void config_write_markdown(FILE *out)
{
    fprintf(out, "| Key | Default | Values | Reload | Meaning |\n");
    fprintf(out, "|-----|---------|--------|--------|---------|\n");
    for (size_t i = 0; i < NKEYS; i++) {
        const config_key *key = &config_keys[i];
        char values[128];
        describe_values(key, values, sizeof(values));
        fprintf(out, "| `%s` | `%s` | %s | %s | %s |\n", key->name, key->default_value, values,
                key->reloadable ? "yes" : "restart", key->description);
    }
}

int config_shard_read_from(const config *cfg, size_t i)
{
    return cfg->shards[i].read_from >= 0 ? cfg->shards[i].read_from : (int)cfg->read_from;
}

const char *config_cross_shard_name(int value)
{
    switch (value) {
    case CONFIG_CROSS_REFUSE:
        return "refuse";
    case CONFIG_CROSS_ATOMIC:
        return "atomic";
    case CONFIG_CROSS_BEST_EFFORT:
        return "best_effort";
    }
    return "?";
}

const char *config_read_from_name(int value)
{
    switch (value) {
    case CONFIG_READ_MASTER:
        return "master";
    case CONFIG_READ_REPLICA:
        return "replica";
    case CONFIG_READ_PREFER_REPLICA:
        return "prefer_replica";
    }
    return "?";
}

const char *config_tls_auth_name(int value)
{
    switch (value) {
    case CONFIG_TLS_AUTH_NO:
        return "no";
    case CONFIG_TLS_AUTH_YES:
        return "yes";
    case CONFIG_TLS_AUTH_OPTIONAL:
        return "optional";
    }
    return "?";
}

const char *config_log_level_name(config_log_level level)
{
    switch (level) {
    case CONFIG_LOG_DEBUG:
        return "debug";
    case CONFIG_LOG_INFO:
        return "info";
    case CONFIG_LOG_NOTICE:
        return "notice";
    case CONFIG_LOG_WARN:
        return "warn";
    case CONFIG_LOG_ERROR:
        return "error";
    }
    return "?";
}
