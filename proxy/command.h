/* The command table: every Redis 7.0 command as data (arity, key positions,
 * how ringproxy routes it), and a case-insensitive lookup. */
#ifndef PROXY_COMMAND_H
#define PROXY_COMMAND_H

#include <stddef.h>
#include <stdint.h>

#include "config/acl.h"
#include "proxy/histogram.h"
#include "proxy/resp.h"

/* How the router treats a command. */
typedef enum command_class {
    COMMAND_FORWARD = 0, /* keys (0 or more) all hashed: forwarded to the owner; a
                            keyless one goes to any shard */
    COMMAND_SPLIT,       /* multi-key, split per shard and merged (see command_merge) */
    COMMAND_SAME_SHARD,  /* multi-key that cannot be split: forwarded when all keys
                            share a shard, else -CROSSSLOT */
    COMMAND_LOCAL,       /* answered by the proxy itself (see command_id) */
    COMMAND_FANOUT,      /* sent to every shard, replies merged (see command_merge) */
    COMMAND_UNSUPPORTED, /* -ERR unsupported command 'x' in ringproxy */
    COMMAND_ITERATE,     /* the keyspace, one shard after the other: SCAN's cursor names
                            the shard it is in; RANDOMKEY asks a random shard, then the
                            others while they answer nil */
    COMMAND_TRANSACTION, /* MULTI, EXEC, DISCARD, WATCH, UNWATCH: run on one shard over a
                            connection reserved for the client */
    COMMAND_PUBSUB,      /* SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE: over the
                            client's own subscriber connections */
    COMMAND_LOCK,        /* LOCK.ACQUIRE, LOCK.RELEASE, LOCK.EXTEND, LOCK.INFO: quorum locks
                            over the lock shards' hidden store (proxy/lock.c) */
} command_class;

/* How split or fan-out replies are merged into one. */
typedef enum command_merge {
    MERGE_NONE = 0,
    MERGE_ARRAY_BY_KEY, /* MGET: one element per key, in the client's key order */
    MERGE_ALL_OK,       /* MSET: +OK when every part is OK, else the first error */
    MERGE_SUM,          /* DEL, UNLINK, EXISTS, TOUCH, DBSIZE: sum of integers */
    MERGE_CONCAT,       /* KEYS: the arrays one after the other */
    MERGE_UNION,        /* PUBSUB CHANNELS: the arrays joined, each element once */
    MERGE_SAME,         /* SCRIPT LOAD, FUNCTION LOAD: every shard must give the same reply */
    MERGE_AND_ARRAY,    /* SCRIPT EXISTS: element i is 1 when it is 1 on every shard */
    MERGE_FIRST_OK,     /* SCRIPT KILL, FUNCTION KILL: the first reply that is not an
                           error, else the first error */
    MERGE_PAIR_SUM,     /* PUBSUB NUMSUB: [name, count, ...] with the counts summed */
    MERGE_MAX,          /* PUBSUB NUMPAT: the largest integer */
    MERGE_INFO,         /* INFO: the proxy's own text (request's local_part) with the
                           shards' keyspace_hits/misses and Keyspace lines summed */
    MERGE_CONFIG_GET,   /* CONFIG GET: the proxy's own pairs, then the first shard's pairs
                           (a shard that differs is named in ringproxy-shards-differ) */
} command_merge;

/* Where the keys of a command are. Most use first/last/step like Redis's
 * legacy key positions; the rest name a special rule. first_key is the
 * argument the rule starts from. */
typedef enum command_keys_rule {
    KEYS_NONE = 0,        /* no keys */
    KEYS_RANGE,           /* first, last (negative: from the end), step */
    KEYS_NUMKEYS,         /* argv[first] is numkeys, keys follow it (EVAL, FCALL, LMPOP,
                             ZMPOP, SINTERCARD, ZDIFF, ZINTER, ZUNION, ZINTERCARD) */
    KEYS_DEST_NUMKEYS,    /* argv[1] is a destination key, argv[2] numkeys, keys follow
                             (ZUNIONSTORE, ZINTERSTORE, ZDIFFSTORE); first = 1 */
    KEYS_TIMEOUT_NUMKEYS, /* argv[1] timeout, argv[2] numkeys, keys follow (BLMPOP,
                             BZMPOP); first = 2, the numkeys */
    KEYS_STREAMS,         /* keys after the STREAMS token, first half of the rest (XREAD,
                             XREADGROUP); first = where the token is looked for */
    KEYS_SORT,            /* argv[1], plus the STORE destination if any (SORT); the BY
                             and GET patterns are not counted as keys */
    KEYS_MIGRATE,         /* argv[3], or the list after KEYS when argv[3] is "" */
    KEYS_GEORADIUS,       /* argv[1], plus STORE / STOREDIST destinations, looked for
                             after the |arity| mandatory arguments */
} command_keys_rule;

/* How a numkeys argument is checked (KEYS_*NUMKEYS rules). Each gives the
 * error texts of the Redis command itself, so a client sees the same reply
 * through the proxy as from one server. */
typedef enum command_numkeys {
    NUMKEYS_NONE = 0,
    NUMKEYS_EVAL,       /* EVAL*: 0 allowed; "value is not an integer or out of range",
                           "Number of keys can't be greater than number of args",
                           "Number of keys can't be negative" */
    NUMKEYS_FCALL,      /* FCALL*: as EVAL, but "Bad number of keys provided" */
    NUMKEYS_POP,        /* LMPOP, ZMPOP, BLMPOP, BZMPOP: "numkeys should be greater than
                           0"; a LEFT|RIGHT or MIN|MAX must follow the keys, else
                           "syntax error" */
    NUMKEYS_SINTERCARD, /* "numkeys should be greater than 0", "Number of keys can't be
                           greater than number of args" */
    NUMKEYS_ZSET,       /* ZUNION, ZINTER, ZDIFF, ZINTERCARD and the *STORE ones: "value
                           is not an integer or out of range", "at least 1 input key is
                           needed for 'zunion' command", "syntax error" */
} command_numkeys;

/* What a command does with a key, for the %R~ / %W~ key permissions of
 * ACL users: Redis's key-spec flags folded as its ACL folds them (ACCESS:
 * read; INSERT, DELETE, UPDATE: written). The values are bit masks of
 * ACL_KEY_READ and ACL_KEY_WRITE, but for the two commands whose keys'
 * flags depend on their arguments (Redis's VARIABLE_FLAGS key specs). */
typedef enum command_key_access {
    /* neither: only the name is used (EXISTS, TYPE, TTL); any pattern allows it */
    KEY_ACCESS_NAME = 0,
    KEY_ACCESS_READ = ACL_KEY_READ,                       /* GET, ZRANGE */
    KEY_ACCESS_WRITE = ACL_KEY_WRITE,                     /* DEL, LPUSH, MSET */
    KEY_ACCESS_READ_WRITE = ACL_KEY_READ | ACL_KEY_WRITE, /* INCR, LPOP, GETDEL, EVAL */
    /* SET: written; read too with GET (Redis's setGetKeys) */
    KEY_ACCESS_SET,
    /* BITFIELD: read; written too after a SET, INCRBY or a word that is no
     * subcommand (Redis's bitfieldGetKeys) */
    KEY_ACCESS_BITFIELD,
} command_key_access;

/* Commands the proxy answers itself or treats specially. */
typedef enum command_id {
    CMD_OTHER = 0,
    CMD_PING,
    CMD_ECHO,
    CMD_QUIT,
    CMD_SELECT,
    CMD_COMMAND,
    CMD_HELLO,
    CMD_CLIENT,
    CMD_INFO,
    CMD_TIME,
    CMD_DBSIZE,
    CMD_PROXY,
    CMD_MGET,
    CMD_MSET,
    CMD_DEL,
    CMD_UNLINK,
    CMD_EXISTS,
    CMD_TOUCH,
    CMD_CLIENT_SETNAME, /* subcommands the proxy answers */
    CMD_CLIENT_GETNAME,
    CMD_CLIENT_ID,
    CMD_PROXY_SHARDS,
    CMD_PROXY_RING,
    CMD_PROXY_RELOAD,
    CMD_PROXY_REBALANCE,
    CMD_AUTH,
    CMD_CLIENT_INFO,
    CMD_CLIENT_LIST,
    CMD_RESET,
    CMD_SCAN,
    CMD_RANDOMKEY,
    CMD_FLUSH,       /* FLUSHDB, FLUSHALL: refused when allow_flush = no */
    CMD_EVAL,        /* EVAL*, FCALL*: no keys -> script_default_shard */
    CMD_PUBLISH,     /* routed by its channel (argv[1]) as if it were a key */
    CMD_BLOCK_LAST,  /* blocks; timeout in seconds is the last argument (BLPOP, BRPOP,
                        BZPOPMIN, BZPOPMAX, BRPOPLPUSH, BLMOVE) */
    CMD_BLOCK_FIRST, /* blocks; timeout in seconds is argv[1] (BLMPOP, BZMPOP) */
    CMD_XREAD,       /* XREAD, XREADGROUP: block when given BLOCK <milliseconds> */
    CMD_COPY,        /* COPY: refused with a DB option (other databases are the proxy's) */
    CMD_MULTI,
    CMD_EXEC,
    CMD_DISCARD,
    CMD_WATCH,
    CMD_UNWATCH,
    CMD_SUBSCRIBE,
    CMD_PSUBSCRIBE,
    CMD_UNSUBSCRIBE,
    CMD_PUNSUBSCRIBE,
    CMD_LOCK_ACQUIRE,
    CMD_LOCK_RELEASE,
    CMD_LOCK_EXTEND,
    CMD_LOCK_INFO,
    CMD_KILL, /* SCRIPT KILL, FUNCTION KILL: to every shard, each on a connection of its own */
    CMD_CLIENT_KILL,     /* the proxy's own clients */
    CMD_CLIENT_NO_EVICT, /* accepted: the proxy evicts no client for memory */
    CMD_CLIENT_SETINFO,  /* Redis 7.2's, sent by clients on connect */
    CMD_CLIENT_REPLY,    /* ON, OFF, SKIP: whether the client's replies are written */
    CMD_CONFIG_GET,      /* the proxy's own settings and the shards' parameters */
    CMD_CONFIG_SET,      /* proxy keys refused; Redis parameters when allow_config_set = yes */
    CMD_MSETNX,          /* across shards only as a cross-shard transaction (twopc.c) */
    CMD_CLIENT_UNBLOCK,  /* a blocked client's command, unblocked on its shard */
    CMD_CLIENT_PAUSE,    /* the proxy's own clients, not the shards (pause.c) */
    CMD_CLIENT_UNPAUSE,
    CMD_ACL, /* ACL subcommands that change users: refused (users are proxy.ini's) */
    CMD_ACL_WHOAMI,
    CMD_ACL_LIST,
    CMD_ACL_USERS,
    CMD_ACL_CAT,
    CMD_ACL_GENPASS,
    CMD_ACL_DRYRUN,
    CMD_SLOWLOG, /* GET, LEN, RESET, HELP: the proxy's own slow log */
} command_id;

/* The router's handler for a command: route() checks the request, runs the
 * gates its flags ask for, then calls the handler its row names (an index
 * into the router's handler table, so this module needs no router code).
 * A new kind of command is a new value here, its handler, and table rows. */
typedef enum command_route {
    ROUTE_KEYS = 0,    /* forwarded to the shard of its keys (-CROSSSLOT when they span
                          shards); a keyless one goes to any shard */
    ROUTE_SPLIT,       /* split per shard, the replies merged (COMMAND_SPLIT) */
    ROUTE_SCRIPT,      /* as ROUTE_KEYS, but without keys to script_default_shard */
    ROUTE_BLOCKING,    /* as ROUTE_KEYS; when it may block, over a connection reserved
                          for the client (command_blocking) */
    ROUTE_CHANNEL,     /* PUBLISH: to the shard owning its channel, argv[1] */
    ROUTE_ANY_SHARD,   /* TIME, COMMAND: any shard knows the answer */
    ROUTE_LOCAL,       /* answered by the proxy (admin.c) */
    ROUTE_PING,        /* local, or a subscriber's PING reply while subscribed */
    ROUTE_RESET,       /* the connection back to a fresh one's */
    ROUTE_FANOUT,      /* every shard, the replies merged (COMMAND_FANOUT) */
    ROUTE_FLUSH,       /* FLUSHDB, FLUSHALL: fan-out unless allow_flush = no */
    ROUTE_SCAN,        /* SCAN: the cursor names the shard */
    ROUTE_RANDOMKEY,   /* a random shard, then the others while they answer nil */
    ROUTE_TRANSACTION, /* MULTI, EXEC, DISCARD, WATCH, UNWATCH (txn.c) */
    ROUTE_PUBSUB,      /* SUBSCRIBE and friends (pubsub.c) */
    ROUTE_UNSUPPORTED, /* -ERR unsupported command */
    ROUTE_LOCK,        /* LOCK.*: quorum locks on the lock shards (lock.c) */
    ROUTE_COPY,        /* COPY: as ROUTE_KEYS, refused with a DB option */
    ROUTE_KILL,        /* SCRIPT KILL, FUNCTION KILL: every shard, each over a short-lived
                          connection of its own, never behind the script it is to stop */
    ROUTE_CONFIG,      /* CONFIG GET, SET: admin.c's checks, then every shard */
    ROUTE_INFO,        /* INFO: admin.c's text, plus every shard's keyspace and hits */
    ROUTE_SPLIT_WRITE, /* MSET, DEL, UNLINK: as ROUTE_SPLIT on one shard; across shards as
                          cross_shard says: -CROSSSLOT, a two-phase commit, or split */
    ROUTE_ATOMIC_ONLY, /* MSETNX: as ROUTE_KEYS, but across shards a two-phase commit
                          when cross_shard = atomic */
    ROUTE_COUNT
} command_route;

/* What the router's gates need to know of a command, as Redis's command
 * flags: one bit test per gate instead of a list of command ids. */
enum {
    COMMAND_FLAG_NO_AUTH = 1 << 0,          /* allowed before AUTH when requirepass is set
                                               (Redis's no_auth: AUTH, HELLO, QUIT, RESET) */
    COMMAND_FLAG_WHILE_SUBSCRIBED = 1 << 1, /* allowed to a subscribed client, as in Redis */
    COMMAND_FLAG_RUNS_IN_MULTI = 1 << 2,    /* between MULTI and EXEC it runs at once rather
                                               than being queued (EXEC, WATCH, RESET ...) */
    COMMAND_FLAG_NOT_QUEUED = 1 << 3,       /* cannot be queued on one shard's transaction:
                                               refused, and the transaction aborted */
    COMMAND_FLAG_SINGLE_KEY = 1 << 4,       /* ROUTE_KEYS with argv[1] its only key: routed
                                               by one hash (the router's fast path) */
    COMMAND_FLAG_NO_MULTI = 1 << 5,         /* Redis's no_multi (SAVE, SHUTDOWN, SYNC): between
                                               MULTI and EXEC, Redis's own refusal */
    COMMAND_FLAG_PAUSED_BY_WRITE = 1 << 6,  /* waits out CLIENT PAUSE WRITE: Redis's write or
                                               may_replicate flag, and EXEC */
    COMMAND_FLAG_NEVER_PAUSED = 1 << 7,     /* runs during any CLIENT PAUSE (CLIENT UNPAUSE) */
};

/* One command or subcommand. A subcommand is named "container|sub" as Redis
 * names it ("client|setname": its arity errors say that name), its arity
 * counts the container name too, and it carries its own class and id. A
 * container's own class tells whether any of its subcommands is usable. */
typedef struct command {
    const char *name; /* lower case */
    int arity;        /* Redis convention: N exact, -N at least N (name included) */
    command_class cls;
    command_merge merge;
    command_id id;
    command_keys_rule keys;
    int first_key;  /* KEYS_RANGE / KEYS_NUMKEYS: index of the first key or numkeys */
    int last_key;   /* KEYS_RANGE: index of the last key, negative from the end */
    int key_step;   /* KEYS_RANGE: distance between keys (MSET: 2) */
    int split_step; /* COMMAND_SPLIT: arguments per key (MGET 1, MSET 2) */
    const struct command *subcommands; /* container commands (CLIENT, OBJECT, ...) */
    size_t nsubcommands;
    command_numkeys numkeys; /* KEYS_*NUMKEYS: how numkeys is checked */
    command_route route;     /* the router's handler */
    unsigned flags;          /* COMMAND_FLAG_* */
    unsigned stat;           /* its counters: command_stats[stat]; also its bit in a user's
                                command permissions (proxy/access.c) */
    struct command_counters *counters; /* &command_stats[stat] */
    uint32_t acl; /* Redis's ACL categories (ACL_CAT_*), as COMMAND INFO lists them */
    command_key_access first_key_access;  /* its first key (in command_keys' order) */
    command_key_access other_keys_access; /* the others: COPY reads its first key and writes
                                             the other, SUNIONSTORE the reverse */
} command;

/* INFO commandstats counters of one command, as Redis keeps them. The
 * router counts calls and rejections, the client the time and failures
 * when the reply is known: a few increments on the request path. */
typedef struct command_counters {
    uint64_t calls;          /* routed to its handler */
    uint64_t rejected_calls; /* refused before that: arity, NOAUTH, unsupported */
    uint64_t failed_calls;   /* routed, answered with an error */
    uint64_t usec;           /* time in the proxy of the calls, loop clock (µs) */
    histogram latency;       /* the same per call: INFO latencystats, /metrics */
} command_counters;

/* Indexed by command.stat, one per row and subcommand row. */
extern command_counters command_stats[];

/* How many rows and subcommand rows there are: command.stat is below it. */
size_t command_stat_count(void);

/* Builds the lookup index. Optional: command_lookup builds it on first use;
 * call it at startup, before any thread exists, when threads may look up. */
void command_init(void);

/* Finds a top-level command by name, any case, without allocating. NULL when
 * unknown. */
const command *command_lookup(const char *name, size_t len);

/* Resolves a container command to its subcommand by argv[1] (any case).
 * Returns cmd itself when it has no subcommands, or when argv[1] is missing
 * and the container's arity allows that (a bare COMMAND); NULL when argv[1]
 * is missing otherwise or unknown (the caller answers "-ERR unknown
 * subcommand"). */
const command *command_subcommand(const command *cmd, size_t argc, const resp_arg *argv);

/* Checks arity. Returns 0, or -1 when argc does not fit. */
__attribute__((warn_unused_result)) int command_check_arity(const command *cmd, size_t argc);

/* Finds the key arguments of a request (cmd resolved to its subcommand,
 * arity already checked): writes the argv index of each key, in argument
 * order, to positions (capacity argc) and their count to *nkeys. Returns 0,
 * or -1 with the error text the Redis command itself would reply, without
 * '-' and CRLF, in err (e.g. "ERR Number of keys can't be greater than
 * number of args") when numkeys or a similar argument is bad, when an XREAD
 * has no STREAMS or unbalanced streams, or when MSET's keys and values do
 * not pair up. */
__attribute__((warn_unused_result)) int command_keys(const command *cmd, size_t argc,
                                                     const resp_arg *argv, size_t *positions,
                                                     size_t *nkeys, char *err, size_t errlen);

/* What the request does with its i-th key (i counts the keys command_keys
 * found, from 0): a mask of ACL_KEY_READ and ACL_KEY_WRITE, 0 when it only
 * names the key, with SET's GET and BITFIELD's subcommands worked out as
 * Redis 7.0's COMMAND GETKEYSANDFLAGS does. */
unsigned command_key_access_of(const command *cmd, size_t argc, const resp_arg *argv, size_t i);

/* Whether this request blocks on its shard (a blocking command, or XREAD
 * and XREADGROUP with BLOCK), and for how long: *block_us gets its own
 * timeout in microseconds, UINT64_MAX when it may block for ever (0). A
 * timeout that does not parse counts as 0 microseconds: the shard answers
 * the error at once. */
int command_blocking(const command *cmd, size_t argc, const resp_arg *argv, uint64_t *block_us);

/* Calls f for every command without subcommands and every subcommand
 * (the rows that have counters: INFO commandstats, /metrics), in table
 * order. */
void command_foreach(void (*f)(const command *c, void *arg), void *arg);

/* Every top-level command, for tests and docs/commands.md. */
const command *command_table(size_t *count);

#endif
