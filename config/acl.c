/* [users] rules: Redis's ACL rule syntax, parsed into an acl_user; SHA-256
 * digests of passwords (OpenSSL); Redis's glob match for key and channel
 * patterns. Pure: the daemon compiles the command rules against its own
 * command table (proxy/access.c). */
#include "config/acl.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

static const char *const category_names[ACL_CATEGORY_COUNT] = {
    "keyspace", "read",   "write",       "set",       "sortedset",  "list",        "hash",
    "string",   "bitmap", "hyperloglog", "geo",       "stream",     "pubsub",      "admin",
    "fast",     "slow",   "blocking",    "dangerous", "connection", "transaction", "scripting",
};

const char *acl_category_name(int i)
{
    return i >= 0 && i < ACL_CATEGORY_COUNT ? category_names[i] : "?";
}

int acl_category_lookup(const char *name, size_t len)
{
    for (int i = 0; i < ACL_CATEGORY_COUNT; i++)
        if (strlen(category_names[i]) == len && strncasecmp(category_names[i], name, len) == 0)
            return i;
    return -1;
}

int acl_valid_user_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > ACL_USER_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isgraph((unsigned char)name[i]))
            return 0;
    return 1;
}

__attribute__((format(printf, 3, 4))) static int refuse(char *why, size_t whylen, const char *fmt,
                                                        ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
    return -1;
}

/* Appends a copy of text[0..len) to a string array. 0, or -1 out of memory. */
static int push_string(char ***array, size_t *n, const char *text, size_t len)
{
    char **grown = realloc(*array, (*n + 1) * sizeof(**array));
    if (!grown)
        return -1;
    *array = grown;
    if (!(grown[*n] = strndup(text, len)))
        return -1;
    (*n)++;
    return 0;
}

static void free_strings(char ***array, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        free((*array)[i]);
    free(*array);
    *array = NULL;
    *n = 0;
}

static void free_key_patterns(acl_user *user)
{
    for (size_t i = 0; i < user->nkey_patterns; i++)
        free(user->key_patterns[i].pattern);
    free(user->key_patterns);
    user->key_patterns = NULL;
    user->nkey_patterns = 0;
}

/* Adds a key pattern with perms, or adds perms to the same pattern written
 * before, as Redis keeps each pattern once (%R~k %W~k is ~k). 0, or -1 out
 * of memory. */
static int push_key_pattern(acl_user *user, const char *text, size_t len, unsigned perms)
{
    for (size_t i = 0; i < user->nkey_patterns; i++) {
        acl_key_pattern *kp = &user->key_patterns[i];
        if (strlen(kp->pattern) == len && memcmp(kp->pattern, text, len) == 0) {
            kp->perms |= perms;
            return 0;
        }
    }
    acl_key_pattern *grown =
        realloc(user->key_patterns, (user->nkey_patterns + 1) * sizeof(*grown));
    if (!grown)
        return -1;
    user->key_patterns = grown;
    if (!(grown[user->nkey_patterns].pattern = strndup(text, len)))
        return -1;
    grown[user->nkey_patterns++].perms = perms;
    return 0;
}

/* A key rule: ~pattern, or %R~ %W~ %RW~ (R and W in any case and order,
 * each at most once, as Redis's ACLSetSelector reads them). 0, or -1 with
 * why. Redis takes "%R" without '~' as a pattern for the empty key name;
 * here it is refused as the slip it most likely is. */
static int apply_key_rule(acl_user *user, const char *w, size_t n, char *why, size_t whylen)
{
    if (user->allkeys)
        return refuse(why, whylen, "'%.*s' after allkeys (~*) adds nothing: remove one", (int)n, w);
    unsigned perms = ACL_KEY_ALL;
    size_t at = 1;
    if (w[0] == '%') {
        perms = 0;
        for (; at < n && w[at] != '~'; at++) {
            unsigned bit = (w[at] == 'R' || w[at] == 'r')   ? ACL_KEY_READ
                           : (w[at] == 'W' || w[at] == 'w') ? ACL_KEY_WRITE
                                                            : 0;
            if (!bit || (perms & bit))
                break;
            perms |= bit;
        }
        if (at == n || w[at] != '~' || !perms)
            return refuse(why, whylen,
                          "'%.*s': key permissions are written %%R~pattern (read), "
                          "%%W~pattern (write) or %%RW~pattern (both)",
                          (int)n, w);
        at++;
    }
    return push_key_pattern(user, w + at, n - at, perms) < 0 ? refuse(why, whylen, "out of memory")
                                                             : 0;
}

static int push_rule(acl_user *user, int allow, int category, const char *command, size_t len)
{
    acl_command_rule *grown = realloc(user->rules, (user->nrules + 1) * sizeof(*grown));
    if (!grown)
        return -1;
    user->rules = grown;
    acl_command_rule *rule = &grown[user->nrules];
    *rule = (acl_command_rule){.allow = allow, .category = category};
    if (command) {
        if (!(rule->command = strndup(command, len)))
            return -1;
        for (char *c = rule->command; *c; c++)
            *c = (char)tolower((unsigned char)*c);
    }
    user->nrules++;
    return 0;
}

/* @all resets the list: what came before it no longer decides anything. */
static void clear_rules(acl_user *user)
{
    for (size_t i = 0; i < user->nrules; i++)
        free(user->rules[i].command);
    user->nrules = 0;
}

static int push_digest(acl_user *user, const unsigned char digest[ACL_DIGEST_LEN])
{
    for (size_t i = 0; i < user->npasswords; i++)
        if (memcmp(user->passwords[i], digest, ACL_DIGEST_LEN) == 0)
            return 0;
    void *grown = realloc(user->passwords, (user->npasswords + 1) * ACL_DIGEST_LEN);
    if (!grown)
        return -1;
    user->passwords = grown;
    memcpy(user->passwords[user->npasswords++], digest, ACL_DIGEST_LEN);
    user->nopass = 0;
    return 0;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static void reset_passwords(acl_user *user)
{
    free(user->passwords);
    user->passwords = NULL;
    user->npasswords = 0;
    user->nopass = 0;
}

/* One rule word. 0, or -1 with why. */
static int apply_word(acl_user *user, const char *w, size_t n, char *why, size_t whylen)
{
#define IS(word) (n == sizeof(word) - 1 && strncasecmp(w, word, n) == 0)
    if (IS("on") || IS("off")) {
        user->enabled = IS("on");
        return 0;
    }
    if (IS("nopass")) {
        reset_passwords(user);
        user->nopass = 1;
        return 0;
    }
    if (IS("resetpass")) {
        reset_passwords(user);
        return 0;
    }
    if (IS("allkeys") || (n == 2 && w[0] == '~' && w[1] == '*')) {
        free_key_patterns(user);
        user->allkeys = 1;
        return 0;
    }
    if (IS("resetkeys")) {
        free_key_patterns(user);
        user->allkeys = 0;
        return 0;
    }
    if (IS("allchannels") || (n == 2 && w[0] == '&' && w[1] == '*')) {
        free_strings(&user->channel_patterns, &user->nchannel_patterns);
        user->allchannels = 1;
        return 0;
    }
    if (IS("resetchannels")) {
        free_strings(&user->channel_patterns, &user->nchannel_patterns);
        user->allchannels = 0;
        return 0;
    }
    if (IS("allcommands") || IS("nocommands")) {
        clear_rules(user);
        return push_rule(user, IS("allcommands"), ACL_RULE_ALL, NULL, 0) < 0
                   ? refuse(why, whylen, "out of memory")
                   : 0;
    }
    if (IS("reset")) {
        reset_passwords(user);
        free_key_patterns(user);
        free_strings(&user->channel_patterns, &user->nchannel_patterns);
        user->allkeys = user->allchannels = 0;
        user->enabled = 0;
        clear_rules(user);
        return 0;
    }
#undef IS
    switch (w[0]) {
    case '>': {
        unsigned char digest[ACL_DIGEST_LEN];
        acl_digest(w + 1, n - 1, digest);
        return push_digest(user, digest) < 0 ? refuse(why, whylen, "out of memory") : 0;
    }
    case '#': {
        if (n - 1 != 2 * ACL_DIGEST_LEN)
            return refuse(why, whylen,
                          "a '#' password hash must be 64 lower-case hex digits (SHA-256)");
        unsigned char digest[ACL_DIGEST_LEN];
        for (size_t i = 0; i < ACL_DIGEST_LEN; i++) {
            int hi = hex_value(w[1 + 2 * i]), lo = hex_value(w[2 + 2 * i]);
            if (hi < 0 || lo < 0)
                return refuse(why, whylen,
                              "a '#' password hash must be 64 lower-case hex digits (SHA-256)");
            digest[i] = (unsigned char)(hi << 4 | lo);
        }
        return push_digest(user, digest) < 0 ? refuse(why, whylen, "out of memory") : 0;
    }
    case '<':
    case '!':
        return refuse(why, whylen,
                      "'%c' removes a password: in proxy.ini leave the password out instead", w[0]);
    case '~':
    case '%':
        return apply_key_rule(user, w, n, why, whylen);
    case '&':
        if (user->allchannels)
            return refuse(why, whylen, "'%.*s' after allchannels (&*) adds nothing: remove one",
                          (int)n, w);
        return push_string(&user->channel_patterns, &user->nchannel_patterns, w + 1, n - 1) < 0
                   ? refuse(why, whylen, "out of memory")
                   : 0;
    case '(':
        return refuse(why, whylen, "selectors '(...)' are not supported");
    case '+':
    case '-': {
        int allow = w[0] == '+';
        if (n >= 2 && w[1] == '@') {
            const char *cat = w + 2;
            size_t len = n - 2;
            if (len == 3 && strncasecmp(cat, "all", 3) == 0) {
                clear_rules(user);
                return push_rule(user, allow, ACL_RULE_ALL, NULL, 0) < 0
                           ? refuse(why, whylen, "out of memory")
                           : 0;
            }
            int i = acl_category_lookup(cat, len);
            if (i < 0)
                return refuse(why, whylen, "unknown category '%.*s'", (int)n - 1, w + 1);
            return push_rule(user, allow, i, NULL, 0) < 0 ? refuse(why, whylen, "out of memory")
                                                          : 0;
        }
        if (n < 2)
            return refuse(why, whylen, "'%c' without a command or @category", w[0]);
        return push_rule(user, allow, -1, w + 1, n - 1) < 0 ? refuse(why, whylen, "out of memory")
                                                            : 0;
    }
    default:
        return refuse(why, whylen, "unknown rule '%.*s'", (int)n, w);
    }
}

int acl_user_apply(acl_user *user, const char *rules, char *why, size_t whylen)
{
    const char *p = rules;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            return 0;
        const char *start = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        if (apply_word(user, start, (size_t)(p - start), why, whylen) < 0)
            return -1;
    }
}

void acl_user_free(acl_user *user)
{
    if (!user)
        return;
    free(user->name);
    free(user->passwords);
    free_key_patterns(user);
    free_strings(&user->channel_patterns, &user->nchannel_patterns);
    clear_rules(user);
    free(user->rules);
    memset(user, 0, sizeof(*user));
}

/* Appends to buf as snprintf would, tracking the length needed. */
__attribute__((format(printf, 4, 5))) static void put(char *buf, size_t buflen, size_t *o,
                                                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*o < buflen ? buf + *o : NULL, *o < buflen ? buflen - *o : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        *o += (size_t)n;
}

size_t acl_user_describe(const acl_user *user, char *buf, size_t buflen)
{
    size_t o = 0;
    if (buflen)
        buf[0] = '\0';
    put(buf, buflen, &o, "user %s %s", user->name, user->enabled ? "on" : "off");
    if (user->nopass)
        put(buf, buflen, &o, " nopass");
    for (size_t i = 0; i < user->npasswords; i++) {
        put(buf, buflen, &o, " #");
        for (size_t j = 0; j < ACL_DIGEST_LEN; j++)
            put(buf, buflen, &o, "%02x", user->passwords[i][j]);
    }
    if (user->allkeys)
        put(buf, buflen, &o, " ~*");
    /* as Redis's sdsCatPatternString: ~ for both, else %R~ or %W~ */
    for (size_t i = 0; i < user->nkey_patterns; i++) {
        const acl_key_pattern *kp = &user->key_patterns[i];
        const char *prefix = kp->perms == ACL_KEY_READ    ? "%R~"
                             : kp->perms == ACL_KEY_WRITE ? "%W~"
                                                          : "~";
        put(buf, buflen, &o, " %s%s", prefix, kp->pattern);
    }
    if (user->allchannels)
        put(buf, buflen, &o, " &*");
    else if (user->nchannel_patterns == 0)
        put(buf, buflen, &o, " resetchannels");
    for (size_t i = 0; i < user->nchannel_patterns; i++)
        put(buf, buflen, &o, " &%s", user->channel_patterns[i]);
    /* Redis starts the command rules from -@all unless they start with @all */
    if (user->nrules == 0 || user->rules[0].category != ACL_RULE_ALL)
        put(buf, buflen, &o, " -@all");
    for (size_t i = 0; i < user->nrules; i++) {
        const acl_command_rule *rule = &user->rules[i];
        char sign = rule->allow ? '+' : '-';
        if (rule->category == ACL_RULE_ALL)
            put(buf, buflen, &o, " %c@all", sign);
        else if (rule->category >= 0)
            put(buf, buflen, &o, " %c@%s", sign, acl_category_name(rule->category));
        else
            put(buf, buflen, &o, " %c%s", sign, rule->command);
    }
    return o;
}

void acl_digest(const void *data, size_t len, unsigned char out[ACL_DIGEST_LEN])
{
    SHA256(data, len, out);
}

int acl_user_check_password(const acl_user *user, const char *password, size_t len)
{
    if (!user->enabled)
        return 0;
    if (user->nopass)
        return 1;
    unsigned char digest[ACL_DIGEST_LEN];
    acl_digest(password, len, digest);
    int match = 0;
    /* every digest compared, in constant time, so the time taken says
     * nothing of which one matched or how much of it */
    for (size_t i = 0; i < user->npasswords; i++)
        match |= CRYPTO_memcmp(digest, user->passwords[i], ACL_DIGEST_LEN) == 0;
    return match;
}

/* Redis's stringmatchlen, without the nocase option: '*' any run, '?' one
 * byte, [set] with ranges and '^' negation, '\' escapes the next byte. */
int acl_glob_match(const char *p, size_t plen, const char *s, size_t slen)
{
    while (plen && slen) {
        switch (p[0]) {
        case '*':
            while (plen > 1 && p[1] == '*') {
                p++;
                plen--;
            }
            if (plen == 1)
                return 1;
            for (; slen; s++, slen--)
                if (acl_glob_match(p + 1, plen - 1, s, slen))
                    return 1;
            return 0;
        case '?':
            break;
        case '[': {
            p++;
            plen--;
            int negate = plen && p[0] == '^';
            if (negate) {
                p++;
                plen--;
            }
            int match = 0;
            for (;;) {
                if (plen == 0) {
                    /* Redis reads an unterminated set as ending here */
                    p--;
                    plen++;
                    break;
                }
                if (p[0] == '\\' && plen >= 2) {
                    p++;
                    plen--;
                    if (p[0] == s[0])
                        match = 1;
                } else if (p[0] == ']') {
                    break;
                } else if (plen >= 3 && p[1] == '-') {
                    unsigned char lo = (unsigned char)p[0], hi = (unsigned char)p[2];
                    unsigned char c = (unsigned char)s[0];
                    if (lo > hi) {
                        unsigned char t = lo;
                        lo = hi;
                        hi = t;
                    }
                    if (c >= lo && c <= hi)
                        match = 1;
                    p += 2;
                    plen -= 2;
                } else if (p[0] == s[0]) {
                    match = 1;
                }
                p++;
                plen--;
            }
            if (negate)
                match = !match;
            if (!match)
                return 0;
            break;
        }
        case '\\':
            if (plen >= 2) {
                p++;
                plen--;
            }
            /* fall through */
        default:
            if (p[0] != s[0])
                return 0;
            break;
        }
        p++;
        plen--;
        s++;
        slen--;
    }
    while (plen && p[0] == '*') {
        p++;
        plen--;
    }
    return plen == 0 && slen == 0;
}
