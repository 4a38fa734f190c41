/* docs/commands.md, the command reference, against the proxy: every command and
 * subcommand of the compiled table has exactly one row, naming its class;
 * and a request built for each one, sent through a proxy over four shards,
 * gets what the class promises: "-ERR unsupported command" exactly for the
 * unsupported ones, and for the others an answer that is neither that nor
 * an unknown command. Run from the repository root (docs/commands.md). */
#include <ctype.h>
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

#include "fixture.h"
#include "proxy/command.h"

/* Arguments in a sample request: above any Redis 7.0 command's arity. */
#define SAMPLE_MAX_ARGS 16
/* Rows in the reference: the 7.0 table has under 400. */
#define REFERENCE_MAX_ROWS 1024

/* The reference's word for each class, as proxy/command_gen.py writes it. */
static const char *class_word(command_class cls)
{
    switch (cls) {
    case COMMAND_FORWARD:
        return "forwarded";
    case COMMAND_SPLIT:
        return "split";
    case COMMAND_SAME_SHARD:
        return "same shard";
    case COMMAND_LOCAL:
        return "local";
    case COMMAND_FANOUT:
        return "fan-out";
    case COMMAND_UNSUPPORTED:
        return "unsupported";
    case COMMAND_ITERATE:
        return "shard by shard";
    case COMMAND_TRANSACTION:
        return "transaction";
    case COMMAND_PUBSUB:
        return "pub/sub";
    case COMMAND_LOCK:
        return "lock";
    }
    return "?";
}

typedef struct ref_row {
    char name[64]; /* "GET", "CLIENT LIST" */
    char word[32]; /* the class word */
    const command *cmd;
    int seen;
} ref_row;

static ref_row rows[REFERENCE_MAX_ROWS];
static size_t nrows;

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *text = malloc(cap);
    size_t n;
    while (text && (n = fread(text + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            text = realloc(text, cap);
        }
    }
    fclose(f);
    if (text) {
        text[len] = '\0';
    }
    return text;
}

/* The command (or subcommand) a reference name stands for. */
static const command *resolve_name(const char *name)
{
    char lower[64];
    size_t n = strlen(name);
    assert_true(n < sizeof(lower));
    for (size_t i = 0; i <= n; i++) {
        lower[i] = (char)tolower((unsigned char)name[i]);
    }
    char *space = strchr(lower, ' ');
    size_t top_len = space ? (size_t)(space - lower) : n;
    const command *top = command_lookup(lower, top_len);
    if (top == NULL || space == NULL) {
        return top;
    }
    *space = '|';
    for (size_t i = 0; i < top->nsubcommands; i++) {
        if (strcmp(top->subcommands[i].name, lower) == 0) {
            return &top->subcommands[i];
        }
    }
    return NULL;
}

/* Where the reference is, from the repository root, and how to write it. */
#define REFERENCE_PATH  "docs/commands.md"
#define REFERENCE_REGEN "run python3 proxy/command_gen.py --markdown > docs/commands.md"

/* Reads the rows of the command table of docs/commands.md. */
static void load_reference(void)
{
    char *text = read_file(REFERENCE_PATH);
    if (text == NULL) {
        fail_msg(REFERENCE_PATH " not found: run from the repository root");
    }
    char *section = strstr(text, "\n| Command | ringproxy | Notes |\n");
    if (section == NULL) {
        fail_msg(REFERENCE_PATH " has no command table (" REFERENCE_REGEN ")");
    }
    nrows = 0;
    char *save = NULL;
    for (char *line = strtok_r(section, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "| `", 3) != 0) {
            continue;
        }
        assert_true(nrows < REFERENCE_MAX_ROWS);
        ref_row *r = &rows[nrows++];
        char *name_end = strchr(line + 3, '`');
        assert_non_null(name_end);
        snprintf(r->name, sizeof(r->name), "%.*s", (int)(name_end - line - 3), line + 3);
        char *word = strstr(name_end, "| ");
        assert_non_null(word);
        word += 2;
        char *word_end = strstr(word, " |");
        assert_non_null(word_end);
        snprintf(r->word, sizeof(r->word), "%.*s", (int)(word_end - word), word);
        r->cmd = resolve_name(r->name);
        r->seen = 0;
    }
    free(text);
}

static ref_row *find_row(const command *cmd)
{
    for (size_t i = 0; i < nrows; i++) {
        if (rows[i].cmd == cmd) {
            return &rows[i];
        }
    }
    return NULL;
}

/* Each row names a command of the table, with its class. */
static void test_reference_rows_match_the_table(void **state)
{
    (void)state;
    load_reference();
    assert_true(nrows > 300);
    for (size_t i = 0; i < nrows; i++) {
        if (rows[i].cmd == NULL) {
            fail_msg(REFERENCE_PATH " row `%s` is no command of the table (" REFERENCE_REGEN ")",
                     rows[i].name);
        }
        if (strcmp(rows[i].word, class_word(rows[i].cmd->cls)) != 0) {
            fail_msg(REFERENCE_PATH " says `%s` is %s, the table says %s (" REFERENCE_REGEN ")",
                     rows[i].name, rows[i].word, class_word(rows[i].cmd->cls));
        }
    }
}

/* Every command and subcommand of the table has exactly one row. */
static void test_every_command_has_a_row(void **state)
{
    (void)state;
    load_reference();
    size_t count = 0;
    const command *table = command_table(&count);
    for (size_t i = 0; i < count; i++) {
        const command *top = &table[i];
        size_t n = top->nsubcommands ? top->nsubcommands : 1;
        /* A container that also runs alone (COMMAND) has its own row. */
        if (top->nsubcommands && top->arity == -1) {
            ref_row *r = find_row(top);
            if (r == NULL) {
                fail_msg(REFERENCE_PATH " has no row for %s (" REFERENCE_REGEN ")", top->name);
            }
            r->seen++;
        }
        for (size_t j = 0; j < n; j++) {
            const command *cmd = top->nsubcommands ? &top->subcommands[j] : top;
            ref_row *r = find_row(cmd);
            if (r == NULL) {
                fail_msg(REFERENCE_PATH " has no row for %s (" REFERENCE_REGEN ")", cmd->name);
            }
            r->seen++;
        }
    }
    for (size_t i = 0; i < nrows; i++) {
        if (rows[i].seen != 1) {
            fail_msg(REFERENCE_PATH " row `%s` appears %d times", rows[i].name, rows[i].seen);
        }
    }
}

/* ---- against the proxy ---- */

static int group_setup(void **state)
{
    fixture *f = fixture_start(NULL);
    *state = f;
    return f != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    return fixture_stop(*state);
}

/* name's words, then filler arguments up to the least arity allows. A
 * filler is not a number, so a blocking command's timeout is refused at
 * once by the shard rather than waited for. */
static int sample_request(const ref_row *r, const char **argv, size_t *lens, char words[][32])
{
    int argc = 0;
    const char *p = r->name;
    while (*p) {
        size_t n = strcspn(p, " ");
        assert_true(n < 32 && argc < SAMPLE_MAX_ARGS);
        memcpy(words[argc], p, n);
        words[argc][n] = '\0';
        argv[argc] = words[argc];
        lens[argc] = n;
        argc++;
        p += n;
        p += *p == ' ';
    }
    int arity = r->cmd->arity;
    int want = arity < 0 ? -arity : arity;
    while (argc < want) {
        assert_true(argc < SAMPLE_MAX_ARGS);
        argv[argc] = "refx";
        lens[argc] = 4;
        argc++;
    }
    return argc;
}

/* Sends a request on a fresh raw connection and returns the first line of
 * its reply (NUL-terminated in line): some replies (COMMAND DOCS) nest
 * deeper than hiredis reads, and the first line tells an error apart. */
static void first_reply_line(fixture *f, int argc, const char **argv, const size_t *lens,
                             char *line, size_t cap)
{
    char *request;
    int len = redisFormatCommandArgv(&request, argc, argv, lens);
    assert_true(len > 0);
    int fd = fixture_raw_connect(f->proxy.port);
    assert_true(fd >= 0);
    struct timeval tv = fixture_bound_tv(2000);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    assert_int_equal(fixture_raw_send(fd, request, (size_t)len), 0);
    free(request);
    size_t got = 0;
    line[0] = '\0';
    while (got < cap - 1 && !strstr(line, "\r\n")) {
        ssize_t n = recv(fd, line + got, cap - 1 - got, 0);
        if (n <= 0) {
            break;
        }
        got += (size_t)n;
        line[got] = '\0';
    }
    close(fd);
    char *crlf = strstr(line, "\r\n");
    if (crlf == NULL) {
        fail_msg("no reply to `%s`", argv[0]);
    }
    *crlf = '\0';
}

static void test_each_command_does_what_its_class_says(void **state)
{
    fixture *f = *state;
    load_reference();
    int checked = 0;
    for (size_t i = 0; i < nrows; i++) {
        const ref_row *r = &rows[i];
        const char *argv[SAMPLE_MAX_ARGS];
        size_t lens[SAMPLE_MAX_ARGS];
        char words[SAMPLE_MAX_ARGS][32];
        int argc = sample_request(r, argv, lens, words);
        /* A fresh client each time: MULTI, SUBSCRIBE or QUIT change the
         * connection's state. */
        char line[512];
        first_reply_line(f, argc, argv, lens, line, sizeof(line));
        int is_error = line[0] == '-';
        const char *text = is_error ? line + 1 : "";
        int unsupported = is_error && strncmp(text, "ERR unsupported command", 23) == 0;
        int unknown = is_error && (strncmp(text, "ERR unknown command", 19) == 0 ||
                                   strncmp(text, "ERR unknown subcommand", 22) == 0);
        if (r->cmd->cls == COMMAND_UNSUPPORTED && !unsupported) {
            fail_msg("`%s` is unsupported in " REFERENCE_PATH ", but the proxy answered %s",
                     r->name, is_error ? text : "without an error");
        }
        if (r->cmd->cls != COMMAND_UNSUPPORTED && (unsupported || unknown)) {
            fail_msg("`%s` is %s in " REFERENCE_PATH ", but the proxy answered %s", r->name,
                     r->word, text);
        }
        checked++;
    }
    assert_int_equal(checked, (int)nrows);
}

int main(void)
{
    const struct CMUnitTest table_tests[] = {
        cmocka_unit_test(test_reference_rows_match_the_table),
        cmocka_unit_test(test_every_command_has_a_row),
    };
    const struct CMUnitTest proxy_tests[] = {
        cmocka_unit_test(test_each_command_does_what_its_class_says),
    };
    int failed = cmocka_run_group_tests_name("reference", table_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("proxy", proxy_tests, group_setup, group_teardown);
    return failed;
}
