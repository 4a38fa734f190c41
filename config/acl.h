/* ACL users of proxy.ini's [users] section: Redis's ACL rule syntax for the
 * subset that fits a proxy (on/off, passwords, key and channel patterns,
 * command categories and commands), parsed into rules the daemon compiles
 * against its command table. Pure: no sockets, no libevent, no proxy/. */
#ifndef CONFIG_ACL_H
#define CONFIG_ACL_H

#include <stddef.h>
#include <stdint.h>

/* Redis's command categories, in ACL CAT's order; a command's categories
 * are a mask of these bits (the command table's rows carry theirs). */
enum {
    ACL_CAT_KEYSPACE = 1u << 0,
    ACL_CAT_READ = 1u << 1,
    ACL_CAT_WRITE = 1u << 2,
    ACL_CAT_SET = 1u << 3,
    ACL_CAT_SORTEDSET = 1u << 4,
    ACL_CAT_LIST = 1u << 5,
    ACL_CAT_HASH = 1u << 6,
    ACL_CAT_STRING = 1u << 7,
    ACL_CAT_BITMAP = 1u << 8,
    ACL_CAT_HYPERLOGLOG = 1u << 9,
    ACL_CAT_GEO = 1u << 10,
    ACL_CAT_STREAM = 1u << 11,
    ACL_CAT_PUBSUB = 1u << 12,
    ACL_CAT_ADMIN = 1u << 13,
    ACL_CAT_FAST = 1u << 14,
    ACL_CAT_SLOW = 1u << 15,
    ACL_CAT_BLOCKING = 1u << 16,
    ACL_CAT_DANGEROUS = 1u << 17,
    ACL_CAT_CONNECTION = 1u << 18,
    ACL_CAT_TRANSACTION = 1u << 19,
    ACL_CAT_SCRIPTING = 1u << 20,
};
#define ACL_CATEGORY_COUNT 21

/* Longest user name: names appear in CLIENT LIST, logs and replies. */
#define ACL_USER_NAME_MAX 64

/* Bytes of a SHA-256 digest; passwords are kept only as digests. */
#define ACL_DIGEST_LEN 32

/* The name of category i (0 <= i < ACL_CATEGORY_COUNT), without '@'. */
const char *acl_category_name(int i);

/* The index of the category named name (without '@', any case), or -1.
 * "all" is not a category: rules treat it on their own. */
int acl_category_lookup(const char *name, size_t len);

/* One command rule, applied in the order written, as Redis does. */
typedef struct acl_command_rule {
    int allow;     /* '+' (1) or '-' (0) */
    int category;  /* category index, ACL_RULE_ALL for @all, -1 for a command */
    char *command; /* lower-case "get" or "config|get" when category is -1 */
} acl_command_rule;
#define ACL_RULE_ALL (-2)

/* What a key pattern lets a user do with the keys it matches: Redis's
 * %R~ (read), %W~ (written), ~ and %RW~ (both). */
enum {
    ACL_KEY_READ = 1u << 0,
    ACL_KEY_WRITE = 1u << 1,
    ACL_KEY_ALL = ACL_KEY_READ | ACL_KEY_WRITE,
};

typedef struct acl_key_pattern {
    char *pattern;  /* Redis glob */
    unsigned perms; /* ACL_KEY_READ | ACL_KEY_WRITE */
} acl_key_pattern;

/* A user as its [users] lines define it. Rules accumulate over repeated
 * lines of one name, as repeated ACL SETUSER calls do. */
typedef struct acl_user {
    char *name;
    int enabled;                                /* on / off (Redis: a new user is off) */
    int nopass;                                 /* any password (or none) authenticates */
    unsigned char (*passwords)[ACL_DIGEST_LEN]; /* SHA-256 of each password */
    size_t npasswords;
    acl_key_pattern *key_patterns; /* ~, %R~, %W~: in the order written, each once */
    size_t nkey_patterns;
    char **channel_patterns; /* &pattern: for PUBLISH / SUBSCRIBE channels */
    size_t nchannel_patterns;
    int allkeys;             /* ~* or allkeys */
    int allchannels;         /* &* or allchannels */
    acl_command_rule *rules; /* command rules in order */
    size_t nrules;
    int line; /* first line of the user in the file, for messages */
} acl_user;

/* Applies the rules of one [users] value (space-separated, Redis syntax) to
 * user, which holds the name and the rules of earlier lines. Returns 0, or
 * -1 with the reason in why (e.g. "unknown category '@foo'"); the user may
 * then hold part of the rules and is only fit for acl_user_free. Supported:
 * on off >pass #sha256hex nopass resetpass ~pattern %R~pattern %W~pattern
 * %RW~pattern allkeys resetkeys &pattern allchannels resetchannels +@cat
 * -@cat +cmd -cmd +cmd|sub -cmd|sub allcommands nocommands reset. Refused
 * with a reason: <pass !hash (nothing to remove in a file), selectors, and
 * a '%' rule that is not R and/or W then '~'. */
__attribute__((warn_unused_result)) int acl_user_apply(acl_user *user, const char *rules, char *why,
                                                       size_t whylen);

/* Whether name is a valid user name (printable, no spaces, not too long). */
int acl_valid_user_name(const char *name);

void acl_user_free(acl_user *user);

/* Writes the user's rules as ACL LIST prints them ("user alice on
 * #<sha256> ~foo:* %R~ro:* resetchannels -@all +get"); passwords only as
 * digests, key patterns as ~, %R~ or %W~ by their permissions.
 * Returns the length it needed (as snprintf). */
size_t acl_user_describe(const acl_user *user, char *buf, size_t buflen);

/* SHA-256 of data (OpenSSL). */
void acl_digest(const void *data, size_t len, unsigned char out[ACL_DIGEST_LEN]);

/* Whether password authenticates user: on, and nopass or the digest of
 * password is one of the user's (compared in constant time). */
int acl_user_check_password(const acl_user *user, const char *password, size_t len);

/* Redis's glob match (stringmatchlen): * ? [abc] [^a-z] and \ escapes. */
int acl_glob_match(const char *pattern, size_t plen, const char *str, size_t slen);

#endif
