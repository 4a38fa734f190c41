/* Leveled logging to stderr, one line per message with a timestamp. */
#ifndef PROXY_LOG_H
#define PROXY_LOG_H

#include <stddef.h>

#include "config/config.h"

/* The levels are proxy.ini's log_level values (config_log_level), so the
 * config sets the threshold as it is. */

/* Messages below this level are dropped; the check is inlined so that a
 * dropped debug line costs one compare on the hot path. */
extern config_log_level log_threshold;

void log_set_level(config_log_level level);

__attribute__((format(printf, 2, 3))) void log_write(config_log_level level, const char *fmt, ...);

#define log_at(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= log_threshold)                                                              \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)
#define log_debug(...)  log_at(CONFIG_LOG_DEBUG, __VA_ARGS__)
#define log_info(...)   log_at(CONFIG_LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_at(CONFIG_LOG_NOTICE, __VA_ARGS__)
#define log_warn(...)   log_at(CONFIG_LOG_WARN, __VA_ARGS__)
#define log_error(...)  log_at(CONFIG_LOG_ERROR, __VA_ARGS__)

/* Writes a printable, quoted, length-capped rendering of bytes into out
 * (unprintable bytes as \xHH), for protocol dumps in log lines. */
void log_escape(const char *bytes, size_t len, char *out, size_t outlen);

#endif
