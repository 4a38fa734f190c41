/* CLIENT PAUSE and UNPAUSE: paused commands wait in a FIFO (linked by
 * next_wait) with a copy of their bytes, and are routed again when the
 * pause ends, by its timer or by CLIENT UNPAUSE. */
#include "proxy/pause.h"

#include <event2/event.h>
#include <event2/event_struct.h>

#include "proxy/buf.h"
#include "proxy/log.h"

static struct {
    uint64_t end_us;    /* when the pause in force ends */
    struct event timer; /* fires at end_us */
    int timer_ready;    /* timer assigned */
    request *head;      /* paused commands, in the order they came */
    request *tail;
    pause_reroute_fn reroute; /* the router's entry point */
    resp_request rescan;      /* parses a paused command's saved bytes again */
    int rescan_ready;
} pz;

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    server_clock_update();
    /* Early (libevent's timers run on a coarser clock than srv.now_us):
     * wait out the rest, or the pause would never end. */
    if (srv.now_us + 1000 < pz.end_us) {
        uint64_t left = pz.end_us - srv.now_us;
        struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
        event_add(&pz.timer, &tv);
        return;
    }
    pause_stop();
}

void pause_start(pause_mode mode, uint64_t ms)
{
    uint64_t now = server_now_us();
    uint64_t end = now + ms * 1000;
    if (srv.client_pause == PAUSE_NONE || end > pz.end_us)
        pz.end_us = end;
    if ((int)mode > srv.client_pause)
        srv.client_pause = (int)mode;
    if (!pz.timer_ready) {
        event_assign(&pz.timer, srv.base, -1, 0, on_timer, NULL);
        pz.timer_ready = 1;
    }
    uint64_t left = pz.end_us > now ? pz.end_us - now : 0;
    struct timeval tv = {(time_t)(left / 1000000), (suseconds_t)(left % 1000000)};
    event_add(&pz.timer, &tv);
    log_info("clients paused (%s) for %llu ms", srv.client_pause == PAUSE_ALL ? "all" : "write",
             (unsigned long long)(left / 1000));
}

void pause_stop(void)
{
    if (pz.timer_ready)
        event_del(&pz.timer);
    if (srv.client_pause != PAUSE_NONE)
        log_info("clients unpaused");
    srv.client_pause = PAUSE_NONE;
    /* Routing may pause nothing now: the list is taken whole first. */
    request *req = pz.head;
    pz.head = pz.tail = NULL;
    while (req) {
        request *next = req->next_wait;
        req->next_wait = NULL;
        if (!req->owner) {
            req->on_done(req, NULL, 0); /* its client went: freed */
        } else {
            req->session->hold_input = 0;
            if (!pz.rescan_ready) {
                resp_request_init(&pz.rescan, NULL);
                pz.rescan_ready = 1;
            }
            if (resp_request_scan(&pz.rescan, buf_head(&req->saved_request),
                                  buf_len(&req->saved_request)) != RESP_OK)
                request_error(req, "ERR internal error: paused request does not parse");
            else
                pz.reroute(req, pz.rescan.argc, pz.rescan.argv, buf_head(&req->saved_request),
                           buf_len(&req->saved_request));
        }
        req = next;
    }
}

void pause_postpone(request *req, const char *bytes, size_t len, pause_reroute_fn reroute)
{
    if (buf_append(&req->saved_request, bytes, len) < 0) {
        request_error(req, "ERR out of memory keeping a paused command");
        return;
    }
    pz.reroute = reroute;
    /* The client's next requests wait behind this one, as behind a
     * blocking command: its order is kept. */
    if (req->session)
        req->session->hold_input = 1;
    req->next_wait = NULL;
    if (pz.tail)
        pz.tail->next_wait = req;
    else
        pz.head = req;
    pz.tail = req;
}

void pause_shutdown(void)
{
    if (pz.timer_ready)
        event_del(&pz.timer);
    srv.client_pause = PAUSE_NONE;
    while (pz.head) {
        request *req = pz.head;
        pz.head = req->next_wait;
        req->next_wait = NULL;
        req->owner = NULL;
        req->on_done(req, NULL, 0);
    }
    pz.tail = NULL;
    if (pz.rescan_ready)
        resp_request_free(&pz.rescan);
    pz.rescan_ready = 0;
}
