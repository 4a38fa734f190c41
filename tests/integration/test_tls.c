/* TLS both ways, with real TLS: certificates made by the openssl command
 * (a CA, the shards' and the proxy's certificates, a client's, and a client
 * certificate from a CA nobody trusts), redis-server shards listening only
 * with TLS, and clients speaking TLS to the proxy's tls_listen with
 * tls_auth_clients = yes: an OpenSSL client of this test (replies parsed by
 * hiredis's reader) and redis-cli --tls. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "fixture.h"
#include "harness.h"

/* Shards started; the proxy's ini lists the first TLS_SHARDS_IN_INI, the
 * last is added by a reload (the rebalance test). */
#define TLS_SHARDS        4
#define TLS_SHARDS_IN_INI 3

static struct {
    char dir[64]; /* certificates */
    harness_proc shards[TLS_SHARDS];
    harness_proc proxy;
    int tls_port;
} t;

/* ---- certificates ---- */

static int run(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "test_tls: failed (%d): %s\n", rc, cmd);
    return rc == 0 ? 0 : -1;
}

/* A CA named name (name.crt, name.key), EC keys: quick to make. */
static int make_ca(const char *name)
{
    return run("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
               "-nodes -days 2 -subj /CN=%s -keyout %s.key -out %s.crt 2>/dev/null",
               t.dir, name, name, name);
}

/* The names the test's certificates are valid for. */
#define SAN_LOOPBACK "IP:127.0.0.1,DNS:localhost"

/* A certificate for name (name.crt, name.key) with subject CN=cn, signed by
 * the CA ca, valid for the subjectAltName san. */
static int make_cert_for(const char *name, const char *cn, const char *ca, const char *san)
{
    return run("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
               "-subj /CN=%s -keyout %s.key -out %s.csr 2>/dev/null && "
               "printf 'subjectAltName=%s\\n' > %s.ext && "
               "openssl x509 -req -in %s.csr -CA %s.crt -CAkey %s.key -CAcreateserial -days 2 "
               "-extfile %s.ext -out %s.crt 2>/dev/null",
               t.dir, cn, name, name, san, name, name, ca, ca, name, name);
}

/* The same, valid for 127.0.0.1 and localhost. */
static int make_cert(const char *name, const char *cn, const char *ca)
{
    return make_cert_for(name, cn, ca, SAN_LOOPBACK);
}

/* ---- a TLS client: OpenSSL on a socket, replies parsed by hiredis ---- */

typedef struct tls_client {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    redisReader *reader;
    char error[256]; /* why the handshake or a command failed */
} tls_client;

static void tls_client_free(tls_client *c)
{
    if (!c)
        return;
    if (c->ssl)
        SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    if (c->reader)
        redisReaderFree(c->reader);
    free(c);
}

static void set_error(tls_client *c, const char *what)
{
    unsigned long e = ERR_get_error();
    char text[200] = "no OpenSSL error";
    if (e)
        ERR_error_string_n(e, text, sizeof(text));
    snprintf(c->error, sizeof(c->error), "%s: %s", what, text);
    ERR_clear_error();
}

/* Connects to port with TLS, checking the server against ca.crt, showing
 * the certificate name.crt (NULL: none). The handshake's result is in
 * *handshake_ok; the client is returned either way (error says why). */
static tls_client *tls_connect(int port, const char *name, int *handshake_ok)
{
    tls_client *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->fd = fixture_raw_connect(port);
    assert_true(c->fd >= 0);
    struct timeval tv = fixture_bound_tv(2000);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    c->ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(c->ctx);
    char path[200], key[200];
    snprintf(path, sizeof(path), "%s/ca.crt", t.dir);
    assert_int_equal(SSL_CTX_load_verify_locations(c->ctx, path, NULL), 1);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    if (name) {
        snprintf(path, sizeof(path), "%s/%s.crt", t.dir, name);
        snprintf(key, sizeof(key), "%s/%s.key", t.dir, name);
        assert_int_equal(SSL_CTX_use_certificate_chain_file(c->ctx, path), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM), 1);
    }
    c->ssl = SSL_new(c->ctx);
    assert_non_null(c->ssl);
    SSL_set_fd(c->ssl, c->fd);
    c->reader = redisReaderCreate();
    *handshake_ok = SSL_connect(c->ssl) == 1;
    if (!*handshake_ok)
        set_error(c, "handshake");
    return c;
}

/* A client that must get through the handshake. */
static tls_client *tls_connect_ok(int port, const char *name)
{
    int ok;
    tls_client *c = tls_connect(port, name, &ok);
    if (!ok) {
        harness_dump_log(&t.proxy, 3000);
        fail_msg("TLS handshake with port %d failed: %s", port, c->error);
    }
    return c;
}

static redisReply *tls_vcmd(tls_client *c, const char *fmt, va_list ap)
{
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    assert_true(len > 0);
    int w = SSL_write(c->ssl, cmd, len);
    free(cmd);
    if (w != len) {
        set_error(c, "write");
        return NULL;
    }
    for (;;) {
        void *reply = NULL;
        assert_int_equal(redisReaderGetReply(c->reader, &reply), REDIS_OK);
        if (reply)
            return reply;
        char buf[16384];
        int n = SSL_read(c->ssl, buf, sizeof(buf));
        if (n <= 0) {
            set_error(c, "read");
            return NULL;
        }
        redisReaderFeed(c->reader, buf, (size_t)n);
    }
}

/* Sends a command (hiredis's format) and reads its reply: NULL when the
 * connection failed or closed first (error says why). */
static redisReply *tls_cmd(tls_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = tls_vcmd(c, fmt, ap);
    va_end(ap);
    return r;
}

/* The reply to one command on a new TLS connection to port (showing the
 * certificate client.crt), or NULL when there is none. */
static redisReply *tls_command_on(int port, const char *fmt, ...)
{
    int ok;
    tls_client *c = tls_connect(port, "client", &ok);
    redisReply *r = NULL;
    if (ok) {
        va_list ap;
        va_start(ap, fmt);
        r = tls_vcmd(c, fmt, ap);
        va_end(ap);
    }
    tls_client_free(c);
    return r;
}

/* The CN in the subject of the certificate the server showed. */
static void peer_cn(tls_client *c, char *out, size_t cap)
{
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    assert_non_null(cert);
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)cap);
    X509_free(cert);
}

/* ---- the proxy's log ---- */

static int log_has(const char *needle)
{
    FILE *in = fopen(t.proxy.log, "r");
    if (!in)
        return 0;
    char line[2048];
    int found = 0;
    while (!found && fgets(line, sizeof(line), in))
        found = strstr(line, needle) != NULL;
    fclose(in);
    return found;
}

/* Waits (bounded) for a line of the proxy's log containing needle. */
static void expect_log(const char *needle)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(2000);
    while (!log_has(needle)) {
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&t.proxy, 3000);
            fail_msg("the proxy logged no line with \"%s\"", needle);
        }
        fixture_sleep_ms(10);
    }
}

/* ---- set-up ---- */

/* The ini of a proxy with the given tls_listen port and tls_auth_clients. */
static char *proxy_ini_with(int tls_port, const char *auth_clients)
{
    char extra[1600];
    snprintf(extra, sizeof(extra),
             "tls_listen = 127.0.0.1:%d\n"
             "tls_cert_file = %s/proxy.crt\n"
             "tls_key_file = %s/proxy.key\n"
             "tls_ca_cert_file = %s/ca.crt\n"
             "tls_auth_clients = %s\n"
             "tls_shards = yes\n"
             "tls_shards_ca_cert_file = %s/ca.crt\n"
             "lock_shards = s1,s2,s3\n"
             "log_level = info\n",
             tls_port, t.dir, t.dir, t.dir, auth_clients, t.dir);
    return harness_ini(t.shards, TLS_SHARDS_IN_INI, extra);
}

static char *proxy_ini(void)
{
    return proxy_ini_with(t.tls_port, "yes");
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(t.dir, sizeof(t.dir), "/tmp/ringproxy-tls-XXXXXX");
    if (!mkdtemp(t.dir))
        return -1;
    if (make_ca("ca") < 0 || make_ca("rogue") < 0 || make_cert("server", "shard", "ca") < 0 ||
        make_cert("proxy", "ringproxy", "ca") < 0 || make_cert("client", "app1", "ca") < 0 ||
        make_cert("intruder", "intruder", "rogue") < 0)
        return -1;
    for (int i = 0; i < TLS_SHARDS; i++)
        if (harness_redis_start_tls(&t.shards[i], t.dir, 0) < 0)
            return -1;
    t.tls_port = harness_free_port();
    char *ini = proxy_ini();
    int rc = harness_ringproxy_start(&t.proxy, ini);
    free(ini);
    return rc;
}

static int group_teardown(void **state)
{
    (void)state;
    int rc = t.proxy.pid ? harness_proc_stop(&t.proxy, SIGTERM) : 0;
    for (int i = 0; i < TLS_SHARDS; i++)
        if (t.shards[i].pid)
            harness_proc_stop(&t.shards[i], SIGTERM);
    run("rm -rf %s", t.dir);
    return rc == 0 ? 0 : -1;
}

/* DBSIZE of shard i, asked over TLS directly. */
static long long shard_dbsize(int i)
{
    tls_client *c = tls_connect_ok(t.shards[i].port, NULL);
    redisReply *r = tls_cmd(c, "DBSIZE");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long n = r->integer;
    freeReplyObject(r);
    tls_client_free(c);
    return n;
}

/* ---- tests ---- */

#define KEYS 60

static void test_tls_client_writes_and_reads_across_tls_shards(void **state)
{
    (void)state;
    tls_client *c = tls_connect_ok(t.tls_port, "client");
    for (int i = 0; i < KEYS; i++) {
        redisReply *r = tls_cmd(c, "SET tls:%d v%d", i, i);
        assert_non_null(r);
        fixture_expect_status(r, "OK");
    }
    redisReply *r = tls_cmd(c, "MGET tls:0 tls:1 tls:2 tls:3 tls:4 tls:5 tls:6 tls:7 missing");
    assert_non_null(r);
    fixture_expect_array(r, 9);
    for (int i = 0; i < 8; i++) {
        char want[16];
        snprintf(want, sizeof(want), "v%d", i);
        assert_int_equal(r->element[i]->type, REDIS_REPLY_STRING);
        assert_string_equal(r->element[i]->str, want);
    }
    assert_int_equal(r->element[8]->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    /* The keys went to every shard of the ring, over their TLS ports. */
    for (int i = 0; i < TLS_SHARDS_IN_INI; i++)
        assert_true(shard_dbsize(i) > 0);
    /* The store (locks) reached every shard over TLS too: its connections
     * are ready once each shard's marker is read or written. */
    long long deadline = fixture_now_ms() + fixture_bound_ms(3000);
    for (;;) {
        r = tls_cmd(c, "INFO locks");
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        int ready = strstr(r->str, "lock_shard_states:s1=ready,s2=ready,s3=ready") != NULL;
        if (!ready && fixture_now_ms() > deadline)
            fail_msg("lock store not ready over TLS: %s", r->str);
        freeReplyObject(r);
        if (ready)
            break;
        fixture_sleep_ms(20);
    }
    tls_client_free(c);
}

static void test_redis_cli_tls_through_the_proxy(void **state)
{
    (void)state;
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "redis-cli --tls --cacert %s/ca.crt --cert %s/client.crt --key %s/client.key "
             "-h 127.0.0.1 -p %d SET cli:key hello && "
             "redis-cli --tls --cacert %s/ca.crt --cert %s/client.crt --key %s/client.key "
             "-h 127.0.0.1 -p %d GET cli:key",
             t.dir, t.dir, t.dir, t.tls_port, t.dir, t.dir, t.dir, t.tls_port);
    FILE *out = popen(cmd, "r");
    assert_non_null(out);
    char text[256] = "";
    size_t n = fread(text, 1, sizeof(text) - 1, out);
    text[n] = '\0';
    assert_int_equal(pclose(out), 0);
    assert_string_equal(text, "OK\nhello\n");
}

static void test_plain_text_client_on_the_tls_port_is_closed_with_a_reason(void **state)
{
    (void)state;
    int fd = fixture_raw_connect(t.tls_port);
    assert_true(fd >= 0);
    assert_int_equal(fixture_raw_send(fd, "PING\r\n", 6), 0);
    char buf[256];
    int closed = 0;
    fixture_raw_read(fd, buf, sizeof(buf), sizeof(buf) - 1, (int)fixture_bound_ms(2000), &closed);
    close(fd);
    assert_true(closed);
    assert_false(fixture_contains(buf, strlen(buf), "PONG"));
    expect_log("TLS handshake failed");
}

static void test_tls_client_on_the_plain_port_is_closed_with_a_reason(void **state)
{
    (void)state;
    int ok;
    tls_client *c = tls_connect(t.proxy.port, "client", &ok);
    assert_false(ok);
    tls_client_free(c);
    expect_log("TLS handshake on the plain-text port");
    /* The plain port still serves plain clients. */
    redisContext *plain = harness_connect(t.proxy.port);
    assert_non_null(plain);
    fixture_expect_status(fixture_cmd(plain, "PING"), "PONG");
    redisFree(plain);
}

/* A handshake the proxy refuses: with TLS 1.3 the client may finish its
 * side before the proxy has checked its certificate, so the refusal shows
 * as the first command getting no reply. */
static void expect_refused(const char *name)
{
    int ok;
    tls_client *c = tls_connect(t.tls_port, name, &ok);
    if (ok) {
        redisReply *r = tls_cmd(c, "PING");
        if (r) {
            freeReplyObject(r);
            fail_msg("a client with %s was served", name ? name : "no certificate");
        }
    }
    tls_client_free(c);
}

static void test_untrusted_or_missing_client_certificate_is_refused(void **state)
{
    (void)state;
    expect_refused("intruder");
    expect_log("certificate");
    expect_refused(NULL);
    expect_log("peer did not return a certificate");
    /* The proxy is still serving. */
    tls_client *c = tls_connect_ok(t.tls_port, "client");
    redisReply *r = tls_cmd(c, "PING");
    assert_non_null(r);
    fixture_expect_status(r, "PONG");
    tls_client_free(c);
}

/* With tls_auth_clients = optional, on a second proxy: a client without a
 * certificate is served, one with a certificate that fails the check is
 * not. */
static void test_optional_client_certificate_is_checked_when_shown(void **state)
{
    (void)state;
    harness_proc proxy;
    int tls_port = harness_free_port();
    char *ini = proxy_ini_with(tls_port, "optional");
    assert_int_equal(harness_ringproxy_start(&proxy, ini), 0);
    free(ini);
    const char *names[] = {NULL, "client"};
    for (size_t i = 0; i < 2; i++) {
        tls_client *c = tls_connect_ok(tls_port, names[i]);
        redisReply *r = tls_cmd(c, "PING");
        if (!r)
            fail_msg("client with %s not served: %s", names[i] ? names[i] : "no certificate",
                     c->error);
        fixture_expect_status(r, "PONG");
        tls_client_free(c);
    }
    int ok;
    tls_client *c = tls_connect(tls_port, "intruder", &ok);
    redisReply *r = ok ? tls_cmd(c, "PING") : NULL;
    tls_client_free(c);
    if (r) {
        freeReplyObject(r);
        fail_msg("a client with an untrusted certificate was served");
    }
    assert_int_equal(harness_proc_stop(&proxy, SIGTERM), 0);
}

static void test_certificate_reload_keeps_connected_clients(void **state)
{
    (void)state;
    tls_client *before = tls_connect_ok(t.tls_port, "client");
    char cn[128];
    peer_cn(before, cn, sizeof(cn));
    assert_string_equal(cn, "ringproxy");
    redisReply *r = tls_cmd(before, "SET reload:key 1");
    assert_non_null(r);
    fixture_expect_status(r, "OK");

    /* A file that is not a certificate: the reload is refused, the running
     * certificate stays. */
    assert_int_equal(run("cd %s && cp proxy.crt proxy.crt.good && echo garbage > proxy.crt", t.dir),
                     0);
    redisContext *admin = harness_connect(t.proxy.port);
    assert_non_null(admin);
    fixture_expect_error(fixture_cmd(admin, "PROXY RELOAD"), "ERR");
    tls_client *during = tls_connect_ok(t.tls_port, "client");
    peer_cn(during, cn, sizeof(cn));
    assert_string_equal(cn, "ringproxy");
    tls_client_free(during);

    /* A new certificate: new clients get it, the connected one goes on. */
    assert_int_equal(make_cert("proxy", "ringproxy-renewed", "ca"), 0);
    fixture_expect_status(fixture_cmd(admin, "PROXY RELOAD"), "OK");
    tls_client *after = tls_connect_ok(t.tls_port, "client");
    peer_cn(after, cn, sizeof(cn));
    assert_string_equal(cn, "ringproxy-renewed");
    r = tls_cmd(after, "GET reload:key");
    assert_non_null(r);
    fixture_expect_str(r, "1");
    r = tls_cmd(before, "INCR reload:key");
    if (!r)
        fail_msg("the client connected before the reload was dropped: %s", before->error);
    fixture_expect_int(r, 2);
    tls_client_free(after);
    tls_client_free(before);
    redisFree(admin);
}

/* A shard whose certificate, signed by the trusted CA, names another host
 * is down: its requests get the reason. */
static void test_shard_certificate_naming_another_host_is_refused(void **state)
{
    (void)state;
    /* The shard's own cert dir: server.* naming elsewhere.example only. */
    assert_int_equal(make_cert_for("elsewhere", "elsewhere", "ca", "DNS:elsewhere.example"), 0);
    assert_int_equal(run("cd %s && mkdir -p elsewhere.d && cp elsewhere.crt elsewhere.d/server.crt "
                         "&& cp elsewhere.key elsewhere.d/server.key && cp ca.crt elsewhere.d/",
                         t.dir),
                     0);
    char dir[128], extra[400];
    snprintf(dir, sizeof(dir), "%s/elsewhere.d", t.dir);
    harness_proc shard, proxy;
    assert_int_equal(harness_redis_start_tls(&shard, dir, 0), 0);
    snprintf(extra, sizeof(extra), "tls_shards = yes\ntls_shards_ca_cert_file = %s/ca.crt\n",
             t.dir);
    char *ini = harness_ini(&shard, 1, extra);
    assert_int_equal(harness_ringproxy_start(&proxy, ini), 0);
    free(ini);
    redisContext *c = harness_connect(proxy.port);
    assert_non_null(c);
    long long deadline = fixture_now_ms() + fixture_bound_ms(2000);
    for (;;) {
        redisReply *r = fixture_cmd(c, "GET k");
        int refused = r->type == REDIS_REPLY_ERROR && strstr(r->str, "unavailable") &&
                      strstr(r->str, "IP address mismatch");
        if (!refused && fixture_now_ms() > deadline)
            fail_msg("GET through a shard with a wrong certificate: %s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "(not an error)");
        freeReplyObject(r);
        if (refused)
            break;
        fixture_sleep_ms(20);
    }
    redisFree(c);
    assert_int_equal(harness_proc_stop(&proxy, SIGTERM), 0);
    harness_proc_stop(&shard, SIGTERM);
}

/* GET k through a new proxy over shard with extra [proxy] lines: the
 * reply, which the caller frees. */
static redisReply *get_through_proxy(harness_proc *shard, const char *extra)
{
    harness_proc proxy;
    char *ini = harness_ini(shard, 1, extra);
    assert_int_equal(harness_ringproxy_start(&proxy, ini), 0);
    free(ini);
    redisContext *c = harness_connect(proxy.port);
    assert_non_null(c);
    /* The pool connects at start: the first answer may still be "down". */
    redisReply *r = NULL;
    long long deadline = fixture_now_ms() + fixture_bound_ms(1000);
    do {
        if (r) {
            freeReplyObject(r);
            fixture_sleep_ms(20);
        }
        r = fixture_cmd(c, "GET k");
    } while (r->type == REDIS_REPLY_ERROR && fixture_now_ms() < deadline);
    redisFree(c);
    assert_int_equal(harness_proc_stop(&proxy, SIGTERM), 0);
    return r;
}

/* A shard that asks for client certificates (tls-auth-clients yes) serves
 * the proxy that shows one (tls_shards_cert_file) and refuses one that
 * does not. */
static void test_client_certificate_shown_to_shards_that_ask(void **state)
{
    (void)state;
    harness_proc shard;
    assert_int_equal(harness_redis_start_tls(&shard, t.dir, 1), 0);
    char extra[600];
    snprintf(extra, sizeof(extra),
             "tls_shards = yes\ntls_shards_ca_cert_file = %s/ca.crt\n"
             "tls_shards_cert_file = %s/client.crt\ntls_shards_key_file = %s/client.key\n",
             t.dir, t.dir, t.dir);
    redisReply *r = get_through_proxy(&shard, extra);
    fixture_expect_nil(r);
    snprintf(extra, sizeof(extra), "tls_shards = yes\ntls_shards_ca_cert_file = %s/ca.crt\n",
             t.dir);
    r = get_through_proxy(&shard, extra);
    if (r->type != REDIS_REPLY_ERROR || !strstr(r->str, "unavailable"))
        fail_msg("a proxy without a client certificate was served by a shard that asks for one");
    freeReplyObject(r);
    harness_proc_stop(&shard, SIGTERM);
}

/* Adding a shard moves keys between TLS shards: the mover's SCAN on its
 * control connection and MIGRATE from shard to shard (tls-cluster). */
static void test_rebalance_moves_keys_between_tls_shards(void **state)
{
    (void)state;
    tls_client *c = tls_connect_ok(t.tls_port, "client");
    for (int i = 0; i < KEYS; i++) {
        redisReply *r = tls_cmd(c, "SET move:%d m%d", i, i);
        assert_non_null(r);
        fixture_expect_status(r, "OK");
    }
    char ini[300];
    snprintf(ini, sizeof(ini), "%s/proxy.ini", t.proxy.dir);
    FILE *out = fopen(ini, "a");
    assert_non_null(out);
    fprintf(out, "s%d = 127.0.0.1:%d\n", TLS_SHARDS, t.shards[TLS_SHARDS - 1].port);
    assert_int_equal(fclose(out), 0);
    redisContext *admin = harness_connect(t.proxy.port);
    assert_non_null(admin);
    fixture_expect_status(fixture_cmd(admin, "PROXY RELOAD"), "OK");
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    for (;;) {
        redisReply *r = fixture_cmd(admin, "INFO rebalance");
        int idle = strstr(r->str, "rebalance_state:idle") != NULL &&
                   strstr(r->str, "rebalance_completed:1") != NULL;
        int clean = strstr(r->str, "rebalance_last_error:none") != NULL;
        if (idle && !clean)
            fail_msg("rebalance failed: %s", r->str);
        freeReplyObject(r);
        if (idle)
            break;
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&t.proxy, 4000);
            fail_msg("the rebalance did not finish");
        }
        fixture_sleep_ms(20);
    }
    redisFree(admin);
    assert_true(shard_dbsize(TLS_SHARDS - 1) > 0);
    for (int i = 0; i < KEYS; i++) {
        char want[16];
        snprintf(want, sizeof(want), "m%d", i);
        redisReply *r = tls_cmd(c, "GET move:%d", i);
        assert_non_null(r);
        fixture_expect_str(r, want);
    }
    tls_client_free(c);
}

/* ---- Sentinels over TLS (tls_sentinels) ---- */

/* Sentinel timings short enough for a failover in a few seconds. */
#define SENTINEL_DOWN_AFTER_MS       1000
#define SENTINEL_FAILOVER_TIMEOUT_MS 3000
/* The proxy's polls of the Sentinels, besides +switch-master. */
#define SENTINEL_POLL_MS 500
/* The proxy re-addresses a shard within this of the Sentinels' switch. */
#define SENTINEL_FOLLOW_MS 1000
/* A Sentinel learns a master's replica from the master's INFO (asked when
 * it connects, then every 10 s). */
#define SENTINEL_READY_MS 30000

/* Whether the reply is a string holding needle. */
static int reply_has(const redisReply *r, const char *needle)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           strstr(r->str, needle) != NULL;
}

/* Waits (bounded by timeout_ms) until INFO <section> through the proxy's
 * plain port holds every needle (NULL-terminated); fails the test with
 * what it read. */
static void wait_proxy_info(const harness_proc *proxy, const char *section, long long timeout_ms,
                            const char *const *needles)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(timeout_ms);
    for (;;) {
        redisContext *c = harness_connect(proxy->port);
        assert_non_null(c);
        redisReply *r = fixture_cmd(c, "INFO %s", section);
        int all = 1;
        for (size_t i = 0; needles[i] && all; i++)
            all = reply_has(r, needles[i]);
        if (!all && fixture_now_ms() > deadline) {
            harness_dump_log(proxy, 4096);
            fail_msg("INFO %s lacks one of \"%s\"...: %s", section, needles[0],
                     r->type == REDIS_REPLY_STRING ? r->str : "(no text)");
        }
        freeReplyObject(r);
        redisFree(c);
        if (all)
            return;
        fixture_sleep_ms(20);
    }
}

/* Waits until INFO shards says s1's master is at port, found by a
 * Sentinel (sentinel=ok). */
static void wait_s1_master(const harness_proc *proxy, int port, long long timeout_ms)
{
    char master[64];
    snprintf(master, sizeof(master), ",master=127.0.0.1:%d,", port);
    const char *const needles[] = {master, ",sentinel=ok,", NULL};
    wait_proxy_info(proxy, "shards", timeout_ms, needles);
}

/* Waits until the proxy's log has a line with needle (bounded). */
static void wait_proxy_log(const harness_proc *proxy, const char *needle, long long timeout_ms)
{
    long long deadline = fixture_now_ms() + fixture_bound_ms(timeout_ms);
    while (!fixture_log_contains(proxy, needle)) {
        if (fixture_now_ms() > deadline) {
            harness_dump_log(proxy, 4096);
            fail_msg("the proxy logged no line with \"%s\"", needle);
        }
        fixture_sleep_ms(10);
    }
}

/* The port the Sentinel on port names for m1, 0 when it does not answer. */
static int sentinel_master_port(int port)
{
    redisReply *r = tls_command_on(port, "SENTINEL get-master-addr-by-name m1");
    int p = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? atoi(r->element[1]->str) : 0;
    if (r)
        freeReplyObject(r);
    return p;
}

/* What the Sentinels monitor: m1 at master_port. */
static const char *sentinel_conf(int master_port)
{
    static char conf[256];
    snprintf(conf, sizeof(conf),
             "sentinel monitor m1 127.0.0.1 %d 1\n"
             "sentinel down-after-milliseconds m1 %d\n"
             "sentinel failover-timeout m1 %d\n",
             master_port, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS);
    return conf;
}

/* A proxy ini over s1 = sentinel:m1 with TLS to the shards (showing
 * client.crt) and tls_sentinels as given, listening on listen_port
 * (0: %PORT%, for harness_ringproxy_start). */
static const char *sentinel_proxy_ini(const harness_proc *sentinels, int n,
                                      const char *tls_sentinels, int listen_port)
{
    static char ini[2048];
    char port[16];
    snprintf(port, sizeof(port), "%d", listen_port);
    size_t len = (size_t)snprintf(
        ini, sizeof(ini),
        "[proxy]\nlisten = 127.0.0.1:%s\nwatch_config = no\nlog_level = info\n"
        "connect_timeout = 500\nrequest_timeout = 500\nreconnect_min = 20\nreconnect_max = 200\n"
        "sentinel_poll = %d\n"
        "tls_shards = yes\ntls_shards_ca_cert_file = %s/ca.crt\n"
        "tls_shards_cert_file = %s/client.crt\ntls_shards_key_file = %s/client.key\n"
        "tls_sentinels = %s\nsentinels = ",
        listen_port ? port : "%PORT%", SENTINEL_POLL_MS, t.dir, t.dir, t.dir, tls_sentinels);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(ini + len, sizeof(ini) - len, "%s127.0.0.1:%d", i ? ", " : "",
                                sentinels[i].port);
    snprintf(ini + len, sizeof(ini) - len, "\n[shards]\ns1 = sentinel:m1\n");
    return ini;
}

/* SET key value through the proxy's plain port, then the value read back
 * over TLS from the redis-server on shard_port. */
static void set_through_proxy_lands_on(const harness_proc *proxy, const char *key,
                                       const char *value, int shard_port)
{
    redisContext *c = harness_connect(proxy->port);
    assert_non_null(c);
    fixture_expect_status(fixture_cmd(c, "SET %s %s", key, value), "OK");
    fixture_expect_str(fixture_cmd(c, "GET %s", key), value);
    redisFree(c);
    redisReply *r = tls_command_on(shard_port, "GET %s", key);
    assert_non_null(r);
    fixture_expect_str(r, value);
}

/* What a Sentinel test starts; stopped by sentinel_procs_stop. */
typedef struct sentinel_procs {
    harness_proc master, replica, sentinel[2], proxy;
} sentinel_procs;

static int sentinel_procs_stop(void **state)
{
    sentinel_procs *p = *state;
    int rc = 0;
    if (!p)
        return 0;
    if (p->proxy.pid && harness_proc_stop(&p->proxy, SIGTERM) != 0)
        rc = -1; /* under ASan a leak shows as the exit status */
    harness_proc *others[] = {&p->sentinel[0], &p->sentinel[1], &p->replica, &p->master};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++)
        if (others[i]->pid)
            harness_proc_stop(others[i], SIGKILL);
    free(p);
    *state = NULL;
    return rc;
}

/* A TLS-only master (tls-replication on, so that it can follow a new
 * master after a failover). */
static void start_tls_master(harness_proc *p)
{
    assert_int_equal(harness_redis_start_tls(p, t.dir, 0), 0);
    fixture_expect_status(tls_command_on(p->port, "CONFIG SET tls-replication yes"), "OK");
}

/* A TLS-only Sentinel (tls-auth-clients yes: the proxy must show the
 * shard side's client certificate) over a TLS-only master with a replica
 * (tls-replication), and a proxy with tls_sentinels = no: the Sentinel
 * refuses its plain-text connections, s1 stays unresolved. A reload to
 * tls_sentinels = yes makes new connections, with TLS: the proxy finds the
 * master, subscribes to +switch-master, and serves s1's keys over TLS.
 * Then SENTINEL FAILOVER (over TLS): the proxy follows the promoted replica
 * within SENTINEL_FOLLOW_MS of the switch, told by +switch-master. */
static void test_tls_sentinel_names_the_master_and_its_failover(void **state)
{
    sentinel_procs *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    *state = p;
    start_tls_master(&p->master);
    start_tls_master(&p->replica);
    fixture_expect_status(tls_command_on(p->replica.port, "REPLICAOF 127.0.0.1 %d", p->master.port),
                          "OK");
    long long deadline = fixture_now_ms() + fixture_bound_ms(10000);
    for (;;) {
        redisReply *r = tls_command_on(p->replica.port, "INFO replication");
        int synced = reply_has(r, "master_link_status:up");
        if (r)
            freeReplyObject(r);
        if (synced)
            break;
        if (fixture_now_ms() > deadline)
            fail_msg("the TLS replica did not sync with its master");
        fixture_sleep_ms(20);
    }
    assert_int_equal(
        harness_sentinel_start_tls(&p->sentinel[0], t.dir, 1, sentinel_conf(p->master.port)), 0);
    deadline = fixture_now_ms() + fixture_bound_ms(SENTINEL_READY_MS);
    for (;;) {
        redisReply *r = tls_command_on(p->sentinel[0].port, "SENTINEL REPLICAS m1");
        int ready = fixture_sentinel_one_good_replica(r);
        if (r)
            freeReplyObject(r);
        if (ready)
            break;
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&p->sentinel[0], 4096);
            fail_msg("the TLS Sentinel does not know m1's replica");
        }
        fixture_sleep_ms(100);
    }

    /* Plain text to a TLS-only Sentinel: no answer, s1 has no master. */
    assert_int_equal(
        harness_ringproxy_start(&p->proxy, sentinel_proxy_ini(p->sentinel, 1, "no", 0)), 0);
    const char *const unreachable[] = {",master=none,", ",sentinel=unreachable,", NULL};
    wait_proxy_info(&p->proxy, "shards", SENTINEL_POLL_MS * 4 + 2000, unreachable);
    wait_proxy_log(&p->proxy, "(tls_sentinels is off: is it a TLS-only Sentinel?)", 1000);

    /* The reload to tls_sentinels = yes. */
    char path[300];
    snprintf(path, sizeof(path), "%s/proxy.ini", p->proxy.dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    assert_true(fputs(sentinel_proxy_ini(p->sentinel, 1, "yes", p->proxy.port), out) >= 0);
    assert_int_equal(fclose(out), 0);
    redisContext *admin = harness_connect(p->proxy.port);
    assert_non_null(admin);
    fixture_expect_status(fixture_cmd(admin, "PROXY RELOAD"), "OK");
    redisFree(admin);
    wait_s1_master(&p->proxy, p->master.port, SENTINEL_POLL_MS * 2 + 2000);
    const char *const subscribed[] = {"sentinel_subscribed:1", NULL};
    wait_proxy_info(&p->proxy, "shards", 2000, subscribed);
    wait_proxy_log(&p->proxy, "Sentinels: connections now use TLS", 1000);
    set_through_proxy_lands_on(&p->proxy, "before-failover", "1", p->master.port);

    /* The failover. */
    long long asked = fixture_now_ms();
    fixture_expect_status(tls_command_on(p->sentinel[0].port, "SENTINEL FAILOVER m1"), "OK");
    deadline = fixture_now_ms() + fixture_bound_ms(SENTINEL_FAILOVER_TIMEOUT_MS * 3);
    while (sentinel_master_port(p->sentinel[0].port) != p->replica.port) {
        if (fixture_now_ms() > deadline) {
            harness_dump_log(&p->sentinel[0], 4096);
            fail_msg("the TLS Sentinel did not promote the replica");
        }
        fixture_sleep_ms(20);
    }
    long long switched = fixture_now_ms();
    wait_s1_master(&p->proxy, p->replica.port, SENTINEL_FOLLOW_MS);
    print_message("TLS Sentinel: switched %lld ms after SENTINEL FAILOVER, the proxy followed "
                  "within %lld ms\n",
                  switched - asked, fixture_now_ms() - switched);
    wait_proxy_log(&p->proxy, "+switch-master: m1 moved", 1000);
    set_through_proxy_lands_on(&p->proxy, "after-failover", "2", p->replica.port);
}

/* Two TLS Sentinels, the first showing a certificate the CA did not sign:
 * the proxy refuses it with the reason in its log, and finds the master
 * and subscribes through the other. */
static void test_sentinel_with_an_untrusted_certificate_is_passed_over(void **state)
{
    sentinel_procs *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    *state = p;
    start_tls_master(&p->master);
    /* The rogue Sentinel's dir: a server certificate from the rogue CA
     * (the CA it checks others with is the real one). */
    assert_int_equal(make_cert("rogue-sentinel", "sentinel", "rogue"), 0);
    assert_int_equal(run("cd %s && mkdir -p rogue.d && cp rogue-sentinel.crt rogue.d/server.crt "
                         "&& cp rogue-sentinel.key rogue.d/server.key && cp ca.crt rogue.d/",
                         t.dir),
                     0);
    char rogue_dir[128];
    snprintf(rogue_dir, sizeof(rogue_dir), "%s/rogue.d", t.dir);
    const char *conf = sentinel_conf(p->master.port);
    assert_int_equal(harness_sentinel_start_tls(&p->sentinel[0], rogue_dir, 0, conf), 0);
    assert_int_equal(harness_sentinel_start_tls(&p->sentinel[1], t.dir, 1, conf), 0);

    assert_int_equal(
        harness_ringproxy_start(&p->proxy, sentinel_proxy_ini(p->sentinel, 2, "yes", 0)), 0);
    wait_s1_master(&p->proxy, p->master.port, SENTINEL_POLL_MS * 2 + 2000);
    const char *const subscribed[] = {"sentinel_subscribed:1", NULL};
    wait_proxy_info(&p->proxy, "shards", 2000, subscribed);
    char refused[128];
    snprintf(refused, sizeof(refused),
             "Sentinel 127.0.0.1:%d: TLS handshake failed: certificate: unable to get local "
             "issuer certificate",
             p->sentinel[0].port);
    wait_proxy_log(&p->proxy, refused, 1000);
    set_through_proxy_lands_on(&p->proxy, "past-the-rogue", "v", p->master.port);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_client_writes_and_reads_across_tls_shards),
        cmocka_unit_test(test_redis_cli_tls_through_the_proxy),
        cmocka_unit_test(test_plain_text_client_on_the_tls_port_is_closed_with_a_reason),
        cmocka_unit_test(test_tls_client_on_the_plain_port_is_closed_with_a_reason),
        cmocka_unit_test(test_untrusted_or_missing_client_certificate_is_refused),
        cmocka_unit_test(test_optional_client_certificate_is_checked_when_shown),
        cmocka_unit_test(test_certificate_reload_keeps_connected_clients),
        cmocka_unit_test(test_shard_certificate_naming_another_host_is_refused),
        cmocka_unit_test(test_client_certificate_shown_to_shards_that_ask),
        cmocka_unit_test(test_rebalance_moves_keys_between_tls_shards),
        cmocka_unit_test_teardown(test_tls_sentinel_names_the_master_and_its_failover,
                                  sentinel_procs_stop),
        cmocka_unit_test_teardown(test_sentinel_with_an_untrusted_certificate_is_passed_over,
                                  sentinel_procs_stop),
    };
    /* TLS_TEST=<glob> runs only the matching tests. */
    const char *only = getenv("TLS_TEST");
    if (only != NULL && only[0] != '\0')
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
