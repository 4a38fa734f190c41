/* A FIFO of connections with output to write at the end of the loop
 * iteration (clients, shard connections): an intrusive link in each, O(1)
 * push and pop, each connection at most once, written in the order it
 * became ready (the first to get a reply is written first, so latency stays
 * even across a batch). */
#ifndef PROXY_FLUSHQ_H
#define PROXY_FLUSHQ_H

#include <stddef.h>

typedef struct flushq_link {
    struct flushq_link *next;
    int queued; /* on a queue */
} flushq_link;

typedef struct flushq {
    flushq_link *head;
    flushq_link **tail; /* &head when empty; FLUSHQ_INIT sets it */
} flushq;

#define FLUSHQ_INIT(q)                                                                             \
    {                                                                                              \
        NULL, &(q).head                                                                            \
    }

/* The struct of type `type` whose member `member` is the link l. */
#define FLUSHQ_ENTRY(l, type, member) ((type *)((char *)(l)-offsetof(type, member)))

/* Appends l unless it is queued already. */
static inline void flushq_push(flushq *q, flushq_link *l)
{
    if (l->queued)
        return;
    l->queued = 1;
    l->next = NULL;
    *q->tail = l;
    q->tail = &l->next;
}

/* Takes the first link off; NULL when empty. */
static inline flushq_link *flushq_pop(flushq *q)
{
    flushq_link *l = q->head;
    if (!l)
        return NULL;
    q->head = l->next;
    if (!q->head)
        q->tail = &q->head;
    l->next = NULL;
    l->queued = 0;
    return l;
}

/* Takes l off wherever it is (a connection going away): O(length). */
static inline void flushq_remove(flushq *q, flushq_link *l)
{
    if (!l->queued)
        return;
    flushq_link **pp = &q->head;
    while (*pp && *pp != l)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = l->next;
        if (q->tail == &l->next)
            q->tail = pp;
    }
    l->next = NULL;
    l->queued = 0;
}

#endif
