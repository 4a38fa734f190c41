/* The harness itself: two redis-servers start on distinct free ports, serve
 * SET/GET through hiredis, and are gone (process and temp dir) once stopped. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "harness.h"

static void test_two_redis_servers_set_get_and_stop(void **state)
{
    (void)state;
    harness_proc servers[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(harness_redis_start(&servers[i]), 0);
        assert_true(servers[i].pid > 0);
    }
    assert_int_not_equal(servers[0].port, servers[1].port);

    for (int i = 0; i < 2; i++) {
        redisContext *c = harness_connect(servers[i].port);
        assert_non_null(c);
        redisReply *r = redisCommand(c, "SET %s %d", "harness:key", servers[i].port);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_STATUS);
        assert_string_equal(r->str, "OK");
        freeReplyObject(r);
        redisFree(c);
    }
    /* Each server kept its own value: they are distinct processes. */
    for (int i = 0; i < 2; i++) {
        redisContext *c = harness_connect(servers[i].port);
        assert_non_null(c);
        redisReply *r = redisCommand(c, "GET %s", "harness:key");
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_int_equal(atoi(r->str), servers[i].port);
        freeReplyObject(r);
        redisFree(c);
    }

    for (int i = 0; i < 2; i++) {
        pid_t pid = servers[i].pid;
        char dir[sizeof(servers[i].dir)];
        strcpy(dir, servers[i].dir);
        int status = harness_proc_stop(&servers[i], SIGTERM);
        assert_true(status != -1);
        assert_int_equal(servers[i].pid, 0);
        assert_int_equal(kill(pid, 0), -1);
        struct stat st;
        assert_int_equal(stat(dir, &st), -1);
        assert_int_equal(harness_wait_ping(servers[i].port, 100), -1);
    }
}

static void test_restart_on_same_port_after_kill(void **state)
{
    (void)state;
    harness_proc server;
    assert_int_equal(harness_redis_start(&server), 0);
    int port = server.port;
    assert_true(harness_proc_stop(&server, SIGKILL) != -1);
    assert_int_equal(harness_redis_restart(&server), 0);
    assert_int_equal(server.port, port);
    assert_int_equal(harness_wait_ping(port, 1000), 0);
    assert_true(harness_proc_stop(&server, SIGTERM) != -1);
}

static void test_free_ports_are_never_repeated(void **state)
{
    (void)state;
    int seen[64];
    for (int i = 0; i < 64; i++) {
        seen[i] = harness_free_port();
        assert_true(seen[i] > 0 && seen[i] < 65536);
        for (int j = 0; j < i; j++) {
            assert_int_not_equal(seen[i], seen[j]);
        }
    }
}

static void test_ini_names_shards_s1_to_sn(void **state)
{
    (void)state;
    harness_proc shards[2] = {{.port = 7001}, {.port = 7002}};
    char *ini = harness_ini(shards, 2, "request_timeout = 500");
    assert_non_null(ini);
    assert_non_null(strstr(ini, "[proxy]\nlisten = 127.0.0.1:%PORT%\nrequest_timeout = 500\n"));
    assert_non_null(strstr(ini, "[shards]\ns1 = 127.0.0.1:7001\ns2 = 127.0.0.1:7002\n"));
    free(ini);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_redis_servers_set_get_and_stop),
        cmocka_unit_test(test_restart_on_same_port_after_kill),
        cmocka_unit_test(test_free_ports_are_never_repeated),
        cmocka_unit_test(test_ini_names_shards_s1_to_sn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
