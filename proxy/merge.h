/* Merging the replies of a request sent to several shards (a split
 * multi-key command or a fan-out) into the one reply its client gets, by
 * the command's merge rule. */
#ifndef PROXY_MERGE_H
#define PROXY_MERGE_H

#include "proxy/request.h"

/* Every fragment of req has answered and holds its reply in f->reply:
 * answers req through req->on_done (exactly once) with the merged reply,
 * or with the first shard error when the rule cannot merge past it. */
void merge_replies(request *req);

#endif
