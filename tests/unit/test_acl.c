/* config/acl specification: the [users] rule words Redis's ACL SETUSER
 * accepts (the proxy's subset), how they describe themselves in ACL LIST,
 * passwords kept as SHA-256 digests, and Redis's glob match for key and
 * channel patterns. Cases come from tables. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "config/acl.h"

/* Applies rules to a fresh user named name; fails the test on an error. */
static acl_user make_user(const char *name, const char *rules)
{
    acl_user u = {.name = strdup(name)};
    char why[256] = "";
    if (acl_user_apply(&u, rules, why, sizeof(why)) != 0)
        fail_msg("%s: %s", rules, why);
    return u;
}

/* --- ACL LIST: each rule set as Redis 7.0 prints it ---------------------- */

typedef struct describe_case {
    const char *rules;
    const char *listed;
} describe_case;

static const describe_case describe_cases[] = {
    {"on nopass ~* &* +@all", "user u on nopass ~* &* +@all"},
    /* Redis: a new user is off, with no keys, channels or commands */
    {"", "user u off resetchannels -@all"},
    {"on >password ~foo:* +get", "user u on "
                                 "#5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
                                 " ~foo:* resetchannels -@all +get"},
    /* #hash is kept as given; allkeys is ~* */
    {"on #5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8 allkeys",
     "user u on #5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8 ~* "
     "resetchannels -@all"},
    /* categories and commands in the order written; +@all starts over */
    {"on nopass +@read -@dangerous +config|get", "user u on nopass resetchannels -@all +@read "
                                                 "-@dangerous +config|get"},
    {"on nopass +get -@all +SET", "user u on nopass resetchannels -@all +set"},
    {"on nopass allcommands -flushall", "user u on nopass resetchannels +@all -flushall"},
    /* reset forgets everything before it */
    {"on >x ~a &b +@all reset", "user u off resetchannels -@all"},
    {"on >x nopass", "user u on nopass resetchannels -@all"},
    {"on nopass resetpass", "user u on resetchannels -@all"},
    {"on nopass &news.* &chat", "user u on nopass &news.* &chat -@all"},
    {"on nopass ~a ~b resetkeys ~c", "user u on nopass ~c resetchannels -@all"},
    /* key permissions: %R~ read, %W~ written, %RW~ (any case, order) is ~ */
    {"on nopass %R~ro:* %W~wo:* ~rw:*", "user u on nopass %R~ro:* %W~wo:* ~rw:* resetchannels "
                                        "-@all"},
    {"on nopass %rw~a %WR~b %r~c", "user u on nopass ~a ~b %R~c resetchannels -@all"},
    /* a pattern is kept once, its permissions joined, as Redis does */
    {"on nopass %R~k %W~k ~k %W~j %W~j", "user u on nopass ~k %W~j resetchannels -@all"},
    /* %RW~* is the pattern *, not allkeys (Redis prints it ~* all the same) */
    {"on nopass %RW~* %R~x", "user u on nopass ~* %R~x resetchannels -@all"},
    {"on nopass %R~*", "user u on nopass %R~* resetchannels -@all"},
    /* as redis-server 7.0.15 lists ACL SETUSER u %R~k %W~k %RW~* %r~j */
    {"%R~k %W~k %RW~* %r~j", "user u off ~k ~* %R~j resetchannels -@all"},
    {"on nopass %R~a resetkeys", "user u on nopass resetchannels -@all"},
};

static void test_describe(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(describe_cases) / sizeof(describe_cases[0]); i++) {
        acl_user u = make_user("u", describe_cases[i].rules);
        char line[512];
        size_t n = acl_user_describe(&u, line, sizeof(line));
        assert_int_equal(n, strlen(line));
        if (strcmp(line, describe_cases[i].listed) != 0)
            fail_msg("'%s'\n  want: %s\n  got:  %s", describe_cases[i].rules,
                     describe_cases[i].listed, line);
        acl_user_free(&u);
    }
}

/* --- refused rules, with the reason ----------------------------------- */

typedef struct refused_case {
    const char *rules;
    const char *why;
} refused_case;

static const refused_case refused_cases[] = {
    {"+@foo", "unknown category '@foo'"},
    {"-@Writes", "unknown category '@Writes'"},
    /* a key permission is R and/or W, each once, then '~' */
    {"%X~k", "'%X~k': key permissions are written %R~pattern (read), %W~pattern (write) or "
             "%RW~pattern (both)"},
    {"%R", "'%R': key permissions are written %R~pattern (read), %W~pattern (write) or "
           "%RW~pattern (both)"},
    {"%~k", "'%~k': key permissions are written %R~pattern (read), %W~pattern (write) or "
            "%RW~pattern (both)"},
    {"%RR~k", "'%RR~k': key permissions are written %R~pattern (read), %W~pattern (write) or "
              "%RW~pattern (both)"},
    {"allkeys %R~k", "'%R~k' after allkeys (~*) adds nothing: remove one"},
    {"#5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8",
     "a '#' password hash must be 64 lower-case hex digits (SHA-256)"},
    {"#00", "a '#' password hash must be 64 lower-case hex digits (SHA-256)"},
    {"!5e88", "'!' removes a password: in proxy.ini leave the password out instead"},
    {"~* ~x", "'~x' after allkeys (~*) adds nothing: remove one"},
    {"allchannels &x", "'&x' after allchannels (&*) adds nothing: remove one"},
    {"(+get)", "selectors '(...)' are not supported"},
    {"onn", "unknown rule 'onn'"},
    {"-", "'-' without a command or @category"},
};

static void test_refused(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(refused_cases) / sizeof(refused_cases[0]); i++) {
        acl_user u = {.name = strdup("u")};
        char why[256] = "";
        assert_int_equal(acl_user_apply(&u, refused_cases[i].rules, why, sizeof(why)), -1);
        if (strcmp(why, refused_cases[i].why) != 0)
            fail_msg("'%s'\n  want: %s\n  got:  %s", refused_cases[i].rules, refused_cases[i].why,
                     why);
        acl_user_free(&u);
    }
}

/* --- passwords ------------------------------------------------------------ */

static void test_passwords(void **state)
{
    (void)state;
    /* FIPS 180-2's "abc" vector */
    unsigned char d[ACL_DIGEST_LEN];
    acl_digest("abc", 3, d);
    static const unsigned char abc[ACL_DIGEST_LEN] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
        0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
        0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    assert_memory_equal(d, abc, ACL_DIGEST_LEN);

    /* two passwords, one given as its digest; either authenticates */
    acl_user u = make_user(
        "u", "on >first #5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8");
    assert_int_equal(u.npasswords, 2);
    assert_true(acl_user_check_password(&u, "first", 5));
    assert_true(acl_user_check_password(&u, "password", 8));
    assert_false(acl_user_check_password(&u, "firs", 4));
    assert_false(acl_user_check_password(&u, "", 0));
    /* the same password twice is kept once */
    char why[64];
    assert_int_equal(acl_user_apply(&u, ">first", why, sizeof(why)), 0);
    assert_int_equal(u.npasswords, 2);
    /* off: no password works */
    assert_int_equal(acl_user_apply(&u, "off", why, sizeof(why)), 0);
    assert_false(acl_user_check_password(&u, "first", 5));
    acl_user_free(&u);

    u = make_user("u", "on nopass");
    assert_true(acl_user_check_password(&u, "anything", 8));
    /* a password after nopass ends nopass, as in Redis */
    assert_int_equal(acl_user_apply(&u, ">p", why, sizeof(why)), 0);
    assert_false(acl_user_check_password(&u, "anything", 8));
    acl_user_free(&u);
}

/* --- glob patterns: Redis's stringmatchlen ---------------------------- */

typedef struct glob_case {
    const char *pattern;
    const char *subject;
    int match;
} glob_case;

static const glob_case glob_cases[] = {
    {"*", "", 1},
    {"*", "anything", 1},
    {"foo:*", "foo:1", 1},
    {"foo:*", "foo:", 1},
    {"foo:*", "fo", 0},
    {"foo:*", "bar:foo:1", 0},
    {"h?llo", "hello", 1},
    {"h?llo", "hllo", 0},
    {"h[ae]llo", "hallo", 1},
    {"h[ae]llo", "hillo", 0},
    {"h[^e]llo", "hallo", 1},
    {"h[^e]llo", "hello", 0},
    {"h[a-b]llo", "hbllo", 1},
    {"h[b-a]llo", "hallo", 1}, /* a reversed range still matches, as in Redis */
    {"h[a-b]llo", "hcllo", 0},
    {"a\\*b", "a*b", 1},
    {"a\\*b", "axb", 0},
    {"a*b*c", "aXXbYYc", 1},
    {"a*b*c", "aXXbYY", 0},
    {"**x", "abx", 1},
    {"user:{*}", "user:{42}", 1},
    {"[", "[", 0},
};

static void test_glob(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(glob_cases) / sizeof(glob_cases[0]); i++) {
        const glob_case *c = &glob_cases[i];
        int got = acl_glob_match(c->pattern, strlen(c->pattern), c->subject, strlen(c->subject));
        if (got != c->match)
            fail_msg("'%s' against '%s': want %d, got %d", c->pattern, c->subject, c->match, got);
    }
}

/* --- categories ------------------------------------------------------- */

static void test_categories(void **state)
{
    (void)state;
    /* Redis 7.0's ACL CAT, in its order */
    static const char *const redis[] = {
        "keyspace", "read",   "write",       "set",       "sortedset",  "list",        "hash",
        "string",   "bitmap", "hyperloglog", "geo",       "stream",     "pubsub",      "admin",
        "fast",     "slow",   "blocking",    "dangerous", "connection", "transaction", "scripting"};
    assert_int_equal(sizeof(redis) / sizeof(redis[0]), ACL_CATEGORY_COUNT);
    for (int i = 0; i < ACL_CATEGORY_COUNT; i++) {
        assert_string_equal(acl_category_name(i), redis[i]);
        assert_int_equal(acl_category_lookup(redis[i], strlen(redis[i])), i);
    }
    assert_int_equal(acl_category_lookup("READ", 4), 1);
    assert_int_equal(acl_category_lookup("all", 3), -1);
    assert_int_equal(acl_category_lookup("rea", 3), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_describe),   cmocka_unit_test(test_refused),
        cmocka_unit_test(test_passwords),  cmocka_unit_test(test_glob),
        cmocka_unit_test(test_categories),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
