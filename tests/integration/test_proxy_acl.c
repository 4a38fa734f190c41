/* ACL users of proxy.ini's [users]: AUTH user pass and HELLO AUTH, requests
 * allowed or refused by key pattern, command, category and channel with
 * Redis 7.0's NOPERM texts, %R~ / %W~ key permissions checked key by key,
 * #sha256 passwords, users turned off or without
 * a password, refusals inside MULTI and across shards, the ACL command,
 * CLIENT LIST / KILL by user, a reload that removes or turns off a user,
 * no password in the log, INFO or CONFIG GET, and backend_user on shards
 * whose default user is off. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "harness.h"

/* sha256("password") */
#define PASSWORD_SHA256 "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
#define ALICE_PW        "alice-Secret-1"

#define NOPERM_KEYS                                                                                \
    "NOPERM this user has no permissions to access one of the keys used as arguments"
#define NOPERM_CHANNEL                                                                             \
    "NOPERM this user has no permissions to access one of the channels used as arguments"

/* Sections may come in any order: [users] goes among the [proxy] lines
 * harness_ini writes, before its [shards]. */
#define USERS                                                                                      \
    "watch_config = no\n"                                                                          \
    "[users]\n"                                                                                    \
    "default = on nopass ~* &* +@all\n"                                                            \
    "alice = on >" ALICE_PW " ~app:* &news.* +@all -@dangerous\n"                                  \
    "reader = on >r allkeys +@read -keys\n"                                                        \
    "writer = on >w allkeys +@all -del +config|get -config|set\n"                                  \
    "dave = on #" PASSWORD_SHA256 " allkeys +@string\n"                                            \
    "eve = off >e allkeys allcommands\n"                                                           \
    "frank = on nopass allkeys +ping +get\n"                                                       \
    "gone = on >g allkeys allcommands\n"                                                           \
    "kp = on nopass %R~ro:* %W~wo:* ~rw:* +@all\n"

static int group_setup(void **state)
{
    fixture *f = fixture_start(USERS);
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* A proxy connection authenticated as user. */
static redisContext *login(fixture *f, const char *user, const char *password)
{
    redisContext *c = fixture_client(f);
    fixture_expect_status(fixture_cmd(c, "AUTH %s %s", user, password), "OK");
    return c;
}

/* Writes the proxy's proxy.ini again over shards, with extra [proxy] lines
 * (and [users]); harness_ini leaves %PORT% for the listen port. */
static void write_ini(const harness_proc *proxy, const harness_proc *shards, size_t nshards,
                      const char *extra)
{
    char *ini = harness_ini(shards, nshards, extra);
    char path[400];
    snprintf(path, sizeof(path), "%s/proxy.ini", proxy->dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    for (const char *p = ini; *p; p++) {
        if (strncmp(p, "%PORT%", 6) == 0) {
            fprintf(out, "%d", proxy->port);
            p += 5;
        } else {
            fputc(*p, out);
        }
    }
    fclose(out);
    free(ini);
}

/* Writes the fixture's proxy.ini again with extra lines and reloads it; the
 * reply to PROXY RELOAD is returned. */
static redisReply *rewrite_and_reload(fixture *f, redisContext *admin, const char *extra)
{
    write_ini(&f->proxy, f->shards, FIXTURE_SHARDS, extra);
    return fixture_cmd(admin, "PROXY RELOAD");
}

static void test_key_patterns(void **state)
{
    fixture *f = *state;
    redisContext *c = login(f, "alice", ALICE_PW);
    fixture_expect_status(fixture_cmd(c, "SET app:1 v"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET app:1"), "v");
    fixture_expect_error(fixture_cmd(c, "SET other:1 v"), NOPERM_KEYS);
    fixture_expect_error(fixture_cmd(c, "GET other:1"), NOPERM_KEYS);
    /* every key of the command is checked, whatever its position */
    fixture_expect_error(fixture_cmd(c, "LMOVE app:l other:l LEFT RIGHT"), NOPERM_KEYS);
    fixture_expect_error(fixture_cmd(c, "EVAL %s 2 app:1 other:1", "return 1"), NOPERM_KEYS);
    fixture_expect_int(fixture_cmd(c, "EVAL %s 1 app:1", "return 1"), 1);
    /* the connection stays usable after a refusal */
    fixture_expect_str(fixture_cmd(c, "GET app:1"), "v");
    fixture_close(f, c);
}

/* %R~ro:* %W~wo:* ~rw:*: a key is read, written or both as Redis's key
 * specs say, and a pattern grants only its permissions. */
static void test_read_write_key_permissions(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    redisContext *c = login(f, "kp", "any");
    fixture_expect_status(fixture_cmd(admin, "SET ro:1 r"), "OK");
    fixture_expect_status(fixture_cmd(admin, "SET wo:1 w"), "OK");
    /* %R~: read, not written */
    fixture_expect_str(fixture_cmd(c, "GET ro:1"), "r");
    fixture_expect_int(fixture_cmd(c, "STRLEN ro:1"), 1);
    fixture_expect_error(fixture_cmd(c, "SET ro:1 x"), NOPERM_KEYS);
    fixture_expect_error(fixture_cmd(c, "DEL ro:1"), NOPERM_KEYS);
    fixture_expect_error(fixture_cmd(c, "APPEND ro:1 x"), NOPERM_KEYS); /* reads and writes */
    /* %W~: written, not read */
    fixture_expect_status(fixture_cmd(c, "SET wo:1 x"), "OK");
    fixture_expect_int(fixture_cmd(c, "LPUSH wo:l a"), 1);
    fixture_expect_error(fixture_cmd(c, "GET wo:1"), NOPERM_KEYS);
    fixture_expect_error(fixture_cmd(c, "INCR wo:n"), NOPERM_KEYS);
    /* SET reads the key too when it has GET, BITFIELD writes it with SET */
    fixture_expect_error(fixture_cmd(c, "SET wo:1 y GET"), NOPERM_KEYS);
    redisReply *r = fixture_cmd(c, "BITFIELD ro:1 GET u8 0");
    fixture_expect_array(r, 1);
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(c, "BITFIELD ro:1 SET u8 0 1"), NOPERM_KEYS);
    /* a command that only names the key (EXISTS, TYPE) is allowed by any
     * pattern that matches it, as in Redis */
    fixture_expect_int(fixture_cmd(c, "EXISTS wo:1"), 1);
    fixture_expect_int(fixture_cmd(c, "EXISTS ro:1"), 1);
    fixture_expect_error(fixture_cmd(c, "EXISTS other:1"), NOPERM_KEYS);
    /* ~: both */
    fixture_expect_status(fixture_cmd(c, "SET rw:1 v"), "OK");
    fixture_expect_str(fixture_cmd(c, "GET rw:1"), "v");
    fixture_expect_int(fixture_cmd(c, "INCR rw:n"), 1);
    fixture_expect_str(fixture_cmd(admin, "GET wo:1"), "x");
    fixture_close(f, c);
    fixture_close(f, admin);
}

/* A command that reads one key and writes another is checked key by key:
 * COPY reads its source and writes its destination; LMOVE also writes its
 * source (it pops from it). */
static void test_mixed_command_checked_per_key(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    redisContext *c = login(f, "kp", "any");
    fixture_expect_status(fixture_cmd(admin, "SET ro:{c} source"), "OK");
    fixture_expect_status(fixture_cmd(admin, "SET wo:{c} dest"), "OK");
    fixture_expect_int(fixture_cmd(c, "COPY ro:{c} wo:{c} REPLACE"), 1);
    fixture_expect_str(fixture_cmd(admin, "GET wo:{c}"), "source");
    /* the reverse: wo:{c} is not readable, ro:{c} not writable */
    fixture_expect_error(fixture_cmd(c, "COPY wo:{c} ro:{c} REPLACE"), NOPERM_KEYS);
    fixture_expect_str(fixture_cmd(admin, "GET ro:{c}"), "source");
    /* SUNIONSTORE writes its first key and reads the others */
    fixture_expect_int(fixture_cmd(admin, "SADD ro:{s} a b"), 2);
    fixture_expect_int(fixture_cmd(c, "SUNIONSTORE wo:{s} ro:{s}"), 2);
    fixture_expect_error(fixture_cmd(c, "SUNIONSTORE ro:{s} wo:{s}"), NOPERM_KEYS);
    /* LMOVE pops its source: a read-only source is refused, a ~ one is not */
    fixture_expect_int(fixture_cmd(admin, "RPUSH ro:{l} a"), 1);
    fixture_expect_int(fixture_cmd(admin, "RPUSH rw:{l} a"), 1);
    fixture_expect_error(fixture_cmd(c, "LMOVE ro:{l} wo:{l} LEFT RIGHT"), NOPERM_KEYS);
    fixture_expect_str(fixture_cmd(c, "LMOVE rw:{l} wo:{l} LEFT RIGHT"), "a");
    fixture_expect_int(fixture_cmd(admin, "LLEN ro:{l}"), 1);
    fixture_close(f, c);
    fixture_close(f, admin);
}

/* cmdstat_<name> calls summed over the shards, asked of each directly. */
static long long shard_calls(fixture *f, const char *name)
{
    char field[64];
    snprintf(field, sizeof(field), "cmdstat_%s:calls=", name);
    long long calls = 0;
    for (int i = 0; i < FIXTURE_SHARDS; i++) {
        redisReply *r = fixture_cmd(fixture_shard(f, i), "INFO commandstats");
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        const char *at = strstr(r->str, field);
        calls += at ? atoll(at + strlen(field)) : 0;
        freeReplyObject(r);
    }
    return calls;
}

/* MGET over keys on three shards, one of them not readable: refused whole,
 * no shard runs any part of it; the same for MSET with a key not
 * writable. */
static void test_split_command_with_a_key_not_permitted(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    redisContext *c = login(f, "kp", "any");
    char ro0[64], ro1[64], wo2[64];
    fixture_key_on_shard(admin, "ro:m", 0, ro0, sizeof(ro0));
    fixture_key_on_shard(admin, "ro:m", 1, ro1, sizeof(ro1));
    fixture_key_on_shard(admin, "wo:m", 2, wo2, sizeof(wo2));
    fixture_expect_status(fixture_cmd(admin, "SET %s v", wo2), "OK");
    long long before = shard_calls(f, "mget");
    fixture_expect_error(fixture_cmd(c, "MGET %s %s %s", ro0, ro1, wo2), NOPERM_KEYS);
    assert_int_equal(shard_calls(f, "mget"), before);
    redisReply *r = fixture_cmd(c, "MGET %s %s", ro0, ro1);
    fixture_expect_array(r, 2);
    freeReplyObject(r);
    assert_true(shard_calls(f, "mget") > before);
    /* MSET writes its keys: ro:m* is not writable */
    char wo0[64], wo1[64];
    fixture_key_on_shard(admin, "wo:n", 0, wo0, sizeof(wo0));
    fixture_key_on_shard(admin, "wo:n", 1, wo1, sizeof(wo1));
    fixture_expect_error(fixture_cmd(c, "MSET %s 1 %s 1 %s 1", wo0, wo1, ro0), NOPERM_KEYS);
    fixture_expect_nil(fixture_cmd(admin, "GET %s", wo0));
    fixture_expect_nil(fixture_cmd(admin, "GET %s", wo1));
    fixture_expect_nil(fixture_cmd(admin, "GET %s", ro0));
    fixture_expect_status(fixture_cmd(c, "MSET %s 1 %s 1", wo0, wo1), "OK");
    fixture_close(f, c);
    fixture_close(f, admin);
}

/* A multi-key command with one key out of the user's patterns is refused
 * whole, before any shard sees a part of it. */
static void test_split_commands_refused_whole(void **state)
{
    fixture *f = *state;
    redisContext *c = login(f, "alice", ALICE_PW);
    char args[4096] = "MSET";
    size_t o = 4;
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(args + o, sizeof(args) - o, " app:m%d %d", i, i);
    snprintf(args + o, sizeof(args) - o, " outside:m x");
    fixture_expect_error(fixture_cmd(c, args), NOPERM_KEYS);
    redisContext *admin = fixture_client(f);
    for (int i = 0; i < 40; i++)
        fixture_expect_nil(fixture_cmd(admin, "GET app:m%d", i));
    fixture_expect_error(fixture_cmd(c, "MGET app:m1 app:m2 outside:m"), NOPERM_KEYS);
    fixture_expect_error(fixture_cmd(c, "DEL app:m1 outside:m"), NOPERM_KEYS);
    redisReply *r = fixture_cmd(c, "MGET app:m1 app:m2 app:m3");
    fixture_expect_array(r, 3);
    freeReplyObject(r);
    fixture_close(f, admin);
    fixture_close(f, c);
}

static void test_commands_and_categories(void **state)
{
    fixture *f = *state;
    redisContext *admin = fixture_client(f);
    fixture_expect_status(fixture_cmd(admin, "SET shared v"), "OK");

    /* +@read -keys */
    redisContext *r = login(f, "reader", "r");
    fixture_expect_str(fixture_cmd(r, "GET shared"), "v");
    fixture_expect_int(fixture_cmd(r, "EXISTS shared"), 1);
    fixture_expect_error(fixture_cmd(r, "SET shared w"),
                         "NOPERM this user has no permissions to run the 'set' command");
    fixture_expect_error(fixture_cmd(r, "KEYS *"),
                         "NOPERM this user has no permissions to run the 'keys' command");
    fixture_expect_error(fixture_cmd(r, "PING"),
                         "NOPERM this user has no permissions to run the 'ping' command");
    fixture_close(f, r);

    /* +@all -del +config|get -config|set: subcommands by name */
    redisContext *w = login(f, "writer", "w");
    fixture_expect_status(fixture_cmd(w, "SET shared w"), "OK");
    fixture_expect_error(fixture_cmd(w, "DEL shared"),
                         "NOPERM this user has no permissions to run the 'del' command");
    redisReply *reply = fixture_cmd(w, "CONFIG GET maxclients");
    assert_int_equal(reply->type, REDIS_REPLY_ARRAY);
    freeReplyObject(reply);
    fixture_expect_error(fixture_cmd(w, "CONFIG SET maxmemory 0"),
                         "NOPERM this user has no permissions to run the 'config|set' command");
    fixture_close(f, w);

    /* alice: +@all -@dangerous */
    redisContext *a = login(f, "alice", ALICE_PW);
    fixture_expect_error(fixture_cmd(a, "FLUSHALL"),
                         "NOPERM this user has no permissions to run the 'flushall' command");
    fixture_expect_error(fixture_cmd(a, "PROXY RELOAD"),
                         "NOPERM this user has no permissions to run the 'proxy|reload' command");
    fixture_close(f, a);
    fixture_close(f, admin);
}

static void test_passwords(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    /* #sha256 of "password" */
    fixture_expect_status(fixture_cmd(c, "AUTH dave password"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET dave:k 1"), "OK");
    fixture_expect_error(fixture_cmd(c, "LPUSH dave:l 1"),
                         "NOPERM this user has no permissions to run the 'lpush' command");
    /* wrong password, unknown user, a user turned off: one answer; the
     * session keeps the user it had */
    const char *wrong = "WRONGPASS invalid username-password pair or user is disabled.";
    fixture_expect_error(fixture_cmd(c, "AUTH dave Password"), wrong);
    fixture_expect_error(fixture_cmd(c, "AUTH nobody password"), wrong);
    fixture_expect_error(fixture_cmd(c, "AUTH eve e"), wrong);
    fixture_expect_status(fixture_cmd(c, "SET dave:k 2"), "OK");
    fixture_expect_error(fixture_cmd(c, "LPUSH dave:l 1"), "NOPERM");
    /* nopass: any password */
    fixture_expect_status(fixture_cmd(c, "AUTH frank anything"), "OK");
    fixture_expect_status(fixture_cmd(c, "PING"), "PONG");
    fixture_expect_error(fixture_cmd(c, "SET dave:k 3"),
                         "NOPERM this user has no permissions to run the 'set' command");
    /* the default user has no password: AUTH without a user says so */
    fixture_expect_error(fixture_cmd(c, "AUTH x"), "ERR AUTH <password> called without any "
                                                   "password configured for the default user");
    /* HELLO 2 AUTH user pass */
    redisReply *r = fixture_cmd(c, "HELLO 2 AUTH alice %s", ALICE_PW);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    fixture_expect_str(fixture_cmd(c, "ACL WHOAMI"), "alice");
    fixture_expect_error(fixture_cmd(c, "HELLO 2 AUTH alice wrong"), wrong);
    /* RESET: back to the default user */
    fixture_expect_status(fixture_cmd(c, "RESET"), "RESET");
    fixture_expect_str(fixture_cmd(c, "ACL WHOAMI"), "default");
    fixture_close(f, c);
}

/* Redis refuses a denied command when it is queued and EXEC then aborts. */
static void test_multi_with_a_denied_command(void **state)
{
    fixture *f = *state;
    redisContext *c = login(f, "writer", "w");
    fixture_expect_status(fixture_cmd(c, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(c, "SET tx:{a} 1"), "QUEUED");
    fixture_expect_error(fixture_cmd(c, "DEL tx:{a}"),
                         "NOPERM this user has no permissions to run the 'del' command");
    fixture_expect_error(fixture_cmd(c, "EXEC"), "EXECABORT");
    redisContext *admin = fixture_client(f);
    fixture_expect_nil(fixture_cmd(admin, "GET tx:{a}"));
    fixture_close(f, admin);

    redisContext *a = login(f, "alice", ALICE_PW);
    fixture_expect_status(fixture_cmd(a, "MULTI"), "OK");
    fixture_expect_status(fixture_cmd(a, "SET app:{t} 1"), "QUEUED");
    fixture_expect_error(fixture_cmd(a, "SET other:{t} 1"), NOPERM_KEYS);
    fixture_expect_error(fixture_cmd(a, "EXEC"), "EXECABORT");
    fixture_close(f, a);
    fixture_close(f, c);
}

static void test_channels(void **state)
{
    fixture *f = *state;
    redisContext *a = login(f, "alice", ALICE_PW);
    fixture_expect_int(fixture_cmd(a, "PUBLISH news.today hi"), 0);
    fixture_expect_error(fixture_cmd(a, "PUBLISH sports hi"), NOPERM_CHANNEL);
    fixture_expect_error(fixture_cmd(a, "SUBSCRIBE news.a sports"), NOPERM_CHANNEL);
    /* a pattern only as written in the user's rules, as in Redis */
    fixture_expect_error(fixture_cmd(a, "PSUBSCRIBE news.a*"), NOPERM_CHANNEL);
    redisReply *r = fixture_cmd(a, "PSUBSCRIBE news.*");
    fixture_expect_array(r, 3);
    freeReplyObject(r);
    fixture_close(f, a);
    /* a user without &patterns has no channel */
    redisContext *w = login(f, "writer", "w");
    fixture_expect_error(fixture_cmd(w, "PUBLISH news.today hi"), NOPERM_CHANNEL);
    fixture_close(f, w);
}

static void test_acl_command(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_str(fixture_cmd(c, "ACL WHOAMI"), "default");
    redisReply *r = fixture_cmd(c, "ACL USERS");
    fixture_expect_array(r, 9);
    assert_string_equal(r->element[0]->str, "alice");
    assert_string_equal(r->element[2]->str, "default");
    freeReplyObject(r);
    r = fixture_cmd(c, "ACL LIST");
    fixture_expect_array(r, 9);
    assert_string_equal(r->element[1]->str,
                        "user dave on #" PASSWORD_SHA256 " ~* resetchannels -@all +@string");
    /* key permissions as Redis prints them */
    assert_string_equal(r->element[6]->str,
                        "user kp on nopass %R~ro:* %W~wo:* ~rw:* resetchannels +@all");
    for (size_t i = 0; i < r->elements; i++)
        assert_null(strstr(r->element[i]->str, ALICE_PW));
    freeReplyObject(r);
    r = fixture_cmd(c, "ACL CAT");
    fixture_expect_array(r, 21);
    assert_string_equal(r->element[0]->str, "keyspace");
    freeReplyObject(r);
    r = fixture_cmd(c, "ACL CAT geo");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    int has_geoadd = 0, has_get = 0;
    for (size_t i = 0; i < r->elements; i++) {
        has_geoadd |= strcmp(r->element[i]->str, "geoadd") == 0;
        has_get |= strcmp(r->element[i]->str, "get") == 0;
    }
    assert_true(has_geoadd && !has_get);
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(c, "ACL CAT bogus"), "ERR Unknown category 'bogus'");
    r = fixture_cmd(c, "ACL GENPASS");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_int_equal(r->len, 64);
    freeReplyObject(r);
    r = fixture_cmd(c, "ACL GENPASS 10");
    assert_int_equal(r->len, 3);
    freeReplyObject(r);
    fixture_expect_status(fixture_cmd(c, "ACL DRYRUN alice GET app:1"), "OK");
    fixture_expect_str(fixture_cmd(c, "ACL DRYRUN alice GET zz"),
                       "This user has no permissions to access the 'zz' key");
    fixture_expect_str(fixture_cmd(c, "ACL DRYRUN reader CONFIG GET x"),
                       "This user has no permissions to run the 'config|get' command");
    fixture_expect_error(fixture_cmd(c, "ACL DRYRUN nobody GET x"), "ERR User 'nobody' not found");
    /* DRYRUN checks read and write permissions key by key */
    fixture_expect_status(fixture_cmd(c, "ACL DRYRUN kp GET ro:1"), "OK");
    fixture_expect_str(fixture_cmd(c, "ACL DRYRUN kp SET ro:1 v"),
                       "This user has no permissions to access the 'ro:1' key");
    fixture_expect_status(fixture_cmd(c, "ACL DRYRUN kp COPY ro:1 wo:1"), "OK");
    fixture_expect_str(fixture_cmd(c, "ACL DRYRUN kp COPY ro:1 ro:2"),
                       "This user has no permissions to access the 'ro:2' key");
    fixture_expect_error(fixture_cmd(c, "ACL SETUSER x on"),
                         "ERR ACL SETUSER is not available through ringproxy: users come from the "
                         "[users] section of proxy.ini");
    fixture_expect_error(fixture_cmd(c, "ACL DELUSER alice"), "ERR ACL DELUSER is not available");
    fixture_close(f, c);
}

static void test_client_list_and_kill_by_user(void **state)
{
    fixture *f = *state;
    redisContext *a1 = login(f, "alice", ALICE_PW);
    redisContext *a2 = login(f, "alice", ALICE_PW);
    redisContext *admin = fixture_client(f);
    redisReply *r = fixture_cmd(admin, "CLIENT LIST");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_non_null(strstr(r->str, " user=alice "));
    assert_non_null(strstr(r->str, " user=default "));
    freeReplyObject(r);
    r = fixture_cmd(a1, "CLIENT INFO");
    assert_non_null(strstr(r->str, " user=alice "));
    freeReplyObject(r);
    fixture_expect_int(fixture_cmd(admin, "CLIENT KILL USER alice"), 2);
    fixture_expect_int(fixture_cmd(admin, "CLIENT KILL USER nobody"), 0);
    assert_null(redisCommand(a1, "PING"));
    fixture_close(f, a1);
    fixture_close(f, a2);
    fixture_close(f, admin);
}

/* Nothing secret in the log, INFO or CONFIG GET. */
static void test_no_secret_shown(void **state)
{
    fixture *f = *state;
    redisContext *c = fixture_client(f);
    fixture_expect_error(fixture_cmd(c, "AUTH alice wrong-" ALICE_PW), "WRONGPASS");
    fixture_expect_status(fixture_cmd(c, "AUTH alice " ALICE_PW), "OK");
    fixture_expect_status(fixture_cmd(c, "RESET"), "RESET"); /* INFO is @dangerous */
    redisReply *r = fixture_cmd(c, "INFO everything");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_null(strstr(r->str, ALICE_PW));
    freeReplyObject(r);
    r = fixture_cmd(c, "CONFIG GET *");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    for (size_t i = 0; i < r->elements; i++)
        assert_true(r->element[i]->type != REDIS_REPLY_STRING ||
                    !strstr(r->element[i]->str, ALICE_PW));
    freeReplyObject(r);
    assert_false(fixture_log_contains(&f->proxy, ALICE_PW));
    fixture_close(f, c);
}

/* Runs last in its group: it rewrites the users. A reload closes the
 * connections of a user it removes or turns off; the others keep their
 * session, under their user's new rules. */
static void test_reload_applies_users(void **state)
{
    fixture *f = *state;
    redisContext *gone = login(f, "gone", "g");
    redisContext *eve_off = login(f, "alice", ALICE_PW); /* alice is turned off below */
    redisContext *kept = login(f, "writer", "w");
    redisContext *admin = fixture_client(f);
    fixture_expect_status(fixture_cmd(kept, "SET reload:k 1"), "OK");
    fixture_expect_status(rewrite_and_reload(f, admin,
                                             "watch_config = no\n"
                                             "[users]\n"
                                             "default = on nopass ~* &* +@all\n"
                                             "alice = off >" ALICE_PW " ~app:*\n"
                                             "writer = on >w allkeys +@read\n"),
                          "OK");
    /* the closes are logged with the reason */
    fixture_wait_log(&f->proxy, "its user gone was removed by a reload");
    fixture_wait_log(&f->proxy, "its user alice was turned off by a reload");
    assert_null(redisCommand(gone, "PING"));
    assert_null(redisCommand(eve_off, "PING"));
    fixture_expect_str(fixture_cmd(kept, "GET reload:k"), "1");
    fixture_expect_error(fixture_cmd(kept, "SET reload:k 2"),
                         "NOPERM this user has no permissions to run the 'set' command");
    redisContext *c = fixture_client(f);
    fixture_expect_error(fixture_cmd(c, "AUTH gone g"), "WRONGPASS");
    /* a rule naming a command the proxy does not know is refused whole,
     * with its file and line */
    redisReply *r =
        rewrite_and_reload(f, admin, "watch_config = no\n[users]\nwriter = on >w +nosuchcmd\n");
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "proxy.ini:5: user writer: unknown command 'nosuchcmd'"));
    freeReplyObject(r);
    fixture_expect_error(fixture_cmd(kept, "SET reload:k 2"), "NOPERM");
    fixture_close(f, c);
    fixture_close(f, gone);
    fixture_close(f, eve_off);
    fixture_close(f, kept);
    fixture_close(f, admin);
}

/* ---- requirepass: the default user's password --------------------------- */

static void test_requirepass_is_the_default_password(void **state)
{
    (void)state;
    fixture *f = fixture_start("requirepass = rp\n[users]\nalice = on >a allkeys +@all\n");
    assert_non_null(f);
    redisContext *c = fixture_client(f);
    fixture_expect_error(fixture_cmd(c, "GET k"), "NOAUTH Authentication required.");
    fixture_expect_error(fixture_cmd(c, "ACL WHOAMI"), "NOAUTH");
    fixture_expect_status(fixture_cmd(c, "AUTH rp"), "OK");
    fixture_expect_str(fixture_cmd(c, "ACL WHOAMI"), "default");
    fixture_expect_status(fixture_cmd(c, "AUTH alice a"), "OK");
    fixture_expect_str(fixture_cmd(c, "ACL WHOAMI"), "alice");
    redisReply *r = fixture_cmd(c, "ACL LIST");
    fixture_expect_array(r, 2);
    /* sha256("rp") */
    assert_string_equal(r->element[1]->str,
                        "user default on "
                        "#796e80c7e5bf8a48cb603f229eeec578ec72443dbfe37710cc80de"
                        "67228c6713 ~* &* +@all");
    freeReplyObject(r);
    fixture_close(f, c);
    assert_int_equal(fixture_stop(f), 0);
}

/* ---- backend_user: shards that use ACLs ---------------------------------- */

/* Shards whose default user is off: only AUTH ringproxy <pw> works. The
 * proxy's pool, the store's connections (locks) and, after a shard is
 * added, the rebalancer's MIGRATE ... AUTH2 all authenticate. */
static void test_backend_user(void **state)
{
    (void)state;
    enum { N = 3 };
    harness_proc shards[N + 1];
    harness_proc proxy;
    memset(shards, 0, sizeof(shards));
    memset(&proxy, 0, sizeof(proxy));
    for (int i = 0; i < N + 1; i++) {
        assert_int_equal(harness_redis_start(&shards[i]), 0);
        redisContext *s = harness_connect(shards[i].port);
        assert_non_null(s);
        fixture_expect_status(fixture_cmd(s, "ACL SETUSER ringproxy on >shard-pw ~* &* +@all"),
                              "OK");
        fixture_expect_status(fixture_cmd(s, "ACL SETUSER default off"), "OK");
        redisFree(s);
    }
    const char *extra = "backend_user = ringproxy\nbackend_password = shard-pw\n"
                        "lock_shards = all\nwatch_config = no\n";
    char *ini = harness_ini(shards, N, extra);
    assert_int_equal(harness_ringproxy_start(&proxy, ini), 0);
    free(ini);
    redisContext *c = harness_connect(proxy.port);
    assert_non_null(c);
    for (int i = 0; i < 500; i++)
        fixture_expect_status(fixture_cmd(c, "SET bu:%d %d", i, i), "OK");
    /* the store's connections (which LOCK.* uses) authenticate: the lock
     * service becomes ready once a majority of them did */
    long long deadline = fixture_now_ms() + fixture_bound_ms(5000);
    redisReply *r = NULL;
    for (;;) {
        r = fixture_cmd(c, "LOCK.ACQUIRE bu-lock 10000");
        if (r->type == REDIS_REPLY_INTEGER || fixture_now_ms() > deadline)
            break;
        freeReplyObject(r);
        fixture_sleep_ms(50);
    }
    if (r->type != REDIS_REPLY_INTEGER)
        fail_msg("LOCK.ACQUIRE: %s", r->str ? r->str : "?");
    freeReplyObject(r);

    /* a fourth shard: keys move with MIGRATE ... AUTH2 ringproxy shard-pw */
    write_ini(&proxy, shards, N + 1, extra);
    fixture_expect_status(fixture_cmd(c, "PROXY RELOAD"), "OK");
    deadline = fixture_now_ms() + fixture_bound_ms(15000);
    int idle = 0;
    while (!idle && fixture_now_ms() < deadline) {
        r = fixture_cmd(c, "INFO rebalance");
        idle = strstr(r->str, "rebalance_state:idle") && strstr(r->str, "rebalance_completed:1");
        freeReplyObject(r);
        if (!idle)
            fixture_sleep_ms(50);
    }
    assert_true(idle);
    for (int i = 0; i < 500; i++) {
        r = fixture_cmd(c, "GET bu:%d", i);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_int_equal(atoi(r->str), i);
        freeReplyObject(r);
    }
    redisContext *s = harness_connect(shards[N].port);
    assert_non_null(s);
    fixture_expect_status(fixture_cmd(s, "AUTH ringproxy shard-pw"), "OK");
    r = fixture_cmd(s, "DBSIZE");
    assert_true(r->type == REDIS_REPLY_INTEGER && r->integer > 20);
    freeReplyObject(r);
    redisFree(s);
    redisFree(c);
    assert_false(fixture_log_contains(&proxy, "shard-pw"));
    harness_proc_stop(&proxy, SIGTERM);
    for (int i = 0; i < N + 1; i++)
        harness_proc_stop(&shards[i], SIGTERM);
}

int main(void)
{
    const struct CMUnitTest users[] = {
        cmocka_unit_test(test_key_patterns),
        cmocka_unit_test(test_split_commands_refused_whole),
        cmocka_unit_test(test_read_write_key_permissions),
        cmocka_unit_test(test_mixed_command_checked_per_key),
        cmocka_unit_test(test_split_command_with_a_key_not_permitted),
        cmocka_unit_test(test_commands_and_categories),
        cmocka_unit_test(test_passwords),
        cmocka_unit_test(test_multi_with_a_denied_command),
        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_acl_command),
        cmocka_unit_test(test_client_list_and_kill_by_user),
        cmocka_unit_test(test_no_secret_shown),
        cmocka_unit_test(test_reload_applies_users),
    };
    const struct CMUnitTest others[] = {
        cmocka_unit_test(test_requirepass_is_the_default_password),
        cmocka_unit_test(test_backend_user),
    };
    int failed = cmocka_run_group_tests_name("users", users, group_setup, group_teardown);
    failed += cmocka_run_group_tests_name("requirepass and backend_user", others, NULL, NULL);
    return failed;
}
