/* Locally answered commands and INFO. Everything here is answered in order
 * with forwarded replies, through the same reply slots. */
#include "proxy/admin.h"

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "proxy/access.h"
#include "proxy/backend.h"
#include "proxy/buf.h"
#include "proxy/dns.h"
#include "proxy/epoch.h"
#include "proxy/lock.h"
#include "proxy/log.h"
#include "proxy/pause.h"
#include "proxy/pubsub.h"
#include "proxy/rebalance.h"
#include "proxy/reload.h"
#include "proxy/sentinel.h"
#include "proxy/server.h"
#include "proxy/slowlog.h"
#include "proxy/txn.h"
#include "proxy/workers.h"

static void reply(request *req, const char *bytes, size_t len)
{
    req->on_done(req, bytes, len);
}

static void reply_str(request *req, const char *s)
{
    reply(req, s, strlen(s));
}

/* Answers with the reply built in b, or with an error when building it ran
 * out of memory; frees b. */
static void reply_buf(request *req, buf *b)
{
    request_reply_buf(req, b);
    buf_free(b);
}

static void reply_bulk(request *req, const char *s, size_t len)
{
    buf b = {0};
    buf_append_bulk(&b, s, len);
    reply_buf(req, &b);
}

/* Answers with the text built in text as one bulk string, verbatim in
 * RESP3 (or with an error when building it ran out of memory); frees text. */
static void reply_text(request *req, buf *text)
{
    if (buf_failed(text))
        request_reply_buf(req, text);
    else
        request_reply_text(req, text->data ? buf_head(text) : "", buf_len(text));
    buf_free(text);
}

/* Redis ends INFO without the blank line of the last section. */
static void drop_blank_line(buf *text)
{
    if (buf_len(text) >= 2)
        text->end -= 2;
}

/* INFO rebalance: this proxy's migration, then the fleet's (epoch.c). */
static int info_rebalance(buf *text)
{
    if (rebalance_info(text) < 0)
        return -1;
    drop_blank_line(text);
    if (epoch_info_rebalance(text) < 0)
        return -1;
    return buf_printf(text, "\r\n");
}

static void reply_error_line(request *req, const char *msg)
{
    buf b = {0};
    buf_printf(&b, "-%s\r\n", msg);
    reply_buf(req, &b);
}

/* Appends a C string as a bulk string. */
static void append_str(buf *b, const char *s)
{
    buf_append_bulk(b, s, strlen(s));
}

static int arg_is(const resp_arg *a, const char *s)
{
    return a->len == strlen(s) && strncasecmp(a->ptr, s, a->len) == 0;
}

/* Parses a whole decimal int64 argument. 0 or -1. */
static int arg_int(const resp_arg *a, long long *out)
{
    char tmp[32];
    if (a->len == 0 || a->len >= sizeof(tmp))
        return -1;
    /* Redis's strict form: no leading zeros, no "-0", no '+'. */
    const char *d = a->ptr[0] == '-' ? a->ptr + 1 : a->ptr;
    size_t dl = a->len - (size_t)(d - a->ptr);
    if (dl == 0 || (d[0] == '0' && (dl > 1 || d != a->ptr)) || d[0] < '0' || d[0] > '9')
        return -1;
    memcpy(tmp, a->ptr, a->len);
    tmp[a->len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(tmp, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/* ---- INFO ---- */

static int section_wanted(const char *name, size_t argc, const resp_arg *argv)
{
    if (argc < 2)
        return 1;
    for (size_t i = 1; i < argc; i++)
        if (arg_is(&argv[i], name) || arg_is(&argv[i], "all") || arg_is(&argv[i], "default") ||
            arg_is(&argv[i], "everything"))
            return 1;
    return 0;
}

static int info_server(buf *b)
{
    time_t now = time(NULL);
    char when[32] = "never";
    if (srv.last_reload_time)
        snprintf(when, sizeof(when), "%lld", (long long)srv.last_reload_time);
    int fail = buf_printf(
        b,
        "# Server\r\n"
        "ringproxy_version:%s\r\n"
        "redis_version:%s\r\n"
        "redis_mode:standalone\r\n"
        "process_id:%d\r\n"
        "tcp_port:%d\r\n"
        "uptime_in_seconds:%lld\r\n"
        "config_file:%s\r\n"
        "config_epoch:%llu\r\n"
        "last_reload_time:%s\r\n"
        "last_reload_error:%s\r\n"
        "hash:%s\r\n"
        "compat:%s\r\n"
        "workers:%d\r\n"
        "worker_index:%d\r\n",
        RINGPROXY_VERSION, RINGPROXY_REDIS_COMPAT, (int)getpid(), srv.listen_port,
        (long long)(now - srv.start_time), srv.cfg->path, (unsigned long long)srv.config_epoch,
        when, srv.last_reload_error[0] ? srv.last_reload_error : "none", hash_name(srv.cfg->hash),
        srv.cfg->compat == RING_TWEMPROXY ? "twemproxy" : "none", srv.workers > 1 ? srv.workers : 1,
        srv.worker_index);
    if (fail < 0 || epoch_info_server(b) < 0)
        return -1;
    return buf_printf(b, "\r\n");
}

/* Clients and Stats are totals over the workers (workers_totals). */
static int info_clients(buf *b)
{
    server_stats st;
    int nclients, blocked;
    workers_totals(&st, &nclients, &blocked);
    /* No client tracking through the proxy: tracking_clients is 0. */
    return buf_printf(b,
                      "# Clients\r\n"
                      "connected_clients:%d\r\n"
                      "max_clients:%d\r\n"
                      "blocked_clients:%d\r\n"
                      "tracking_clients:0\r\n"
                      "\r\n",
                      nclients, srv.cfg->max_clients, blocked);
}

static int info_stats(buf *b)
{
    server_stats total;
    int nclients, blocked;
    workers_totals(&total, &nclients, &blocked);
    const server_stats *st = &total;
    return buf_printf(
        b,
        "# Stats\r\n"
        "total_connections_received:%llu\r\n"
        "rejected_connections:%llu\r\n"
        "total_commands_processed:%llu\r\n"
        "instantaneous_ops_per_sec:%llu\r\n"
        "total_net_input_bytes:%llu\r\n"
        "total_net_output_bytes:%llu\r\n"
        "errors_protocol:%llu\r\n"
        "errors_unknown_command:%llu\r\n"
        "errors_unsupported_command:%llu\r\n"
        "errors_wrong_arity:%llu\r\n"
        "errors_crossslot:%llu\r\n"
        "errors_noauth:%llu\r\n"
        "auth_failures:%llu\r\n"
        "errors_shard_unavailable:%llu\r\n"
        "errors_shard_timeout:%llu\r\n"
        "clients_dropped:%llu\r\n"
        "total_error_replies:%llu\r\n"
        "\r\n",
        (unsigned long long)st->connections_received, (unsigned long long)st->connections_rejected,
        (unsigned long long)st->commands, (unsigned long long)st->ops_per_sec,
        (unsigned long long)st->net_input_bytes, (unsigned long long)st->net_output_bytes,
        (unsigned long long)st->errors_protocol, (unsigned long long)st->errors_unknown,
        (unsigned long long)st->errors_unsupported, (unsigned long long)st->errors_arity,
        (unsigned long long)st->errors_crossslot, (unsigned long long)st->errors_noauth,
        (unsigned long long)st->auth_failures, (unsigned long long)st->errors_shard,
        (unsigned long long)st->errors_timeout, (unsigned long long)st->clients_dropped,
        (unsigned long long)st->error_replies);
}

static int info_shards(buf *b)
{
    buf_printf(b, "# Shards\r\nshards:%zu\r\n", srv.nshards);
    for (size_t i = 0; i < srv.nshards; i++) {
        const shard *s = srv.shards[i];
        unsigned long long avg = s->replies ? s->latency_us_sum / s->replies : 0;
        buf_printf(b,
                   "shard_%s:addr=%s:%u,weight=%u,state=%s,connections=%d,reserved=%d,"
                   "inflight=%zu,requests=%llu,errors=%llu,timeouts=%llu,"
                   "avg_latency_us=%llu",
                   s->name, s->host, (unsigned)s->port, (unsigned)srv.cfg->shards[i].weight,
                   backend_shard_state(s), s->nconns, s->reserved, backend_shard_inflight(s),
                   (unsigned long long)s->requests, (unsigned long long)s->errors,
                   (unsigned long long)s->timeouts, avg);
        (void)sentinel_shard_info(s, b);
        (void)dns_shard_info(s, b);
        buf_printf(b, "\r\n");
    }
    (void)sentinel_info(b);
    return buf_printf(b, "\r\n");
}

static void commandstat_line(const command *c, void *arg)
{
    buf *b = arg;
    command_counters total = workers_command_totals(c->stat); /* over every worker */
    const command_counters *k = &total;
    if (k->calls || k->rejected_calls)
        buf_printf(b,
                   "cmdstat_%s:calls=%llu,usec=%llu,usec_per_call=%.2f,rejected_calls=%llu,"
                   "failed_calls=%llu\r\n",
                   c->name, (unsigned long long)k->calls, (unsigned long long)k->usec,
                   k->calls ? (double)k->usec / (double)k->calls : 0.0,
                   (unsigned long long)k->rejected_calls, (unsigned long long)k->failed_calls);
}

/* INFO commandstats, in Redis's form. usec is the time in the proxy, from
 * the loop iteration a request was dispatched in to the one its reply came
 * in (the shards' own INFO commandstats have their execution times). */
static void info_commandstats(buf *b)
{
    buf_printf(b, "# Commandstats\r\n");
    command_foreach(commandstat_line, b);
    buf_printf(b, "\r\n");
}

static void latencystat_line(const command *c, void *arg)
{
    buf *b = arg;
    command_counters total = workers_command_totals(c->stat); /* over every worker */
    const command_counters *k = &total;
    if (!k->calls)
        return;
    buf_printf(b, "latency_percentiles_usec_%s:p50=%.3f,p99=%.3f,p99.9=%.3f\r\n", c->name,
               (double)histogram_percentile(&k->latency, 50.0),
               (double)histogram_percentile(&k->latency, 99.0),
               (double)histogram_percentile(&k->latency, 99.9));
}

/* INFO latencystats, as Redis 7 prints it. A percentile is the upper
 * bound of its histogram bucket: at most 12.5% above the true value
 * (proxy/histogram.h), where Redis's HDR histogram keeps 2 digits. */
static void info_latencystats(buf *b)
{
    buf_printf(b, "# Latencystats\r\n");
    command_foreach(latencystat_line, b);
    buf_printf(b, "\r\n");
}

/* INFO errorstats: error replies by their first word, sorted by it as
 * Redis's are. */
static void info_errorstats(buf *b)
{
    const server_stats *st = &srv.stats;
    size_t order[SERVER_ERRORSTATS_MAX];
    for (size_t i = 0; i < st->nerrorstats; i++) {
        size_t j = i;
        for (; j > 0 && strcmp(st->errorstats[order[j - 1]].kind, st->errorstats[i].kind) > 0; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    buf_printf(b, "# Errorstats\r\n");
    for (size_t i = 0; i < st->nerrorstats; i++)
        buf_printf(b, "errorstat_%s:count=%llu\r\n", st->errorstats[order[i]].kind,
                   (unsigned long long)st->errorstats[order[i]].count);
    buf_printf(b, "\r\n");
}

/* Whether INFO's arguments ask for a section that plain INFO (and INFO
 * default) leaves out, as Redis leaves out commandstats. */
static int extra_section_wanted(const char *name, size_t argc, const resp_arg *argv)
{
    for (size_t i = 1; i < argc; i++)
        if (arg_is(&argv[i], name) || arg_is(&argv[i], "all") || arg_is(&argv[i], "everything"))
            return 1;
    return 0;
}

size_t admin_info(request *req, size_t argc, const resp_arg *argv, resp_arg sections[2])
{
    buf text = {0};
    /* Each section returns -1 when out of memory, as text keeps it. */
    if (section_wanted("server", argc, argv))
        (void)info_server(&text);
    if (section_wanted("clients", argc, argv))
        (void)info_clients(&text);
    if (section_wanted("stats", argc, argv))
        (void)info_stats(&text);
    if (section_wanted("shards", argc, argv))
        (void)info_shards(&text);
    if (section_wanted("rebalance", argc, argv))
        (void)info_rebalance(&text);
    if (section_wanted("locks", argc, argv))
        (void)lock_info(&text);
    if (section_wanted("errorstats", argc, argv))
        info_errorstats(&text);
    if (extra_section_wanted("commandstats", argc, argv))
        info_commandstats(&text);
    if (extra_section_wanted("latencystats", argc, argv))
        info_latencystats(&text);
    /* Plain INFO (and INFO default) stays local, unlike Redis's, which
     * has the Keyspace: it must answer at once while a shard is stalled.
     * The shards are asked only when keyspace, all or everything is. */
    size_t n = 0;
    if (extra_section_wanted("keyspace", argc, argv)) {
        sections[n++] = (resp_arg){"keyspace", 8};
        if (section_wanted("stats", argc, argv))
            sections[n++] = (resp_arg){"stats", 5};
    }
    if (n == 0 || buf_failed(&text)) {
        drop_blank_line(&text);
        reply_text(req, &text);
        return 0;
    }
    req->local_part = text; /* the merge adds the shards' part */
    return n;
}

/* ---- CONFIG ---- */

/* Whether a CONFIG GET pattern matches name: Redis's glob, without regard
 * to case. */
static int config_pattern_matches(const resp_arg *pattern, const char *name)
{
    char pat[256];
    if (pattern->len >= sizeof(pat))
        return 0;
    memcpy(pat, pattern->ptr, pattern->len);
    pat[pattern->len] = '\0';
    return fnmatch(pat, name, FNM_CASEFOLD) == 0;
}

/* CONFIG GET: the proxy's own settings matching the patterns, each once, as
 * an array reply (name, value, ...) kept in req->local_part for the merge,
 * which gives the whole reply the client's form (a map in RESP3). */
static void config_get_own(request *req, size_t argc, const resp_arg *argv)
{
    buf pairs = {0};
    size_t n = 0;
    for (size_t i = 0; i < config_key_count(); i++) {
        const char *name = config_key_name(i);
        int matched = 0;
        for (size_t p = 2; p < argc && !matched; p++)
            matched = config_pattern_matches(&argv[p], name);
        if (!matched)
            continue;
        char value[CONFIG_ADDR_MAX];
        config_key_value(srv.cfg, i, value, sizeof(value));
        append_str(&pairs, name);
        append_str(&pairs, value);
        n += 2;
    }
    buf_append_header(&req->local_part, '*', (int64_t)n);
    if (n)
        buf_append(&req->local_part, buf_head(&pairs), buf_len(&pairs));
    if (buf_failed(&pairs))
        req->local_part.err = 1; /* the merge answers out of memory */
    buf_free(&pairs);
}

/* CONFIG SET: a proxy key is changed in proxy.ini, a Redis parameter on
 * every shard only when the configuration allows it. */
static int config_set_allowed(request *req, size_t argc, const resp_arg *argv)
{
    for (size_t i = 2; i < argc; i += 2)
        for (size_t k = 0; k < config_key_count(); k++)
            if (arg_is(&argv[i], config_key_name(k))) {
                request_error(req,
                              "ERR '%s' is a ringproxy setting: change it in proxy.ini, then "
                              "run PROXY RELOAD",
                              config_key_name(k));
                return 0;
            }
    if (argc % 2 != 0) {
        reply_str(req, "-ERR wrong number of arguments for 'config|set' command\r\n");
        return 0;
    }
    if (!srv.cfg->allow_config_set) {
        request_error(req, "ERR CONFIG SET of a Redis parameter is disabled in ringproxy "
                           "(allow_config_set = no)");
        return 0;
    }
    return 1;
}

int admin_config(request *req, const command *cmd, size_t argc, const resp_arg *argv)
{
    if (cmd->id == CMD_CONFIG_SET)
        return config_set_allowed(req, argc, argv);
    config_get_own(req, argc, argv);
    return 1;
}

/* ---- PROXY ---- */

static void cmd_proxy_shards(request *req)
{
    buf b = {0};
    buf_append_header(&b, '*', (int64_t)srv.nshards);
    for (size_t i = 0; i < srv.nshards; i++) {
        const shard *s = srv.shards[i];
        char addr[CONFIG_ADDR_MAX];
        config_format_addr(s->host, s->port, addr, sizeof(addr));
        const char *state = backend_shard_state(s);
        buf_append_header(&b, '*', 8);
        append_str(&b, "name");
        append_str(&b, s->name);
        append_str(&b, "addr");
        append_str(&b, addr);
        append_str(&b, "weight");
        buf_append_header(&b, ':', srv.cfg->shards[i].weight);
        append_str(&b, "state");
        append_str(&b, state);
    }
    reply_buf(req, &b);
}

static void cmd_proxy_ring(request *req, const resp_arg *key)
{
    uint32_t i = server_shard_of_key(key->ptr, key->len);
    const shard *s = srv.shards[i];
    char addr[CONFIG_ADDR_MAX];
    config_format_addr(s->host, s->port, addr, sizeof(addr));
    buf b = {0};
    buf_append_header(&b, '*', 2);
    append_str(&b, s->name);
    append_str(&b, addr);
    reply_buf(req, &b);
}

static void cmd_proxy_reload(request *req)
{
    char err[600], msg[640];
    int rc = reload_config("PROXY RELOAD", err, sizeof(err));
    /* The other workers read the same file, whatever this one made of it. */
    workers_reload_others();
    if (rc == 0) {
        reply_str(req, "+OK\r\n");
        return;
    }
    snprintf(msg, sizeof(msg), "ERR reload failed, running config kept: %s", err);
    for (char *p = msg; *p; p++)
        if (*p == '\r' || *p == '\n')
            *p = ' ';
    reply_error_line(req, msg);
}

static void cmd_proxy_rebalance(request *req)
{
    buf text = {0};
    (void)info_rebalance(&text);
    drop_blank_line(&text);
    reply_text(req, &text);
}

/* ---- connection commands ---- */

static void cmd_auth(request *req, size_t argc, const resp_arg *argv)
{
    if (argc > 3) {
        reply_str(req, "-ERR syntax error\r\n");
        return;
    }
    if (access_auth(req, argc == 3 ? &argv[1] : NULL, &argv[argc - 1]) == 0)
        reply_str(req, "+OK\r\n");
}

/* A client switching protocol while a subscription or a transaction holds
 * connections to the shards in the old one is refused: those connections
 * would go on answering in it. 1 after replying with the error. */
static int hello_switch_refused(request *req, const session *sess)
{
    if (!pubsub_active(sess) && !txn_in_multi(sess) && !txn_watching(sess))
        return 0;
    reply_str(req, "-ERR ringproxy cannot switch the protocol while the client is subscribed, "
                   "in MULTI or WATCHing keys\r\n");
    return 1;
}

static void cmd_hello(request *req, size_t argc, const resp_arg *argv)
{
    size_t i = 1;
    session *sess = req->session;
    int proto = sess ? sess->proto : 2;
    if (argc > 1) {
        long long ver;
        if (arg_int(&argv[1], &ver) < 0) {
            reply_str(req, "-ERR Protocol version is not an integer or out of range\r\n");
            return;
        }
        if (ver != 2 && ver != 3) {
            reply_str(req, "-NOPROTO sorry, this protocol version is not supported\r\n");
            return;
        }
        proto = (int)ver;
        i = 2;
    }
    const resp_arg *auth_user = NULL, *auth_pass = NULL;
    for (; i < argc; i++) {
        if (arg_is(&argv[i], "setname") && i + 1 < argc) {
            i++;
            continue;
        }
        if (arg_is(&argv[i], "auth") && i + 2 < argc) {
            auth_user = &argv[i + 1];
            auth_pass = &argv[i + 2];
            i += 2;
            continue;
        }
        reply_str(req, "-ERR Syntax error in HELLO option\r\n");
        return;
    }
    if (auth_pass && access_auth(req, auth_user, auth_pass) < 0)
        return;
    if (req->session && !req->session->user) {
        reply_str(req, "-NOAUTH HELLO must be called with the client already authenticated, "
                       "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                       "authenticate the client and select the RESP protocol version at the "
                       "same time\r\n");
        return;
    }
    if (sess && proto != sess->proto && hello_switch_refused(req, sess))
        return;
    for (i = 2; i + 1 < argc; i++) {
        if (arg_is(&argv[i], "auth")) {
            i += 2;
        } else if (arg_is(&argv[i], "setname") && req->session) {
            free(req->session->name);
            req->session->name = strndup(argv[i + 1].ptr, argv[i + 1].len);
            i++;
        }
    }
    if (sess)
        sess->proto = proto;
    /* Redis's map, in the protocol just chosen: a map in RESP3, else a flat
     * array of its keys and values. */
    buf b = {0};
    buf_append_header(&b, proto == 3 ? '%' : '*', proto == 3 ? 7 : 14);
    append_str(&b, "server");
    append_str(&b, "ringproxy");
    append_str(&b, "version");
    append_str(&b, RINGPROXY_REDIS_COMPAT);
    append_str(&b, "proto");
    buf_append_header(&b, ':', proto);
    append_str(&b, "id");
    buf_append_header(&b, ':', req->session ? (int64_t)req->session->id : 0);
    append_str(&b, "mode");
    append_str(&b, "standalone");
    append_str(&b, "role");
    append_str(&b, "master");
    append_str(&b, "modules");
    buf_append_header(&b, '*', 0);
    reply_buf(req, &b);
}

/* Whether a client name (or library name, version) has only printable
 * characters and no space, as Redis requires. */
static int printable_word(const resp_arg *a)
{
    for (size_t i = 0; i < a->len; i++) {
        unsigned char ch = (unsigned char)a->ptr[i];
        if (ch <= ' ' || ch > '~')
            return 0;
    }
    return 1;
}

/* CLIENT SETINFO LIB-NAME name | LIB-VER version (Redis 7.2). */
static void cmd_client_setinfo(request *req, const resp_arg *attr, const resp_arg *value)
{
    session *sess = req->session;
    char **field = NULL;
    if (arg_is(attr, "lib-name"))
        field = sess ? &sess->lib_name : NULL;
    else if (arg_is(attr, "lib-ver"))
        field = sess ? &sess->lib_ver : NULL;
    else {
        request_error(req, "ERR Unrecognized option '%.*s'", (int)(attr->len > 40 ? 40 : attr->len),
                      attr->ptr);
        return;
    }
    if (!printable_word(value)) {
        request_error(req, "ERR %s cannot contain spaces, newlines or special characters.",
                      arg_is(attr, "lib-name") ? "lib-name" : "lib-ver");
        return;
    }
    if (field) {
        free(*field);
        *field = value->len ? strndup(value->ptr, value->len) : NULL;
    }
    reply_str(req, "+OK\r\n");
}

/* CLIENT NO-EVICT on|off. */
static void cmd_client_no_evict(request *req, const resp_arg *mode)
{
    /* The proxy evicts no client for memory (max_client_output closes a
     * client over its limit, whatever it asked): on and off are accepted. */
    if (arg_is(mode, "on") || arg_is(mode, "off"))
        reply_str(req, "+OK\r\n");
    else
        reply_str(req, "-ERR syntax error\r\n");
}

/* CLIENT REPLY ON|OFF|SKIP. OFF and SKIP are not answered themselves.
 * What OFF silences is the replies to commands: pub/sub messages pushed
 * to a subscriber later are still written. */
static void cmd_client_reply(request *req, const resp_arg *mode)
{
    session *sess = req->session;
    if (arg_is(mode, "on")) {
        req->silent = 0;
        if (sess)
            sess->reply_mode = SESSION_REPLY_ON;
        reply_str(req, "+OK\r\n");
        return;
    }
    if (arg_is(mode, "off")) {
        if (sess)
            sess->reply_mode = SESSION_REPLY_OFF;
    } else if (arg_is(mode, "skip")) {
        if (sess && sess->reply_mode != SESSION_REPLY_OFF)
            sess->reply_mode = SESSION_REPLY_SKIP;
    } else {
        reply_str(req, "-ERR syntax error\r\n");
        return;
    }
    req->silent = 1;
    reply_str(req, "+OK\r\n");
}

/* What CLIENT KILL looks for; a zero / NULL field matches any client. */
typedef struct kill_filter {
    uint64_t id;           /* ID */
    const resp_arg *addr;  /* ADDR, or the old form's ip:port */
    const resp_arg *laddr; /* LADDR: the proxy's listen address */
    const resp_arg *user;  /* USER: the ACL user the client is authenticated as */
    int skip_me;           /* SKIPME yes (the new form's default) */
} kill_filter;

/* Reads CLIENT KILL's filters (argv[2..]). 0, or -1 after replying. */
static int kill_filters(request *req, size_t argc, const resp_arg *argv, kill_filter *kf)
{
    memset(kf, 0, sizeof(*kf));
    if (argc == 3) { /* CLIENT KILL ip:port: the old form, which may kill the caller */
        kf->addr = &argv[2];
        return 0;
    }
    kf->skip_me = 1;
    if (argc % 2 != 0) {
        reply_str(req, "-ERR syntax error\r\n");
        return -1;
    }
    for (size_t i = 2; i + 1 < argc; i += 2) {
        const resp_arg *opt = &argv[i], *val = &argv[i + 1];
        long long id;
        if (arg_is(opt, "id")) {
            if (arg_int(val, &id) < 0 || id <= 0) {
                reply_str(req, "-ERR client-id should be greater than 0\r\n");
                return -1;
            }
            kf->id = (uint64_t)id;
        } else if (arg_is(opt, "addr")) {
            kf->addr = val;
        } else if (arg_is(opt, "laddr")) {
            kf->laddr = val;
        } else if (arg_is(opt, "user")) {
            kf->user = val;
        } else if (arg_is(opt, "skipme")) {
            if (arg_is(val, "yes"))
                kf->skip_me = 1;
            else if (arg_is(val, "no"))
                kf->skip_me = 0;
            else {
                reply_str(req, "-ERR syntax error\r\n");
                return -1;
            }
        } else {
            reply_str(req, "-ERR syntax error\r\n");
            return -1;
        }
    }
    return 0;
}

static int kill_matches(const kill_filter *kf, const session *s, const session *me)
{
    if ((kf->skip_me && s == me) || (kf->id && s->id != kf->id))
        return 0;
    if (kf->user && !(kf->user->len == strlen(access_user_name(s)) &&
                      memcmp(kf->user->ptr, access_user_name(s), kf->user->len) == 0))
        return 0;
    if (kf->addr && !(s->addr && arg_is(kf->addr, s->addr)))
        return 0;
    if (kf->laddr) {
        char laddr[CONFIG_ADDR_MAX];
        config_format_addr(srv.cfg->listen_host, (uint16_t)srv.listen_port, laddr, sizeof(laddr));
        if (!arg_is(kf->laddr, laddr))
            return 0;
    }
    return 1;
}

/* CLIENT KILL: closes the proxy's own clients that match, after the
 * replies already due to them; the caller, when it matches (SKIPME no, or
 * the old form), once this reply is out. */
static void cmd_client_kill(request *req, size_t argc, const resp_arg *argv)
{
    kill_filter kf;
    if (kill_filters(req, argc, argv, &kf) < 0)
        return;
    session *me = req->session;
    long long killed = 0;
    int kill_me = 0;
    for (session *s = srv.sessions; s; s = s->next) {
        if (!kill_matches(&kf, s, me))
            continue;
        killed++;
        if (s == me)
            kill_me = 1;
        else
            s->close_after_replies(s, "killed by CLIENT KILL");
    }
    if (argc == 3 && killed == 0) {
        reply_str(req, "-ERR No such client\r\n");
        return;
    }
    if (argc == 3) {
        reply_str(req, "+OK\r\n");
    } else {
        buf b = {0};
        buf_append_header(&b, ':', killed);
        reply_buf(req, &b);
    }
    if (kill_me)
        me->close_after_replies(me, "killed itself by CLIENT KILL");
}

/* CLIENT UNBLOCK's request to the shard is answered: its :1 or :0 is the
 * client's answer. */
static void unblock_done(fragment *f, const char *reply, size_t len)
{
    request *req = f->req;
    req->pending = 0;
    req->on_done(req, reply, len);
}

/* CLIENT UNBLOCK id [TIMEOUT|ERROR]: the proxy's client id names a client
 * whose blocking command waits on a reserved connection; that connection's
 * own id on its shard (asked when it connected) is unblocked there, over
 * the caller's shared connection to that shard. The blocked command then
 * answers as Redis's does (nil, or -UNBLOCKED). :0 when the client is not
 * blocked, or its command has not reached the shard yet. */
static void cmd_client_unblock(request *req, size_t argc, const resp_arg *argv)
{
    long long id;
    if (arg_int(&argv[2], &id) < 0) {
        reply_str(req, "-ERR value is not an integer or out of range\r\n");
        return;
    }
    const char *how = "TIMEOUT";
    if (argc == 4 && arg_is(&argv[3], "error")) {
        how = "ERROR";
    } else if (argc > 4 || (argc == 4 && !arg_is(&argv[3], "timeout"))) {
        reply_str(req, "-ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR\r\n");
        return;
    }
    const backend_conn *conn = NULL;
    for (const session *s = srv.sessions; s && !conn; s = s->next)
        if (s->id == (uint64_t)id)
            conn = txn_blocked_conn(s);
    if (!conn || conn->state != BACKEND_UP || conn->shard_client_id <= 0) {
        reply_str(req, ":0\r\n");
        return;
    }
    char idtext[24];
    int idlen = snprintf(idtext, sizeof(idtext), "%lld", (long long)conn->shard_client_id);
    buf b = {0};
    buf_append_header(&b, '*', 4);
    append_str(&b, "CLIENT");
    append_str(&b, "UNBLOCK");
    buf_append_bulk(&b, idtext, (size_t)idlen);
    append_str(&b, how);
    if (buf_failed(&b)) {
        reply_buf(req, &b);
        return;
    }
    fragment *f = &req->single;
    f->req = req;
    f->done = unblock_done;
    f->harmless = 1;
    req->pending = 1;
    backend_send(conn->shard, req->hint, f, buf_head(&b), buf_len(&b));
    buf_free(&b);
}

/* CLIENT PAUSE timeout [WRITE|ALL]: holds the proxy's own clients. */
static void cmd_client_pause(request *req, size_t argc, const resp_arg *argv)
{
    long long ms;
    if (arg_int(&argv[2], &ms) < 0) {
        reply_str(req, "-ERR timeout is not an integer or out of range\r\n");
        return;
    }
    if (ms < 0) {
        reply_str(req, "-ERR timeout is negative\r\n");
        return;
    }
    pause_mode mode = PAUSE_ALL;
    if (argc == 4 && arg_is(&argv[3], "write")) {
        mode = PAUSE_WRITE;
    } else if (argc > 4 || (argc == 4 && !arg_is(&argv[3], "all"))) {
        reply_str(req, "-ERR syntax error\r\n");
        return;
    }
    pause_start(mode, (uint64_t)ms);
    reply_str(req, "+OK\r\n");
}

static void cmd_client(request *req, command_id id, size_t argc, const resp_arg *argv)
{
    session *sess = req->session;
    if (id == CMD_CLIENT_ID) {
        buf b = {0};
        buf_append_header(&b, ':', sess ? (int64_t)sess->id : 0);
        reply_buf(req, &b);
    } else if (id == CMD_CLIENT_GETNAME) {
        if (sess && sess->name)
            reply_bulk(req, sess->name, strlen(sess->name));
        else
            reply_str(req, "$-1\r\n");
    } else {
        (void)argc;
        if (!printable_word(&argv[2])) {
            reply_str(req, "-ERR Client names cannot contain spaces, newlines or special "
                           "characters.\r\n");
            return;
        }
        if (sess) {
            free(sess->name);
            sess->name = argv[2].len ? strndup(argv[2].ptr, argv[2].len) : NULL;
        }
        reply_str(req, "+OK\r\n");
    }
}

/* One CLIENT LIST line, with the fields of Redis's that mean something for
 * a proxy client (Redis 7.2's lib-name and lib-ver after the others), and
 * the proxy's own state= of the connection last. */
static void client_line(buf *b, const session *s)
{
    int channels, patterns;
    pubsub_counts(s, &channels, &patterns);
    char flags[8];
    size_t nf = 0;
    if (channels + patterns > 0)
        flags[nf++] = 'P';
    if (txn_in_multi(s))
        flags[nf++] = 'x';
    if (s->blocked)
        flags[nf++] = 'b';
    if (!nf)
        flags[nf++] = 'N';
    flags[nf] = '\0';
    uint64_t now = srv.now_us;
    uint64_t last = s->last_cmd_us ? s->last_cmd_us : s->created_us;
    buf_printf(b,
               "id=%llu addr=%s name=%s age=%llu idle=%llu flags=%s db=0 sub=%d psub=%d "
               "multi=%d cmd=%s user=%s lib-name=%s lib-ver=%s state=%s\n",
               (unsigned long long)s->id, s->addr ? s->addr : "?", s->name ? s->name : "",
               (unsigned long long)((now - s->created_us) / 1000000),
               (unsigned long long)((now - last) / 1000000), flags, channels, patterns,
               txn_multi_count(s), s->last_cmd ? s->last_cmd : "NULL", access_user_name(s),
               s->lib_name ? s->lib_name : "", s->lib_ver ? s->lib_ver : "",
               s->state ? s->state(s) : "?");
}

static void cmd_client_info(request *req)
{
    buf b = {0};
    if (req->session)
        client_line(&b, req->session);
    else
        buf_printf(&b, "\n");
    reply_text(req, &b);
}

/* CLIENT LIST [TYPE normal|pubsub|master|replica] [ID id ...]: the
 * proxy's own clients. */
static void cmd_client_list(request *req, size_t argc, const resp_arg *argv)
{
    int type = 0; /* 0 any, 1 normal, 2 pubsub, 3 none (master, replica) */
    size_t ids_from = 0;
    for (size_t i = 2; i < argc; i++) {
        if (arg_is(&argv[i], "type") && i + 1 < argc && !ids_from) {
            const resp_arg *t = &argv[++i];
            if (arg_is(t, "normal"))
                type = 1;
            else if (arg_is(t, "pubsub"))
                type = 2;
            else if (arg_is(t, "master") || arg_is(t, "replica") || arg_is(t, "slave"))
                type = 3;
            else {
                char msg[120];
                snprintf(msg, sizeof(msg), "ERR Unknown client type '%.*s'",
                         (int)(t->len > 40 ? 40 : t->len), t->ptr);
                reply_error_line(req, msg);
                return;
            }
        } else if (arg_is(&argv[i], "id") && i + 1 < argc && !ids_from) {
            ids_from = i + 1;
            for (size_t j = ids_from; j < argc; j++) {
                long long id;
                if (arg_int(&argv[j], &id) < 0 || id <= 0) {
                    reply_str(req, "-ERR Invalid client ID\r\n");
                    return;
                }
            }
            break;
        } else {
            reply_str(req, "-ERR syntax error\r\n");
            return;
        }
    }
    buf b = {0};
    for (const session *s = srv.sessions; s; s = s->next) {
        int subscribed = pubsub_active(s);
        if (type == 3 || (type == 1 && subscribed) || (type == 2 && !subscribed))
            continue;
        int listed = !ids_from;
        for (size_t j = ids_from; ids_from && j < argc && !listed; j++) {
            long long id;
            listed = arg_int(&argv[j], &id) == 0 && (uint64_t)id == s->id;
        }
        if (listed)
            client_line(&b, s);
    }
    reply_text(req, &b);
}

/* The connection's own commands: PING, ECHO, QUIT, SELECT. 1 when id is
 * one of them (answered), else 0. */
static int connection_execute(request *req, command_id id, size_t argc, const resp_arg *argv)
{
    switch (id) {
    case CMD_PING:
        if (argc > 2)
            reply_str(req, "-ERR wrong number of arguments for 'ping' command\r\n");
        else if (argc > 1)
            reply_bulk(req, argv[1].ptr, argv[1].len);
        else
            reply_str(req, "+PONG\r\n");
        return 1;
    case CMD_ECHO:
        reply_bulk(req, argv[1].ptr, argv[1].len);
        return 1;
    case CMD_QUIT:
        if (req->session)
            req->session->close_after_reply = 1;
        reply_str(req, "+OK\r\n");
        return 1;
    case CMD_SELECT: {
        long long db;
        if (arg_int(&argv[1], &db) < 0)
            reply_str(req, "-ERR value is not an integer or out of range\r\n");
        else if (db != 0)
            reply_str(req, "-ERR DB index is out of range (ringproxy serves database 0 only)\r\n");
        else
            reply_str(req, "+OK\r\n");
        return 1;
    }
    default:
        return 0;
    }
}

/* The CLIENT subcommands the proxy answers. 1 when id is one (answered),
 * else 0. */
static int client_execute(request *req, command_id id, size_t argc, const resp_arg *argv)
{
    switch (id) {
    case CMD_CLIENT_ID:
    case CMD_CLIENT_GETNAME:
    case CMD_CLIENT_SETNAME:
        cmd_client(req, id, argc, argv);
        return 1;
    case CMD_CLIENT_INFO:
        cmd_client_info(req);
        return 1;
    case CMD_CLIENT_LIST:
        cmd_client_list(req, argc, argv);
        return 1;
    case CMD_CLIENT_SETINFO:
        cmd_client_setinfo(req, &argv[2], &argv[3]);
        return 1;
    case CMD_CLIENT_NO_EVICT:
        cmd_client_no_evict(req, &argv[2]);
        return 1;
    case CMD_CLIENT_KILL:
        cmd_client_kill(req, argc, argv);
        return 1;
    case CMD_CLIENT_REPLY:
        cmd_client_reply(req, &argv[2]);
        return 1;
    case CMD_CLIENT_UNBLOCK:
        cmd_client_unblock(req, argc, argv);
        return 1;
    case CMD_CLIENT_PAUSE:
        cmd_client_pause(req, argc, argv);
        return 1;
    case CMD_CLIENT_UNPAUSE:
        pause_stop();
        reply_str(req, "+OK\r\n");
        return 1;
    default:
        return 0;
    }
}

void admin_execute(request *req, const command *cmd, size_t argc, const resp_arg *argv)
{
    if (connection_execute(req, cmd->id, argc, argv) || client_execute(req, cmd->id, argc, argv))
        return;
    switch (cmd->id) {
    case CMD_HELLO:
        cmd_hello(req, argc, argv);
        return;
    case CMD_AUTH:
        cmd_auth(req, argc, argv);
        return;
    case CMD_PROXY_SHARDS:
        cmd_proxy_shards(req);
        return;
    case CMD_PROXY_RING:
        cmd_proxy_ring(req, &argv[2]);
        return;
    case CMD_PROXY_RELOAD:
        cmd_proxy_reload(req);
        return;
    case CMD_PROXY_REBALANCE:
        cmd_proxy_rebalance(req);
        return;
    case CMD_ACL:
    case CMD_ACL_WHOAMI:
    case CMD_ACL_LIST:
    case CMD_ACL_USERS:
    case CMD_ACL_CAT:
    case CMD_ACL_GENPASS:
    case CMD_ACL_DRYRUN:
        access_acl_command(req, cmd, argc, argv);
        return;
    case CMD_SLOWLOG:
        slowlog_command(req, argc, argv);
        return;
    default:
        break;
    }
    log_error("BUG: local command '%s' has no handler", cmd->name);
    reply_str(req, "-ERR internal error: command has no handler\r\n");
}
