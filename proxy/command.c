/* The command table (generated into command_table.inc from a real Redis
 * server's COMMAND reply) and what runs on it per request: a name lookup
 * through an open-addressing hash built once, arity checks, subcommand
 * resolution and key positions, with Redis's own error texts. */
#include "proxy/command.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Row shapes of command_table.inc. ROW: keys by first/last/step or a rule
 * that needs no more; ID_ROW: the same with a command id or merge rule the
 * router acts on; NUMKEYS_ROW: a numkeys rule and its check; SPLIT_ROW and
 * LOCAL_ROW: commands the proxy splits or answers; CONTAINER_ROW: a command
 * with subcommands. Every shape but CONTAINER_ROW has what it does with its
 * first key and with the others (command_key_access); every shape ends
 * with the router's handler, the command's flags and its ACL categories
 * (command_route, COMMAND_FLAG_*, ACL_CAT_*). */
/* A row's counters: its number (the next __COUNTER__, expanded once as
 * the argument) and their address, which the request path uses without
 * multiplying the number by their size. */
#define COMMAND_STAT(n_) .stat = (n_), .counters = &command_stats[(n_)]
#define ROW(name_, arity_, cls_, rule_, first_, last_, step_, first_access_, others_access_,       \
            route_, flags_, acl_)                                                                  \
    {                                                                                              \
        .name = name_, .arity = arity_, .cls = cls_, .keys = rule_, .first_key = first_,           \
        .last_key = last_, .key_step = step_, .route = route_, .flags = flags_,                    \
        COMMAND_STAT(__COUNTER__), .acl = acl_, .first_key_access = first_access_,                 \
        .other_keys_access = others_access_                                                        \
    }
#define ID_ROW(name_, arity_, cls_, id_, merge_, rule_, first_, last_, step_, first_access_,       \
               others_access_, route_, flags_, acl_)                                               \
    {                                                                                              \
        .name = name_, .arity = arity_, .cls = cls_, .id = id_, .merge = merge_, .keys = rule_,    \
        .first_key = first_, .last_key = last_, .key_step = step_, .route = route_,                \
        .flags = flags_, COMMAND_STAT(__COUNTER__), .acl = acl_,                                   \
        .first_key_access = first_access_, .other_keys_access = others_access_                     \
    }
#define NUMKEYS_ROW(name_, arity_, cls_, id_, rule_, first_, numkeys_, first_access_,              \
                    others_access_, route_, flags_, acl_)                                          \
    {                                                                                              \
        .name = name_, .arity = arity_, .cls = cls_, .id = id_, .keys = rule_,                     \
        .first_key = first_, .numkeys = numkeys_, .route = route_, .flags = flags_,                \
        COMMAND_STAT(__COUNTER__), .acl = acl_, .first_key_access = first_access_,                 \
        .other_keys_access = others_access_                                                        \
    }
#define SPLIT_ROW(name_, arity_, id_, merge_, rule_, first_, last_, step_, split_step_,            \
                  first_access_, others_access_, route_, flags_, acl_)                             \
    {                                                                                              \
        .name = name_, .arity = arity_, .cls = COMMAND_SPLIT, .merge = merge_, .id = id_,          \
        .keys = rule_, .first_key = first_, .last_key = last_, .key_step = step_,                  \
        .split_step = split_step_, .route = route_, .flags = flags_, COMMAND_STAT(__COUNTER__),    \
        .acl = acl_, .first_key_access = first_access_, .other_keys_access = others_access_        \
    }
#define LOCAL_ROW(name_, arity_, id_, merge_, rule_, first_, last_, step_, first_access_,          \
                  others_access_, route_, flags_, acl_)                                            \
    {                                                                                              \
        .name = name_, .arity = arity_, .cls = COMMAND_LOCAL, .merge = merge_, .id = id_,          \
        .keys = rule_, .first_key = first_, .last_key = last_, .key_step = step_, .route = route_, \
        .flags = flags_, COMMAND_STAT(__COUNTER__), .acl = acl_,                                   \
        .first_key_access = first_access_, .other_keys_access = others_access_                     \
    }
#define CONTAINER_ROW(name_, arity_, cls_, id_, subcommands_, route_, flags_, acl_)                \
    {                                                                                              \
        .name = name_, .arity = arity_, .cls = cls_, .id = id_, .subcommands = subcommands_,       \
        .nsubcommands = sizeof(subcommands_) / sizeof(subcommands_[0]), .route = route_,           \
        .flags = flags_, COMMAND_STAT(__COUNTER__), .acl = acl_                                    \
    }

#include "proxy/command_table.inc"

#define COMMAND_COUNT (sizeof(command_rows) / sizeof(command_rows[0]))

/* Every row above took the next __COUNTER__ value as its .stat: the rows
 * and subcommand rows number 0 .. COMMAND_STAT_SLOTS - 1. */
enum { COMMAND_STAT_SLOTS = __COUNTER__ };
command_counters command_stats[COMMAND_STAT_SLOTS];

size_t command_stat_count(void)
{
    return COMMAND_STAT_SLOTS;
}

/* Lookup index: slots of an open-addressing hash (linear probing) holding
 * 1 + the row index, 0 when empty. A power of two at least four times the
 * number of commands keeps probe chains to one or two slots. */
#define COMMAND_SLOTS 1024
/* Longest name the index can hold; lookups of longer names stop at once. */
#define COMMAND_NAME_MAX 32

_Static_assert(COMMAND_SLOTS >= 4 * COMMAND_COUNT, "command index too small for the table");
_Static_assert((COMMAND_SLOTS & (COMMAND_SLOTS - 1)) == 0, "COMMAND_SLOTS: a power of two");

static struct {
    bool built;
    size_t longest;                  /* longest command name */
    uint8_t name_len[COMMAND_COUNT]; /* strlen of each row's name */
    uint16_t slot[COMMAND_SLOTS];    /* 1 + row index, 0: empty */
} command_index;

static inline unsigned char ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* FNV-1a over bytes already lower-cased. */
static uint32_t name_hash(const char *name, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)name[i];
        h *= 16777619u;
    }
    return h;
}

void command_init(void)
{
    if (command_index.built) {
        return;
    }
    for (size_t i = 0; i < COMMAND_COUNT; i++) {
        size_t len = strlen(command_rows[i].name);
        if (len > COMMAND_NAME_MAX) {
            /* a table bug: the generator keeps Redis's names, all short */
            fprintf(stderr, "command: name '%s' longer than %d\n", command_rows[i].name,
                    COMMAND_NAME_MAX);
            continue;
        }
        command_index.name_len[i] = (uint8_t)len;
        if (len > command_index.longest) {
            command_index.longest = len;
        }
        uint32_t s = name_hash(command_rows[i].name, len) & (COMMAND_SLOTS - 1);
        while (command_index.slot[s] != 0) {
            s = (s + 1) & (COMMAND_SLOTS - 1);
        }
        command_index.slot[s] = (uint16_t)(i + 1);
    }
    command_index.built = true;
}

/* Equality of len bytes. Names are a few bytes long: a loop costs less
 * than a call to memcmp, whose cost also varies with where the table's
 * strings happen to lie (page-crossing checks). */
static inline bool same_name(const char *a, const char *b, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (a[i] != b[i]) {
            return false;
        }
    }
    return true;
}

const command *command_lookup(const char *name, size_t len)
{
    if (!command_index.built) {
        command_init();
    }
    if (len == 0 || len > command_index.longest) {
        return NULL;
    }
    char lower[COMMAND_NAME_MAX];
    for (size_t i = 0; i < len; i++) {
        lower[i] = (char)ascii_lower((unsigned char)name[i]);
    }
    uint32_t s = name_hash(lower, len) & (COMMAND_SLOTS - 1);
    for (;;) {
        unsigned row = command_index.slot[s];
        if (row == 0) {
            return NULL;
        }
        row--;
        if (command_index.name_len[row] == len && same_name(command_rows[row].name, lower, len)) {
            return &command_rows[row];
        }
        s = (s + 1) & (COMMAND_SLOTS - 1);
    }
}

/* Case-insensitive equality of an argument with a lower-case word. */
static bool arg_is(const resp_arg *arg, const char *word, size_t word_len)
{
    if (arg->len != word_len) {
        return false;
    }
    for (size_t i = 0; i < word_len; i++) {
        if (ascii_lower((unsigned char)arg->ptr[i]) != (unsigned char)word[i]) {
            return false;
        }
    }
    return true;
}

#define ARG_IS(arg, literal) arg_is((arg), (literal), sizeof(literal) - 1)

const command *command_subcommand(const command *cmd, size_t argc, const resp_arg *argv)
{
    if (cmd->nsubcommands == 0) {
        return cmd;
    }
    if (argc < 2) {
        return command_check_arity(cmd, argc) == 0 ? cmd : NULL;
    }
    /* Subcommands are named "container|sub": compare argv[1] with "sub". */
    size_t prefix = strlen(cmd->name) + 1;
    for (size_t i = 0; i < cmd->nsubcommands; i++) {
        const char *sub = cmd->subcommands[i].name + prefix;
        if (arg_is(&argv[1], sub, strlen(sub))) {
            return &cmd->subcommands[i];
        }
    }
    return NULL;
}

int command_check_arity(const command *cmd, size_t argc)
{
    if (cmd->arity >= 0) {
        return argc == (size_t)cmd->arity ? 0 : -1;
    }
    return argc >= (size_t)-cmd->arity ? 0 : -1;
}

/* Parses a whole argument as Redis's string2ll does: decimal, optional
 * '-', no '+', no leading zeros, no spaces, within long long. */
static bool parse_integer(const resp_arg *arg, long long *out)
{
    const char *p = arg->ptr;
    size_t len = arg->len;
    if (len == 1 && p[0] == '0') {
        *out = 0;
        return true;
    }
    bool negative = false;
    size_t i = 0;
    if (len > 0 && p[0] == '-') {
        negative = true;
        i = 1;
    }
    if (i >= len || p[i] < '1' || p[i] > '9') {
        return false;
    }
    /* accumulate as unsigned, the magnitude of LLONG_MIN included */
    unsigned long long v = 0;
    const unsigned long long limit = negative ? (unsigned long long)LLONG_MAX + 1 : LLONG_MAX;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return false;
        }
        unsigned digit = (unsigned)(p[i] - '0');
        if (v > (limit - digit) / 10) {
            return false;
        }
        v = v * 10 + digit;
    }
    *out = negative ? (long long)(0 - v) : (long long)v;
    return true;
}

/* Appends position i to the key list. */
static void push_key(size_t *positions, size_t *nkeys, size_t i)
{
    positions[(*nkeys)++] = i;
}

/* Checks argv[at] as the numkeys of cmd, keys starting at at + 1. On
 * success *count is the number of keys; else err holds Redis's reply. */
static int check_numkeys(const command *cmd, size_t argc, const resp_arg *argv, size_t at,
                         size_t *count, char *err, size_t errlen)
{
    long long n;
    bool parsed = parse_integer(&argv[at], &n);
    /* arguments after numkeys; at < argc is guaranteed by the arity */
    long long rest = (long long)(argc - at - 1);
    switch (cmd->numkeys) {
    case NUMKEYS_EVAL:
    case NUMKEYS_FCALL:
        if (!parsed) {
            snprintf(err, errlen, "%s",
                     cmd->numkeys == NUMKEYS_EVAL ? "ERR value is not an integer or out of range"
                                                  : "ERR Bad number of keys provided");
            return -1;
        }
        if (n > rest) {
            snprintf(err, errlen, "ERR Number of keys can't be greater than number of args");
            return -1;
        }
        if (n < 0) {
            snprintf(err, errlen, "ERR Number of keys can't be negative");
            return -1;
        }
        break;
    case NUMKEYS_POP:
        if (!parsed || n < 1) {
            snprintf(err, errlen, "ERR numkeys should be greater than 0");
            return -1;
        }
        if (n > rest - 1) { /* LEFT|RIGHT or MIN|MAX follows the keys */
            snprintf(err, errlen, "ERR syntax error");
            return -1;
        }
        break;
    case NUMKEYS_SINTERCARD:
        if (!parsed || n < 1) {
            snprintf(err, errlen, "ERR numkeys should be greater than 0");
            return -1;
        }
        if (n > rest) {
            snprintf(err, errlen, "ERR Number of keys can't be greater than number of args");
            return -1;
        }
        break;
    case NUMKEYS_ZSET:
        if (!parsed) {
            snprintf(err, errlen, "ERR value is not an integer or out of range");
            return -1;
        }
        if (n < 1) {
            snprintf(err, errlen, "ERR at least 1 input key is needed for '%s' command", cmd->name);
            return -1;
        }
        if (n > rest) {
            snprintf(err, errlen, "ERR syntax error");
            return -1;
        }
        break;
    case NUMKEYS_NONE:
    default:
        /* a table bug: every numkeys rule names its check */
        snprintf(err, errlen, "ERR internal error: no numkeys check for '%s'", cmd->name);
        return -1;
    }
    *count = (size_t)n;
    return 0;
}

/* KEYS_RANGE: Redis's first/last/step. */
static int keys_range(const command *cmd, size_t argc, size_t *positions, size_t *nkeys, char *err,
                      size_t errlen)
{
    long last = cmd->last_key >= 0 ? cmd->last_key : (long)argc + cmd->last_key;
    if (last >= (long)argc) {
        last = (long)argc - 1;
    }
    /* MSET, MSETNX: keys and values come in pairs, or Redis refuses it */
    if (cmd->key_step > 1 && cmd->last_key < 0 &&
        ((long)argc - cmd->first_key) % cmd->key_step != 0) {
        snprintf(err, errlen, "ERR wrong number of arguments for '%s' command", cmd->name);
        return -1;
    }
    for (long i = cmd->first_key; i <= last; i += cmd->key_step) {
        push_key(positions, nkeys, (size_t)i);
    }
    return 0;
}

/* KEYS_STREAMS, as Redis's key spec reads it: the first STREAMS from
 * first_key on (not the last argument), then half of what follows. */
static int keys_streams(const command *cmd, size_t argc, const resp_arg *argv, size_t *positions,
                        size_t *nkeys, char *err, size_t errlen)
{
    for (size_t i = (size_t)cmd->first_key; i + 1 < argc; i++) {
        if (ARG_IS(&argv[i], "streams")) {
            size_t rest = argc - i - 1;
            if (rest % 2 != 0) {
                snprintf(err, errlen,
                         "ERR Unbalanced XREAD list of streams: for each stream key an ID or "
                         "'$' must be specified.");
                return -1;
            }
            for (size_t k = i + 1; k <= i + rest / 2; k++) {
                push_key(positions, nkeys, k);
            }
            return 0;
        }
    }
    snprintf(err, errlen, "ERR syntax error");
    return -1;
}

/* KEYS_SORT, as Redis's sortGetKeys: argv[1], and the argument after the
 * last STORE, skipping the arguments of LIMIT, GET and BY. */
static void keys_sort(const command *cmd, size_t argc, const resp_arg *argv, size_t *positions,
                      size_t *nkeys)
{
    size_t store = 0;
    push_key(positions, nkeys, (size_t)cmd->first_key);
    for (size_t i = (size_t)cmd->first_key + 1; i < argc; i++) {
        if (ARG_IS(&argv[i], "limit")) {
            i += 2;
        } else if (ARG_IS(&argv[i], "get") || ARG_IS(&argv[i], "by")) {
            i += 1;
        } else if (ARG_IS(&argv[i], "store") && i + 1 < argc) {
            store = i + 1; /* not skipped: Redis reads the next word as an option too */
        }
    }
    if (store != 0) {
        push_key(positions, nkeys, store);
    }
}

/* KEYS_MIGRATE: argv[3]; when it is "" and a KEYS option follows the
 * mandatory arguments (after COPY, REPLACE, AUTH pw, AUTH2 user pw), the
 * arguments after KEYS instead. */
static int keys_migrate(const command *cmd, size_t argc, const resp_arg *argv, size_t *positions,
                        size_t *nkeys, char *err, size_t errlen)
{
    size_t key = (size_t)cmd->first_key;
    size_t options = (size_t)(cmd->arity < 0 ? -cmd->arity : cmd->arity);
    for (size_t i = options; i < argc; i++) {
        if (ARG_IS(&argv[i], "keys")) {
            if (argv[key].len != 0) {
                snprintf(err, errlen,
                         "ERR When using MIGRATE KEYS option, the key argument must be set to "
                         "the empty string");
                return -1;
            }
            if (i + 1 < argc) {
                for (size_t k = i + 1; k < argc; k++) {
                    push_key(positions, nkeys, k);
                }
                return 0;
            }
            break;
        }
        if (ARG_IS(&argv[i], "auth")) {
            i += 1;
        } else if (ARG_IS(&argv[i], "auth2")) {
            i += 2;
        }
    }
    push_key(positions, nkeys, key);
    return 0;
}

/* The first argument equal to word from index from on, not the last
 * argument (a keyword needs a value after it); 0 when none. */
static size_t find_keyword(size_t argc, const resp_arg *argv, size_t from, const char *word,
                           size_t word_len)
{
    for (size_t i = from; i + 1 < argc; i++) {
        if (arg_is(&argv[i], word, word_len)) {
            return i;
        }
    }
    return 0;
}

/* KEYS_GEORADIUS, as Redis's key specs: argv[1], the argument after the
 * first STORE and the one after the first STOREDIST among the options. */
static void keys_georadius(const command *cmd, size_t argc, const resp_arg *argv, size_t *positions,
                           size_t *nkeys)
{
    size_t options = (size_t)(cmd->arity < 0 ? -cmd->arity : cmd->arity);
    push_key(positions, nkeys, (size_t)cmd->first_key);
    size_t store = find_keyword(argc, argv, options, "store", 5);
    if (store != 0) {
        push_key(positions, nkeys, store + 1);
    }
    size_t storedist = find_keyword(argc, argv, options, "storedist", 9);
    if (storedist != 0) {
        push_key(positions, nkeys, storedist + 1);
    }
}

int command_keys(const command *cmd, size_t argc, const resp_arg *argv, size_t *positions,
                 size_t *nkeys, char *err, size_t errlen)
{
    *nkeys = 0;
    size_t count;
    size_t at;
    switch (cmd->keys) {
    case KEYS_NONE:
        return 0;
    case KEYS_RANGE:
        return keys_range(cmd, argc, positions, nkeys, err, errlen);
    case KEYS_NUMKEYS:
    case KEYS_TIMEOUT_NUMKEYS:
    case KEYS_DEST_NUMKEYS:
        at = (size_t)cmd->first_key;
        if (cmd->keys == KEYS_DEST_NUMKEYS) {
            at++; /* numkeys follows the destination */
        }
        if (at >= argc) {
            snprintf(err, errlen, "ERR wrong number of arguments for '%s' command", cmd->name);
            return -1;
        }
        if (check_numkeys(cmd, argc, argv, at, &count, err, errlen) != 0) {
            return -1;
        }
        if (cmd->keys == KEYS_DEST_NUMKEYS) {
            push_key(positions, nkeys, (size_t)cmd->first_key);
        }
        for (size_t i = 0; i < count; i++) {
            push_key(positions, nkeys, at + 1 + i);
        }
        return 0;
    case KEYS_STREAMS:
        return keys_streams(cmd, argc, argv, positions, nkeys, err, errlen);
    case KEYS_SORT:
        keys_sort(cmd, argc, argv, positions, nkeys);
        return 0;
    case KEYS_MIGRATE:
        return keys_migrate(cmd, argc, argv, positions, nkeys, err, errlen);
    case KEYS_GEORADIUS:
        keys_georadius(cmd, argc, argv, positions, nkeys);
        return 0;
    }
    /* a table bug: every rule is handled above */
    snprintf(err, errlen, "ERR internal error: unknown key rule for '%s'", cmd->name);
    return -1;
}

/* A timeout argument in seconds (BLPOP's, a decimal that may have a
 * fraction) or milliseconds (XREAD's BLOCK) as microseconds; 0 -> none. */
static uint64_t timeout_us(const resp_arg *arg, double scale)
{
    char text[64];
    if (arg->len == 0 || arg->len >= sizeof(text))
        return 0;
    memcpy(text, arg->ptr, arg->len);
    text[arg->len] = '\0';
    char *end;
    double v = strtod(text, &end);
    if (*end || !(v >= 0))
        return 0;
    if (v == 0)
        return UINT64_MAX;
    v *= scale;
    return v >= 1.8e19 ? UINT64_MAX - 1 : (uint64_t)v;
}

/* BITFIELD only reads when every subcommand is a complete GET or OVERFLOW
 * (Redis's bitfieldGetKeys: a SET, an INCRBY or anything else may write). */
static bool bitfield_reads_only(size_t argc, const resp_arg *argv)
{
    for (size_t i = 2; i < argc; i++) {
        size_t rest = argc - i - 1;
        if (ARG_IS(&argv[i], "get") && rest >= 2) {
            i += 2;
        } else if (ARG_IS(&argv[i], "overflow") && rest >= 1) {
            i += 1;
        } else {
            return false;
        }
    }
    return true;
}

unsigned command_key_access_of(const command *cmd, size_t argc, const resp_arg *argv, size_t i)
{
    command_key_access access = i == 0 ? cmd->first_key_access : cmd->other_keys_access;
    switch (access) {
    case KEY_ACCESS_NAME:
    case KEY_ACCESS_READ:
    case KEY_ACCESS_WRITE:
    case KEY_ACCESS_READ_WRITE:
        return (unsigned)access;
    case KEY_ACCESS_SET:
        /* Redis's setGetKeys: a GET anywhere after the value reads the key */
        for (size_t j = 3; j < argc; j++) {
            if (ARG_IS(&argv[j], "get")) {
                return ACL_KEY_READ | ACL_KEY_WRITE;
            }
        }
        return ACL_KEY_WRITE;
    case KEY_ACCESS_BITFIELD:
        return bitfield_reads_only(argc, argv) ? ACL_KEY_READ : ACL_KEY_READ | ACL_KEY_WRITE;
    }
    return ACL_KEY_READ | ACL_KEY_WRITE; /* not reached: every value is a case above */
}

int command_blocking(const command *cmd, size_t argc, const resp_arg *argv, uint64_t *block_us)
{
    switch (cmd->id) {
    case CMD_BLOCK_LAST:
        *block_us = timeout_us(&argv[argc - 1], 1e6);
        return 1;
    case CMD_BLOCK_FIRST:
        *block_us = timeout_us(&argv[1], 1e6);
        return 1;
    case CMD_XREAD:
        /* Options come before STREAMS (XREADGROUP's after GROUP g c); a
         * COUNT's value is skipped so a count cannot read as BLOCK. */
        for (size_t i = (size_t)cmd->first_key; i + 1 < argc; i++) {
            if (arg_is(&argv[i], "streams", 7))
                return 0;
            if (arg_is(&argv[i], "count", 5)) {
                i++;
            } else if (arg_is(&argv[i], "block", 5)) {
                *block_us = timeout_us(&argv[i + 1], 1e3);
                return 1;
            }
        }
        return 0;
    default:
        return 0;
    }
}

const command *command_table(size_t *count)
{
    *count = COMMAND_COUNT;
    return command_rows;
}

void command_foreach(void (*f)(const command *c, void *arg), void *arg)
{
    for (size_t i = 0; i < COMMAND_COUNT; i++) {
        const command *row = &command_rows[i];
        size_t nsubs = row->nsubcommands ? row->nsubcommands : 1;
        for (size_t j = 0; j < nsubs; j++)
            f(row->nsubcommands ? &row->subcommands[j] : row, arg);
    }
}
