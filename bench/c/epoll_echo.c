/* epoll_echo: the floor for bench/bench_net.py's echo workload.
 *
 * One thread, level-triggered epoll, non-blocking sockets, one 64 KiB
 * buffer per connection: read what is there, write it back, and keep what
 * the socket would not take until it is writable again.  Nothing a runtime
 * could leave out, so its CPU per request is the cost of the syscalls alone.
 *
 *   epoll_echo HOST PORT      (PORT 0: any free port)
 *
 * Prints "port N" on stdout once it listens; exits on SIGINT/SIGTERM.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536

typedef struct {
    int fd;
    size_t off, len; /* bytes read but not yet written back: buf[off, len) */
    char buf[BUF];
} conn_t;

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void drop(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Move bytes until the socket says EAGAIN; returns -1 when the connection is done. */
static int pump(int ep, conn_t *c) {
    for (;;) {
        if (c->off < c->len) {
            ssize_t w = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN) {
                    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    return 0;
                }
                return -1;
            }
            c->off += (size_t)w;
            if (c->off < c->len) continue;
            c->off = c->len = 0;
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        ssize_t r = recv(c->fd, c->buf, BUF, 0);
        if (r == 0) return -1;
        if (r < 0) return errno == EAGAIN ? 0 : -1;
        c->len = (size_t)r;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[1]);
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1024) < 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 200);
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = malloc(sizeof *nc);
                    if (nc == NULL) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    nc->off = nc->len = 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (pump(ep, c) < 0) drop(ep, c);
        }
    }
    close(lfd);
    return 0;
}
