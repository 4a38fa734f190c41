/* The command table against a real redis-server: every command and
 * subcommand of COMMAND is in the table with Redis's arity, key
 * positions and no_auth flag; for requests built from each command's COMMAND DOCS argument
 * list, plus a table of tricky ones, command_keys finds the keys that
 * COMMAND GETKEYSANDFLAGS finds, and command_key_access_of what Redis's
 * ACL makes of each key's flags (read, write, both, neither); and a bad numkeys gets the error text
 * the command itself replies. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "proxy/command.h"

/* Largest sample request built from the docs; COMMAND DOCS argument lists
 * of Redis 7.0 stay far below it. */
#define SAMPLE_MAX_ARGS 96
#define SAMPLE_ARG_LEN  32

/* A RESP2 reply as a tree. hiredis 0.14 refuses replies nested deeper than
 * 7 levels, and COMMAND DOCS goes deeper (BITFIELD, CLIENT KILL), so the
 * test reads the big replies itself. */
typedef struct rnode {
    char type; /* '+' status, '-' error, ':' integer, '$' bulk, '*' array */
    char *str; /* status, error, bulk: NUL-terminated */
    size_t len;
    long long integer;
    struct rnode **element; /* array */
    size_t elements;
} rnode;

static void rnode_free(rnode *n)
{
    if (n == NULL) {
        return;
    }
    for (size_t i = 0; i < n->elements; i++) {
        rnode_free(n->element[i]);
    }
    free(n->element);
    free(n->str);
    free(n);
}

/* Parses the reply at buf[*pos]; NULL when buf ends before it does (or a
 * null bulk or array, which these replies never hold). */
static rnode *rnode_parse(const char *buf, size_t len, size_t *pos)
{
    const char *line = buf + *pos;
    const char *crlf = memmem(line, len - *pos, "\r\n", 2);
    if (crlf == NULL) {
        return NULL;
    }
    rnode *n = calloc(1, sizeof(*n));
    assert_non_null(n);
    n->type = line[0];
    size_t header = (size_t)(crlf - line);
    *pos += header + 2;
    switch (n->type) {
    case '+':
    case '-':
        n->str = strndup(line + 1, header - 1);
        n->len = header - 1;
        return n;
    case ':':
        n->integer = strtoll(line + 1, NULL, 10);
        return n;
    case '$': {
        long long blen = strtoll(line + 1, NULL, 10);
        if (blen < 0 || len - *pos < (size_t)blen + 2) {
            rnode_free(n);
            return NULL;
        }
        n->str = strndup(buf + *pos, (size_t)blen);
        n->len = (size_t)blen;
        *pos += (size_t)blen + 2;
        return n;
    }
    case '*': {
        long long count = strtoll(line + 1, NULL, 10);
        if (count < 0) {
            rnode_free(n);
            return NULL;
        }
        n->element = calloc((size_t)count + 1, sizeof(*n->element));
        assert_non_null(n->element);
        for (long long i = 0; i < count; i++) {
            n->element[i] = rnode_parse(buf, len, pos);
            if (n->element[i] == NULL) {
                rnode_free(n);
                return NULL;
            }
            n->elements++;
        }
        return n;
    }
    default:
        fail_msg("unexpected reply type '%c'", n->type);
        return NULL;
    }
}

/* Sends a command on c's socket and reads its whole reply as a tree,
 * bypassing hiredis's reader (nothing else may be pending on c). */
static rnode *raw_command(redisContext *c, int argc, const char **argv)
{
    char *request;
    int request_len = redisFormatCommandArgv(&request, argc, argv, NULL);
    assert_true(request_len > 0);
    assert_int_equal(write(c->fd, request, (size_t)request_len), request_len);
    free(request);

    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (;;) {
        size_t pos = 0;
        rnode *n = len > 0 ? rnode_parse(buf, len, &pos) : NULL;
        if (n != NULL) {
            assert_int_equal(pos, len);
            free(buf);
            return n;
        }
        if (cap - len < 4096) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        ssize_t got = read(c->fd, buf + len, cap - len);
        if (got <= 0) {
            fail_msg("reading the reply of %s: %s", argv[0], got == 0 ? "closed" : "timeout");
        }
        len += (size_t)got;
    }
}

typedef struct suite {
    harness_proc server;
    redisContext *conn;
    rnode *commands; /* COMMAND */
    rnode *docs;     /* COMMAND DOCS */
} suite;

static int group_setup(void **state)
{
    suite *s = calloc(1, sizeof(*s));
    if (s == NULL || harness_redis_start(&s->server) != 0) {
        free(s);
        return -1;
    }
    *state = s;
    s->conn = harness_connect(s->server.port);
    if (s->conn == NULL) {
        return -1;
    }
    const char *words[] = {"COMMAND", "DOCS"};
    s->commands = raw_command(s->conn, 1, words);
    s->docs = raw_command(s->conn, 2, words);
    return s->commands->type == '*' && s->docs->type == '*' ? 0 : -1;
}

static int group_teardown(void **state)
{
    suite *s = *state;
    rnode_free(s->commands);
    rnode_free(s->docs);
    if (s->conn != NULL) {
        redisFree(s->conn);
    }
    int status = harness_proc_stop(&s->server, SIGTERM);
    free(s);
    return status == -1 ? -1 : 0;
}

/* --- reading replies ----------------------------------------------------- */

/* The value of key in a RESP2 key/value list (a map in RESP3). */
static const rnode *field(const rnode *map, const char *key)
{
    if (map == NULL || map->type != '*') {
        return NULL;
    }
    for (size_t i = 0; i + 1 < map->elements; i += 2) {
        const rnode *k = map->element[i];
        if (k->str != NULL && strcmp(k->str, key) == 0) {
            return map->element[i + 1];
        }
    }
    return NULL;
}

static bool has_flag(const rnode *arg, const char *flag)
{
    const rnode *flags = field(arg, "flags");
    for (size_t i = 0; flags != NULL && i < flags->elements; i++) {
        if (strcmp(flags->element[i]->str, flag) == 0) {
            return true;
        }
    }
    return false;
}

/* Our row for a Redis name, "get" or "client|kill"; NULL when missing. */
static const command *our_command(const char *redis_name)
{
    char container[64];
    const char *bar = strchr(redis_name, '|');
    size_t len = bar ? (size_t)(bar - redis_name) : strlen(redis_name);
    assert_true(len < sizeof(container));
    memcpy(container, redis_name, len);
    container[len] = '\0';
    const command *cmd = command_lookup(container, len);
    if (cmd == NULL || bar == NULL) {
        return cmd;
    }
    resp_arg argv[2] = {{container, len}, {bar + 1, strlen(bar + 1)}};
    return command_subcommand(cmd, 2, argv);
}

/* --- every command, with Redis's arity and positions --------------------- */

static void check_entry(const rnode *entry, const char *container, size_t *checked)
{
    assert_true(entry->type == '*' && entry->elements >= 6);
    const char *name = entry->element[0]->str;
    long long arity = entry->element[1]->integer;
    long long first = entry->element[3]->integer;
    long long last = entry->element[4]->integer;
    long long step = entry->element[5]->integer;
    const command *cmd = our_command(name);
    if (cmd == NULL) {
        fail_msg("%s (of %s) is not in the table", name, container ? container : "-");
    }
    assert_string_equal(cmd->name, name);
    if (cmd->arity != arity) {
        fail_msg("%s: arity %d, Redis says %lld", name, cmd->arity, arity);
    }
    if (cmd->keys == KEYS_RANGE &&
        (cmd->first_key != first || cmd->last_key != last || cmd->key_step != step)) {
        fail_msg("%s: keys %d %d %d, Redis says %lld %lld %lld", name, cmd->first_key,
                 cmd->last_key, cmd->key_step, first, last, step);
    }
    /* Allowed before AUTH exactly when Redis allows it. */
    const rnode *flags = entry->element[2];
    bool no_auth = false;
    for (size_t i = 0; i < flags->elements; i++) {
        no_auth |= strcmp(flags->element[i]->str, "no_auth") == 0;
    }
    if (no_auth != ((cmd->flags & COMMAND_FLAG_NO_AUTH) != 0)) {
        fail_msg("%s: COMMAND_FLAG_NO_AUTH %s, Redis's no_auth %s", name,
                 cmd->flags & COMMAND_FLAG_NO_AUTH ? "set" : "unset", no_auth ? "set" : "unset");
    }
    if (cmd->keys == KEYS_NONE && first != 0) {
        /* only shard channels, which COMMAND GETKEYS does not count as keys */
        assert_true(strcmp(name, "spublish") == 0 || strcmp(name, "ssubscribe") == 0 ||
                    strcmp(name, "sunsubscribe") == 0);
    }
    (*checked)++;

    const rnode *subs = entry->elements > 9 ? entry->element[9] : NULL;
    size_t nsubs = subs != NULL ? subs->elements : 0;
    /* and CLIENT SETINFO, of Redis 7.2, which clients send on connect */
    if (strcmp(name, "client") == 0) {
        const command *setinfo = our_command("client|setinfo");
        assert_non_null(setinfo);
        assert_int_equal(setinfo->arity, 4);
        nsubs++;
    }
    if (cmd->nsubcommands != nsubs) {
        fail_msg("%s: %zu subcommands, Redis has %zu", name, cmd->nsubcommands, nsubs);
    }
    for (size_t i = 0; subs != NULL && i < subs->elements; i++) {
        check_entry(subs->element[i], name, checked);
    }
}

static void test_every_command_has_redis_arity_and_keys(void **state)
{
    suite *s = *state;
    size_t checked = 0;
    for (size_t i = 0; i < s->commands->elements; i++) {
        check_entry(s->commands->element[i], NULL, &checked);
    }
    /* and nothing else but PROXY and the four LOCK.* commands, ringproxy's own */
    size_t count;
    command_table(&count);
    assert_int_equal(count, s->commands->elements + 5);
    assert_non_null(command_lookup("proxy", 5));
    assert_non_null(command_lookup("LOCK.ACQUIRE", 12));
    assert_non_null(command_lookup("lock.release", 12));
    assert_non_null(command_lookup("lock.extend", 11));
    assert_non_null(command_lookup("lock.info", 9));
    print_message("%zu commands and subcommands checked against Redis\n", checked);
}

/* --- key positions: ours against COMMAND GETKEYS ------------------------- */

typedef struct sample {
    size_t argc;
    const char *argv[SAMPLE_MAX_ARGS];
    size_t lens[SAMPLE_MAX_ARGS];
    char words[SAMPLE_MAX_ARGS][SAMPLE_ARG_LEN];
    int next_key; /* numbers keys key1, key2, ... */
    int next_arg;
    bool full; /* every optional argument, multiples twice, integers 2 */
} sample;

static void sample_push(sample *sm, const char *word)
{
    assert_true(sm->argc < SAMPLE_MAX_ARGS);
    size_t n = sm->argc++;
    snprintf(sm->words[n], SAMPLE_ARG_LEN, "%s", word);
    sm->argv[n] = sm->words[n];
    sm->lens[n] = strlen(sm->words[n]);
}

static void sample_args(sample *sm, const rnode *args);

/* Appends one argument as COMMAND DOCS describes it. The short sample
 * leaves optional arguments out, but not optional keys: EVAL's numkeys is
 * then 1 with a key after it. */
static void sample_arg(sample *sm, const rnode *arg, bool chosen)
{
    const char *type = field(arg, "type")->str;
    if (!chosen && !sm->full && has_flag(arg, "optional") && strcmp(type, "key") != 0) {
        return;
    }
    const rnode *token = field(arg, "token");
    int reps = has_flag(arg, "multiple") && sm->full ? 2 : 1;
    char word[SAMPLE_ARG_LEN];
    for (int rep = 0; rep < reps; rep++) {
        if (token != NULL && (rep == 0 || has_flag(arg, "multiple_token"))) {
            sample_push(sm, token->str);
        }
        if (strcmp(type, "key") == 0) {
            snprintf(word, sizeof(word), "key%d", ++sm->next_key);
            sample_push(sm, word);
        } else if (strcmp(type, "integer") == 0) {
            sample_push(sm, sm->full ? "2" : "1");
        } else if (strcmp(type, "double") == 0) {
            sample_push(sm, "1.5");
        } else if (strcmp(type, "unix-time") == 0) {
            sample_push(sm, "1700000000");
        } else if (strcmp(type, "pure-token") == 0) {
            /* the token is the argument */
        } else if (strcmp(type, "oneof") == 0) {
            const rnode *alts = field(arg, "arguments");
            sample_arg(sm, alts->element[sm->full ? alts->elements - 1 : 0], true);
        } else if (strcmp(type, "block") == 0) {
            sample_args(sm, field(arg, "arguments"));
        } else { /* string, pattern */
            snprintf(word, sizeof(word), "arg%d", ++sm->next_arg);
            sample_push(sm, word);
        }
    }
}

static void sample_args(sample *sm, const rnode *args)
{
    for (size_t i = 0; args != NULL && i < args->elements; i++) {
        sample_arg(sm, args->element[i], false);
    }
}

/* What COMMAND GETKEYSANDFLAGS's flags of a key say it is used for, folded
 * as Redis's ACL folds them (ACCESS: read; INSERT, DELETE, UPDATE: write). */
static unsigned redis_key_access(const redisReply *flags)
{
    unsigned access = 0;
    for (size_t i = 0; i < flags->elements; i++) {
        const char *flag = flags->element[i]->str;
        if (strcasecmp(flag, "access") == 0) {
            access |= ACL_KEY_READ;
        } else if (strcasecmp(flag, "insert") == 0 || strcasecmp(flag, "delete") == 0 ||
                   strcasecmp(flag, "update") == 0) {
            access |= ACL_KEY_WRITE;
        }
    }
    return access;
}

/* Compares command_keys with COMMAND GETKEYSANDFLAGS for one request, the
 * keys and what is done with each (command_key_access_of, for %R~ / %W~);
 * returns 1 when they agree, else prints both and returns 0. */
static int compare_keys(redisContext *conn, size_t argc, const char **argv, const size_t *lens)
{
    char text[512] = "";
    for (size_t i = 0; i < argc; i++) {
        size_t used = strlen(text);
        snprintf(text + used, sizeof(text) - used, "%s'%.*s'", i ? " " : "", (int)lens[i], argv[i]);
    }

    resp_arg args[SAMPLE_MAX_ARGS];
    assert_true(argc <= SAMPLE_MAX_ARGS);
    for (size_t i = 0; i < argc; i++) {
        args[i].ptr = argv[i];
        args[i].len = lens[i];
    }
    const command *cmd = command_lookup(args[0].ptr, args[0].len);
    if (cmd != NULL) {
        cmd = command_subcommand(cmd, argc, args);
    }
    if (cmd == NULL) {
        print_error("%s: not in the table\n", text);
        return 0;
    }
    if (command_check_arity(cmd, argc) != 0) {
        print_error("%s: arity %d refuses %zu arguments\n", text, cmd->arity, argc);
        return 0;
    }
    size_t positions[SAMPLE_MAX_ARGS];
    size_t nkeys = 0;
    char err[256] = "";
    int rc = command_keys(cmd, argc, args, positions, &nkeys, err, sizeof(err));

    const char *gk_argv[SAMPLE_MAX_ARGS + 2] = {"COMMAND", "GETKEYSANDFLAGS"};
    size_t gk_lens[SAMPLE_MAX_ARGS + 2] = {7, 15};
    for (size_t i = 0; i < argc; i++) {
        gk_argv[i + 2] = argv[i];
        gk_lens[i + 2] = lens[i];
    }
    redisReply *r = redisCommandArgv(conn, (int)argc + 2, gk_argv, gk_lens);
    assert_non_null(r);
    int ok;
    if (r->type == REDIS_REPLY_ERROR) {
        /* Redis finds no keys: none for us either, or an error of ours */
        bool no_keys = strstr(r->str, "has no key arguments") != NULL;
        ok = no_keys ? (rc == 0 && nkeys == 0) : rc != 0;
        if (!ok) {
            print_error("%s: GETKEYSANDFLAGS says '%s', we say %s (%zu keys)\n", text, r->str,
                        rc ? err : "ok", nkeys);
        }
    } else {
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        ok = rc == 0 && nkeys == r->elements;
        for (size_t k = 0; ok && k < nkeys; k++) {
            const redisReply *key = r->element[k]->element[0];
            ok = key->len == lens[positions[k]] &&
                 memcmp(key->str, argv[positions[k]], key->len) == 0 &&
                 command_key_access_of(cmd, argc, args, k) ==
                     redis_key_access(r->element[k]->element[1]);
        }
        if (!ok) {
            char ours[256] = "", theirs[256] = "";
            for (size_t k = 0; rc == 0 && k < nkeys; k++) {
                size_t used = strlen(ours);
                snprintf(ours + used, sizeof(ours) - used, " %.*s/%u", (int)lens[positions[k]],
                         argv[positions[k]], command_key_access_of(cmd, argc, args, k));
            }
            for (size_t k = 0; k < r->elements; k++) {
                size_t used = strlen(theirs);
                snprintf(theirs + used, sizeof(theirs) - used, " %s/%u",
                         r->element[k]->element[0]->str,
                         redis_key_access(r->element[k]->element[1]));
            }
            print_error("%s: GETKEYSANDFLAGS [%s ], we say [%s ]%s%s\n", text, theirs, ours,
                        rc ? " error: " : "", rc ? err : "");
        }
    }
    freeReplyObject(r);
    return ok;
}

/* Whether a command (or subcommand) takes keys, by our table or its docs. */
static bool docs_have_key(const rnode *args)
{
    for (size_t i = 0; args != NULL && i < args->elements; i++) {
        const rnode *type = field(args->element[i], "type");
        if (strcmp(type->str, "key") == 0 || docs_have_key(field(args->element[i], "arguments"))) {
            return true;
        }
    }
    return false;
}

static void docs_samples(suite *s, const char *name, const rnode *doc, size_t *compared,
                         size_t *failed)
{
    const rnode *subs = field(doc, "subcommands");
    for (size_t i = 0; subs != NULL && i + 1 < subs->elements; i += 2) {
        docs_samples(s, subs->element[i]->str, subs->element[i + 1], compared, failed);
    }
    if (subs != NULL && subs->elements > 0) {
        return; /* a container: its subcommands have the keys */
    }
    const command *cmd = our_command(name);
    assert_non_null(cmd);
    const rnode *args = field(doc, "arguments");
    if (cmd->keys == KEYS_NONE && !docs_have_key(args)) {
        return;
    }
    for (int full = 0; full <= 1; full++) {
        sample sm = {.full = full};
        const char *bar = strchr(name, '|');
        if (bar != NULL) {
            char container[SAMPLE_ARG_LEN];
            snprintf(container, sizeof(container), "%.*s", (int)(bar - name), name);
            sample_push(&sm, container);
            sample_push(&sm, bar + 1);
        } else {
            sample_push(&sm, name);
        }
        sample_args(&sm, args);
        (*compared)++;
        if (!compare_keys(s->conn, sm.argc, sm.argv, sm.lens)) {
            (*failed)++;
        }
    }
}

static void test_keys_of_requests_from_docs(void **state)
{
    suite *s = *state;
    size_t compared = 0, failed = 0;
    for (size_t i = 0; i + 1 < s->docs->elements; i += 2) {
        docs_samples(s, s->docs->element[i]->str, s->docs->element[i + 1], &compared, &failed);
    }
    print_message("%zu requests built from COMMAND DOCS compared with COMMAND GETKEYSANDFLAGS\n",
                  compared);
    assert_true(compared > 150);
    assert_int_equal(failed, 0);
}

/* Requests where a key rule has choices to make. */
static const char *const tricky_requests[] = {
    "MSET a 1 b 2 c 3",
    "BITOP NOT dest src",
    "EVAL s 0",
    "EVAL s 3 a b c x y",
    "FCALL_RO f 2 a b x",
    "LMPOP 3 a b c RIGHT COUNT 2",
    "BZMPOP 0 2 a b MAX",
    "ZUNIONSTORE d 3 a b c AGGREGATE MAX",
    "ZINTERCARD 2 a b LIMIT 1",
    "SINTERCARD 1 a LIMIT 10",
    "XREAD STREAMS streams 0",
    "XREAD COUNT 2 STREAMS a b c 0 0 0",
    "XREADGROUP GROUP streams c COUNT 1 NOACK STREAMS a b > >",
    "XREADGROUP GROUP g streams STREAMS a >",
    "SORT k LIMIT 0 10 BY w_* GET # GET o_* DESC ALPHA STORE d",
    "SORT k STORE a STORE b",
    "SORT k BY store STORE d",
    "SORT k GET store",
    "SORT k STORE",
    "SORT_RO k BY w_* GET o_*",
    "MIGRATE h 6379 k 0 5000",
    "MIGRATE h 6379 '' 0 5000 COPY REPLACE KEYS a b c",
    "MIGRATE h 6379 '' 0 5000 AUTH pw KEYS a",
    "MIGRATE h 6379 '' 0 5000 AUTH keys KEYS a",
    "MIGRATE h 6379 '' 0 5000 AUTH2 u p KEYS a b",
    "MIGRATE h 6379 '' 0 5000 KEYS a KEYS b",
    "MIGRATE h 6379 '' 0 5000 KEYS",
    "GEORADIUS k 15 37 200 km",
    "GEORADIUS k 15 37 200 km STORE d",
    "GEORADIUS k 15 37 200 km STOREDIST d",
    "GEORADIUS k 15 37 200 km STORE a STOREDIST b",
    "GEORADIUS k 15 37 200 km STORE",
    "GEORADIUSBYMEMBER k m 200 km COUNT 1 STORE d",
    "GEORADIUS_RO k 15 37 200 km",
    "SPUBLISH ch m",
    "SSUBSCRIBE a b",
    "OBJECT FREQ k",
    "MEMORY USAGE k SAMPLES 0",
    "XINFO CONSUMERS s g",
    "XGROUP SETID s g $ ENTRIESREAD 1",
    /* keys whose reads and writes depend on the arguments, or differ */
    "SET k v",
    "SET k v GET",
    "SET k v EX 10 get",
    "SET k get",
    "BITFIELD k GET u8 0",
    "BITFIELD k GET u8 0 OVERFLOW SAT GET i4 4",
    "BITFIELD k GET u8 0 SET u8 0 1",
    "BITFIELD k INCRBY u8 0 1",
    "BITFIELD k GET u8",
    "BITFIELD k",
    "BITFIELD k OVERFLOW",
    "BITFIELD_RO k GET u8 0",
    "COPY a b REPLACE",
    "LMOVE a b LEFT RIGHT",
    "SMOVE a b m",
    "RENAME a b",
    "SINTERSTORE d a b",
    "BITOP AND d a b",
    "PFMERGE d a b",
    "ZRANGESTORE d a 0 -1",
    "GEOSEARCHSTORE d a FROMMEMBER m BYRADIUS 1 km",
    "EXISTS a b",
    "EVAL_RO s 2 a b",
};

static void test_keys_of_tricky_requests(void **state)
{
    suite *s = *state;
    size_t failed = 0;
    for (size_t i = 0; i < sizeof(tricky_requests) / sizeof(tricky_requests[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", tricky_requests[i]);
        const char *argv[SAMPLE_MAX_ARGS];
        size_t lens[SAMPLE_MAX_ARGS];
        size_t argc = 0;
        char *save = NULL;
        for (char *w = strtok_r(buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
            argv[argc] = w;
            lens[argc] = strcmp(w, "''") == 0 ? 0 : strlen(w);
            argc++;
        }
        if (!compare_keys(s->conn, argc, argv, lens)) {
            failed++;
        }
    }
    assert_int_equal(failed, 0);
}

/* --- errors: ours against the command's own reply ------------------------ */

/* Each is refused by the command before it touches data or waits. */
static const char *const bad_requests[] = {
    "EVAL return 3 a b",
    "EVAL return -1",
    "EVAL return x",
    "EVAL return 01 a",
    "EVALSHA 0123456789012345678901234567890123456789 2 a",
    "EVAL_RO return 9223372036854775808",
    "FCALL ringproxy_test 2 a",
    "FCALL ringproxy_test -1",
    "FCALL_RO ringproxy_test x",
    "LMPOP 0 a LEFT",
    "LMPOP x a LEFT",
    "LMPOP 2 a b",
    "ZMPOP -1 a MIN",
    "BLMPOP 0 0 a LEFT",
    "BZMPOP 0 3 a b MIN",
    "SINTERCARD 0 a",
    "SINTERCARD 3 a b",
    "ZUNION 0 a",
    "ZINTER 3 a b",
    "ZDIFF x a",
    "ZINTERCARD -2 a",
    "ZUNIONSTORE d 0 a",
    "ZINTERSTORE d 2 a",
    "ZDIFFSTORE d 1.5 a",
    "XREAD STREAMS a b c",
    "XREAD COUNT 1 a b",
    "XREADGROUP GROUP g c STREAMS a b c",
    "MSET a 1 b",
    "MSETNX a 1 b",
    "MIGRATE 127.0.0.1 1 k 0 100 KEYS a",
};

static void test_numkeys_errors_match_redis(void **state)
{
    suite *s = *state;
    redisReply *r = redisCommand(s->conn, "FUNCTION LOAD REPLACE %s",
                                 "#!lua name=ringproxy_test\n"
                                 "redis.register_function('ringproxy_test', "
                                 "function(keys, args) return 1 end)");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    freeReplyObject(r);

    size_t failed = 0;
    for (size_t i = 0; i < sizeof(bad_requests) / sizeof(bad_requests[0]); i++) {
        char buf[256];
        snprintf(buf, sizeof(buf), "%s", bad_requests[i]);
        resp_arg args[32];
        const char *argv[32];
        size_t lens[32];
        size_t argc = 0;
        char *save = NULL;
        for (char *w = strtok_r(buf, " ", &save); w != NULL; w = strtok_r(NULL, " ", &save)) {
            argv[argc] = args[argc].ptr = w;
            lens[argc] = args[argc].len = strlen(w);
            argc++;
        }
        const command *cmd = command_lookup(args[0].ptr, args[0].len);
        assert_non_null(cmd);
        assert_int_equal(command_check_arity(cmd, argc), 0);
        size_t positions[32];
        size_t nkeys;
        char err[256] = "";
        int rc = command_keys(cmd, argc, args, positions, &nkeys, err, sizeof(err));

        r = redisCommandArgv(s->conn, (int)argc, argv, lens);
        assert_non_null(r);
        if (r->type != REDIS_REPLY_ERROR) {
            fail_msg("%s: Redis accepted it", bad_requests[i]);
        }
        if (rc != -1 || strcmp(err, r->str) != 0) {
            print_error("%s: Redis says '%s', we say '%s'\n", bad_requests[i], r->str,
                        rc ? err : "ok");
            failed++;
        }
        freeReplyObject(r);
    }
    assert_int_equal(failed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_command_has_redis_arity_and_keys),
        cmocka_unit_test(test_keys_of_requests_from_docs),
        cmocka_unit_test(test_keys_of_tricky_requests),
        cmocka_unit_test(test_numkeys_errors_match_redis),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
