/* Unit tests of the command table: lookup, arity, subcommands, key
 * positions of every key rule (and Redis's errors for bad numkeys), and the
 * routing class of representative commands. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy/command.h"

#define MAX_ARGS 32

/* A request written as words separated by single spaces; '' is the empty
 * argument. Split in place into argv. */
typedef struct request {
    char buf[256];
    resp_arg argv[MAX_ARGS];
    size_t argc;
} request;

static void request_parse(request *r, const char *words)
{
    assert_true(strlen(words) < sizeof(r->buf));
    strcpy(r->buf, words);
    r->argc = 0;
    char *save = NULL;
    for (char *w = strtok_r(r->buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
        assert_true(r->argc < MAX_ARGS);
        r->argv[r->argc].ptr = w;
        r->argv[r->argc].len = strcmp(w, "''") == 0 ? 0 : strlen(w);
        r->argc++;
    }
}

/* The command a request resolves to: top level, then subcommand. */
static const command *resolve(const request *r)
{
    const command *cmd = command_lookup(r->argv[0].ptr, r->argv[0].len);
    if (cmd == NULL) {
        return NULL;
    }
    return command_subcommand(cmd, r->argc, r->argv);
}

/* --- lookup ------------------------------------------------------------ */

static const struct {
    const char *name;  /* as sent */
    size_t len;        /* 0: strlen(name) */
    const char *found; /* table name, NULL: unknown */
} lookup_cases[] = {
    {"get", 0, "get"},
    {"GET", 0, "get"},
    {"gEt", 0, "get"},
    {"SET", 0, "set"},
    {"GeoRadiusByMember_RO", 0, "georadiusbymember_ro"},
    {"RESTORE-ASKING", 0, "restore-asking"},
    {"zunionstore", 0, "zunionstore"},
    {"Client", 0, "client"},
    {"PROXY", 0, "proxy"},
    {"ping", 0, "ping"},
    {"getx", 0, NULL},
    {"ge", 0, NULL},
    {"g", 0, NULL},
    {"", 0, NULL},
    {"get\0", 4, NULL},
    {"get", 2, NULL},
    {"georadiusbymember_rox", 0, NULL},
    {"client|setname", 0, NULL}, /* subcommands are not top level */
    {"setname", 0, NULL},
    {"GET ", 0, NULL},
    {"\xc7\xb5\xc3\x9f", 0, NULL},
    {"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 0, NULL},
};

static void test_lookup_any_case(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(lookup_cases) / sizeof(lookup_cases[0]); i++) {
        const char *name = lookup_cases[i].name;
        size_t len = lookup_cases[i].len ? lookup_cases[i].len : strlen(name);
        const command *cmd = command_lookup(name, len);
        if (lookup_cases[i].found == NULL) {
            if (cmd != NULL) {
                fail_msg("'%s' should be unknown, found %s", name, cmd->name);
            }
        } else {
            if (cmd == NULL) {
                fail_msg("'%s' not found", name);
            }
            assert_string_equal(cmd->name, lookup_cases[i].found);
        }
    }
}

/* Every row is found by its own name, lower and upper case. */
static void test_lookup_every_row(void **state)
{
    (void)state;
    size_t count;
    const command *table = command_table(&count);
    assert_true(count >= 240);
    for (size_t i = 0; i < count; i++) {
        char upper[64];
        size_t len = strlen(table[i].name);
        assert_true(len < sizeof(upper));
        for (size_t j = 0; j < len; j++) {
            char c = table[i].name[j];
            upper[j] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
        }
        assert_ptr_equal(command_lookup(table[i].name, len), &table[i]);
        assert_ptr_equal(command_lookup(upper, len), &table[i]);
    }
}

/* Rows are sorted and unique, subcommands named "container|sub", each
 * class has what the router needs. */
static void test_table_consistent(void **state)
{
    (void)state;
    size_t count;
    const command *table = command_table(&count);
    for (size_t i = 0; i < count; i++) {
        const command *cmd = &table[i];
        if (i > 0) {
            assert_true(strcmp(table[i - 1].name, cmd->name) < 0);
        }
        assert_int_not_equal(cmd->arity, 0);
        assert_null(strchr(cmd->name, '|'));
        for (size_t j = 0; j < cmd->nsubcommands; j++) {
            const command *sub = &cmd->subcommands[j];
            size_t len = strlen(cmd->name);
            assert_int_equal(strncmp(sub->name, cmd->name, len), 0);
            assert_int_equal(sub->name[len], '|');
            assert_null(sub->subcommands);
            assert_true(sub->arity >= 2 || sub->arity <= -2);
        }
        const command *rows[64];
        size_t nrows = 0;
        rows[nrows++] = cmd;
        for (size_t j = 0; j < cmd->nsubcommands && nrows < 64; j++) {
            rows[nrows++] = &cmd->subcommands[j];
        }
        for (size_t j = 0; j < nrows; j++) {
            const command *row = rows[j];
            switch (row->cls) {
            case COMMAND_SPLIT:
                assert_int_not_equal(row->merge, MERGE_NONE);
                assert_int_not_equal(row->id, CMD_OTHER);
                assert_true(row->split_step >= 1);
                assert_int_equal(row->keys, KEYS_RANGE);
                break;
            case COMMAND_LOCAL:
                assert_int_not_equal(row->id, CMD_OTHER);
                break;
            case COMMAND_FORWARD:
                /* a forwarded command has a key (or PUBLISH's channel) to
                 * route by */
                assert_true(row->keys != KEYS_NONE || row->nsubcommands > 0 ||
                            row->id == CMD_PUBLISH);
                break;
            case COMMAND_FANOUT:
                /* fan-out replies are merged */
                assert_true(row->merge != MERGE_NONE || row->nsubcommands > 0);
                break;
            default:
                break;
            }
            bool numkeys_rule = row->keys == KEYS_NUMKEYS || row->keys == KEYS_DEST_NUMKEYS ||
                                row->keys == KEYS_TIMEOUT_NUMKEYS;
            assert_int_equal(numkeys_rule, row->numkeys != NUMKEYS_NONE);
        }
    }
}

/* --- arity ------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t argc;
    int ok; /* 1: fits */
} arity_cases[] = {
    {"get", 2, 1},     {"get", 1, 0},     {"get", 3, 0},         {"set", 3, 1},
    {"set", 2, 0},     {"set", 9, 1},     {"ping", 1, 1},        {"ping", 2, 1},
    {"ping", 3, 1},    {"mget", 1, 0},    {"mget", 2, 1},        {"mget", 100, 1},
    {"mset", 2, 0},    {"mset", 3, 1},    {"time", 1, 1},        {"time", 2, 0},
    {"eval", 2, 0},    {"eval", 3, 1},    {"zunionstore", 3, 0}, {"zunionstore", 4, 1},
    {"migrate", 5, 0}, {"migrate", 6, 1}, {"client", 1, 0},      {"client", 2, 1},
    {"proxy", 1, 0},   {"proxy", 2, 1},   {"command", 1, 1},
};

static void test_arity(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(arity_cases) / sizeof(arity_cases[0]); i++) {
        const command *cmd = command_lookup(arity_cases[i].name, strlen(arity_cases[i].name));
        assert_non_null(cmd);
        int rc = command_check_arity(cmd, arity_cases[i].argc);
        if ((rc == 0) != arity_cases[i].ok) {
            fail_msg("arity of %s with argc %zu: got %d", arity_cases[i].name, arity_cases[i].argc,
                     rc);
        }
    }
}

/* Subcommand arities count the container: CLIENT SETNAME name is 3. */
static const struct {
    const char *request;
    int ok;
} subcommand_arity_cases[] = {
    {"CLIENT SETNAME x", 1},
    {"CLIENT SETNAME", 0},
    {"CLIENT SETNAME x y", 0},
    {"CLIENT ID", 1},
    {"CLIENT ID x", 0},
    {"OBJECT ENCODING k", 1},
    {"OBJECT ENCODING", 0},
    {"MEMORY USAGE k", 1},
    {"MEMORY USAGE k SAMPLES 5", 1},
    {"XINFO STREAM s", 1},
    {"XINFO STREAM s FULL", 1},
    {"XINFO CONSUMERS s g", 1},
    {"XINFO CONSUMERS s", 0},
    {"PROXY RING k", 1},
    {"PROXY RING", 0},
    {"PROXY SHARDS", 1},
    {"PROXY SHARDS x", 0},
    {"PROXY RELOAD", 1},
    {"PROXY REBALANCE", 1},
    {"PROXY REBALANCE status", 1},
    {"COMMAND COUNT", 1},
    {"COMMAND INFO", 1},
    {"COMMAND INFO get set", 1},
    {"CONFIG GET", 0},
};

static void test_subcommand_arity(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(subcommand_arity_cases) / sizeof(subcommand_arity_cases[0]);
         i++) {
        request r;
        request_parse(&r, subcommand_arity_cases[i].request);
        const command *cmd = resolve(&r);
        assert_non_null(cmd);
        int rc = command_check_arity(cmd, r.argc);
        if ((rc == 0) != subcommand_arity_cases[i].ok) {
            fail_msg("arity of '%s' (%s): got %d", subcommand_arity_cases[i].request, cmd->name,
                     rc);
        }
    }
}

/* --- subcommands ------------------------------------------------------- */

static const struct {
    const char *request;
    const char *resolved; /* NULL: unknown or missing subcommand */
} subcommand_cases[] = {
    {"client setname x", "client|setname"},
    {"CLIENT SETNAME x", "client|setname"},
    {"Client GetName", "client|getname"},
    {"client id", "client|id"},
    {"client list", "client|list"},
    {"client no-evict on", "client|no-evict"},
    {"client nope", NULL},
    {"client", NULL},
    {"client setnam", NULL},
    {"client setnamex", NULL},
    {"OBJECT ENCODING k", "object|encoding"},
    {"object freq k", "object|freq"},
    {"memory usage k", "memory|usage"},
    {"XGROUP CREATECONSUMER s g c", "xgroup|createconsumer"},
    {"xinfo stream s", "xinfo|stream"},
    {"config get maxmemory", "config|get"},
    {"cluster count-failure-reports id", "cluster|count-failure-reports"},
    {"command", "command"}, /* a bare COMMAND is the container itself */
    {"command count", "command|count"},
    {"COMMAND GETKEYSANDFLAGS get k", "command|getkeysandflags"},
    {"proxy ring k", "proxy|ring"},
    {"PROXY SHARDS", "proxy|shards"},
    {"proxy reload", "proxy|reload"},
    {"proxy rebalance", "proxy|rebalance"},
    {"proxy nope", NULL},
    {"get k", "get"}, /* not a container: itself */
    {"set k v", "set"},
};

static void test_subcommand(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(subcommand_cases) / sizeof(subcommand_cases[0]); i++) {
        request r;
        request_parse(&r, subcommand_cases[i].request);
        const command *cmd = resolve(&r);
        if (subcommand_cases[i].resolved == NULL) {
            if (cmd != NULL) {
                fail_msg("'%s' resolved to %s", subcommand_cases[i].request, cmd->name);
            }
        } else {
            if (cmd == NULL) {
                fail_msg("'%s' did not resolve", subcommand_cases[i].request);
            }
            assert_string_equal(cmd->name, subcommand_cases[i].resolved);
        }
    }
}

/* --- key positions ----------------------------------------------------- */

#define NO_KEYS                                                                                    \
    {                                                                                              \
        -1                                                                                         \
    }

static const struct {
    const char *request;
    int keys[12];      /* argv indexes, ended by -1 */
    const char *error; /* NULL: keys expected */
} keys_cases[] = {
    /* KEYS_NONE */
    {"PING", NO_KEYS, NULL},
    {"ECHO hello", NO_KEYS, NULL},
    {"TIME", NO_KEYS, NULL},
    {"PUBLISH ch msg", NO_KEYS, NULL},
    {"SPUBLISH ch msg", NO_KEYS, NULL}, /* a shard channel, not a key */
    {"CLIENT SETNAME x", NO_KEYS, NULL},
    /* KEYS_RANGE */
    {"GET k", {1, -1}, NULL},
    {"SET k v EX 10 GET", {1, -1}, NULL},
    {"HSET h f v f2 v2", {1, -1}, NULL},
    {"MGET a b c", {1, 2, 3, -1}, NULL},
    {"MSET a 1 b 2 c 3", {1, 3, 5, -1}, NULL},
    {"MSET a 1 b", NO_KEYS, "ERR wrong number of arguments for 'mset' command"},
    {"MSETNX a 1 b 2", {1, 3, -1}, NULL},
    {"MSETNX a 1 b", NO_KEYS, "ERR wrong number of arguments for 'msetnx' command"},
    {"DEL a", {1, -1}, NULL},
    {"EXISTS a b a", {1, 2, 3, -1}, NULL},
    {"BLPOP a b 0", {1, 2, -1}, NULL},
    {"BRPOPLPUSH a b 0", {1, 2, -1}, NULL},
    {"BITOP AND dest a b", {2, 3, 4, -1}, NULL},
    {"RENAME a b", {1, 2, -1}, NULL},
    {"LCS a b IDX", {1, 2, -1}, NULL},
    {"GEOSEARCHSTORE dst src FROMMEMBER m BYRADIUS 1 km", {1, 2, -1}, NULL},
    {"SINTERSTORE d a b", {1, 2, 3, -1}, NULL},
    {"OBJECT ENCODING k", {2, -1}, NULL},
    {"MEMORY USAGE k SAMPLES 5", {2, -1}, NULL},
    {"XINFO STREAM s FULL", {2, -1}, NULL},
    {"XGROUP CREATE s g $ MKSTREAM", {2, -1}, NULL},
    {"PFDEBUG GETREG k", {2, -1}, NULL},
    {"SORT_RO k BY w_* GET o_*", {1, -1}, NULL},
    {"GEORADIUS_RO k 1 2 3 km STORE x", {1, -1}, NULL},
    {"PROXY RING k", {2, -1}, NULL},
    /* KEYS_NUMKEYS, EVAL family */
    {"EVAL s 0", NO_KEYS, NULL},
    {"EVAL s 0 arg", NO_KEYS, NULL},
    {"EVAL s 2 a b arg", {3, 4, -1}, NULL},
    {"evalsha_ro sha 1 a", {3, -1}, NULL},
    {"EVAL s 3 a b", NO_KEYS, "ERR Number of keys can't be greater than number of args"},
    {"EVAL s -1", NO_KEYS, "ERR Number of keys can't be negative"},
    {"EVAL s x", NO_KEYS, "ERR value is not an integer or out of range"},
    {"EVAL s 01 a", NO_KEYS, "ERR value is not an integer or out of range"},
    {"EVAL s +1 a", NO_KEYS, "ERR value is not an integer or out of range"},
    {"EVAL s -0", NO_KEYS, "ERR value is not an integer or out of range"},
    {"EVAL s '' a", NO_KEYS, "ERR value is not an integer or out of range"},
    {"EVAL s 9223372036854775808 a", NO_KEYS, "ERR value is not an integer or out of range"},
    {"EVAL s 9223372036854775807 a", NO_KEYS,
     "ERR Number of keys can't be greater than number of args"},
    {"EVAL s -9223372036854775808", NO_KEYS, "ERR Number of keys can't be negative"},
    {"FCALL f 1 a arg", {3, -1}, NULL},
    {"FCALL_RO f 0", NO_KEYS, NULL},
    {"FCALL f x a", NO_KEYS, "ERR Bad number of keys provided"},
    {"FCALL f 2 a", NO_KEYS, "ERR Number of keys can't be greater than number of args"},
    {"FCALL f -2 a", NO_KEYS, "ERR Number of keys can't be negative"},
    /* KEYS_NUMKEYS, the pops */
    {"LMPOP 2 a b LEFT COUNT 3", {2, 3, -1}, NULL},
    {"lmpop 1 a right", {2, -1}, NULL},
    {"LMPOP 0 a LEFT", NO_KEYS, "ERR numkeys should be greater than 0"},
    {"LMPOP -1 a LEFT", NO_KEYS, "ERR numkeys should be greater than 0"},
    {"LMPOP x a LEFT", NO_KEYS, "ERR numkeys should be greater than 0"},
    {"LMPOP 2 a b", NO_KEYS, "ERR syntax error"},
    {"LMPOP 5 a b LEFT", NO_KEYS, "ERR syntax error"},
    {"ZMPOP 2 a b MIN", {2, 3, -1}, NULL},
    {"ZMPOP 0 a MIN", NO_KEYS, "ERR numkeys should be greater than 0"},
    /* KEYS_NUMKEYS, SINTERCARD */
    {"SINTERCARD 2 a b LIMIT 1", {2, 3, -1}, NULL},
    {"SINTERCARD 2 a b", {2, 3, -1}, NULL},
    {"SINTERCARD 0 a", NO_KEYS, "ERR numkeys should be greater than 0"},
    {"SINTERCARD 01 a", NO_KEYS, "ERR numkeys should be greater than 0"},
    {"SINTERCARD 3 a b", NO_KEYS, "ERR Number of keys can't be greater than number of args"},
    /* KEYS_NUMKEYS, the sorted-set algebra */
    {"ZUNION 2 a b WITHSCORES", {2, 3, -1}, NULL},
    {"ZINTER 1 a", {2, -1}, NULL},
    {"ZDIFF 2 a b", {2, 3, -1}, NULL},
    {"ZINTERCARD 2 a b LIMIT 5", {2, 3, -1}, NULL},
    {"ZUNION 0 a", NO_KEYS, "ERR at least 1 input key is needed for 'zunion' command"},
    {"ZINTERCARD -1 a", NO_KEYS, "ERR at least 1 input key is needed for 'zintercard' command"},
    {"ZDIFF 3 a b", NO_KEYS, "ERR syntax error"},
    {"ZINTER 1.5 a", NO_KEYS, "ERR value is not an integer or out of range"},
    /* KEYS_DEST_NUMKEYS */
    {"ZUNIONSTORE d 2 a b WEIGHTS 1 2", {1, 3, 4, -1}, NULL},
    {"ZINTERSTORE d 1 a", {1, 3, -1}, NULL},
    {"ZDIFFSTORE d 2 a b", {1, 3, 4, -1}, NULL},
    {"ZUNIONSTORE d 0 a", NO_KEYS, "ERR at least 1 input key is needed for 'zunionstore' command"},
    {"ZINTERSTORE d 3 a b", NO_KEYS, "ERR syntax error"},
    {"ZDIFFSTORE d x a", NO_KEYS, "ERR value is not an integer or out of range"},
    /* KEYS_TIMEOUT_NUMKEYS */
    {"BLMPOP 0 2 a b LEFT", {3, 4, -1}, NULL},
    {"BZMPOP 1.5 1 a MAX COUNT 2", {3, -1}, NULL},
    {"BLMPOP 0 0 a LEFT", NO_KEYS, "ERR numkeys should be greater than 0"},
    {"BZMPOP 0 3 a MIN", NO_KEYS, "ERR syntax error"},
    /* KEYS_STREAMS */
    {"XREAD STREAMS a 0", {2, -1}, NULL},
    {"XREAD COUNT 10 BLOCK 0 STREAMS a b 0 0", {6, 7, -1}, NULL},
    {"xread streams streams 0", {2, -1}, NULL}, /* a stream named "streams" */
    {"XREADGROUP GROUP g c STREAMS a >", {5, -1}, NULL},
    {"XREADGROUP GROUP streams c COUNT 1 NOACK STREAMS a b > >", {8, 9, -1}, NULL},
    {"XREADGROUP GROUP g streams STREAMS a >", {5, -1}, NULL},
    {"XREAD STREAMS a b c", NO_KEYS,
     "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be "
     "specified."},
    {"XREAD COUNT 1 a b", NO_KEYS, "ERR syntax error"},
    {"XREAD COUNT 1 STREAMS", NO_KEYS, "ERR syntax error"},
    /* KEYS_SORT */
    {"SORT k", {1, -1}, NULL},
    {"SORT k STORE d", {1, 3, -1}, NULL},
    {"SORT k LIMIT 0 10 BY w_* GET # GET o_* DESC ALPHA STORE d", {1, 14, -1}, NULL},
    {"SORT k STORE a STORE b", {1, 5, -1}, NULL},  /* the last STORE wins */
    {"SORT k BY store STORE d", {1, 5, -1}, NULL}, /* BY's pattern is skipped */
    {"SORT k GET store", {1, -1}, NULL},
    {"SORT k STORE", {1, -1}, NULL},
    /* KEYS_MIGRATE */
    {"MIGRATE h 6379 k 0 5000", {3, -1}, NULL},
    {"MIGRATE h 6379 k 0 5000 COPY REPLACE", {3, -1}, NULL},
    {"MIGRATE h 6379 '' 0 5000 KEYS a b", {7, 8, -1}, NULL},
    {"MIGRATE h 6379 '' 0 5000 COPY REPLACE AUTH pw KEYS a", {11, -1}, NULL},
    {"MIGRATE h 6379 '' 0 5000 AUTH2 u p KEYS a b", {10, 11, -1}, NULL},
    {"MIGRATE h 6379 '' 0 5000 AUTH keys KEYS a", {9, -1}, NULL}, /* a password "keys" */
    {"MIGRATE h 6379 '' 0 5000 KEYS a KEYS b", {7, 8, 9, -1}, NULL},
    {"MIGRATE h 6379 '' 0 5000", {3, -1}, NULL},
    {"MIGRATE h 6379 k 0 5000 KEYS a", NO_KEYS,
     "ERR When using MIGRATE KEYS option, the key argument must be set to the empty string"},
    /* KEYS_GEORADIUS */
    {"GEORADIUS k 15 37 200 km", {1, -1}, NULL},
    {"GEORADIUS k 15 37 200 km WITHDIST COUNT 3 ASC STORE d", {1, 11, -1}, NULL},
    {"GEORADIUS k 15 37 200 km STOREDIST d", {1, 7, -1}, NULL},
    {"GEORADIUS k 15 37 200 km STORE a STOREDIST b", {1, 7, 9, -1}, NULL},
    {"GEORADIUSBYMEMBER k m 200 km STORE d", {1, 6, -1}, NULL},
    {"GEORADIUS k 15 37 200 km STORE", {1, -1}, NULL},
};

static void test_keys(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(keys_cases) / sizeof(keys_cases[0]); i++) {
        request r;
        request_parse(&r, keys_cases[i].request);
        const command *cmd = resolve(&r);
        if (cmd == NULL) {
            fail_msg("'%s' did not resolve", keys_cases[i].request);
        }
        if (command_check_arity(cmd, r.argc) != 0) {
            fail_msg("'%s': arity", keys_cases[i].request);
        }
        size_t positions[MAX_ARGS];
        size_t nkeys = 99;
        char err[256] = "";
        int rc = command_keys(cmd, r.argc, r.argv, positions, &nkeys, err, sizeof(err));
        if (keys_cases[i].error != NULL) {
            if (rc != -1) {
                fail_msg("'%s': expected error '%s', got %zu keys", keys_cases[i].request,
                         keys_cases[i].error, nkeys);
            }
            assert_string_equal(err, keys_cases[i].error);
            continue;
        }
        if (rc != 0) {
            fail_msg("'%s': unexpected error '%s'", keys_cases[i].request, err);
        }
        size_t expected = 0;
        while (keys_cases[i].keys[expected] >= 0) {
            expected++;
        }
        if (nkeys != expected) {
            fail_msg("'%s': %zu keys, expected %zu", keys_cases[i].request, nkeys, expected);
        }
        for (size_t k = 0; k < nkeys; k++) {
            if (positions[k] != (size_t)keys_cases[i].keys[k]) {
                fail_msg("'%s': key %zu at %zu, expected %d", keys_cases[i].request, k,
                         positions[k], keys_cases[i].keys[k]);
            }
        }
    }
}

/* --- what a request does with each key (%R~ / %W~) ------------------------ */

#define R  ACL_KEY_READ
#define W  ACL_KEY_WRITE
#define RW (ACL_KEY_READ | ACL_KEY_WRITE)

static const struct {
    const char *request;
    int access[4]; /* per key, in command_keys' order; -1 ends */
} key_access_cases[] = {
    {"GET k", {R, -1}},
    {"DEL a b", {W, W, -1}},
    {"INCR k", {RW, -1}},
    {"EXISTS a b", {0, 0, -1}}, /* only named */
    {"MSET a 1 b 2", {W, W, -1}},
    /* the first key differs from the others */
    {"COPY a b", {R, W, -1}},
    {"SUNIONSTORE d a b", {W, R, R, -1}},
    {"LMOVE a b LEFT RIGHT", {RW, W, -1}},
    {"BITOP AND d a b", {W, R, R, -1}},
    {"SORT k BY w_* GET o_* STORE d", {R, W, -1}},
    {"GEORADIUS k 15 37 200 km STORE a STOREDIST b", {R, W, W, -1}},
    /* SET reads with GET; BITFIELD writes unless every subcommand reads */
    {"SET k v", {W, -1}},
    {"SET k v EX 10 get", {RW, -1}},
    {"BITFIELD k GET u8 0 OVERFLOW SAT", {R, -1}},
    {"BITFIELD k GET u8 0 INCRBY u8 0 1", {RW, -1}},
    {"BITFIELD k GET u8", {RW, -1}}, /* incomplete: may write, as Redis assumes */
    {"BITFIELD k", {R, -1}},
};

static void test_key_access(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(key_access_cases) / sizeof(key_access_cases[0]); i++) {
        request r;
        request_parse(&r, key_access_cases[i].request);
        const command *cmd = resolve(&r);
        assert_non_null(cmd);
        size_t positions[MAX_ARGS];
        size_t nkeys = 0;
        char err[256] = "";
        assert_int_equal(command_keys(cmd, r.argc, r.argv, positions, &nkeys, err, sizeof(err)), 0);
        size_t k = 0;
        for (; key_access_cases[i].access[k] >= 0; k++) {
            assert_true(k < nkeys);
            unsigned got = command_key_access_of(cmd, r.argc, r.argv, k);
            if (got != (unsigned)key_access_cases[i].access[k]) {
                fail_msg("'%s': key %zu access %u, expected %d", key_access_cases[i].request, k,
                         got, key_access_cases[i].access[k]);
            }
        }
        assert_int_equal(k, nkeys);
    }
}

#undef R
#undef W
#undef RW

/* A small error buffer truncates the text, never overflows. */
static void test_keys_error_truncated(void **state)
{
    (void)state;
    request r;
    request_parse(&r, "EVAL s 5 a");
    const command *cmd = resolve(&r);
    size_t positions[MAX_ARGS];
    size_t nkeys;
    char err[8];
    assert_int_equal(command_keys(cmd, r.argc, r.argv, positions, &nkeys, err, sizeof(err)), -1);
    assert_string_equal(err, "ERR Num");
}

/* --- classes ----------------------------------------------------------- */

static const struct {
    const char *request;
    command_class cls;
    command_id id;
    command_merge merge;
    int split_step;
} class_cases[] = {
    {"GET k", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"SET k v", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"HGETALL h", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"XADD s * f v", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"OBJECT ENCODING k", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"MEMORY USAGE k", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"XINFO STREAM s", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"SORT_RO k", COMMAND_FORWARD, CMD_OTHER, MERGE_NONE, 0},
    {"MGET a b", COMMAND_SPLIT, CMD_MGET, MERGE_ARRAY_BY_KEY, 1},
    {"MSET a 1", COMMAND_SPLIT, CMD_MSET, MERGE_ALL_OK, 2},
    {"DEL a", COMMAND_SPLIT, CMD_DEL, MERGE_SUM, 1},
    {"UNLINK a", COMMAND_SPLIT, CMD_UNLINK, MERGE_SUM, 1},
    {"EXISTS a", COMMAND_SPLIT, CMD_EXISTS, MERGE_SUM, 1},
    {"TOUCH a", COMMAND_SPLIT, CMD_TOUCH, MERGE_SUM, 1},
    {"RENAME a b", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"SMOVE a b m", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"SINTER a b", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"SUNIONSTORE d a", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"LMOVE a b LEFT RIGHT", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"PFMERGE d a", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"PFCOUNT a b", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"EVAL s 0", COMMAND_SAME_SHARD, CMD_EVAL, MERGE_NONE, 0},
    {"EVALSHA s 0", COMMAND_SAME_SHARD, CMD_EVAL, MERGE_NONE, 0},
    {"FCALL f 0", COMMAND_SAME_SHARD, CMD_EVAL, MERGE_NONE, 0},
    {"FCALL_RO f 0", COMMAND_SAME_SHARD, CMD_EVAL, MERGE_NONE, 0},
    {"ZUNIONSTORE d 1 a", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"ZRANGESTORE d a 0 1", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"MSETNX a 1", COMMAND_SAME_SHARD, CMD_MSETNX, MERGE_NONE, 0},
    {"COPY a b", COMMAND_SAME_SHARD, CMD_COPY, MERGE_NONE, 0},
    {"SORT k STORE d", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"GEORADIUS k 1 2 3 km", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"BITOP AND d a", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"LCS a b", COMMAND_SAME_SHARD, CMD_OTHER, MERGE_NONE, 0},
    {"PING", COMMAND_LOCAL, CMD_PING, MERGE_NONE, 0},
    {"ECHO x", COMMAND_LOCAL, CMD_ECHO, MERGE_NONE, 0},
    {"QUIT", COMMAND_LOCAL, CMD_QUIT, MERGE_NONE, 0},
    {"SELECT 0", COMMAND_LOCAL, CMD_SELECT, MERGE_NONE, 0},
    {"HELLO 2", COMMAND_LOCAL, CMD_HELLO, MERGE_NONE, 0},
    {"INFO", COMMAND_LOCAL, CMD_INFO, MERGE_INFO, 0},
    {"TIME", COMMAND_LOCAL, CMD_TIME, MERGE_NONE, 0},
    {"DBSIZE", COMMAND_FANOUT, CMD_DBSIZE, MERGE_SUM, 0},
    {"KEYS *", COMMAND_FANOUT, CMD_OTHER, MERGE_CONCAT, 0},
    {"FLUSHDB", COMMAND_FANOUT, CMD_FLUSH, MERGE_ALL_OK, 0},
    {"FLUSHALL ASYNC", COMMAND_FANOUT, CMD_FLUSH, MERGE_ALL_OK, 0},
    {"SCRIPT LOAD s", COMMAND_FANOUT, CMD_OTHER, MERGE_SAME, 0},
    {"SCRIPT EXISTS a b", COMMAND_FANOUT, CMD_OTHER, MERGE_AND_ARRAY, 0},
    {"SCRIPT FLUSH", COMMAND_FANOUT, CMD_OTHER, MERGE_ALL_OK, 0},
    {"SCRIPT KILL", COMMAND_FANOUT, CMD_KILL, MERGE_FIRST_OK, 0},
    {"FUNCTION KILL", COMMAND_FANOUT, CMD_KILL, MERGE_FIRST_OK, 0},
    {"FUNCTION LOAD code", COMMAND_FANOUT, CMD_OTHER, MERGE_SAME, 0},
    {"PUBSUB CHANNELS", COMMAND_FANOUT, CMD_OTHER, MERGE_UNION, 0},
    {"PUBSUB NUMSUB a", COMMAND_FANOUT, CMD_OTHER, MERGE_PAIR_SUM, 0},
    {"PUBSUB NUMPAT", COMMAND_FANOUT, CMD_OTHER, MERGE_MAX, 0},
    {"SCAN 0", COMMAND_ITERATE, CMD_SCAN, MERGE_NONE, 0},
    {"RANDOMKEY", COMMAND_ITERATE, CMD_RANDOMKEY, MERGE_NONE, 0},
    {"MULTI", COMMAND_TRANSACTION, CMD_MULTI, MERGE_NONE, 0},
    {"EXEC", COMMAND_TRANSACTION, CMD_EXEC, MERGE_NONE, 0},
    {"DISCARD", COMMAND_TRANSACTION, CMD_DISCARD, MERGE_NONE, 0},
    {"WATCH a", COMMAND_TRANSACTION, CMD_WATCH, MERGE_NONE, 0},
    {"UNWATCH", COMMAND_TRANSACTION, CMD_UNWATCH, MERGE_NONE, 0},
    {"SUBSCRIBE ch", COMMAND_PUBSUB, CMD_SUBSCRIBE, MERGE_NONE, 0},
    {"PSUBSCRIBE ch*", COMMAND_PUBSUB, CMD_PSUBSCRIBE, MERGE_NONE, 0},
    {"UNSUBSCRIBE", COMMAND_PUBSUB, CMD_UNSUBSCRIBE, MERGE_NONE, 0},
    {"PUNSUBSCRIBE", COMMAND_PUBSUB, CMD_PUNSUBSCRIBE, MERGE_NONE, 0},
    {"LOCK.ACQUIRE l 1000", COMMAND_LOCK, CMD_LOCK_ACQUIRE, MERGE_NONE, 0},
    {"lock.release l 1", COMMAND_LOCK, CMD_LOCK_RELEASE, MERGE_NONE, 0},
    {"Lock.Extend l 1 1000", COMMAND_LOCK, CMD_LOCK_EXTEND, MERGE_NONE, 0},
    {"LOCK.INFO l", COMMAND_LOCK, CMD_LOCK_INFO, MERGE_NONE, 0},
    {"PUBLISH ch m", COMMAND_FORWARD, CMD_PUBLISH, MERGE_NONE, 0},
    {"BLPOP a 0", COMMAND_SAME_SHARD, CMD_BLOCK_LAST, MERGE_NONE, 0},
    {"BRPOPLPUSH a b 0", COMMAND_SAME_SHARD, CMD_BLOCK_LAST, MERGE_NONE, 0},
    {"BZMPOP 0 1 a MIN", COMMAND_SAME_SHARD, CMD_BLOCK_FIRST, MERGE_NONE, 0},
    {"XREAD STREAMS a 0", COMMAND_SAME_SHARD, CMD_XREAD, MERGE_NONE, 0},
    {"XREADGROUP GROUP g c STREAMS a >", COMMAND_SAME_SHARD, CMD_XREAD, MERGE_NONE, 0},
    {"RESET", COMMAND_LOCAL, CMD_RESET, MERGE_NONE, 0},
    {"AUTH pw", COMMAND_LOCAL, CMD_AUTH, MERGE_NONE, 0},
    {"CLIENT INFO", COMMAND_LOCAL, CMD_CLIENT_INFO, MERGE_NONE, 0},
    {"CLIENT LIST", COMMAND_LOCAL, CMD_CLIENT_LIST, MERGE_NONE, 0},
    {"COMMAND", COMMAND_LOCAL, CMD_COMMAND, MERGE_NONE, 0},
    {"COMMAND COUNT", COMMAND_LOCAL, CMD_COMMAND, MERGE_NONE, 0},
    {"COMMAND DOCS get", COMMAND_LOCAL, CMD_COMMAND, MERGE_NONE, 0},
    {"CLIENT SETNAME x", COMMAND_LOCAL, CMD_CLIENT_SETNAME, MERGE_NONE, 0},
    {"CLIENT GETNAME", COMMAND_LOCAL, CMD_CLIENT_GETNAME, MERGE_NONE, 0},
    {"CLIENT ID", COMMAND_LOCAL, CMD_CLIENT_ID, MERGE_NONE, 0},
    {"PROXY SHARDS", COMMAND_LOCAL, CMD_PROXY_SHARDS, MERGE_NONE, 0},
    {"PROXY RING k", COMMAND_LOCAL, CMD_PROXY_RING, MERGE_NONE, 0},
    {"PROXY RELOAD", COMMAND_LOCAL, CMD_PROXY_RELOAD, MERGE_NONE, 0},
    {"PROXY REBALANCE", COMMAND_LOCAL, CMD_PROXY_REBALANCE, MERGE_NONE, 0},
    {"CLIENT KILL ID 1", COMMAND_LOCAL, CMD_CLIENT_KILL, MERGE_NONE, 0},
    {"CLIENT SETINFO lib-name x", COMMAND_LOCAL, CMD_CLIENT_SETINFO, MERGE_NONE, 0},
    {"CLIENT PAUSE 10", COMMAND_LOCAL, CMD_CLIENT_PAUSE, MERGE_NONE, 0},
    {"CLIENT UNBLOCK 1", COMMAND_LOCAL, CMD_CLIENT_UNBLOCK, MERGE_NONE, 0},
    {"CLIENT TRACKING on", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"CONFIG GET save", COMMAND_FANOUT, CMD_CONFIG_GET, MERGE_CONFIG_GET, 0},
    {"CONFIG SET save x", COMMAND_FANOUT, CMD_CONFIG_SET, MERGE_ALL_OK, 0},
    {"CONFIG REWRITE", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"WAIT 1 0", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"SSUBSCRIBE ch", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"SPUBLISH ch m", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"MONITOR", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"CLUSTER INFO", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"DEBUG SLEEP 0", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"MOVE k 1", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"SCRIPT DEBUG yes", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"FUNCTION LIST", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"MEMORY STATS", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"OBJECT HELP", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"MIGRATE h 1 k 0 5", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
    {"LASTSAVE", COMMAND_UNSUPPORTED, CMD_OTHER, MERGE_NONE, 0},
};

static void test_class(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(class_cases) / sizeof(class_cases[0]); i++) {
        request r;
        request_parse(&r, class_cases[i].request);
        const command *cmd = resolve(&r);
        if (cmd == NULL) {
            fail_msg("'%s' did not resolve", class_cases[i].request);
        }
        if (cmd->cls != class_cases[i].cls || cmd->id != class_cases[i].id ||
            cmd->merge != class_cases[i].merge || cmd->split_step != class_cases[i].split_step) {
            fail_msg("'%s' (%s): class %d id %d merge %d split %d, expected %d %d %d %d",
                     class_cases[i].request, cmd->name, cmd->cls, cmd->id, cmd->merge,
                     cmd->split_step, class_cases[i].cls, class_cases[i].id, class_cases[i].merge,
                     class_cases[i].split_step);
        }
    }
}

/* The router's handler and gate flags of each kind of command. */
#define F_NO_AUTH    COMMAND_FLAG_NO_AUTH
#define F_SUBSCRIBED COMMAND_FLAG_WHILE_SUBSCRIBED
#define F_RUNS       COMMAND_FLAG_RUNS_IN_MULTI
#define F_NOT_QUEUED COMMAND_FLAG_NOT_QUEUED
#define F_SINGLE     COMMAND_FLAG_SINGLE_KEY
#define F_WRITE      COMMAND_FLAG_PAUSED_BY_WRITE

static const struct {
    const char *request;
    command_route route;
    unsigned flags;
} route_cases[] = {
    {"GET k", ROUTE_KEYS, F_SINGLE},
    {"SET k v", ROUTE_KEYS, F_SINGLE | F_WRITE},
    {"SORT_RO k", ROUTE_KEYS, F_SINGLE},
    {"OBJECT ENCODING k", ROUTE_KEYS, 0},
    {"RENAME a b", ROUTE_KEYS, F_WRITE},
    {"MGET a b", ROUTE_SPLIT, 0},
    {"MSET a 1", ROUTE_SPLIT_WRITE, F_WRITE},
    {"DEL a b", ROUTE_SPLIT_WRITE, F_WRITE},
    {"MSETNX a 1", ROUTE_ATOMIC_ONLY, F_WRITE},
    {"EVAL s 0", ROUTE_SCRIPT, F_WRITE},
    {"FCALL f 0", ROUTE_SCRIPT, F_WRITE},
    {"BLPOP a 0", ROUTE_BLOCKING, F_WRITE},
    {"BZMPOP 0 1 a MIN", ROUTE_BLOCKING, F_WRITE},
    {"XREAD STREAMS a 0", ROUTE_BLOCKING, 0},
    {"PUBLISH ch m", ROUTE_CHANNEL, F_WRITE},
    {"TIME", ROUTE_ANY_SHARD, 0},
    {"COMMAND", ROUTE_ANY_SHARD, F_NOT_QUEUED},
    {"COMMAND COUNT", ROUTE_ANY_SHARD, F_NOT_QUEUED},
    {"PING", ROUTE_PING, F_SUBSCRIBED},
    {"ECHO x", ROUTE_LOCAL, 0},
    {"INFO", ROUTE_INFO, F_NOT_QUEUED},
    {"CONFIG GET save", ROUTE_CONFIG, F_NOT_QUEUED},
    {"CLIENT ID", ROUTE_LOCAL, F_NOT_QUEUED},
    {"PROXY SHARDS", ROUTE_LOCAL, F_NOT_QUEUED},
    {"AUTH pw", ROUTE_LOCAL, F_NO_AUTH | F_NOT_QUEUED},
    {"HELLO 2", ROUTE_LOCAL, F_NO_AUTH | F_NOT_QUEUED},
    {"QUIT", ROUTE_LOCAL, F_NO_AUTH | F_SUBSCRIBED | F_RUNS},
    {"RESET", ROUTE_RESET, F_NO_AUTH | F_SUBSCRIBED | F_RUNS},
    {"DBSIZE", ROUTE_FANOUT, F_NOT_QUEUED},
    {"SCRIPT LOAD s", ROUTE_FANOUT, F_NOT_QUEUED | F_WRITE},
    {"SCRIPT KILL", ROUTE_KILL, F_NOT_QUEUED},
    {"FUNCTION KILL", ROUTE_KILL, F_NOT_QUEUED},
    {"FLUSHDB", ROUTE_FLUSH, F_NOT_QUEUED | F_WRITE},
    {"FLUSHALL ASYNC", ROUTE_FLUSH, F_NOT_QUEUED | F_WRITE},
    {"SCAN 0", ROUTE_SCAN, F_NOT_QUEUED},
    {"RANDOMKEY", ROUTE_RANDOMKEY, F_NOT_QUEUED},
    {"MULTI", ROUTE_TRANSACTION, F_RUNS},
    {"EXEC", ROUTE_TRANSACTION, F_RUNS | F_WRITE},
    {"DISCARD", ROUTE_TRANSACTION, F_RUNS},
    {"WATCH a", ROUTE_TRANSACTION, F_RUNS},
    {"UNWATCH", ROUTE_TRANSACTION, 0},
    {"SUBSCRIBE ch", ROUTE_PUBSUB, F_SUBSCRIBED | F_NOT_QUEUED},
    {"PUNSUBSCRIBE", ROUTE_PUBSUB, F_SUBSCRIBED | F_NOT_QUEUED},
    {"WAIT 1 0", ROUTE_UNSUPPORTED, F_NOT_QUEUED},
    {"CLIENT KILL ID 1", ROUTE_LOCAL, F_NOT_QUEUED},
    {"CLIENT PAUSE 10", ROUTE_LOCAL, F_NOT_QUEUED},
    {"CLIENT UNPAUSE", ROUTE_LOCAL, F_NOT_QUEUED | COMMAND_FLAG_NEVER_PAUSED},
    {"CLIENT TRACKING on", ROUTE_UNSUPPORTED, F_NOT_QUEUED},
    {"SAVE", ROUTE_UNSUPPORTED, F_NOT_QUEUED | COMMAND_FLAG_NO_MULTI},
};

static void test_route_and_flags(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(route_cases) / sizeof(route_cases[0]); i++) {
        request r;
        request_parse(&r, route_cases[i].request);
        const command *cmd = resolve(&r);
        if (cmd == NULL) {
            fail_msg("'%s' did not resolve", route_cases[i].request);
        }
        if (cmd->route != route_cases[i].route || cmd->flags != route_cases[i].flags) {
            fail_msg("'%s' (%s): route %d flags %#x, expected %d %#x", route_cases[i].request,
                     cmd->name, cmd->route, cmd->flags, route_cases[i].route, route_cases[i].flags);
        }
    }
}

/* Every row names a handler the router has, and the fast path's flag
 * agrees with the key positions it relies on. */
static void test_route_of_every_row(void **state)
{
    (void)state;
    size_t count;
    const command *table = command_table(&count);
    for (size_t i = 0; i < count; i++) {
        for (size_t j = 0; j <= table[i].nsubcommands; j++) {
            const command *row = j == 0 ? &table[i] : &table[i].subcommands[j - 1];
            assert_true(row->route < ROUTE_COUNT);
            if (row->flags & COMMAND_FLAG_SINGLE_KEY) {
                assert_int_equal(row->route, ROUTE_KEYS);
                assert_int_equal(row->keys, KEYS_RANGE);
                assert_int_equal(row->first_key, 1);
                assert_int_equal(row->last_key, 1);
            }
            assert_false((row->flags & COMMAND_FLAG_RUNS_IN_MULTI) &&
                         (row->flags & COMMAND_FLAG_NOT_QUEUED));
        }
    }
}

/* Which requests block on their shard, and for how long (microseconds;
 * UINT64_MAX: for ever). */
static const struct {
    const char *request;
    int blocks;
    uint64_t block_us;
} blocking_cases[] = {
    {"BLPOP a b 0", 1, UINT64_MAX},
    {"BLPOP a 1.5", 1, 1500000},
    {"BRPOP a 2", 1, 2000000},
    {"BZPOPMIN a 0.01", 1, 10000},
    {"BRPOPLPUSH a b 3", 1, 3000000},
    {"BLMOVE a b LEFT RIGHT 0", 1, UINT64_MAX},
    {"BLMPOP 4 1 a LEFT", 1, 4000000},
    {"BZMPOP 0 2 a b MIN", 1, UINT64_MAX},
    {"BLPOP a nonsense", 1, 0},
    {"BLPOP a -1", 1, 0},
    {"XREAD STREAMS a 0", 0, 0},
    {"XREAD COUNT 5 STREAMS a 0", 0, 0},
    {"XREAD BLOCK 250 STREAMS a $", 1, 250000},
    {"XREAD COUNT 2 BLOCK 0 STREAMS a $", 1, UINT64_MAX},
    {"XREAD STREAMS block 0", 0, 0},
    {"XREAD COUNT block STREAMS a 0", 0, 0},
    {"XREADGROUP GROUP block c STREAMS a >", 0, 0},
    {"XREADGROUP GROUP g c BLOCK 100 NOACK STREAMS a >", 1, 100000},
    {"GET a", 0, 0},
    {"LPOP a", 0, 0},
};

static void test_blocking(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(blocking_cases) / sizeof(blocking_cases[0]); i++) {
        request r;
        request_parse(&r, blocking_cases[i].request);
        const command *cmd = resolve(&r);
        assert_non_null(cmd);
        uint64_t us = 0;
        int blocks = command_blocking(cmd, r.argc, r.argv, &us);
        if (blocks != blocking_cases[i].blocks || (blocks && us != blocking_cases[i].block_us))
            fail_msg("'%s': blocks %d for %llu us, expected %d for %llu", blocking_cases[i].request,
                     blocks, (unsigned long long)us, blocking_cases[i].blocks,
                     (unsigned long long)blocking_cases[i].block_us);
    }
}

/* Container rows: usable ones carry the class of their usable subcommands. */
static void test_container_class(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        command_class cls;
    } cases[] = {
        {"client", COMMAND_LOCAL},   {"command", COMMAND_LOCAL},       {"proxy", COMMAND_LOCAL},
        {"object", COMMAND_FORWARD}, {"xinfo", COMMAND_FORWARD},       {"xgroup", COMMAND_FORWARD},
        {"config", COMMAND_FANOUT},  {"cluster", COMMAND_UNSUPPORTED}, {"acl", COMMAND_LOCAL},
        {"pubsub", COMMAND_FANOUT},  {"script", COMMAND_FANOUT},       {"function", COMMAND_FANOUT},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const command *cmd = command_lookup(cases[i].name, strlen(cases[i].name));
        assert_non_null(cmd);
        assert_true(cmd->nsubcommands > 0);
        assert_int_equal(cmd->cls, cases[i].cls);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_any_case),
        cmocka_unit_test(test_lookup_every_row),
        cmocka_unit_test(test_table_consistent),
        cmocka_unit_test(test_arity),
        cmocka_unit_test(test_subcommand_arity),
        cmocka_unit_test(test_subcommand),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_keys_error_truncated),
        cmocka_unit_test(test_key_access),
        cmocka_unit_test(test_class),
        cmocka_unit_test(test_route_and_flags),
        cmocka_unit_test(test_route_of_every_row),
        cmocka_unit_test(test_blocking),
        cmocka_unit_test(test_container_class),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
