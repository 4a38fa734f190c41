/* proxy.ini: parsed with inih into a new, fully validated struct, or an error
 * naming file and line. One table of keys (config.c) drives parsing,
 * validation, defaults and the documentation. Pure: no sockets, no libevent. */
#ifndef CONFIG_CONFIG_H
#define CONFIG_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config/acl.h"
#include "ring/hash.h"
#include "ring/ring.h"

/* inih's line buffer (INI_MAX_LINE): a line of proxy.ini may hold
 * CONFIG_MAX_LINE - 3 characters, leaving room for "\r\n" and the NUL. */
#define CONFIG_MAX_LINE 200

/* Log verbosity, most to least verbose. */
typedef enum config_log_level {
    CONFIG_LOG_DEBUG = 0,
    CONFIG_LOG_INFO,
    CONFIG_LOG_NOTICE,
    CONFIG_LOG_WARN,
    CONFIG_LOG_ERROR,
} config_log_level;

/* Where read-only commands go (read_from). */
typedef enum config_read_from {
    CONFIG_READ_MASTER = 0,     /* the master, always */
    CONFIG_READ_REPLICA,        /* a replica when one is known, else the master */
    CONFIG_READ_PREFER_REPLICA, /* a replica while it is up, else the master */
    CONFIG_READ_FROM_COUNT,
} config_read_from;

/* What a write whose keys span shards does (cross_shard; docs/transactions.md). */
typedef enum config_cross_shard {
    CONFIG_CROSS_REFUSE = 0,  /* -CROSSSLOT, as Redis Cluster */
    CONFIG_CROSS_ATOMIC,      /* a two-phase commit over the shards: all or nothing */
    CONFIG_CROSS_BEST_EFFORT, /* split per shard; a failed part is reported, not undone */
    CONFIG_CROSS_SHARD_COUNT,
} config_cross_shard;

/* The name of a cross_shard value ("refuse", "atomic", "best_effort"). */
const char *config_cross_shard_name(int value);

/* The name of a read_from value ("master", "replica", "prefer_replica"). */
const char *config_read_from_name(int value);

struct config;

/* The read_from in force for shard i of cfg: its line's, else [proxy]'s. */
int config_shard_read_from(const struct config *cfg, size_t i);

/* Whether clients on tls_listen must show a certificate (tls_auth_clients),
 * as Redis's tls-auth-clients. */
typedef enum config_tls_auth {
    CONFIG_TLS_AUTH_NO = 0,   /* no certificate asked for */
    CONFIG_TLS_AUTH_YES,      /* a certificate signed by tls_ca_cert_file is required */
    CONFIG_TLS_AUTH_OPTIONAL, /* one is asked for and checked when sent, not required */
    CONFIG_TLS_AUTH_COUNT,
} config_tls_auth;

/* The name of a tls_auth_clients value ("no", "yes", "optional"). */
const char *config_tls_auth_name(int value);

/* One line of [shards]: `name = host:port [weight=N]`, or
 * `name = sentinel:MASTER [weight=N]` for a master the Sentinels monitor. */
typedef struct config_shard {
    char *name;            /* places the shard on the ring */
    char *host;            /* numeric IPv4/IPv6 address or hostname; NULL for a sentinel line */
    uint16_t port;         /* 1..65535; 0 for a sentinel line */
    char *sentinel_master; /* the master's name at the Sentinels, or NULL */
    int read_from;         /* read_from=X on the line, -1 = the [proxy] read_from */
    uint32_t weight;       /* >= 1, default 1 */
    int line;              /* line in the file, for messages */
} config_shard;

/* One host:port of a list key (sentinels). */
typedef struct config_addr {
    char *host;
    uint16_t port;
} config_addr;

/* A comma-separated list of addresses; empty = n is 0. */
typedef struct config_addr_list {
    config_addr *addrs;
    size_t n;
} config_addr_list;

/* Most worker processes (workers = N): more than the cores of a large
 * machine, each with its own shard connections. */
#define CONFIG_WORKERS_MAX 64

/* A whole, validated configuration. Immutable once loaded: a reload builds a
 * new one and the daemon swaps one pointer. */
typedef struct config {
    char *path; /* the file it was read from */

    /* [proxy] */
    char *listen_host;           /* address to listen on */
    uint16_t listen_port;        /* port to listen on */
    hash_kind hash;              /* key hash function */
    char hash_tag_open;          /* hash tag open char, 0 = tags disabled */
    char hash_tag_close;         /* hash tag close char */
    ring_mode compat;            /* placement: ringproxy or twemproxy */
    int backend_connections;     /* connections per shard */
    int connect_timeout_ms;      /* backend connect timeout */
    int request_timeout_ms;      /* backend reply timeout, 0 = none */
    int reconnect_min_ms;        /* first reconnect delay after a failure */
    int reconnect_max_ms;        /* cap of the doubling reconnect delay */
    int max_clients;             /* client connections accepted at once */
    int64_t max_bulk_len;        /* largest bulk string in a request, bytes */
    int64_t max_args;            /* most arguments in one request */
    int64_t max_inline_len;      /* longest inline command line, bytes */
    int64_t max_query_buffer;    /* unparsed request bytes per client */
    int64_t client_output_pause; /* stop reading a client above this many queued reply bytes */
    int64_t max_client_output;   /* close a client above this many queued reply bytes */
    int64_t max_pubsub_output;   /* the same for a subscribed client (Redis's pubsub class) */
    int backend_max_inflight;    /* requests waiting on one backend connection */
    int idle_timeout_s;          /* close idle clients after this, 0 = never */
    int tcp_backlog;             /* listen(2) backlog */
    int workers;                 /* worker processes sharing the listen port */
    config_log_level log_level;
    int watch_config;           /* reload when the file changes on disk (bool) */
    char *requirepass;          /* client password, NULL = none (never logged or shown) */
    char *backend_user;         /* shards' ACL user for AUTH, NULL = none (Redis's default) */
    char *backend_password;     /* shards' password, NULL = none */
    int migrate_batch;          /* keys per SCAN/MIGRATE batch while rebalancing */
    int migrate_rate;           /* keys moved per second while rebalancing, 0 = no limit */
    int migrate_timeout_ms;     /* MIGRATE's own timeout */
    int allow_flush;            /* FLUSHDB/FLUSHALL fan out (bool); else refused */
    int allow_config_set;       /* CONFIG SET of a Redis parameter fans out (bool); else refused */
    char *script_default_shard; /* shard name for keyless EVAL/FCALL, NULL = the first */
    config_addr_list sentinels; /* Redis Sentinels asked for sentinel:NAME shards' masters */
    char *sentinel_password;    /* the Sentinels' password, NULL = none */
    int sentinel_poll_ms;       /* how often each master's address is asked again */
    int min_replicas_to_ack; /* a write is answered once this many replicas have it, 0 = at once */
    int min_replicas_timeout_ms; /* WAIT's timeout for those replicas */
    config_read_from read_from;  /* where read-only commands go, unless a shard says */
    int dns_refresh_ms;          /* how often hostnames of shards are resolved again, 0 = never */
    char *dns_hosts_file;        /* hosts file of those lookups */
    char *dns_resolv_conf;       /* resolv.conf of those lookups (nameservers, options) */
    int store_db;                /* database index of the proxy's hidden records on each shard */
    char *lock_shards;           /* "all" or a comma-separated list of shard names (LOCK.*) */
    config_cross_shard cross_shard; /* writes and MULTI/EXEC whose keys span shards */
    int txn_recovery_after_ms;      /* a prepared transaction this old is finished by any proxy */
    char *tls_listen_host;          /* TLS address for clients, NULL = none */
    uint16_t tls_listen_port;       /* 0 when tls_listen is off */
    char *tls_cert_file;            /* the proxy's certificate (PEM) shown to TLS clients */
    char *tls_key_file;             /* its private key (PEM) */
    char *tls_ca_cert_file;         /* CAs that sign client certificates, NULL = none */
    int tls_auth_clients;           /* config_tls_auth */
    int tls_shards;                 /* connect to the shards over TLS (bool) */
    char *tls_shards_ca_cert_file;  /* CAs that sign the shards' certificates */
    char *tls_shards_cert_file;     /* certificate shown to the shards, NULL = none */
    char *tls_shards_key_file;      /* its private key */
    int tls_sentinels;              /* connect to the Sentinels over TLS too (bool) */
    int64_t slowlog_slower_than;    /* SLOWLOG: requests taking this many µs or more; -1 = off */
    int slowlog_max_len;            /* SLOWLOG: entries kept */
    char *metrics_host;             /* Prometheus /metrics address, NULL = off */
    uint16_t metrics_port;

    /* [shards], in file order */
    config_shard *shards;
    size_t nshards;

    /* [users], in file order (a name's later lines add to its first). A
     * `default` user here takes the place of requirepass (both: an error). */
    acl_user *users;
    size_t nusers;
} config;

/* Reads and validates path. Returns 0 and a new config in *out, or -1 with
 * "path:line: reason" (or "path: reason") in err and *out untouched. */
__attribute__((warn_unused_result)) int config_load(const char *path, config **out, char *err,
                                                    size_t errlen);

/* Same, from a string (tests); name is used in messages in place of a path. */
__attribute__((warn_unused_result)) int config_load_string(const char *text, const char *name,
                                                           config **out, char *err, size_t errlen);

void config_free(config *cfg);

/* Gives cfg the ring of from (hash, hash tags, compat and the [shards]
 * lines), keeping everything else: what a proxy runs while it finishes
 * the shards' move to that ring before its own file's. 0, or -1 with why
 * in err and cfg unchanged (a key of cfg names a shard from lacks). */
int config_with_ring(config *cfg, const config *from, char *err, size_t errlen);

/* The [shards] line named name, or NULL. */
const config_shard *config_find_shard(const config *cfg, const char *name);

/* The [users] user named name (case-sensitive, as in Redis), or NULL. */
const acl_user *config_find_user(const config *cfg, const char *name, size_t len);

/* Builds the ring of cfg's [shards] (names and weights, placed by cfg's
 * compat mode): the one way a config becomes a ring, so start-up, --check
 * and reload agree. NULL with the reason in err (the ring has limits of its
 * own, e.g. total weight). */
__attribute__((warn_unused_result)) ring *config_ring(const config *cfg, char *err, size_t errlen);

/* Writes into buf the comma-separated names of keys that differ between old
 * and new but cannot change at run time (e.g. "listen, hash"). Returns how
 * many there are (0: the new config can be applied whole). */
int config_fixed_changes(const config *old_cfg, const config *new_cfg, char *buf, size_t buflen);

/* The [proxy] keys, for CONFIG GET: how many there are, the name of key i
 * (0 <= i < config_key_count()), and its value in cfg as proxy.ini would
 * spell it. A password is never shown: "(hidden)" when set, "" when not. */
size_t config_key_count(void);
const char *config_key_name(size_t i);
void config_key_value(const config *cfg, size_t i, char *out, size_t outlen);

/* Writes the [proxy] section documentation: every key commented out with its
 * default and a one-line explanation, as in the shipped proxy.ini. */
void config_write_reference(FILE *out);

/* Writes the [proxy] keys as a Markdown table (key, default, values,
 * reloadable, meaning), as in config/README.md. */
void config_write_markdown(FILE *out);

/* Room for any address config_format_addr writes: a host of up to 255
 * bytes (a DNS name's limit; longer ones are cut), brackets, ':' and port. */
#define CONFIG_ADDR_MAX 300

/* Writes host:port as proxy.ini spells it: "127.0.0.1:7001", or
 * "[::1]:7001" for an IPv6 host. */
void config_format_addr(const char *host, uint16_t port, char *buf, size_t buflen);

/* Whether host (of a [shards] line) is a name to resolve rather than a
 * numeric IPv4 or IPv6 address. Checks the text only: no lookup. */
int config_host_is_name(const char *host);

/* Whether shard name is one of the lock shards (lock_shards). */
int config_is_lock_shard(const config *cfg, const char *name);

/* Name of a log level ("debug", "info", ...). */
const char *config_log_level_name(config_log_level level);

#endif
