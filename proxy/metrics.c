/* GET /metrics: the proxy's counters in Prometheus's text exposition
 * format (version 0.0.4), served by libevent's evhttp on the proxy's own
 * event loop. A scrape reads the same counters INFO does and builds the
 * whole text at once: nothing is kept per scrape. */
#include "proxy/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "proxy/backend.h"
#include "proxy/command.h"
#include "proxy/histogram.h"
#include "proxy/log.h"
#include "proxy/rebalance.h"
#include "proxy/server.h"
#include "proxy/workers.h"

/* Upper bounds of the duration histograms' buckets: powers of two of
 * microseconds, from 2^METRICS_LE_FIRST (16 µs) to 2^METRICS_LE_LAST (about
 * 16.8 s), each a boundary of proxy/histogram.h's buckets, so exact. */
#define METRICS_LE_FIRST 4
#define METRICS_LE_LAST  24

static struct {
    struct evhttp *http; /* NULL when metrics_listen is off */
} metrics;

/* # HELP and # TYPE of a metric family; its samples follow. */
static void family(buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, escaped as the format wants (backslash, quote, newline). */
static void label_value(buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            buf_printf(b, "\\%c", *v);
        else if (*v == '\n')
            buf_printf(b, "\\n");
        else
            buf_append(b, v, 1);
    }
}

/* name{label="value"} n */
static void sample(buf *b, const char *name, const char *label, const char *value, uint64_t n)
{
    if (label) {
        buf_printf(b, "%s{%s=\"", name, label);
        label_value(b, value);
        buf_printf(b, "\"} %llu\n", (unsigned long long)n);
    } else {
        buf_printf(b, "%s %llu\n", name, (unsigned long long)n);
    }
}

static void counter(buf *b, const char *name, const char *help, uint64_t n)
{
    family(b, name, "counter", help);
    sample(b, name, NULL, NULL, n);
}

static void gauge(buf *b, const char *name, const char *help, uint64_t n)
{
    family(b, name, "gauge", help);
    sample(b, name, NULL, NULL, n);
}

static const char *class_name(command_class cls)
{
    switch (cls) {
    case COMMAND_FORWARD:
        return "forward";
    case COMMAND_SPLIT:
        return "split";
    case COMMAND_SAME_SHARD:
        return "same_shard";
    case COMMAND_LOCAL:
        return "local";
    case COMMAND_FANOUT:
        return "fanout";
    case COMMAND_UNSUPPORTED:
        return "unsupported";
    case COMMAND_ITERATE:
        return "iterate";
    case COMMAND_TRANSACTION:
        return "transaction";
    case COMMAND_PUBSUB:
        return "pubsub";
    case COMMAND_LOCK:
        return "lock";
    }
    return "other";
}
#define CLASS_COUNT (COMMAND_LOCK + 1)

/* Which counter of command_counters a per-command family shows. */
typedef enum command_field {
    FIELD_CALLS,
    FIELD_FAILED,
    FIELD_REJECTED,
} command_field;

static uint64_t field_value(const command_counters *k, command_field f)
{
    switch (f) {
    case FIELD_CALLS:
        return k->calls;
    case FIELD_FAILED:
        return k->failed_calls;
    case FIELD_REJECTED:
        return k->rejected_calls;
    }
    return 0;
}

/* What a per-command walk writes to and reads. */
typedef struct field_arg {
    buf *b;
    const char *name;
    command_field field;
    uint64_t by_class[CLASS_COUNT];
} field_arg;

static void command_sample(const command *c, void *arg)
{
    field_arg *fa = arg;
    command_counters total = workers_command_totals(c->stat); /* over every worker */
    const command_counters *k = &total;
    fa->by_class[c->cls] += field_value(k, fa->field);
    if (k->calls || k->rejected_calls)
        sample(fa->b, fa->name, "cmd", c->name, field_value(k, fa->field));
}

/* One counter family per command (those used so far) and one per class. */
static void command_counter(buf *b, const char *name, const char *class_metric, command_field f,
                            const char *help, const char *class_help)
{
    family(b, name, "counter", help);
    field_arg fa = {.b = b, .name = name, .field = f};
    command_foreach(command_sample, &fa);
    family(b, class_metric, "counter", class_help);
    for (int cls = 0; cls < CLASS_COUNT; cls++)
        sample(b, class_metric, "class", class_name((command_class)cls), fa.by_class[cls]);
}

static void duration_samples(const command *c, void *arg)
{
    buf *b = arg;
    command_counters sum = workers_command_totals(c->stat); /* over every worker */
    const command_counters *k = &sum;
    uint64_t total = histogram_total(&k->latency);
    if (!total)
        return;
    const char *name = "ringproxy_command_duration_seconds";
    for (int e = METRICS_LE_FIRST; e <= METRICS_LE_LAST; e++) {
        uint64_t le_us = (uint64_t)1 << e;
        buf_printf(b, "%s_bucket{cmd=\"", name);
        label_value(b, c->name);
        buf_printf(b, "\",le=\"%.6f\"} %llu\n", (double)le_us / 1e6,
                   (unsigned long long)histogram_count_below(&k->latency, le_us));
    }
    buf_printf(b, "%s_bucket{cmd=\"", name);
    label_value(b, c->name);
    buf_printf(b, "\",le=\"+Inf\"} %llu\n", (unsigned long long)total);
    buf_printf(b, "%s_sum{cmd=\"", name);
    label_value(b, c->name);
    buf_printf(b, "\"} %.6f\n", (double)k->usec / 1e6);
    buf_printf(b, "%s_count{cmd=\"", name);
    label_value(b, c->name);
    buf_printf(b, "\"} %llu\n", (unsigned long long)total);
}

static void commands(buf *b)
{
    command_counter(b, "ringproxy_commands_total", "ringproxy_class_commands_total", FIELD_CALLS,
                    "Commands routed, by command (INFO commandstats calls).",
                    "Commands routed, by how the proxy routes them.");
    command_counter(b, "ringproxy_command_errors_total", "ringproxy_class_command_errors_total",
                    FIELD_FAILED, "Routed commands answered with an error (failed_calls).",
                    "Routed commands answered with an error, by routing class.");
    command_counter(b, "ringproxy_command_rejected_total", "ringproxy_class_command_rejected_total",
                    FIELD_REJECTED,
                    "Commands refused before routing: arity, NOAUTH, unsupported (rejected_calls).",
                    "Commands refused before routing, by routing class.");
    family(b, "ringproxy_command_duration_seconds", "histogram",
           "Time in the proxy, from the loop iteration a request was read in to the one its "
           "reply was known in.");
    command_foreach(duration_samples, b);
}

static void errors(buf *b, const server_stats *st)
{
    counter(b, "ringproxy_error_replies_total", "Error replies given to clients.",
            st->error_replies);
    family(b, "ringproxy_errors_total", "counter",
           "Error replies by their first word (INFO errorstats).");
    for (size_t i = 0; i < st->nerrorstats; i++)
        sample(b, "ringproxy_errors_total", "kind", st->errorstats[i].kind,
               st->errorstats[i].count);
    counter(b, "ringproxy_protocol_errors_total", "Malformed requests (the client was closed).",
            st->errors_protocol);
    counter(b, "ringproxy_clients_dropped_total",
            "Clients closed for a limit (output, idle, query buffer).", st->clients_dropped);
}

/* One sample per shard of a shard counter or gauge. */
static void shard_family(buf *b, const char *name, const char *type, const char *help,
                         uint64_t (*value)(const shard *s))
{
    family(b, name, type, help);
    for (size_t i = 0; i < srv.nshards; i++)
        sample(b, name, "shard", srv.shards[i]->name, value(srv.shards[i]));
}

static uint64_t shard_up(const shard *s)
{
    return strcmp(backend_shard_state(s), "up") == 0;
}
static uint64_t shard_requests(const shard *s)
{
    return s->requests;
}
static uint64_t shard_errors(const shard *s)
{
    return s->errors;
}
static uint64_t shard_timeouts(const shard *s)
{
    return s->timeouts;
}
static uint64_t shard_replies(const shard *s)
{
    return s->replies;
}
static uint64_t shard_inflight(const shard *s)
{
    return backend_shard_inflight(s);
}
static uint64_t shard_connections(const shard *s)
{
    return (uint64_t)s->nconns;
}

/* The per-shard families, one sample per shard each. */
static const struct shard_metric {
    const char *name;
    const char *type;
    const char *help;
    uint64_t (*value)(const shard *s);
} shard_metrics[] = {
    {"ringproxy_shard_up", "gauge", "1 when every connection to the shard is up, else 0.",
     shard_up},
    {"ringproxy_shard_connections", "gauge", "Shared connections to the shard.", shard_connections},
    {"ringproxy_shard_requests_total", "counter", "Requests sent to the shard.", shard_requests},
    {"ringproxy_shard_errors_total", "counter",
     "Errors the proxy answered for the shard (down, busy, timeout).", shard_errors},
    {"ringproxy_shard_timeouts_total", "counter", "Requests the shard timed out.", shard_timeouts},
    {"ringproxy_shard_replies_total", "counter", "Replies read from the shard.", shard_replies},
    {"ringproxy_shard_inflight", "gauge", "Requests waiting on the shard.", shard_inflight},
};

static void shards(buf *b)
{
    gauge(b, "ringproxy_shards", "Shards in the running config.", srv.nshards);
    for (size_t i = 0; i < sizeof(shard_metrics) / sizeof(shard_metrics[0]); i++) {
        const struct shard_metric *m = &shard_metrics[i];
        shard_family(b, m->name, m->type, m->help, m->value);
    }
    const char *name = "ringproxy_shard_reply_seconds_total";
    family(b, name, "counter",
           "Time from sending to the shard to its reply, summed over replies "
           "(divide by ringproxy_shard_replies_total for the mean).");
    for (size_t i = 0; i < srv.nshards; i++) {
        buf_printf(b, "%s{shard=\"", name);
        label_value(b, srv.shards[i]->name);
        buf_printf(b, "\"} %.6f\n", (double)srv.shards[i]->latency_us_sum / 1e6);
    }
}

/* What INFO rebalance prints, as metrics: the field's name after
 * "rebalance_", and how it is exposed. */
static const struct rebalance_metric {
    const char *field;
    const char *name;
    const char *type;
    const char *help;
} rebalance_metrics[] = {
    {"keys_scanned", "ringproxy_rebalance_keys_scanned_total", "counter",
     "Keys the background mover scanned, current rebalance."},
    {"keys_moved", "ringproxy_rebalance_keys_moved_total", "counter",
     "Keys the background mover moved, current rebalance."},
    {"keys_moved_on_demand", "ringproxy_rebalance_keys_moved_on_demand_total", "counter",
     "Keys moved before a request for them, current rebalance."},
    {"keys_remaining", "ringproxy_rebalance_keys_remaining", "gauge",
     "Keys left to scan (estimate)."},
    {"failed_batches", "ringproxy_rebalance_failed_batches_total", "counter",
     "MIGRATE batches that failed, current rebalance."},
    {"percent", "ringproxy_rebalance_progress_percent", "gauge",
     "Progress of the rebalance; 100 when idle."},
    {"completed", "ringproxy_rebalance_completed_total", "counter", "Rebalances finished."},
};

/* Reads "rebalance_<field>:<n>" from INFO rebalance's text. */
static uint64_t info_field(const char *text, const char *field)
{
    char key[64];
    snprintf(key, sizeof(key), "\nrebalance_%s:", field);
    const char *p = strstr(text, key);
    return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

static void rebalance(buf *b)
{
    buf info = {0};
    buf_printf(&info, "\n");
    (void)rebalance_info(&info);
    buf_append(&info, "", 1); /* a C string */
    const char *text = buf_failed(&info) ? "" : buf_head(&info);
    gauge(b, "ringproxy_rebalance_running", "1 while keys move between shards.",
          strstr(text, "\nrebalance_state:running") != NULL);
    for (size_t i = 0; i < sizeof(rebalance_metrics) / sizeof(rebalance_metrics[0]); i++) {
        const struct rebalance_metric *m = &rebalance_metrics[i];
        family(b, m->name, m->type, m->help);
        sample(b, m->name, NULL, NULL, info_field(text, m->field));
    }
    buf_free(&info);
}

int metrics_render(buf *b)
{
    /* Totals over the workers, as INFO's. */
    server_stats totals;
    int nclients, blocked;
    workers_totals(&totals, &nclients, &blocked);
    const server_stats *st = &totals;
    family(b, "ringproxy_info", "gauge", "Version of the proxy; always 1.");
    sample(b, "ringproxy_info", "version", RINGPROXY_VERSION, 1);
    gauge(b, "ringproxy_uptime_seconds", "Seconds since the proxy started.",
          (uint64_t)(time(NULL) - srv.start_time));
    gauge(b, "ringproxy_connected_clients", "Client connections open.", (uint64_t)nclients);
    counter(b, "ringproxy_connections_received_total", "Client connections accepted.",
            st->connections_received);
    counter(b, "ringproxy_connections_rejected_total", "Client connections refused (max_clients).",
            st->connections_rejected);
    counter(b, "ringproxy_requests_total", "Requests read from clients, whatever their outcome.",
            st->commands);
    counter(b, "ringproxy_net_input_bytes_total", "Bytes read from clients.", st->net_input_bytes);
    counter(b, "ringproxy_net_output_bytes_total", "Bytes written to clients.",
            st->net_output_bytes);
    commands(b);
    errors(b, st);
    shards(b);
    rebalance(b);
    counter(b, "ringproxy_reloads_total", "Config reloads applied.", st->reloads);
    counter(b, "ringproxy_reload_failures_total",
            "Config reloads refused (or queued behind a rebalance); the running config kept.",
            st->reload_failures);
    gauge(b, "ringproxy_config_epoch", "Bumped by every applied reload.", srv.config_epoch);
    return buf_failed(b) ? -1 : 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    server_clock_update();
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    struct evbuffer *body = evbuffer_new();
    if (!body) {
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    if (!path || strcmp(path, "/metrics") != 0) {
        evbuffer_add_printf(body, "not found: only /metrics is served here\n");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                          "text/plain; charset=utf-8");
        evhttp_send_reply(req, HTTP_NOTFOUND, "Not Found", body);
        evbuffer_free(body);
        return;
    }
    buf text = {0};
    if (metrics_render(&text) < 0 || evbuffer_add(body, buf_head(&text), buf_len(&text)) < 0) {
        buf_free(&text);
        evbuffer_free(body);
        evhttp_send_error(req, HTTP_INTERNAL, "out of memory");
        return;
    }
    buf_free(&text);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, HTTP_OK, "OK", body);
    evbuffer_free(body);
}

/* A scrape's request is a line and a few headers: bigger is not one. */
#define METRICS_MAX_HEADERS 8192
/* A scraper that stalls mid-request is closed after this long. */
#define METRICS_TIMEOUT_S 10

int metrics_start(const config *cfg, char *err, size_t errlen)
{
    /* Under workers = N the first worker serves the totals of all. */
    if (!cfg->metrics_host || srv.worker_index != 0)
        return 0;
    metrics.http = evhttp_new(srv.base);
    if (!metrics.http) {
        snprintf(err, errlen, "metrics_listen: cannot create the HTTP server");
        return -1;
    }
    evhttp_set_allowed_methods(metrics.http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
    evhttp_set_max_headers_size(metrics.http, METRICS_MAX_HEADERS);
    evhttp_set_max_body_size(metrics.http, 0);
    evhttp_set_timeout(metrics.http, METRICS_TIMEOUT_S);
    evhttp_set_gencb(metrics.http, on_request, NULL);
    if (!evhttp_bind_socket_with_handle(metrics.http, cfg->metrics_host, cfg->metrics_port)) {
        char addr[CONFIG_ADDR_MAX];
        config_format_addr(cfg->metrics_host, cfg->metrics_port, addr, sizeof(addr));
        snprintf(err, errlen, "metrics_listen: cannot listen on %s", addr);
        evhttp_free(metrics.http);
        metrics.http = NULL;
        return -1;
    }
    char addr[CONFIG_ADDR_MAX];
    config_format_addr(cfg->metrics_host, cfg->metrics_port, addr, sizeof(addr));
    log_notice("Prometheus metrics on http://%s/metrics", addr);
    return 0;
}

void metrics_stop(void)
{
    if (metrics.http)
        evhttp_free(metrics.http);
    metrics.http = NULL;
}
