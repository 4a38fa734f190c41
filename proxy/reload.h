/* Config reload: read proxy.ini again, validate it whole, and apply it, or
 * keep the running config and say why. */
#ifndef PROXY_RELOAD_H
#define PROXY_RELOAD_H

#include <stddef.h>

#include "config/config.h"

/* Builds the first config's shards and ring into srv (taking cfg) and
 * resumes a rebalance a previous run left unfinished. 0, or -1 with err;
 * after -1, reload_shutdown() frees what was built. */
__attribute__((warn_unused_result)) int reload_start(config *cfg, char *err, size_t errlen);

/* Re-reads srv.cfg->path and applies it. Returns 0, or -1 with the reason in
 * err (also kept in srv.last_reload_error and logged). */
__attribute__((warn_unused_result)) int reload_config(const char *why, char *err, size_t errlen);

/* Whether the config file changed on disk since it was last read. */
int reload_file_changed(void);

/* Frees the shards, ring and config at exit. */
void reload_shutdown(void);

#endif
