/* config/ specification: every way proxy.ini can be wrong, with the exact
 * message; the defaults; every accepted form of a value; the shipped
 * proxy.ini; and the docs generated from the key table. Run from the
 * repository root (it reads proxy.ini and config/README.md). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"

#define SHARDS "[shards]\ns1 = 127.0.0.1:7001\n"

/* Loads text as "proxy.ini"; fails the test on an error. */
static config *load_ok(const char *text)
{
    config *cfg = NULL;
    char err[512] = "";
    if (config_load_string(text, "proxy.ini", &cfg, err, sizeof(err)) != 0)
        fail_msg("unexpected error: %s\n--- input:\n%s", err, text);
    assert_non_null(cfg);
    return cfg;
}

/* Reads a whole file of the repository; NULL if it cannot. */
static char *read_file(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (!file)
        return NULL;
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), file)) > 0)
        fwrite(chunk, 1, n, mem);
    fclose(file);
    fclose(mem);
    return text;
}

/* Output of a config_write_* function as a string. */
static char *capture(void (*write)(FILE *))
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    write(mem);
    fclose(mem);
    return text;
}

/* --- errors ------------------------------------------------------------ */

typedef struct error_case {
    const char *ini;
    const char *message;
} error_case;

static const error_case error_cases[] = {
    /* sections and syntax */
    {"[proxi]\n" SHARDS,
     "proxy.ini:1: unknown section [proxi] (expected [proxy], [shards] or [users])"},
    {"[Proxy]\n" SHARDS,
     "proxy.ini:1: unknown section [Proxy] (expected [proxy], [shards] or [users])"},
    {SHARDS "\n[extra]\n",
     "proxy.ini:4: unknown section [extra] (expected [proxy], [shards] or [users])"},
    {"[proxy\nlisten = 127.0.0.1:6380\n" SHARDS, "proxy.ini:1: section header without ']'"},
    {"listen = 127.0.0.1:6380\n" SHARDS,
     "proxy.ini:1: 'listen' is outside any section (put it under [proxy] or [shards])"},
    {"[proxy]\nlisten 127.0.0.1\n" SHARDS,
     "proxy.ini:2: expected 'name = value', a [section] or a ; comment"},
    {"[proxy]\n= 5\n" SHARDS, "proxy.ini:2: missing name before '='"},
    {"[proxy]\nbackend_user = proxy\n" SHARDS,
     "proxy.ini:2: backend_user needs backend_password (the user's password on the shards)"},
    /* [users]: every bad rule names its file, line and user */
    {SHARDS "[users]\nalice = on >p +@foo\n", "proxy.ini:4: user alice: unknown category '@foo'"},
    {SHARDS "[users]\nalice = on\nalice = %X~k\n",
     "proxy.ini:5: user alice: '%X~k': key permissions are written %R~pattern (read), "
     "%W~pattern (write) or %RW~pattern (both)"},
    {SHARDS "[users]\nalice = on %R\n",
     "proxy.ini:4: user alice: '%R': key permissions are written %R~pattern (read), "
     "%W~pattern (write) or %RW~pattern (both)"},
    {SHARDS "[users]\nalice = on #abc\n",
     "proxy.ini:4: user alice: a '#' password hash must be 64 lower-case hex digits (SHA-256)"},
    {SHARDS "[users]\nalice = on <old\n",
     "proxy.ini:4: user alice: '<' removes a password: in proxy.ini leave the password out "
     "instead"},
    {SHARDS "[users]\nalice = on allkeys ~a*\n",
     "proxy.ini:4: user alice: '~a*' after allkeys (~*) adds nothing: remove one"},
    {SHARDS "[users]\nalice = on (~x +get)\n",
     "proxy.ini:4: user alice: selectors '(...)' are not supported"},
    {SHARDS "[users]\nalice = on sanitize-payload\n",
     "proxy.ini:4: user alice: unknown rule 'sanitize-payload'"},
    {SHARDS "[users]\nalice = on + \n",
     "proxy.ini:4: user alice: '+' without a command or @category"},
    {"[proxy]\nrequirepass = x\n" SHARDS "[users]\ndefault = on >y +@all\n",
     "proxy.ini:6: requirepass and a [users] default line both set the default user: keep one "
     "(e.g. 'default = on >password ~* &* +@all')"},

    /* unknown and duplicate keys */
    {"[proxy]\nlisten = 127.0.0.1:6380\n\n; the hash\nlisen = 127.0.0.1:6381\n" SHARDS,
     "proxy.ini:5: unknown key 'lisen' in [proxy]"},
    {"[proxy]\nListen = 127.0.0.1:6380\n" SHARDS, "proxy.ini:2: unknown key 'Listen' in [proxy]"},
    {"[proxy]\nhash = md5\nlog_level = debug\nhash = crc32\n" SHARDS,
     "proxy.ini:4: duplicate key 'hash' in [proxy] (first set on line 2)"},
    {"[proxy]\nhash = md5\n" SHARDS "[proxy]\nhash = md5\n",
     "proxy.ini:6: duplicate key 'hash' in [proxy] (first set on line 2)"},

    /* indentation never continues the previous value */
    {"[proxy]\n  \tlisten = 127.0.0.1:6380\n    lisen = x\n" SHARDS,
     "proxy.ini:3: unknown key 'lisen' in [proxy]"},

    /* numbers */
    {"[proxy]\nrequest_timeout = 2s\n" SHARDS,
     "proxy.ini:2: request_timeout: '2s' is not an integer (ms)"},
    {"[proxy]\nmax_clients = ten\n" SHARDS, "proxy.ini:2: max_clients: 'ten' is not an integer"},
    {"[proxy]\nmax_clients = 1.5\n" SHARDS, "proxy.ini:2: max_clients: '1.5' is not an integer"},
    {"[proxy]\nmax_clients = 0x10\n" SHARDS, "proxy.ini:2: max_clients: '0x10' is not an integer"},
    {"[proxy]\nmax_clients = +5\n" SHARDS, "proxy.ini:2: max_clients: '+5' is not an integer"},
    {"[proxy]\nrequest_timeout =\n" SHARDS,
     "proxy.ini:2: request_timeout has no value (expected ms, 0..3600000)"},
    {"[proxy]\nmax_bulk_len = 5xb\n" SHARDS,
     "proxy.ini:2: max_bulk_len: '5xb' is not a size (bytes, or a number with kb, mb or gb)"},
    {"[proxy]\nmax_bulk_len = 1 mb\n" SHARDS,
     "proxy.ini:2: max_bulk_len: '1 mb' is not a size (bytes, or a number with kb, mb or gb)"},
    {"[proxy]\nmax_args = 1kb\n" SHARDS, "proxy.ini:2: max_args: '1kb' is not an integer"},

    /* out of range */
    {"[proxy]\nrequest_timeout = -1\n" SHARDS,
     "proxy.ini:2: request_timeout: -1 is out of range 0..3600000 (ms)"},
    {"[proxy]\nconnect_timeout = 0\n" SHARDS,
     "proxy.ini:2: connect_timeout: 0 is out of range 1..3600000 (ms)"},
    {"[proxy]\ntcp_backlog = 65536\n" SHARDS,
     "proxy.ini:2: tcp_backlog: 65536 is out of range 1..65535"},
    {"[proxy]\nworkers = 0\n" SHARDS, "proxy.ini:2: workers: 0 is out of range 1..64"},
    {"[proxy]\nlog_level = info\nworkers = 65\n" SHARDS,
     "proxy.ini:3: workers: 65 is out of range 1..64"},
    {"[proxy]\nmetrics_listen = nohost\n" SHARDS,
     "proxy.ini:2: metrics_listen: bad address 'nohost': missing port"},
    {"[proxy]\nslowlog_slower_than = -2\n" SHARDS,
     "proxy.ini:2: slowlog_slower_than: -2 is out of range -1..3600000000 (us)"},
    {"[proxy]\nlisten =\n" SHARDS, "proxy.ini:2: listen has no value (expected host:port)"},
    {"[proxy]\nmax_clients = 99999999999999999999\n" SHARDS,
     "proxy.ini:2: max_clients: 99999999999999999999 is out of range 1..1000000"},
    {"[proxy]\nbackend_connections = 0\n" SHARDS,
     "proxy.ini:2: backend_connections: 0 is out of range 1..256"},
    {"[proxy]\nidle_timeout = 604801\n" SHARDS,
     "proxy.ini:2: idle_timeout: 604801 is out of range 0..604800 (s)"},
    {"[proxy]\nmax_bulk_len = 0\n" SHARDS,
     "proxy.ini:2: max_bulk_len: 0 is out of range 1..1024gb (bytes)"},
    {"[proxy]\nmax_bulk_len = 1025gb\n" SHARDS,
     "proxy.ini:2: max_bulk_len: 1025gb is out of range 1..1024gb (bytes)"},
    {"[proxy]\nmax_query_buffer = 9999999999999gb\n" SHARDS,
     "proxy.ini:2: max_query_buffer: 9999999999999gb is out of range 1..1024gb (bytes)"},
    {"[proxy]\nmax_args = 2147483648\n" SHARDS,
     "proxy.ini:2: max_args: 2147483648 is out of range 1..2147483647"},

    /* bool and enum */
    {"[proxy]\nwatch_config = maybe\n" SHARDS,
     "proxy.ini:2: watch_config: 'maybe' is not yes or no"},
    {"[proxy]\nhash = sha1\n" SHARDS,
     "proxy.ini:2: hash: 'sha1' is not one of murmur3, fnv1a_64, crc32, md5, murmur"},
    {"[proxy]\ncompat = nutcracker\n" SHARDS,
     "proxy.ini:2: compat: 'nutcracker' is not one of none, twemproxy"},
    {"[proxy]\nlog_level = verbose\n" SHARDS,
     "proxy.ini:2: log_level: 'verbose' is not one of debug, info, notice, warn, error"},
    {"[proxy]\nlog_level =\n" SHARDS,
     "proxy.ini:2: log_level has no value (expected debug, info, notice, warn, error)"},

    /* listen: host:port */
    {"[proxy]\nlisten =\n" SHARDS, "proxy.ini:2: listen has no value (expected host:port)"},
    {"[proxy]\nlisten = 127.0.0.1\n" SHARDS,
     "proxy.ini:2: listen: bad address '127.0.0.1': missing port"},
    {"[proxy]\nlisten = 127.0.0.1:\n" SHARDS,
     "proxy.ini:2: listen: bad address '127.0.0.1:': missing port"},
    {"[proxy]\nlisten = :6380\n" SHARDS, "proxy.ini:2: listen: bad address ':6380': missing host"},
    {"[proxy]\nlisten = 127.0.0.1:0\n" SHARDS,
     "proxy.ini:2: listen: bad address '127.0.0.1:0': port 0 is out of range 1..65535"},
    {"[proxy]\nlisten = 127.0.0.1:65536\n" SHARDS,
     "proxy.ini:2: listen: bad address '127.0.0.1:65536': port 65536 is out of range 1..65535"},
    {"[proxy]\nlisten = 127.0.0.1:http\n" SHARDS,
     "proxy.ini:2: listen: bad address '127.0.0.1:http': port 'http' is not a number"},
    {"[proxy]\nlisten = 127.0.0.1:-1\n" SHARDS,
     "proxy.ini:2: listen: bad address '127.0.0.1:-1': port '-1' is not a number"},
    {"[proxy]\nlisten = ::1:6380\n" SHARDS,
     "proxy.ini:2: listen: bad address '::1:6380': an IPv6 address needs brackets, as in "
     "[::1]:7001"},
    {"[proxy]\nlisten = [::1:6380\n" SHARDS,
     "proxy.ini:2: listen: bad address '[::1:6380': missing ']' after the IPv6 address"},
    {"[proxy]\nlisten = [::1]\n" SHARDS, "proxy.ini:2: listen: bad address '[::1]': missing port"},
    {"[proxy]\nlisten = [::1]6380\n" SHARDS,
     "proxy.ini:2: listen: bad address '[::1]6380': expected ':' after ']'"},
    {"[proxy]\nlisten = [::g]:6380\n" SHARDS,
     "proxy.ini:2: listen: bad address '[::g]:6380': '::g' is not an IPv6 address"},
    {"[proxy]\nlisten = [127.0.0.1]:6380\n" SHARDS,
     "proxy.ini:2: listen: bad address '[127.0.0.1]:6380': '127.0.0.1' is not an IPv6 address"},
    {"[proxy]\nlisten = 127.0.0.300:6380\n" SHARDS,
     "proxy.ini:2: listen: bad address '127.0.0.300:6380': '127.0.0.300' is not an IPv4 address"},
    {"[proxy]\nlisten = bad/host:6380\n" SHARDS,
     "proxy.ini:2: listen: bad address 'bad/host:6380': 'bad/host' is not a hostname or IP "
     "address"},

    /* hash_tag */
    {"[proxy]\nhash_tag = {\n" SHARDS,
     "proxy.ini:2: hash_tag: '{' is not two different characters (like {}), or empty to disable "
     "tags"},
    {"[proxy]\nhash_tag = {{\n" SHARDS,
     "proxy.ini:2: hash_tag: '{{' is not two different characters (like {}), or empty to disable "
     "tags"},
    {"[proxy]\nhash_tag = {x}\n" SHARDS,
     "proxy.ini:2: hash_tag: '{x}' is not two different characters (like {}), or empty to disable "
     "tags"},

    /* rules across keys: reported at the later line of the two */
    {"[proxy]\nreconnect_min = 6000\n" SHARDS,
     "proxy.ini:2: reconnect_min (6000 ms) is above reconnect_max (5000 ms)"},
    {"[proxy]\nreconnect_max = 50\nreconnect_min = 60\n" SHARDS,
     "proxy.ini:3: reconnect_min (60 ms) is above reconnect_max (50 ms)"},
    {"[proxy]\nmax_client_output = 1mb\n" SHARDS,
     "proxy.ini:2: client_output_pause (16mb) is above max_client_output (1mb)"},
    {"[proxy]\ncompat = twemproxy\nhash = murmur3\n" SHARDS,
     "proxy.ini:3: compat = twemproxy needs one of nutcracker's hashes (fnv1a_64, crc32, md5, "
     "murmur), not murmur3"},

    /* TLS keys that only work together */
    {"[proxy]\ntls_listen = 127.0.0.1:6390\n" SHARDS,
     "proxy.ini:2: tls_listen needs tls_cert_file and tls_key_file"},
    {"[proxy]\ntls_listen = 127.0.0.1:6390\ntls_cert_file = c.pem\n" SHARDS,
     "proxy.ini:2: tls_listen needs tls_cert_file and tls_key_file"},
    {"[proxy]\ntls_auth_clients = yes\n" SHARDS,
     "proxy.ini:2: tls_auth_clients = yes needs tls_ca_cert_file to check certificates with"},
    {"[proxy]\ntls_auth_clients = maybe\n" SHARDS,
     "proxy.ini:2: tls_auth_clients: 'maybe' is not one of no, yes, optional"},
    {"[proxy]\ntls_shards = yes\n" SHARDS,
     "proxy.ini:2: tls_shards = yes needs tls_shards_ca_cert_file to check the shards' "
     "certificates"},
    {"[proxy]\ntls_sentinels = yes\n" SHARDS,
     "proxy.ini:2: tls_sentinels = yes needs tls_shards_ca_cert_file to check the Sentinels' "
     "certificates"},
    {"[proxy]\ntls_shards_key_file = k.pem\n" SHARDS,
     "proxy.ini:2: tls_shards_cert_file and tls_shards_key_file go together"},
    {"[proxy]\ntls_listen = 127.0.0.1:6380\ntls_cert_file = c\ntls_key_file = k\n" SHARDS,
     "proxy.ini:2: tls_listen is the same address as listen"},
    {"[proxy]\ntls_listen = nowhere\n" SHARDS,
     "proxy.ini:2: tls_listen: bad address 'nowhere': missing port"},

    /* no shards */
    {"", "proxy.ini: no shards: add lines like 's1 = 127.0.0.1:7001' under [shards]"},
    {"[proxy]\nlisten = 127.0.0.1:6380\n",
     "proxy.ini: no shards: add lines like 's1 = 127.0.0.1:7001' under [shards]"},
    {"[proxy]\n[shards]\n; s1 = 127.0.0.1:7001\n",
     "proxy.ini:2: [shards] has no shards: add lines like 's1 = 127.0.0.1:7001' under it"},
    {"[proxy]\nlisten = 127.0.0.1:6380\n\n[shards]\n",
     "proxy.ini:4: [shards] has no shards: add lines like 's1 = 127.0.0.1:7001' under it"},

    /* shard names */
    {"[shards]\ns1 = 127.0.0.1:7001\ns2 = 127.0.0.1:7002\ns1 = 127.0.0.1:7003\n",
     "proxy.ini:4: duplicate shard name 's1' (first on line 2)"},
    {"[shards]\ns 1 = 127.0.0.1:7001\n",
     "proxy.ini:2: bad shard name 's 1' (use 1 to 64 of the characters A-Z a-z 0-9 _ . -)"},
    {"[shards]\ns/1 = 127.0.0.1:7001\n",
     "proxy.ini:2: bad shard name 's/1' (use 1 to 64 of the characters A-Z a-z 0-9 _ . -)"},
    {"[shards]\nsh\xc3\xa4rd = 127.0.0.1:7001\n",
     "proxy.ini:2: bad shard name 'sh\xc3\xa4rd' (use 1 to 64 of the characters A-Z a-z 0-9 _ . "
     "-)"},
    {"[shards]\nabcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklm = "
     "127.0.0.1:7001\n",
     "proxy.ini:2: bad shard name "
     "'abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklm'"
     " (use 1 to 64 of the characters A-Z a-z 0-9 _ . -)"},
    {SHARDS "hash = md5\n",
     "proxy.ini:3: 'hash' is a [proxy] key, but this line is under [shards]"},

    /* shard addresses */
    {"[shards]\ns1 =\n", "proxy.ini:2: shard s1 has no address (expected host:port [weight=N])"},
    {"[shards]\ns1 = 127.0.0.1\n", "proxy.ini:2: shard s1: bad address '127.0.0.1': missing port"},
    {"[shards]\ns1 = 127.0.0.1:99999\n",
     "proxy.ini:2: shard s1: bad address '127.0.0.1:99999': port 99999 is out of range 1..65535"},
    {"[shards]\ns1 = ::1:7001\n",
     "proxy.ini:2: shard s1: bad address '::1:7001': an IPv6 address needs brackets, as in "
     "[::1]:7001"},
    {"[shards]\ns1 = 127.0.0.1:7001\ns2 = 127.0.0.1:7001\n",
     "proxy.ini:3: shards s2 and s1 (line 2) have the same address 127.0.0.1:7001"},
    {"[shards]\ns1 = [::1]:7001\ns2 = [0:0::1]:7001\n",
     "proxy.ini:3: shards s2 and s1 (line 2) have the same address [0:0::1]:7001"},
    {"[shards]\ns1 = localhost:7001\ns2 = LOCALHOST:7001\n",
     "proxy.ini:3: shards s2 and s1 (line 2) have the same address LOCALHOST:7001"},
    {"[proxy]\nlisten = 127.0.0.1:7001\n" SHARDS,
     "proxy.ini:4: shard s1 is at the proxy's own listen address 127.0.0.1:7001"},

    /* Sentinel-named masters and the sentinels list */
    {"[shards]\ns1 = sentinel:mymaster\n",
     "proxy.ini:2: shard s1 names sentinel master mymaster, but [proxy] sentinels lists no "
     "Sentinel"},
    {"[proxy]\nsentinels = 127.0.0.1:26379\n[shards]\ns1 = sentinel:m\ns2 = sentinel:m\n",
     "proxy.ini:5: shards s2 and s1 (line 4) name the same sentinel master m"},
    {"[proxy]\nsentinels = 127.0.0.1:26379\n[shards]\ns1 = sentinel:\n",
     "proxy.ini:4: shard s1: bad master name '' after sentinel: (use 1 to 64 of the characters "
     "A-Z a-z 0-9 _ . -)"},
    {"[proxy]\nsentinels = 127.0.0.1:26379\n[shards]\ns1 = sentinel:m x\n",
     "proxy.ini:4: shard s1: unexpected 'x' after the address (expected weight=N or read_from=X)"},
    {"[shards]\ns1 = 127.0.0.1:7001 read_from=slave\n",
     "proxy.ini:2: shard s1: read_from must be given once, as master, replica or prefer_replica, "
     "not 'slave'"},
    {"[proxy]\nsentinels = 127.0.0.1:26379, 127.0.0.1\n" SHARDS,
     "proxy.ini:2: sentinels: bad address '127.0.0.1': missing port"},
    {"[proxy]\nsentinels = 127.0.0.1:26379,127.0.0.1:26379\n" SHARDS,
     "proxy.ini:2: sentinels: '127.0.0.1:26379' is listed twice"},
    {"[proxy]\nsentinel_poll = 99\n" SHARDS,
     "proxy.ini:2: sentinel_poll: 99 is out of range 100..3600000 (ms)"},
    {"[proxy]\ndns_hosts_file =\n" SHARDS,
     "proxy.ini:2: dns_hosts_file has no value (expected a file path)"},
    {"[proxy]\ndns_refresh = -1\n" SHARDS,
     "proxy.ini:2: dns_refresh: -1 is out of range 0..86400000 (ms)"},

    /* weights and what follows the address */
    {"[shards]\ns1 = 127.0.0.1:7001 weight=0\n",
     "proxy.ini:2: shard s1: weight must be an integer 1..10000, not '0'"},
    {"[shards]\ns1 = 127.0.0.1:7001 weight=-2\n",
     "proxy.ini:2: shard s1: weight must be an integer 1..10000, not '-2'"},
    {"[shards]\ns1 = 127.0.0.1:7001 weight=x\n",
     "proxy.ini:2: shard s1: weight must be an integer 1..10000, not 'x'"},
    {"[shards]\ns1 = 127.0.0.1:7001 weight=\n",
     "proxy.ini:2: shard s1: weight must be an integer 1..10000, not ''"},
    {"[shards]\ns1 = 127.0.0.1:7001 weight=1.5\n",
     "proxy.ini:2: shard s1: weight must be an integer 1..10000, not '1.5'"},
    {"[shards]\ns1 = 127.0.0.1:7001 weight=10001\n",
     "proxy.ini:2: shard s1: weight must be an integer 1..10000, not '10001'"},
    {"[shards]\ns1 = 127.0.0.1:7001 weight=2 weight=3\n",
     "proxy.ini:2: shard s1: weight given twice"},
    {"[shards]\ns1 = 127.0.0.1:7001 primary\n", "proxy.ini:2: shard s1: unexpected 'primary' after "
                                                "the address (expected weight=N or read_from=X)"},
    {"[shards]\ns1 = 127.0.0.1:7001 weight = 2\n",
     "proxy.ini:2: shard s1: unexpected 'weight' after the address (expected weight=N or "
     "read_from=X)"},
    {"[shards]\ns1 = 127.0.0.1:7001 # main box\n",
     "proxy.ini:2: shard s1: unexpected '#' after the address (expected weight=N or read_from=X; "
     "comments start "
     "with ';')"},

    /* a key naming a shard: checked once [shards] is read */
    {"[proxy]\nscript_default_shard = s9\n" SHARDS,
     "proxy.ini:2: script_default_shard: 's9' is not a shard of [shards]"},
    {"[proxy]\nlock_shards = s1,s9\n" SHARDS,
     "proxy.ini:2: lock_shards: 's9' is not a shard of [shards]"},
    {"[proxy]\nlock_shards = s1, s1\n" SHARDS, "proxy.ini:2: lock_shards: 's1' is listed twice"},
    {"[proxy]\nlock_shards = s1,,\n" SHARDS,
     "proxy.ini:2: lock_shards: '' is not a shard of [shards]"},
    {"[proxy]\nstore_db = 0\n" SHARDS, "proxy.ini:2: store_db: 0 is out of range 1..1000000"},

    /* control bytes are escaped in messages */
    {"[proxy]\nhash = md\x01\n" SHARDS,
     "proxy.ini:2: hash: 'md\\x01' is not one of murmur3, fnv1a_64, crc32, md5, murmur"},
};

/* [users]: lines of one name add up, in order, like ACL SETUSER calls;
 * requirepass alone keeps meaning the default user's password. */
static void test_users(void **state)
{
    (void)state;
    config *cfg = load_ok(SHARDS "[users]\n"
                                 "alice = on >secret ~app:* ~cache:*\n"
                                 "bob = off nopass allkeys allchannels +@all -flushall\n"
                                 "alice = +@read -@dangerous +set\n");
    assert_int_equal(cfg->nusers, 2);
    const acl_user *alice = config_find_user(cfg, "alice", 5);
    assert_non_null(alice);
    assert_int_equal(alice->line, 4);
    assert_true(alice->enabled);
    assert_int_equal(alice->nkey_patterns, 2);
    assert_int_equal(alice->nrules, 3);
    assert_true(acl_user_check_password(alice, "secret", 6));
    assert_false(acl_user_check_password(alice, "secreT", 6));
    const acl_user *bob = config_find_user(cfg, "bob", 3);
    assert_false(bob->enabled);
    assert_false(acl_user_check_password(bob, "", 0)); /* off: nothing authenticates */
    assert_null(config_find_user(cfg, "Alice", 5));    /* names are case-sensitive */
    config_free(cfg);

    cfg = load_ok("[proxy]\nrequirepass = pw\n" SHARDS "[users]\nalice = on >a\n");
    assert_string_equal(cfg->requirepass, "pw");
    assert_null(config_find_user(cfg, "default", 7)); /* built by the daemon from requirepass */
    config_free(cfg);
}

static void test_errors(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof(error_cases) / sizeof(error_cases[0]); i++) {
        const error_case *c = &error_cases[i];
        config *untouched = (config *)&failures;
        config *cfg = untouched;
        char err[512] = "";
        int rc = config_load_string(c->ini, "proxy.ini", &cfg, err, sizeof(err));
        if (rc != -1 || cfg != untouched || strcmp(err, c->message) != 0) {
            print_error("case %zu: rc %d\n  want: %s\n  got:  %s\n--- input:\n%s---\n", i, rc,
                        c->message, err, c->ini);
            failures++;
            if (rc == 0 && cfg != untouched)
                config_free(cfg);
        }
    }
    assert_int_equal(failures, 0);
}

/* A line of n characters: "; xxx...". */
static char *comment_line(size_t n)
{
    char *line = malloc(n + 1);
    assert_non_null(line);
    memset(line, 'x', n);
    line[0] = ';';
    line[n] = '\0';
    return line;
}

static void test_line_too_long(void **state)
{
    (void)state;
    char text[1024], err[512];
    config *cfg = NULL;

    /* 197 characters fit inih's 200-byte buffer with "\r\n" and NUL */
    char *fits = comment_line(CONFIG_MAX_LINE - 3);
    snprintf(text, sizeof(text), "[proxy]\n%s\r\n" SHARDS, fits);
    config_free(load_ok(text));

    char *over = comment_line(CONFIG_MAX_LINE - 2);
    snprintf(text, sizeof(text), "[proxy]\n%s\n" SHARDS, over);
    assert_int_equal(config_load_string(text, "proxy.ini", &cfg, err, sizeof(err)), -1);
    assert_string_equal(err, "proxy.ini:2: line is 198 characters long; the limit is 197");

    /* a long shard line whose tail looks like a key must not be split into
     * one: the error is on its own line, and no line number shifts */
    char name[200];
    memset(name, 'x', 190);
    name[190] = '\0';
    snprintf(text, sizeof(text), "[shards]\ns1 = 127.0.0.1:7001\ns2 = %s:7002 weight=2\ns3 =\n",
             name);
    assert_int_equal(config_load_string(text, "proxy.ini", &cfg, err, sizeof(err)), -1);
    assert_string_equal(err, "proxy.ini:3: line is 209 characters long; the limit is 197");

    /* an over-long last line without a newline */
    snprintf(text, sizeof(text), SHARDS "%s", over);
    assert_int_equal(config_load_string(text, "proxy.ini", &cfg, err, sizeof(err)), -1);
    assert_string_equal(err, "proxy.ini:3: line is 198 characters long; the limit is 197");
    assert_null(cfg);

    free(fits);
    free(over);
}

/* --- files ------------------------------------------------------------- */

/* Writes len bytes to a new temp file; returns its path (static buffer). */
static const char *temp_file(const char *bytes, size_t len)
{
    static char path[64];
    snprintf(path, sizeof(path), "/tmp/test_config.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_file_errors(void **state)
{
    (void)state;
    config *cfg = NULL;
    char err[512], want[600];

    assert_int_equal(config_load("/nonexistent/proxy.ini", &cfg, err, sizeof(err)), -1);
    assert_string_equal(err, "/nonexistent/proxy.ini: cannot open: No such file or directory");

    assert_int_equal(config_load("/tmp", &cfg, err, sizeof(err)), -1);
    assert_string_equal(err, "/tmp: cannot read: Is a directory");

    static const char with_nul[] = "[shards]\ns1 = 127.0.0.1:7001\ns2 = 127.0.0.1:70\00002\n";
    const char *path = temp_file(with_nul, sizeof(with_nul) - 1);
    assert_int_equal(config_load(path, &cfg, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s:3: line contains a NUL byte", path);
    assert_string_equal(err, want);
    unlink(path);

    /* errors inside a file carry its path */
    static const char bad_key[] = "[proxy]\nlisen = 127.0.0.1:6380\n";
    path = temp_file(bad_key, sizeof(bad_key) - 1);
    assert_int_equal(config_load(path, &cfg, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "%s:2: unknown key 'lisen' in [proxy]", path);
    assert_string_equal(err, want);

    /* root reads anything: the permission case only means something for
     * other users */
    if (geteuid() != 0) {
        assert_int_equal(chmod(path, 0), 0);
        assert_int_equal(config_load(path, &cfg, err, sizeof(err)), -1);
        snprintf(want, sizeof(want), "%s: cannot open: %s", path, strerror(EACCES));
        assert_string_equal(err, want);
    }
    unlink(path);
    assert_null(cfg);

    static const char good[] = SHARDS;
    path = temp_file(good, sizeof(good) - 1);
    assert_int_equal(config_load(path, &cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg->path, path);
    assert_int_equal(cfg->nshards, 1);
    config_free(cfg);
    unlink(path);
}

static void test_error_buffer_is_bounded(void **state)
{
    (void)state;
    config *cfg = NULL;
    char err[8];
    memset(err, 'z', sizeof(err));
    assert_int_equal(config_load_string("[proxi]\n", "proxy.ini", &cfg, err, sizeof(err)), -1);
    assert_string_equal(err, "proxy.i");
    assert_int_equal(config_load_string("[proxi]\n", "proxy.ini", &cfg, NULL, 0), -1);
    assert_int_equal(config_load("/nonexistent", &cfg, NULL, 0), -1);
    assert_null(cfg);
}

/* --- accepted values ---------------------------------------------------- */

static void assert_defaults(const config *cfg)
{
    assert_string_equal(cfg->listen_host, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 6380);
    assert_int_equal(cfg->hash, HASH_MURMUR3);
    assert_int_equal(cfg->hash_tag_open, '{');
    assert_int_equal(cfg->hash_tag_close, '}');
    assert_int_equal(cfg->compat, RING_DEFAULT);
    assert_int_equal(cfg->backend_connections, 1);
    assert_int_equal(cfg->connect_timeout_ms, 1000);
    assert_int_equal(cfg->request_timeout_ms, 2000);
    assert_int_equal(cfg->reconnect_min_ms, 100);
    assert_int_equal(cfg->reconnect_max_ms, 5000);
    assert_int_equal(cfg->max_clients, 10000);
    assert_int_equal(cfg->max_bulk_len, 536870912);
    assert_int_equal(cfg->max_args, 1048576);
    assert_int_equal(cfg->max_inline_len, 65536);
    assert_int_equal(cfg->max_query_buffer, 1073741824);
    assert_int_equal(cfg->client_output_pause, 16777216);
    assert_int_equal(cfg->max_client_output, 1073741824);
    assert_int_equal(cfg->max_pubsub_output, 33554432);
    assert_int_equal(cfg->backend_max_inflight, 100000);
    assert_int_equal(cfg->idle_timeout_s, 0);
    assert_int_equal(cfg->tcp_backlog, 511);
    assert_int_equal(cfg->workers, 1);
    assert_int_equal(cfg->log_level, CONFIG_LOG_INFO);
    assert_int_equal(cfg->watch_config, 1);
    assert_int_equal(cfg->migrate_batch, 1000);
    assert_int_equal(cfg->migrate_rate, 0);
    assert_int_equal(cfg->migrate_timeout_ms, 5000);
    assert_int_equal(cfg->allow_flush, 1);
    assert_int_equal(cfg->allow_config_set, 0);
    assert_null(cfg->script_default_shard);
    assert_int_equal(cfg->store_db, 15);
    assert_int_equal(cfg->cross_shard, CONFIG_CROSS_BEST_EFFORT);
    assert_int_equal(cfg->txn_recovery_after_ms, 5000);
    assert_string_equal(cfg->lock_shards, "all");
    assert_true(config_is_lock_shard(cfg, "s1"));
    assert_int_equal(cfg->slowlog_slower_than, 10000);
    assert_int_equal(cfg->slowlog_max_len, 128);
    assert_null(cfg->metrics_host); /* off */
}

static void test_defaults(void **state)
{
    (void)state;
    config *cfg = load_ok(SHARDS);
    assert_defaults(cfg);
    assert_string_equal(cfg->path, "proxy.ini");
    assert_int_equal(cfg->nshards, 1);
    assert_string_equal(cfg->shards[0].name, "s1");
    assert_string_equal(cfg->shards[0].host, "127.0.0.1");
    assert_int_equal(cfg->shards[0].port, 7001);
    assert_int_equal(cfg->shards[0].weight, 1);
    assert_int_equal(cfg->shards[0].line, 2);
    config_free(cfg);
}

/* compat = twemproxy alone takes nutcracker's defaults; explicit lines win. */
static void test_twemproxy_defaults(void **state)
{
    (void)state;
    config *cfg = load_ok("[proxy]\ncompat = twemproxy\n" SHARDS);
    assert_int_equal(cfg->hash, HASH_FNV1A_64);
    assert_int_equal(cfg->hash_tag_open, 0);
    assert_int_equal(cfg->hash_tag_close, 0);
    config_free(cfg);
    cfg = load_ok("[proxy]\nhash = md5\nhash_tag = {}\ncompat = twemproxy\n" SHARDS);
    assert_int_equal(cfg->hash, HASH_MD5);
    assert_int_equal(cfg->hash_tag_open, '{');
    assert_int_equal(cfg->hash_tag_close, '}');
    config_free(cfg);
}

static void test_every_key_set(void **state)
{
    (void)state;
    config *cfg = load_ok("[proxy]\n"
                          "listen = [::1]:6390\n"
                          "hash = fnv1a_64\n"
                          "hash_tag = <>\n"
                          "compat = twemproxy\n"
                          "backend_connections = 4\n"
                          "connect_timeout = 250\n"
                          "request_timeout = 0\n"
                          "reconnect_min = 10\n"
                          "reconnect_max = 10\n"
                          "max_clients = 5\n"
                          "max_bulk_len = 1mb\n"
                          "max_args = 64\n"
                          "max_inline_len = 100\n"
                          "max_query_buffer = 2GB\n"
                          "client_output_pause = 1kb\n"
                          "max_client_output = 1kb\n"
                          "backend_max_inflight = 7\n"
                          "idle_timeout = 300\n"
                          "tcp_backlog = 128\n"
                          "log_level = warn\n"
                          "watch_config = no\n"
                          "allow_flush = no\n"
                          "allow_config_set = yes\n"
                          "script_default_shard = s1\n"
                          "store_db = 9\n"
                          "lock_shards =  s1 \n" SHARDS);
    assert_string_equal(cfg->listen_host, "::1");
    assert_int_equal(cfg->listen_port, 6390);
    assert_int_equal(cfg->hash, HASH_FNV1A_64);
    assert_int_equal(cfg->hash_tag_open, '<');
    assert_int_equal(cfg->hash_tag_close, '>');
    assert_int_equal(cfg->compat, RING_TWEMPROXY);
    assert_int_equal(cfg->backend_connections, 4);
    assert_int_equal(cfg->connect_timeout_ms, 250);
    assert_int_equal(cfg->request_timeout_ms, 0);
    assert_int_equal(cfg->reconnect_min_ms, 10);
    assert_int_equal(cfg->reconnect_max_ms, 10);
    assert_int_equal(cfg->max_clients, 5);
    assert_int_equal(cfg->max_bulk_len, 1 << 20);
    assert_int_equal(cfg->max_args, 64);
    assert_int_equal(cfg->max_inline_len, 100);
    assert_int_equal(cfg->max_query_buffer, (int64_t)2 << 30);
    assert_int_equal(cfg->client_output_pause, 1024);
    assert_int_equal(cfg->max_client_output, 1024);
    assert_int_equal(cfg->backend_max_inflight, 7);
    assert_int_equal(cfg->idle_timeout_s, 300);
    assert_int_equal(cfg->tcp_backlog, 128);
    assert_int_equal(cfg->log_level, CONFIG_LOG_WARN);
    assert_int_equal(cfg->watch_config, 0);
    assert_int_equal(cfg->allow_flush, 0);
    assert_int_equal(cfg->allow_config_set, 1);
    assert_string_equal(cfg->script_default_shard, "s1");
    assert_int_equal(cfg->store_db, 9);
    assert_true(config_is_lock_shard(cfg, "s1"));
    assert_false(config_is_lock_shard(cfg, "s2"));
    assert_false(config_is_lock_shard(cfg, "s"));
    config_free(cfg);
}

#define INT_FIELD(f) offsetof(config, f), sizeof(((config *)0)->f)

static int64_t field_value(const config *cfg, size_t offset, int size)
{
    const char *p = (const char *)cfg + offset;
    if (size == 1)
        return *p;
    if (size == 4) {
        int v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    int64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static void test_value_forms(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        size_t offset;
        int size;
        int64_t want;
    } cases[] = {
        {"max_bulk_len = 1", INT_FIELD(max_bulk_len), 1},
        {"max_bulk_len = 1kb", INT_FIELD(max_bulk_len), 1024},
        {"max_bulk_len = 3KB", INT_FIELD(max_bulk_len), 3072},
        {"max_bulk_len = 2Mb", INT_FIELD(max_bulk_len), 2 << 20},
        {"max_bulk_len = 5gb", INT_FIELD(max_bulk_len), (int64_t)5 << 30},
        {"max_bulk_len = 1024gb", INT_FIELD(max_bulk_len), (int64_t)1 << 40},
        {"max_query_buffer = 007", INT_FIELD(max_query_buffer), 7},
        {"max_args = 2147483647", INT_FIELD(max_args), 2147483647},
        {"request_timeout = 3600000", INT_FIELD(request_timeout_ms), 3600000},
        {"idle_timeout = 604800", INT_FIELD(idle_timeout_s), 604800},
        {"tcp_backlog = 65535", INT_FIELD(tcp_backlog), 65535},
        {"workers = 64", INT_FIELD(workers), 64},
        {"watch_config = yes", INT_FIELD(watch_config), 1},
        {"watch_config = YES", INT_FIELD(watch_config), 1},
        {"watch_config = true", INT_FIELD(watch_config), 1},
        {"watch_config = on", INT_FIELD(watch_config), 1},
        {"watch_config = 1", INT_FIELD(watch_config), 1},
        {"watch_config = no", INT_FIELD(watch_config), 0},
        {"watch_config = False", INT_FIELD(watch_config), 0},
        {"watch_config = off", INT_FIELD(watch_config), 0},
        {"watch_config = 0", INT_FIELD(watch_config), 0},
        {"hash = murmur3", INT_FIELD(hash), HASH_MURMUR3},
        {"hash = fnv1a_64", INT_FIELD(hash), HASH_FNV1A_64},
        {"hash = crc32", INT_FIELD(hash), HASH_CRC32},
        {"hash = MD5", INT_FIELD(hash), HASH_MD5},
        {"hash = murmur", INT_FIELD(hash), HASH_MURMUR},
        {"compat = none", INT_FIELD(compat), RING_DEFAULT},
        {"log_level = debug", INT_FIELD(log_level), CONFIG_LOG_DEBUG},
        {"log_level = notice", INT_FIELD(log_level), CONFIG_LOG_NOTICE},
        {"log_level = error", INT_FIELD(log_level), CONFIG_LOG_ERROR},
        {"hash_tag =", INT_FIELD(hash_tag_open), 0},
        {"hash_tag = ; tags off", INT_FIELD(hash_tag_close), 0},
        {"hash_tag = ()", INT_FIELD(hash_tag_close), ')'},
        {"listen = 0.0.0.0:1", INT_FIELD(listen_port), 1},
        {"listen = localhost:65535", INT_FIELD(listen_port), 65535},
        {"listen = [::]:6380 ; every address", INT_FIELD(listen_port), 6380},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "[proxy]\n%s\n" SHARDS, cases[i].line);
        config *cfg = load_ok(text);
        int64_t got = field_value(cfg, cases[i].offset, cases[i].size);
        if (got != cases[i].want)
            fail_msg("'%s': got %lld, want %lld", cases[i].line, (long long)got,
                     (long long)cases[i].want);
        config_free(cfg);
    }
}

static void test_shard_forms(void **state)
{
    (void)state;
    config *cfg = load_ok("\xef\xbb\xbf; a BOM, CRLF line ends, indentation and comments\r\n"
                          "[shards]\r\n"
                          "  a.b-c_9 = 10.0.0.1:7001 weight=3 ; inline comment\r\n"
                          "# hash comment\r\n"
                          "\tv6 = [fe80::1]:7002\t weight=10000\r\n"
                          "\r\n"
                          "host = cache-1.example.com:7003\r\n"
                          "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz012345678_.- = "
                          "127.0.0.1:7004\r\n"
                          "S1 = 127.0.0.1:7005\r\n"
                          "s1 = 127.0.0.1:7006"); /* no final newline */
    assert_int_equal(cfg->nshards, 6);
    const config_shard *s = cfg->shards;
    assert_string_equal(s[0].name, "a.b-c_9");
    assert_string_equal(s[0].host, "10.0.0.1");
    assert_int_equal(s[0].port, 7001);
    assert_int_equal(s[0].weight, 3);
    assert_int_equal(s[0].line, 3);
    assert_string_equal(s[1].name, "v6");
    assert_string_equal(s[1].host, "fe80::1");
    assert_int_equal(s[1].port, 7002);
    assert_int_equal(s[1].weight, 10000);
    assert_int_equal(s[1].line, 5);
    assert_string_equal(s[2].host, "cache-1.example.com");
    assert_int_equal(s[2].weight, 1);
    assert_int_equal(strlen(s[3].name), 64);
    assert_string_equal(s[4].name, "S1");
    assert_string_equal(s[5].name, "s1");
    assert_int_equal(s[5].line, 10);
    config_free(cfg);

    /* Sentinel lines mix with addresses; the list takes spaces and IPv6 */
    cfg = load_ok("[proxy]\nsentinels = 127.0.0.1:26379 ,[::1]:26380,  localhost:26381\n"
                  "sentinel_password = sp\n"
                  "read_from = prefer_replica\n"
                  "[shards]\ns1 = sentinel:mymaster weight=2 read_from=replica\n"
                  "s2 = 127.0.0.1:7002\n");
    assert_int_equal(cfg->read_from, CONFIG_READ_PREFER_REPLICA);
    assert_int_equal(cfg->shards[0].read_from, CONFIG_READ_REPLICA);
    assert_int_equal(cfg->shards[1].read_from, -1);
    assert_int_equal(cfg->sentinels.n, 3);
    assert_string_equal(cfg->sentinels.addrs[0].host, "127.0.0.1");
    assert_int_equal(cfg->sentinels.addrs[0].port, 26379);
    assert_string_equal(cfg->sentinels.addrs[1].host, "::1");
    assert_string_equal(cfg->sentinels.addrs[2].host, "localhost");
    assert_int_equal(cfg->sentinels.addrs[2].port, 26381);
    assert_string_equal(cfg->sentinel_password, "sp");
    assert_null(cfg->shards[0].host);
    assert_string_equal(cfg->shards[0].sentinel_master, "mymaster");
    assert_int_equal(cfg->shards[0].weight, 2);
    assert_null(cfg->shards[1].sentinel_master);
    assert_string_equal(cfg->shards[1].host, "127.0.0.1");
    config_free(cfg);

    /* [shards] may come first, and sections may repeat */
    cfg = load_ok(SHARDS "[proxy]\nhash = md5\n[shards]\ns2 = 127.0.0.1:7002\n");
    assert_int_equal(cfg->nshards, 2);
    assert_int_equal(cfg->hash, HASH_MD5);
    config_free(cfg);
}

/* --- reload ------------------------------------------------------------- */

static void test_fixed_changes(void **state)
{
    (void)state;
    config *old_cfg = load_ok(SHARDS);
    char buf[128];

    config *same = load_ok("[proxy]\nlisten = 127.0.0.1:6380\nrequest_timeout = 10\n"
                           "log_level = debug\nmax_clients = 3\nwatch_config = no\n"
                           "[shards]\ns9 = 10.0.0.9:7000\n");
    assert_int_equal(config_fixed_changes(old_cfg, same, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");

    config *changed = load_ok("[proxy]\nlisten = 127.0.0.1:6381\nhash = crc32\nhash_tag =\n"
                              "compat = twemproxy\nbackend_connections = 2\ntcp_backlog = 10\n"
                              "workers = 2\nrequest_timeout = 10\n" SHARDS);
    assert_int_equal(config_fixed_changes(old_cfg, changed, buf, sizeof(buf)), 7);
    assert_string_equal(
        buf, "listen, hash, hash_tag, compat, backend_connections, tcp_backlog, workers");

    /* a short buffer truncates the list but not the count */
    char small[10];
    assert_int_equal(config_fixed_changes(old_cfg, changed, small, sizeof(small)), 7);
    assert_string_equal(small, "listen, h");
    assert_int_equal(config_fixed_changes(old_cfg, changed, NULL, 0), 7);

    config_free(old_cfg);
    config_free(same);
    config_free(changed);
}

/* metrics_listen is optional (empty = off) and read at start only. */
static void test_metrics_listen(void **state)
{
    (void)state;
    config *off = load_ok(SHARDS);
    config *on = load_ok("[proxy]\nmetrics_listen = 127.0.0.1:9121\n" SHARDS);
    config *empty = load_ok("[proxy]\nmetrics_listen =\n" SHARDS);
    assert_null(off->metrics_host);
    assert_null(empty->metrics_host);
    assert_string_equal(on->metrics_host, "127.0.0.1");
    assert_int_equal(on->metrics_port, 9121);
    char buf[128];
    assert_int_equal(config_fixed_changes(off, on, buf, sizeof(buf)), 1);
    assert_string_equal(buf, "metrics_listen");
    assert_int_equal(config_fixed_changes(off, empty, buf, sizeof(buf)), 0);
    config_free(off);
    config_free(on);
    config_free(empty);
}

/* --- the shipped proxy.ini and the docs ---------------------------------- */

static void test_shipped_proxy_ini(void **state)
{
    (void)state;
    config *cfg = NULL;
    char err[512];
    if (config_load("proxy.ini", &cfg, err, sizeof(err)) != 0)
        fail_msg("%s (run from the repository root)", err);
    assert_defaults(cfg);
    assert_int_equal(cfg->nshards, 3);
    for (size_t i = 0; i < 3; i++) {
        char name[8];
        snprintf(name, sizeof(name), "s%zu", i + 1);
        assert_string_equal(cfg->shards[i].name, name);
        assert_string_equal(cfg->shards[i].host, "127.0.0.1");
        assert_int_equal(cfg->shards[i].port, 7001 + i);
        assert_int_equal(cfg->shards[i].weight, 1);
    }
    config_free(cfg);
}

static void test_proxy_ini_documents_every_key(void **state)
{
    (void)state;
    char *ini = read_file("proxy.ini");
    assert_non_null(ini);
    char *reference = capture(config_write_reference);
    if (!strstr(ini, reference))
        fail_msg("proxy.ini lacks the current key reference; replace its commented [proxy] keys "
                 "with:\n%s",
                 reference);
    free(ini);
    free(reference);
}

/* The reference must stay readable in an 80-100 column editor, and every
 * "; key = default" line in it must load as is once uncommented. */
static void test_reference_is_loadable(void **state)
{
    (void)state;
    char *reference = capture(config_write_reference);
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    fputs("[proxy]\n", mem);
    int keys = 0;
    char *save = NULL;
    for (char *line = strtok_r(reference, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        assert_true(strlen(line) <= 100);
        assert_true(line[0] == ';');
        if (line[1] == ' ' && line[2] != ' ') {
            fprintf(mem, "%s\n", line + 2);
            keys++;
        }
    }
    fputs(SHARDS, mem);
    fclose(mem);
    assert_int_equal(keys, 58);
    config *cfg = load_ok(text);
    assert_defaults(cfg);
    config_free(cfg);
    free(text);
    free(reference);
}

static void test_readme_documents_every_key(void **state)
{
    (void)state;
    char *readme = read_file("config/README.md");
    assert_non_null(readme);
    char *table = capture(config_write_markdown);
    if (!strstr(readme, table))
        fail_msg("config/README.md lacks the current key table; replace it with:\n%s", table);
    free(readme);
    free(table);
}

/* A hostname is told from an address by its text: nothing is looked up. */
static void test_host_is_name(void **state)
{
    (void)state;
    static const struct {
        const char *host;
        int is_name;
    } cases[] = {
        {"127.0.0.1", 0},       {"::1", 0},       {"2001:db8::7", 0}, {"app-redis-1", 1},
        {"redis.svc.local", 1}, {"localhost", 1}, {"10.0.0", 1},      {"", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (config_host_is_name(cases[i].host) != cases[i].is_name)
            fail_msg("config_host_is_name(\"%s\") is not %d", cases[i].host, cases[i].is_name);
    assert_int_equal(config_host_is_name(NULL), 0);
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(config_log_level_name(CONFIG_LOG_DEBUG), "debug");
    assert_string_equal(config_log_level_name(CONFIG_LOG_WARN), "warn");
    assert_string_equal(config_log_level_name((config_log_level)42), "?");
    config_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_line_too_long),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_error_buffer_is_bounded),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_twemproxy_defaults),
        cmocka_unit_test(test_every_key_set),
        cmocka_unit_test(test_value_forms),
        cmocka_unit_test(test_shard_forms),
        cmocka_unit_test(test_fixed_changes),
        cmocka_unit_test(test_shipped_proxy_ini),
        cmocka_unit_test(test_proxy_ini_documents_every_key),
        cmocka_unit_test(test_metrics_listen),
        cmocka_unit_test(test_reference_is_loadable),
        cmocka_unit_test(test_host_is_name),
        cmocka_unit_test(test_users),
        cmocka_unit_test(test_readme_documents_every_key),
        cmocka_unit_test(test_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
