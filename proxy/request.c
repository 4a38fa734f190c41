/* Request allocation with a bounded free list: steady traffic allocates
 * nothing, and an idle proxy gives the memory back. */
#include "proxy/request.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/server.h"

/* Requests kept for reuse: enough for a busy pipeline burst, small enough
 * not to matter when idle (sizeof(request) is 360 bytes on x86-64, so a
 * full cache holds about 1.4 MiB). */
#define REQUEST_CACHE_MAX 4096
/* A cached request keeps an args buffer (SLOWLOG's copy of its first
 * bytes) up to this big; a bigger one, from a long request, is freed. */
#define REQUEST_ARGS_KEEP 512

static request *free_list;
static size_t free_count;

request *request_new(void)
{
    request *req = free_list;
    if (req) {
        free_list = req->next;
        free_count--;
        memset(req, 0, offsetof(request, start_us));
        return req;
    }
    return calloc(1, sizeof(*req));
}

void request_keep_bytes(request *req, const char *bytes, size_t len)
{
    buf_reset(&req->args);
    req->head_len = REQUEST_HEAD_IN_ARGS;
    (void)buf_append(&req->args, bytes, len < REQUEST_KEEP_MAX ? len : REQUEST_KEEP_MAX);
}

void request_free(request *req)
{
    if (!req)
        return;
    buf_free(&req->reply);
    buf_free(&req->single.reply);
    for (size_t i = 0; i < req->nfrags; i++)
        buf_free(&req->frags[i].reply); /* or stale_del: a union */
    free(req->frags);
    free(req->key_order);
    buf_free(&req->saved_request); /* or confirmations: a union */
    free(req->migrate_error);
    if (free_count >= REQUEST_CACHE_MAX || req->args.cap > REQUEST_ARGS_KEEP) {
        buf_free(&req->args);
    }
    if (free_count >= REQUEST_CACHE_MAX) {
        free(req);
        return;
    }
    req->next = free_list;
    free_list = req;
    free_count++;
}

void request_trim_cache(void)
{
    while (free_list) {
        request *next = free_list->next;
        buf_free(&free_list->args);
        free(free_list);
        free_list = next;
    }
    free_count = 0;
}

void request_error(request *req, const char *fmt, ...)
{
    char msg[600];
    msg[0] = '-';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg + 1, sizeof(msg) - 3, fmt, ap);
    va_end(ap);
    size_t len = 1 + (n < 0 ? 0 : (size_t)n > sizeof(msg) - 4 ? sizeof(msg) - 4 : (size_t)n);
    for (size_t i = 1; i < len; i++)
        if (msg[i] == '\r' || msg[i] == '\n')
            msg[i] = ' ';
    msg[len++] = '\r';
    msg[len++] = '\n';
    req->on_done(req, msg, len);
}

void request_reply_buf(request *req, const buf *b)
{
    if (buf_failed(b))
        request_error(req, "ERR out of memory");
    else if (buf_len(b) == 0) /* a command always gets a reply (client.c reads its first byte) */
        request_error(req, "ERR no reply");
    else
        req->on_done(req, buf_head(b), buf_len(b));
}

void request_reply_text(request *req, const char *text, size_t len)
{
    buf b = {0};
    if (request_resp3(req)) {
        buf_append_header(&b, '=', (int64_t)(len + 4));
        buf_append(&b, "txt:", 4);
        buf_append(&b, text, len);
        buf_append(&b, "\r\n", 2);
    } else {
        buf_append_bulk(&b, text, len);
    }
    request_reply_buf(req, &b);
    buf_free(&b);
}

int request_append_map_header(const request *req, buf *b, int64_t pairs)
{
    return request_resp3(req) ? buf_append_header(b, '%', pairs)
                              : buf_append_header(b, '*', 2 * pairs);
}

void request_crossslot(request *req, const char *what)
{
    srv.stats.errors_crossslot++;
    request_error(req, "CROSSSLOT %s (use {hash tags})", what);
}
