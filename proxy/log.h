/* Leveled logging to stderr, one line per message with a timestamp. */
#ifndef PROXY_LOG_H
#define PROXY_LOG_H

#include <stddef.h>

typedef enum log_level {
    LOG_DEBUG = 0,
    LOG_INFO,
    LOG_NOTICE,
    LOG_WARN,
    LOG_ERROR,
} log_level;

/* Messages below this level are dropped; the check is inlined so that a
 * dropped debug line costs one compare on the hot path. */
extern log_level log_threshold;

void log_set_level(log_level level);

__attribute__((format(printf, 2, 3))) void log_write(log_level level, const char *fmt, ...);

#define log_at(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= log_threshold)                                                              \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)
#define log_debug(...)  log_at(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)   log_at(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_at(LOG_NOTICE, __VA_ARGS__)
#define log_warn(...)   log_at(LOG_WARN, __VA_ARGS__)
#define log_error(...)  log_at(LOG_ERROR, __VA_ARGS__)

/* Writes a printable, quoted, length-capped rendering of bytes into out
 * (unprintable bytes as \xHH), for protocol dumps in log lines. */
void log_escape(const char *bytes, size_t len, char *out, size_t outlen);

#endif
