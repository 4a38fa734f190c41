/* ACL users at run time: [users] compiled against the command table (one
 * permission bit per row, by command.stat), the router's gate, AUTH, and
 * the ACL command. The rules themselves are parsed by config/acl.c.
 *
 * Cost on the request path: a session whose user may do everything is
 * marked unrestricted and the router skips this module; the others pay a
 * bit test, and per key a glob match against each key pattern that grants
 * what the command does with the key (%R~ read, %W~ write, ~ both) until
 * one matches. */
#include "proxy/access.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "proxy/buf.h"
#include "proxy/log.h"
#include "proxy/server.h"

struct access_user {
    const acl_user *rules;  /* the parsed user (in cfg->users, or builtin_default) */
    unsigned char *allowed; /* bit per command.stat: may run that command row */
    int unrestricted;       /* every command, key and channel */
};

struct access_set {
    access_user *users; /* in name order, as ACL USERS and ACL LIST print them */
    size_t nusers;
    access_user *default_user;
    acl_user builtin_default; /* the default user when [users] does not name it */
    int has_builtin_default;
};

/* Keys checked without allocating; more take one allocation. */
#define ACCESS_STACK_KEYS 32

/* ACL GENPASS: Redis's default and largest sizes, in bits. */
#define GENPASS_DEFAULT_BITS 256
#define GENPASS_MAX_BITS     4096

/* ---- compiling ---- */

static int bit_is_set(const unsigned char *bits, unsigned i)
{
    return (bits[i / 8] >> (i % 8)) & 1;
}

static void set_bit(unsigned char *bits, unsigned i, int on)
{
    if (on)
        bits[i / 8] |= (unsigned char)(1u << (i % 8));
    else
        bits[i / 8] &= (unsigned char)~(1u << (i % 8));
}

/* Whether a command rule names row (a subcommand row is also named by its
 * container's name, as +config covers CONFIG GET). */
static int rule_names(const acl_command_rule *rule, const command *row, const command *container)
{
    if (strcmp(rule->command, row->name) == 0)
        return 1;
    return container && strcmp(rule->command, container->name) == 0;
}

/* Whether the rules, applied in order, allow row. */
static int rules_allow(const acl_user *u, const command *row, const command *container)
{
    int allowed = 0;
    for (size_t i = 0; i < u->nrules; i++) {
        const acl_command_rule *rule = &u->rules[i];
        if (rule->category == ACL_RULE_ALL ||
            (rule->category >= 0 && (row->acl & (1u << rule->category))) ||
            (rule->category == -1 && rule_names(rule, row, container)))
            allowed = rule->allow;
    }
    return allowed;
}

/* Whether a command rule's name is a row of the table ("get",
 * "config|get"). */
static int known_command(const char *name)
{
    const char *bar = strchr(name, '|');
    const command *cmd = command_lookup(name, bar ? (size_t)(bar - name) : strlen(name));
    if (!cmd || !bar)
        return cmd != NULL;
    for (size_t i = 0; i < cmd->nsubcommands; i++)
        if (strcmp(cmd->subcommands[i].name, name) == 0)
            return 1;
    return 0;
}

static int compile_user(access_user *au, const acl_user *u, const config *cfg, char *err,
                        size_t errlen)
{
    for (size_t i = 0; i < u->nrules; i++) {
        if (u->rules[i].category == -1 && !known_command(u->rules[i].command)) {
            snprintf(err, errlen, "%s:%d: user %s: unknown command '%s'", cfg->path, u->line,
                     u->name, u->rules[i].command);
            return -1;
        }
    }
    au->rules = u;
    size_t nbits = command_stat_count();
    au->allowed = calloc((nbits + 7) / 8, 1);
    if (!au->allowed) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t count;
    const command *table = command_table(&count);
    int everything = 1;
    for (size_t i = 0; i < count; i++) {
        const command *row = &table[i];
        int ok = rules_allow(u, row, NULL);
        set_bit(au->allowed, row->stat, ok);
        everything &= ok;
        for (size_t j = 0; j < row->nsubcommands; j++) {
            const command *sub = &row->subcommands[j];
            ok = rules_allow(u, sub, row);
            set_bit(au->allowed, sub->stat, ok);
            everything &= ok;
        }
    }
    au->unrestricted = everything && u->allkeys && u->allchannels;
    return 0;
}

/* The default user Redis starts with (on nopass ~* &* +@all), with
 * requirepass as its password when set. */
static int make_builtin_default(acl_user *u, const config *cfg)
{
    *u = (acl_user){.enabled = 1, .allkeys = 1, .allchannels = 1, .nopass = !cfg->requirepass};
    u->name = strdup("default");
    u->rules = calloc(1, sizeof(*u->rules));
    if (!u->name || !u->rules)
        return -1;
    u->rules[0] = (acl_command_rule){.allow = 1, .category = ACL_RULE_ALL};
    u->nrules = 1;
    if (cfg->requirepass) {
        if (!(u->passwords = malloc(ACL_DIGEST_LEN)))
            return -1;
        acl_digest(cfg->requirepass, strlen(cfg->requirepass), u->passwords[0]);
        u->npasswords = 1;
    }
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const access_user *)a)->rules->name, ((const access_user *)b)->rules->name);
}

access_set *access_build(const config *cfg, char *err, size_t errlen)
{
    access_set *a = calloc(1, sizeof(*a));
    if (!a || !(a->users = calloc(cfg->nusers + 1, sizeof(*a->users)))) {
        free(a);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < cfg->nusers; i++) {
        if (compile_user(&a->users[a->nusers], &cfg->users[i], cfg, err, errlen) < 0) {
            access_free(a);
            return NULL;
        }
        a->nusers++;
    }
    if (!config_find_user(cfg, "default", 7)) {
        a->has_builtin_default = 1;
        if (make_builtin_default(&a->builtin_default, cfg) < 0 ||
            compile_user(&a->users[a->nusers], &a->builtin_default, cfg, err, errlen) < 0) {
            snprintf(err, errlen, "out of memory");
            access_free(a);
            return NULL;
        }
        a->nusers++;
    }
    qsort(a->users, a->nusers, sizeof(*a->users), by_name);
    for (size_t i = 0; i < a->nusers; i++)
        if (strcmp(a->users[i].rules->name, "default") == 0)
            a->default_user = &a->users[i];
    return a;
}

void access_free(access_set *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->nusers; i++)
        free(a->users[i].allowed);
    free(a->users);
    if (a->has_builtin_default)
        acl_user_free(&a->builtin_default);
    free(a);
}

/* The user named name[0..len), or NULL. */
static access_user *find_user(const access_set *a, const char *name, size_t len)
{
    for (size_t i = 0; i < a->nusers; i++) {
        const char *n = a->users[i].rules->name;
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return &a->users[i];
    }
    return NULL;
}

static void session_set_user(session *sess, const access_user *u)
{
    sess->user = u;
    sess->unrestricted = u && u->unrestricted;
}

void access_commit(access_set *a)
{
    access_set *old = srv.access;
    srv.access = a;
    for (session *s = srv.sessions; s; s = s->next) {
        if (!s->user)
            continue;
        const char *name = s->user->rules->name;
        access_user *now = find_user(a, name, strlen(name));
        if (now && now->rules->enabled) {
            session_set_user(s, now);
            continue;
        }
        char why[160];
        snprintf(why, sizeof(why), "its user %s was %s by a reload", name,
                 now ? "turned off" : "removed");
        session_set_user(s, NULL);
        s->close_after_replies(s, why);
    }
    access_free(old);
}

void access_session_start(session *sess)
{
    const access_user *d = srv.access ? srv.access->default_user : NULL;
    session_set_user(sess, d && d->rules->enabled && d->rules->nopass ? d : NULL);
}

void access_session_reset(session *sess)
{
    access_session_start(sess);
}

const char *access_user_name(const session *sess)
{
    return sess->user ? sess->user->rules->name : "default";
}

/* ---- checking ---- */

typedef enum denial {
    ALLOWED = 0,
    NO_COMMAND, /* the command (row) is not allowed */
    NO_KEY,     /* one of its keys matches no key pattern */
    NO_CHANNEL, /* one of its channels matches no channel pattern */
} denial;

static int matches_any(char *const *patterns, size_t n, const char *s, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (acl_glob_match(patterns[i], strlen(patterns[i]), s, len))
            return 1;
    return 0;
}

/* Whether one of the user's key patterns that grants every permission in
 * need (ACL_KEY_READ, ACL_KEY_WRITE) matches key, as Redis's
 * ACLSelectorCheckKey: a use that neither reads nor writes (need 0, as
 * EXISTS) is granted by any pattern that matches. */
static int key_allowed(const acl_user *u, unsigned need, const char *key, size_t len)
{
    for (size_t i = 0; i < u->nkey_patterns; i++) {
        const acl_key_pattern *kp = &u->key_patterns[i];
        if ((kp->perms & need) == need &&
            acl_glob_match(kp->pattern, strlen(kp->pattern), key, len))
            return 1;
    }
    return 0;
}

/* A PSUBSCRIBE pattern is allowed only when it is one of the user's
 * channel patterns as written, as in Redis: a glob does not contain
 * another glob in general. */
static int same_as_any(char *const *patterns, size_t n, const char *s, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(patterns[i]) == len && memcmp(patterns[i], s, len) == 0)
            return 1;
    return 0;
}

static denial check_channels(const acl_user *u, const command *cmd, size_t argc,
                             const resp_arg *argv, size_t *bad)
{
    size_t last = cmd->id == CMD_PUBLISH ? 2 : argc;
    for (size_t i = 1; i < last && i < argc; i++) {
        int ok =
            cmd->id == CMD_PSUBSCRIBE
                ? same_as_any(u->channel_patterns, u->nchannel_patterns, argv[i].ptr, argv[i].len)
                : matches_any(u->channel_patterns, u->nchannel_patterns, argv[i].ptr, argv[i].len);
        if (!ok) {
            *bad = i;
            return NO_CHANNEL;
        }
    }
    return ALLOWED;
}

static denial check_keys(const acl_user *u, const command *cmd, size_t argc, const resp_arg *argv,
                         size_t *bad)
{
    size_t stack[ACCESS_STACK_KEYS];
    size_t *positions = argc <= ACCESS_STACK_KEYS ? stack : malloc(argc * sizeof(*positions));
    if (!positions)
        return NO_KEY; /* out of memory: refuse rather than let it through */
    size_t nkeys = 0;
    char err[160];
    denial d = ALLOWED;
    /* A bad numkeys is the router's to answer, with Redis's text: nothing
     * is accessed, so there is nothing to refuse. */
    if (command_keys(cmd, argc, argv, positions, &nkeys, err, sizeof(err)) == 0) {
        for (size_t i = 0; i < nkeys && d == ALLOWED; i++) {
            const resp_arg *key = &argv[positions[i]];
            unsigned need = command_key_access_of(cmd, argc, argv, i);
            if (!key_allowed(u, need, key->ptr, key->len)) {
                *bad = positions[i];
                d = NO_KEY;
            }
        }
    }
    if (positions != stack)
        free(positions);
    return d;
}

/* What, if anything, forbids user u this request; *bad gets the argument
 * index of the key or channel refused. */
static denial check(const access_user *au, const command *cmd, size_t argc, const resp_arg *argv,
                    size_t *bad)
{
    if (au->unrestricted)
        return ALLOWED;
    if (!bit_is_set(au->allowed, cmd->stat))
        return NO_COMMAND;
    const acl_user *u = au->rules;
    if (!u->allkeys && cmd->keys != KEYS_NONE) {
        denial d = check_keys(u, cmd, argc, argv, bad);
        if (d != ALLOWED)
            return d;
    }
    if (!u->allchannels &&
        (cmd->id == CMD_PUBLISH || cmd->id == CMD_SUBSCRIBE || cmd->id == CMD_PSUBSCRIBE))
        return check_channels(u, cmd, argc, argv, bad);
    return ALLOWED;
}

int access_check(request *req, const command *cmd, size_t argc, const resp_arg *argv)
{
    const session *sess = req->session;
    /* AUTH, HELLO, QUIT, RESET: always allowed, so any user can log in
     * again or leave (Redis's no_auth commands) */
    if (cmd->flags & COMMAND_FLAG_NO_AUTH)
        return 0;
    if (!sess->user) {
        srv.stats.errors_noauth++;
        command_stats[cmd->stat].rejected_calls++;
        request_error(req, "NOAUTH Authentication required.");
        return -1;
    }
    size_t bad = 0;
    switch (check(sess->user, cmd, argc, argv, &bad)) {
    case ALLOWED:
        return 0;
    case NO_COMMAND:
        request_error(req, "NOPERM this user has no permissions to run the '%s' command",
                      cmd->name);
        break;
    case NO_KEY:
        request_error(req, "NOPERM this user has no permissions to access one of the keys used as "
                           "arguments");
        break;
    case NO_CHANNEL:
        request_error(req, "NOPERM this user has no permissions to access one of the channels "
                           "used as arguments");
        break;
    }
    command_stats[cmd->stat].rejected_calls++;
    return -1;
}

/* ---- AUTH ---- */

static void reply_str(request *req, const char *s)
{
    req->on_done(req, s, strlen(s));
}

int access_auth(request *req, const resp_arg *user, const resp_arg *password)
{
    const access_set *a = srv.access;
    if (!user && a->default_user->rules->nopass) {
        reply_str(req, "-ERR AUTH <password> called without any password configured for the "
                       "default user. Are you sure your configuration is correct?\r\n");
        return -1;
    }
    access_user *au = user ? find_user(a, user->ptr, user->len) : a->default_user;
    /* the password is checked even for an unknown user, so that the time
     * taken does not tell names that exist from names that do not */
    int ok = acl_user_check_password(au ? au->rules : a->default_user->rules, password->ptr,
                                     password->len);
    if (!au || !ok) {
        srv.stats.auth_failures++;
        reply_str(req, "-WRONGPASS invalid username-password pair or user is disabled.\r\n");
        return -1;
    }
    if (req->session)
        session_set_user(req->session, au);
    return 0;
}

/* ---- the ACL command ---- */

static void reply_buf(request *req, buf *b)
{
    request_reply_buf(req, b);
    buf_free(b);
}

static void append_str(buf *b, const char *s)
{
    buf_append_bulk(b, s, strlen(s));
}

static void acl_list(request *req, int rules)
{
    const access_set *a = srv.access;
    buf b = {0};
    buf_append_header(&b, '*', (int64_t)a->nusers);
    for (size_t i = 0; i < a->nusers; i++) {
        const acl_user *u = a->users[i].rules;
        if (!rules) {
            append_str(&b, u->name);
            continue;
        }
        size_t need = acl_user_describe(u, NULL, 0) + 1;
        char *line = malloc(need);
        if (!line) {
            buf_free(&b);
            request_error(req, "ERR out of memory");
            return;
        }
        acl_user_describe(u, line, need);
        append_str(&b, line);
        free(line);
    }
    reply_buf(req, &b);
}

/* ACL CAT: the categories, or the commands of one. */
static void acl_cat(request *req, size_t argc, const resp_arg *argv)
{
    buf b = {0};
    if (argc == 2) {
        buf_append_header(&b, '*', ACL_CATEGORY_COUNT);
        for (int i = 0; i < ACL_CATEGORY_COUNT; i++)
            append_str(&b, acl_category_name(i));
        reply_buf(req, &b);
        return;
    }
    if (argc > 3) {
        request_error(req, "ERR wrong number of arguments for 'acl|cat' command");
        return;
    }
    int cat = acl_category_lookup(argv[2].ptr, argv[2].len);
    if (cat < 0) {
        request_error(req, "ERR Unknown category '%.*s'",
                      (int)(argv[2].len > 64 ? 64 : argv[2].len), argv[2].ptr);
        return;
    }
    size_t count, n = 0;
    const command *table = command_table(&count);
    buf names = {0};
    for (size_t i = 0; i < count; i++) {
        const command *row = &table[i];
        if (row->acl & (1u << cat)) {
            append_str(&names, row->name);
            n++;
        }
        for (size_t j = 0; j < row->nsubcommands; j++) {
            if (row->subcommands[j].acl & (1u << cat)) {
                append_str(&names, row->subcommands[j].name);
                n++;
            }
        }
    }
    buf_append_header(&b, '*', (int64_t)n);
    if (buf_len(&names))
        buf_append(&b, buf_head(&names), buf_len(&names));
    buf_free(&names);
    reply_buf(req, &b);
}

/* ACL GENPASS [bits]: random hex, 4 bits a digit, from the kernel. */
static void acl_genpass(request *req, size_t argc, const resp_arg *argv)
{
    long bits = GENPASS_DEFAULT_BITS;
    if (argc > 2) {
        char tmp[16];
        char *end;
        size_t n = argv[2].len < sizeof(tmp) - 1 ? argv[2].len : sizeof(tmp) - 1;
        memcpy(tmp, argv[2].ptr, n);
        tmp[n] = '\0';
        bits = strtol(tmp, &end, 10);
        if (n == 0 || *end || n != argv[2].len || bits <= 0 || bits > GENPASS_MAX_BITS) {
            request_error(req, "ERR ACL GENPASS argument must be the number of bits for the "
                               "output password, a positive number up to 4096");
            return;
        }
    }
    size_t digits = (size_t)(bits + 3) / 4;
    unsigned char raw[GENPASS_MAX_BITS / 8];
    size_t nraw = (digits + 1) / 2;
    if (getrandom(raw, nraw, 0) != (ssize_t)nraw) {
        request_error(req, "ERR cannot read random bytes");
        return;
    }
    static const char hex[] = "0123456789abcdef";
    char out[GENPASS_MAX_BITS / 4 + 1];
    for (size_t i = 0; i < digits; i++)
        out[i] = hex[i % 2 ? raw[i / 2] & 15 : raw[i / 2] >> 4];
    buf b = {0};
    buf_append_bulk(&b, out, digits);
    reply_buf(req, &b);
}

/* ACL DRYRUN user command [arg ...]: whether the user could run it, with
 * Redis's answers. */
static void acl_dryrun(request *req, size_t argc, const resp_arg *argv)
{
    const access_user *au = find_user(srv.access, argv[2].ptr, argv[2].len);
    if (!au) {
        request_error(req, "ERR User '%.*s' not found", (int)(argv[2].len > 64 ? 64 : argv[2].len),
                      argv[2].ptr);
        return;
    }
    const resp_arg *cargv = &argv[3];
    size_t cargc = argc - 3;
    const command *cmd = command_lookup(cargv[0].ptr, cargv[0].len);
    if (cmd && cmd->nsubcommands)
        cmd = command_subcommand(cmd, cargc, cargv);
    if (!cmd) {
        request_error(req, "ERR Command '%.*s' not found",
                      (int)(cargv[0].len > 64 ? 64 : cargv[0].len), cargv[0].ptr);
        return;
    }
    if (command_check_arity(cmd, cargc) < 0) {
        request_error(req, "ERR wrong number of arguments for '%s' command", cmd->name);
        return;
    }
    size_t bad = 0;
    buf b = {0};
    denial d = check(au, cmd, cargc, cargv, &bad);
    if (d == ALLOWED) {
        reply_str(req, "+OK\r\n");
        return;
    }
    if (d == NO_COMMAND)
        buf_printf(&b, "This user has no permissions to run the '%s' command", cmd->name);
    else
        buf_printf(&b, "This user has no permissions to access the '%.*s' %s",
                   (int)(cargv[bad].len > 128 ? 128 : cargv[bad].len), cargv[bad].ptr,
                   d == NO_KEY ? "key" : "channel");
    buf out = {0};
    buf_append_bulk(&out, buf_head(&b), buf_len(&b));
    buf_free(&b);
    reply_buf(req, &out);
}

/* The subcommands that change users: users are proxy.ini's. */
static void acl_refused(request *req, const command *cmd)
{
    const char *sub = strchr(cmd->name, '|');
    char upper[32];
    size_t n = 0;
    for (sub = sub ? sub + 1 : cmd->name; *sub && n < sizeof(upper) - 1; sub++)
        upper[n++] = (char)(*sub >= 'a' && *sub <= 'z' ? *sub - 32 : *sub);
    upper[n] = '\0';
    request_error(req,
                  "ERR ACL %s is not available through ringproxy: users come from the [users] "
                  "section of proxy.ini (edit it, then PROXY RELOAD)",
                  upper);
}

void access_acl_command(request *req, const command *cmd, size_t argc, const resp_arg *argv)
{
    switch (cmd->id) {
    case CMD_ACL_WHOAMI: {
        buf b = {0};
        append_str(&b, req->session ? access_user_name(req->session) : "default");
        reply_buf(req, &b);
        return;
    }
    case CMD_ACL_LIST:
        acl_list(req, 1);
        return;
    case CMD_ACL_USERS:
        acl_list(req, 0);
        return;
    case CMD_ACL_CAT:
        acl_cat(req, argc, argv);
        return;
    case CMD_ACL_GENPASS:
        acl_genpass(req, argc, argv);
        return;
    case CMD_ACL_DRYRUN:
        acl_dryrun(req, argc, argv);
        return;
    default:
        acl_refused(req, cmd);
        return;
    }
}
