/* blocking_pool.h -- threads for spawn_blocking (blocking_pool.c).
 *
 * A job's result completes a Oneshot leaf (leaf.h), so the awaiting task is
 * woken through the same waker path as every other leaf.
 */
#ifndef ZOKIO_BLOCKING_POOL_H
#define ZOKIO_BLOCKING_POOL_H

#include "core/state.h"

zk_blocking_pool *zk_blocking_pool_new(zk_state *st, zk_sched *s, size_t cap,
                                       double keep_alive, PyObject *spawn_thread);
/* Run call(fn, *args, **kwargs) on a pool thread and complete `leaf`. */
int zk_blocking_pool_submit(zk_blocking_pool *p, PyObject *fn, PyObject *args,
                            PyObject *kwargs, zk_leaf *leaf);
/* Body of a pool thread (called by a Python thread); returns when idle past
 * keep-alive or when the pool shuts down. */
void zk_blocking_pool_thread_main(zk_blocking_pool *p);
/* Stop accepting work, wake idle threads so they exit.  Queued jobs that no
 * thread picked up complete with Cancelled. */
void zk_blocking_pool_shutdown(zk_blocking_pool *p);
/* Wait until every pool thread exited, up to timeout (< 0: forever).
 * Detached while waiting.  Returns 1 if all exited. */
int zk_blocking_pool_join(zk_blocking_pool *p, double timeout);
void zk_blocking_pool_free(zk_blocking_pool *p);
/* GC support: the pool owns the Runtime's thread-starting callable. */
int zk_blocking_pool_traverse(zk_blocking_pool *p, visitproc visit, void *arg);
void zk_blocking_pool_clear(zk_blocking_pool *p);
void zk_blocking_pool_stats(zk_blocking_pool *p, size_t *threads, size_t *idle, size_t *queued);

#endif
