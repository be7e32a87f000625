/* signal.h -- signals delivered as bytes on a pipe (signal.c).  Pure C;
 * every function may be called from any thread.  Each returns 0 or a
 * positive errno. */
#ifndef ZOKIO_SIGNAL_H
#define ZOKIO_SIGNAL_H

/* The read end of the pipe that the handler writes signal numbers into
 * (one byte each); made on first use, never closed. */
int zk_signal_pipe(int *fd_out);

/* Make `signum`'s disposition the pipe-writing handler, remembering the
 * previous one.  Idempotent. */
int zk_signal_install(int signum);

/* Put back the disposition zk_signal_install replaced.  Idempotent. */
int zk_signal_restore(int signum);

/* In a child of fork(): the parent's listeners are not here, so every
 * disposition comes back and the pipe (shared with the parent) is closed;
 * the next zk_signal_install makes a new one. */
void zk_signal_after_fork_in_child(void);

#endif
