/* Request allocation with a bounded free list: steady traffic allocates
 * nothing, and an idle proxy gives the memory back. */
#include "proxy/request.h"

#include <stdlib.h>
#include <string.h>

/* Requests kept for reuse: enough for a busy pipeline burst, small enough
 * (about 200 bytes each) not to matter when idle. */
#define REQUEST_CACHE_MAX 4096

static request *free_list;
static size_t free_count;

request *request_new(void)
{
    request *req = free_list;
    if (req) {
        free_list = req->next;
        free_count--;
        memset(req, 0, sizeof(*req));
        return req;
    }
    return calloc(1, sizeof(*req));
}

void request_free(request *req)
{
    if (!req)
        return;
    buf_free(&req->reply);
    buf_free(&req->single.reply);
    for (size_t i = 0; i < req->nfrags; i++)
        buf_free(&req->frags[i].reply);
    free(req->frags);
    free(req->key_order);
    buf_free(&req->deferred);
    free(req->migrate_error);
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
        free(free_list);
        free_list = next;
    }
    free_count = 0;
}
