/* signal.c -- signals as bytes on a pipe (the self-pipe trick), for
 * zokio.signal.
 *
 * zokio.signal may be asked to listen from any thread (a task on a worker),
 * but Python's signal.signal() works only on the main thread, and signalfd
 * needs the signal blocked in every thread, which Python's own handlers do
 * not expect.  So: while a signal has zokio listeners, its disposition is
 * our handler, installed with sigaction(2) (any thread may call it).  The
 * handler writes the signal number as one byte into a non-blocking pipe --
 * write(2) is async-signal-safe -- and returns; a dispatcher thread
 * (zokio/signal.py) reads the pipe and wakes the listeners.  When a
 * signal's last listener goes, its previous disposition (Python's handler,
 * SIG_DFL, SIG_IGN) is put back exactly as it was.  A full pipe drops the
 * byte: pending signals coalesce, as the kernel's do.
 *
 * Pure C: the lock is never held while calling into Python.
 */
#define _GNU_SOURCE
#include "io/signal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
static int sig_pipe[2] = {-1, -1};
static struct sigaction sig_previous[NSIG];
static unsigned char sig_installed[NSIG];

static void zk_signal_to_pipe(int signum) {
    int saved = errno;
    unsigned char byte = (unsigned char)signum;
    ssize_t r = write(sig_pipe[1], &byte, 1);
    (void)r;  /* a full pipe drops it: signals coalesce */
    errno = saved;
}

static int ensure_pipe(void) {
    if (sig_pipe[0] >= 0)
        return 0;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return errno;
    /* The handler must never block; the dispatcher blocks in read(). */
    int fl = fcntl(fds[1], F_GETFL);
    if (fl < 0 || fcntl(fds[1], F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return e;
    }
    sig_pipe[0] = fds[0];
    sig_pipe[1] = fds[1];
    return 0;
}

int zk_signal_pipe(int *fd_out) {
    pthread_mutex_lock(&sig_lock);
    int err = ensure_pipe();
    *fd_out = sig_pipe[0];
    pthread_mutex_unlock(&sig_lock);
    return err;
}

int zk_signal_install(int signum) {
    if (signum <= 0 || signum >= NSIG)
        return EINVAL;
    pthread_mutex_lock(&sig_lock);
    int err = ensure_pipe();
    if (err == 0 && !sig_installed[signum]) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = zk_signal_to_pipe;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESTART;  /* other threads' syscalls go on */
        if (sigaction(signum, &sa, &sig_previous[signum]) < 0)
            err = errno;
        else
            sig_installed[signum] = 1;
    }
    pthread_mutex_unlock(&sig_lock);
    return err;
}

void zk_signal_after_fork_in_child(void) {
    /* Only this thread exists now; the lock may have been held by a thread
     * of the parent at the fork. */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    sig_lock = fresh;
    for (int s = 1; s < NSIG; s++) {
        if (sig_installed[s]) {
            sigaction(s, &sig_previous[s], NULL);
            sig_installed[s] = 0;
        }
    }
    if (sig_pipe[0] >= 0) {
        close(sig_pipe[0]);
        close(sig_pipe[1]);
        sig_pipe[0] = sig_pipe[1] = -1;
    }
}

int zk_signal_restore(int signum) {
    if (signum <= 0 || signum >= NSIG)
        return EINVAL;
    int err = 0;
    pthread_mutex_lock(&sig_lock);
    if (sig_installed[signum]) {
        if (sigaction(signum, &sig_previous[signum], NULL) < 0)
            err = errno;
        else
            sig_installed[signum] = 0;
    }
    pthread_mutex_unlock(&sig_lock);
    return err;
}
