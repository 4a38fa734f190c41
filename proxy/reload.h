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

/* Names this process among the proxies (srv.instance_id, in its shard
 * connections' names and the mover's lease). reload_start calls it; a
 * process forked after that (a worker) must call it again before its
 * shard connections open, so that no two processes share a name. */
void reload_new_instance_id(void);

/* Re-reads srv.cfg->path and applies it. Returns 0, or -1 with the reason in
 * err (also kept in srv.last_reload_error and logged). */
__attribute__((warn_unused_result)) int reload_config(const char *why, char *err, size_t errlen);

/* Whether the config file changed on disk since it was last read. */
int reload_file_changed(void);

/* The ring of cfg (hash settings and [shards]) as a loadable proxy.ini
 * text (malloc'd; NULL when out of memory): what a migration moves from,
 * kept in the state file and in the shards' ring record. */
char *reload_ring_text(const config *cfg);

/* A short hex fingerprint of what places keys in cfg: the same for two
 * files that route every key alike. */
void reload_ring_fingerprint(const config *cfg, char *out, size_t outlen);

/* Moves keys from the ring in old_ring_text (reload_ring_text's format) to
 * the running one, in place of any migration running (the fleet moves
 * from that ring: epoch.c). 0, or -1 with err. */
__attribute__((warn_unused_result)) int reload_fleet_rebalance(const char *old_ring_text, char *err,
                                                               size_t errlen);

/* Runs the ring in ring_text (the shards' record: a move to it is under
 * way) in place of the file's, every other setting from the file, and
 * queues the file's own ring for when the move ends. 0, or -1 with err
 * (nothing changed). */
__attribute__((warn_unused_result)) int reload_adopt_ring(const char *ring_text, char *err,
                                                          size_t errlen);

/* Frees the shards, ring and config at exit. */
void reload_shutdown(void);

#endif
