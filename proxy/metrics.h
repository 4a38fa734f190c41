/* Prometheus metrics: GET /metrics over HTTP (libevent's evhttp) on
 * metrics_listen, in the text exposition format, from the same counters
 * INFO shows. Off unless metrics_listen is set; changed by a restart. */
#ifndef PROXY_METRICS_H
#define PROXY_METRICS_H

#include <stddef.h>

#include "config/config.h"
#include "proxy/buf.h"

/* Serves /metrics on cfg's metrics_listen, when set. Returns 0 (also when
 * it is off), or -1 with a reason in err (the address cannot be bound). */
__attribute__((warn_unused_result)) int metrics_start(const config *cfg, char *err, size_t errlen);

/* Stops serving and closes the socket. */
void metrics_stop(void);

/* Appends the whole exposition, as GET /metrics answers it. Returns -1 when
 * out of memory (b's sticky error), else 0. */
int metrics_render(buf *b);

#endif
