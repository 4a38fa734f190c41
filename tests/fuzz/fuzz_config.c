/* libFuzzer target for the proxy.ini parser (config/config.c): any text
 * either loads into a config that passes the checks the daemon relies on,
 * or is refused with a one-line "name:line: reason" message; nothing leaks
 * either way. A loaded config is then used as the daemon uses it: compared
 * with itself and with the defaults for a reload, and its shards built into
 * a ring (as `ringproxy -t` does).
 *
 * Once at start-up, the documentation writers run too, and the reference
 * [proxy] section they print (every key commented out) must load, with a
 * shard added, into the defaults.
 *
 * Built and run by `make fuzz` / `make fuzz-smoke` (see tests/README.md).
 * The input is the file's text (cut at its first NUL byte). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "ring/ring.h"

#define FUZZ_NAME "fuzz.ini"
/* Largest total shard weight the ring is built for. */
#define FUZZ_MAX_RING_WEIGHT 8

static config *defaults;

/* Writes one of the documentation outputs into memory; aborts on failure. */
static char *write_doc(void (*writer)(FILE *))
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (out == NULL)
        abort();
    writer(out);
    if (fclose(out) != 0 || text == NULL || len == 0)
        abort();
    return text;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    free(write_doc(config_write_markdown));
    char *reference = write_doc(config_write_reference);
    static const char shards[] = "\n[shards]\ns1 = 127.0.0.1:7001\n";
    char *text = malloc(strlen(reference) + sizeof(shards));
    if (text == NULL)
        abort();
    strcpy(text, reference);
    strcat(text, shards);
    char err[600];
    if (config_load_string(text, "reference.ini", &defaults, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_config: the reference section does not load: %s\n", err);
        abort();
    }
    free(text);
    free(reference);
    return 0;
}

/* The invariants the daemon takes for granted in a loaded config. */
static void check_loaded(const config *cfg)
{
    if (cfg->nshards == 0 || cfg->shards == NULL || cfg->listen_host == NULL || cfg->path == NULL ||
        strcmp(cfg->path, FUZZ_NAME) != 0)
        abort();
    if (cfg->reconnect_min_ms > cfg->reconnect_max_ms ||
        cfg->client_output_pause > cfg->max_client_output || cfg->max_clients < 1 ||
        cfg->backend_connections < 1 || cfg->max_bulk_len < 0 || cfg->max_args < 1 ||
        cfg->max_query_buffer < 0 || cfg->backend_max_inflight < 1 ||
        (unsigned)cfg->hash >= HASH_KIND_COUNT)
        abort();
    for (size_t i = 0; i < cfg->nshards; i++) {
        const config_shard *s = &cfg->shards[i];
        if (s->name == NULL || s->name[0] == '\0' || s->host == NULL || s->host[0] == '\0' ||
            s->port == 0 || s->weight < 1 || s->line < 1)
            abort();
        if (s->port == cfg->listen_port && strcmp(s->host, cfg->listen_host) == 0)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        abort();
    memcpy(text, data, size);
    text[size] = '\0';

    config *cfg = NULL;
    char err[600];
    err[0] = '\0';
    int rc = config_load_string(text, FUZZ_NAME, &cfg, err, sizeof(err));
    free(text);
    if (rc != 0) {
        /* Refused: a message naming the file, on one line, and no config. */
        size_t n = strnlen(err, sizeof(err));
        if (cfg != NULL || n == 0 || n == sizeof(err) ||
            strncmp(err, FUZZ_NAME, sizeof(FUZZ_NAME) - 1) != 0 || strpbrk(err, "\r\n") != NULL)
            abort();
        return 0;
    }
    check_loaded(cfg);

    char changed[600];
    if (config_fixed_changes(cfg, cfg, changed, sizeof(changed)) != 0)
        abort();
    (void)config_fixed_changes(defaults, cfg, changed, sizeof(changed));
    (void)config_fixed_changes(cfg, defaults, changed, sizeof(changed));

    /* The ring's build time grows with the total weight (4,096 points
     * each, up to 2^24); big weights are the ring's unit tests' business,
     * and here would only slow the parser's fuzzing down. */
    uint64_t total_weight = 0;
    for (size_t i = 0; i < cfg->nshards; i++)
        total_weight += cfg->shards[i].weight;
    ring *r = NULL;
    if (total_weight <= FUZZ_MAX_RING_WEIGHT) {
        ring_shard_spec *specs = calloc(cfg->nshards, sizeof(*specs));
        if (specs == NULL)
            abort();
        for (size_t i = 0; i < cfg->nshards; i++) {
            specs[i].name = cfg->shards[i].name;
            specs[i].weight = cfg->shards[i].weight;
        }
        r = ring_build(specs, cfg->nshards, cfg->compat, err, sizeof(err));
        free(specs);
    }
    if (r != NULL) {
        /* Lookups name a shard of the config. */
        if (ring_shard_count(r) != cfg->nshards || ring_lookup(r, 0) >= cfg->nshards ||
            ring_lookup(r, UINT32_MAX) >= cfg->nshards)
            abort();
        ring_free(r);
    }
    config_free(cfg);
    return 0;
}
