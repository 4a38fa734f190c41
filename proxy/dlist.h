/* Intrusive doubly-linked lists: each node carries its own prev and next
 * pointers (the field names are arguments, so one struct can be on several
 * lists), and a list is a plain pointer to its first node, NULL when empty.
 * Used for the lists that lose members from anywhere: every client, every
 * session, every reserved shard connection. */
#ifndef PROXY_DLIST_H
#define PROXY_DLIST_H

#include <stddef.h>

/* Puts node first in the list whose first node is head. */
#define DLIST_PUSH_FRONT(head, node, prev, next)                                                   \
    do {                                                                                           \
        (node)->prev = NULL;                                                                       \
        (node)->next = (head);                                                                     \
        if (head)                                                                                  \
            (head)->prev = (node);                                                                 \
        (head) = (node);                                                                           \
    } while (0)

/* Takes node, which is on the list whose first node is head, off it. */
#define DLIST_UNLINK(head, node, prev, next)                                                       \
    do {                                                                                           \
        if ((node)->prev)                                                                          \
            (node)->prev->next = (node)->next;                                                     \
        else                                                                                       \
            (head) = (node)->next;                                                                 \
        if ((node)->next)                                                                          \
            (node)->next->prev = (node)->prev;                                                     \
        (node)->prev = (node)->next = NULL;                                                        \
    } while (0)

#endif
