/*
 * api_check.c: libhvsock's socket calls checked from C, the way a program uses them: the plain
 * socket(), bind(), connect()... on AF_HYPERV, built once linked with -lhvsock and once with
 * the header alone and run under LD_PRELOAD (tests/c_api.rs does both, against a real hvsockd).
 *
 *   api_check HOST_DIR SANDBOX_ENDPOINT SANDBOX_VMID BASE_PORT [CHECK...]
 *
 * HOST_DIR is the directory hvsockd serves (the root partition's side), SANDBOX_ENDPOINT the
 * endpoint socket of a sandbox partition under it, whose VmId is SANDBOX_VMID. The caller
 * registers and enables the service BASE_PORT and registers BASE_PORT+1 disabled; every other
 * port used is BASE_PORT+2 and up, through loopback (which needs no registration). Each check
 * prints "ok NAME"; the first failure prints "FAIL ..." with errno and hv_last_error() and
 * exits 1. Everything is bounded (alarm).
 */
#define _GNU_SOURCE
#include <hvsocket.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#pragma weak hv_last_error

static const char *host_dir, *sandbox_ep;
static GUID sandbox_id;
static unsigned base;

static const char *reason(void)
{
    return hv_last_error ? hv_last_error() : "(hv_last_error not available)";
}

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            int e_ = errno;                                                                  \
            fprintf(stderr, "FAIL %s:%d: ", __func__, __LINE__);                             \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fprintf(stderr, " [errno %d: %s] [%s]\n", e_, strerror(e_), reason());           \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

#define EXPECT_ERRNO(call, want)                                                             \
    do {                                                                                     \
        int r_ = (call);                                                                     \
        CHECK(r_ == -1 && errno == (want), "%s returned %d, want -1 with %s", #call, r_,     \
              strerror(want));                                                               \
    } while (0)

static void as_host(void)
{
    unsetenv("HVSOCK_ENDPOINT");
    setenv("HVSOCK_DIR", host_dir, 1);
}

static void as_sandbox(void)
{
    setenv("HVSOCK_ENDPOINT", sandbox_ep, 1);
}

static SOCKADDR_HV hvaddr(GUID vm, unsigned port)
{
    SOCKADDR_HV a;
    memset(&a, 0, sizeof a);
    a.Family = AF_HYPERV;
    a.VmId = vm;
    a.ServiceId = HV_GUID_VSOCK_TEMPLATE;
    a.ServiceId.Data1 = port;
    return a;
}

static int same_guid(GUID a, GUID b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static int hvsocket(int flags)
{
    int s = socket(AF_HYPERV, SOCK_STREAM | flags, HV_PROTOCOL_RAW);
    CHECK(s >= 0, "socket(AF_HYPERV)");
    return s;
}

static int hvconnect(int s, GUID vm, unsigned port)
{
    SOCKADDR_HV a = hvaddr(vm, port);
    return connect(s, (struct sockaddr *)&a, sizeof a);
}

static int hvlisten(GUID vm, unsigned port, int backlog)
{
    int s = hvsocket(0);
    SOCKADDR_HV a = hvaddr(vm, port);
    CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    CHECK(listen(s, backlog) == 0, "listen on port %u", port);
    return s;
}

static int wait_fd(int fd, short events, int ms)
{
    struct pollfd p = {fd, events, 0};
    int n = poll(&p, 1, ms);
    return n == 1 ? p.revents : 0;
}

static int accept_within(int l, SOCKADDR_HV *peer)
{
    socklen_t len = sizeof *peer;
    int a;
    CHECK(wait_fd(l, POLLIN, 5000) & POLLIN, "no connection to accept within 5 s");
    a = accept(l, (struct sockaddr *)peer, &len);
    CHECK(a >= 0, "accept");
    CHECK(len == sizeof(SOCKADDR_HV), "accept's address length %u", (unsigned)len);
    return a;
}

static int so_error(int s)
{
    int v = -1;
    socklen_t len = sizeof v;
    CHECK(getsockopt(s, SOL_SOCKET, SO_ERROR, &v, &len) == 0, "getsockopt(SO_ERROR)");
    return v;
}

static int int_opt(int s, int level, int name)
{
    int v = -1;
    socklen_t len = sizeof v;
    CHECK(getsockopt(s, level, name, &v, &len) == 0, "getsockopt(%d, %d)", level, name);
    CHECK(len == sizeof v, "getsockopt length");
    return v;
}

static void transfer(int from, int to, const char *text)
{
    char buf[256];
    size_t n = strlen(text);
    ssize_t got;
    CHECK(send(from, text, n, MSG_NOSIGNAL) == (ssize_t)n, "send");
    CHECK(wait_fd(to, POLLIN, 5000) & POLLIN, "nothing to read within 5 s");
    got = recv(to, buf, sizeof buf, 0);
    CHECK(got == (ssize_t)n && memcmp(buf, text, n) == 0, "received %zd bytes", got);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void check_socket_basics(void)
{
    int s;
    unsigned ms = 750, on = 1, off = 0;
    as_host();
    EXPECT_ERRNO(socket(AF_HYPERV, SOCK_DGRAM, HV_PROTOCOL_RAW), ESOCKTNOSUPPORT);
    EXPECT_ERRNO(socket(AF_HYPERV, SOCK_STREAM, 7), EPROTONOSUPPORT);
    s = hvsocket(SOCK_CLOEXEC);
    CHECK(fcntl(s, F_GETFD) & FD_CLOEXEC, "SOCK_CLOEXEC kept");
    CHECK(int_opt(s, SOL_SOCKET, SO_DOMAIN) == AF_HYPERV, "SO_DOMAIN");
    CHECK(int_opt(s, SOL_SOCKET, SO_TYPE) == SOCK_STREAM, "SO_TYPE");
    CHECK(int_opt(s, SOL_SOCKET, SO_PROTOCOL) == HV_PROTOCOL_RAW, "SO_PROTOCOL");
    CHECK(int_opt(s, HV_PROTOCOL_RAW, HVSOCKET_CONNECT_TIMEOUT) == 2000, "default timeout");
    CHECK(setsockopt(s, HV_PROTOCOL_RAW, HVSOCKET_CONNECT_TIMEOUT, &ms, sizeof ms) == 0, "set");
    CHECK(int_opt(s, HV_PROTOCOL_RAW, HVSOCKET_CONNECT_TIMEOUT) == 750, "timeout kept");
    CHECK(setsockopt(s, HV_PROTOCOL_RAW, HVSOCKET_CONNECTED_SUSPEND, &off, sizeof off) == 0,
          "CONNECTED_SUSPEND 0");
    EXPECT_ERRNO(setsockopt(s, HV_PROTOCOL_RAW, HVSOCKET_CONNECTED_SUSPEND, &on, sizeof on),
                 ENOPROTOOPT);
    CHECK(strstr(reason(), "HVSOCKET_CONNECTED_SUSPEND") || !hv_last_error, "message");
    {
        SOCKADDR_HV a;
        socklen_t len = sizeof a;
        EXPECT_ERRNO(getpeername(s, (struct sockaddr *)&a, &len), ENOTCONN);
    }
    EXPECT_ERRNO(listen(s, 5), EINVAL); /* not bound */
    CHECK(close(s) == 0, "close");
    EXPECT_ERRNO(close(s), EBADF);
    printf("ok socket_basics\n");
}

static void check_errno_table(void)
{
    GUID unknown = {0x12345678, 0x1234, 0x4321, {1, 2, 3, 4, 5, 6, 7, 8}};
    int s, l, l2, off_l;
    as_host();

    s = hvsocket(0);
    EXPECT_ERRNO(hvconnect(s, HV_GUID_LOOPBACK, base + 9), ECONNREFUSED);
    CHECK(*reason() != '\0' || !hv_last_error, "a message for ECONNREFUSED");
    EXPECT_ERRNO(hvconnect(s, unknown, base), EHOSTUNREACH);
    {
        SOCKADDR_HV a = hvaddr(HV_GUID_LOOPBACK, base);
        a.Family = AF_INET;
        EXPECT_ERRNO(connect(s, (struct sockaddr *)&a, sizeof a), EAFNOSUPPORT);
        a.Family = AF_HYPERV;
        EXPECT_ERRNO(connect(s, (struct sockaddr *)&a, 20), EINVAL);
        a.Reserved = 1;
        EXPECT_ERRNO(connect(s, (struct sockaddr *)&a, sizeof a), EINVAL);
    }
    close(s);

    l = hvlisten(HV_GUID_WILDCARD, base + 2, 4);
    l2 = hvsocket(0);
    {
        SOCKADDR_HV a = hvaddr(HV_GUID_WILDCARD, base + 2);
        CHECK(bind(l2, (struct sockaddr *)&a, sizeof a) == 0, "bind is only recorded");
        EXPECT_ERRNO(listen(l2, 4), EADDRINUSE);
    }
    close(l2);
    close(l);

    s = hvsocket(0);
    {
        SOCKADDR_HV a = hvaddr(HV_GUID_BROADCAST, base + 2);
        CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind BROADCAST is recorded");
        EXPECT_ERRNO(listen(s, 4), EADDRNOTAVAIL);
    }
    close(s);
    s = hvsocket(0);
    {
        SOCKADDR_HV a = hvaddr(HV_GUID_PARENT, base + 2);
        CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind PARENT is recorded");
        EXPECT_ERRNO(listen(s, 4), EOPNOTSUPP); /* the root has no parent */
    }
    close(s);

    /* A disabled service: the sandbox may not cross into the host. */
    off_l = hvlisten(HV_GUID_WILDCARD, base + 1, 4);
    as_sandbox();
    s = hvsocket(0);
    EXPECT_ERRNO(hvconnect(s, HV_GUID_PARENT, base + 1), EACCES);
    close(s);
    as_host();
    close(off_l);

    /* A full backlog: connectors wait, then time out after HVSOCKET_CONNECT_TIMEOUT. */
    l = hvlisten(HV_GUID_LOOPBACK, base + 3, 1);
    {
        unsigned ms = 300;
        int i, timed_out = 0, held[4] = {-1, -1, -1, -1};
        double t0 = now();
        for (i = 0; i < 4 && !timed_out; i++) {
            held[i] = hvsocket(0);
            CHECK(setsockopt(held[i], HV_PROTOCOL_RAW, HVSOCKET_CONNECT_TIMEOUT, &ms, sizeof ms) == 0,
                  "timeout");
            if (hvconnect(held[i], HV_GUID_LOOPBACK, base + 3) != 0) {
                CHECK(errno == ETIMEDOUT, "a connect to a full backlog");
                timed_out = 1;
            }
        }
        CHECK(timed_out, "no connect timed out");
        CHECK(now() - t0 < 3.0, "timing out took %.1f s", now() - t0);
        for (i = 0; i < 4; i++)
            if (held[i] >= 0)
                close(held[i]);
    }
    close(l);
    printf("ok errno_table\n");
}

static void check_sandbox_to_host(void)
{
    int l, c, a;
    SOCKADDR_HV peer, mine, theirs, acc_local;
    socklen_t len;
    char buf[16];

    as_host();
    l = hvlisten(HV_GUID_WILDCARD, base, 4);
    as_sandbox();
    c = hvsocket(0);
    CHECK(hvconnect(c, HV_GUID_PARENT, base) == 0, "connect from the sandbox to its parent");
    as_host();
    a = accept_within(l, &peer);
    CHECK(peer.Family == AF_HYPERV && same_guid(peer.VmId, sandbox_id), "the peer is the sandbox");
    CHECK(peer.ServiceId.Data1 == base, "the peer's service");
    len = sizeof mine;
    CHECK(getsockname(c, (struct sockaddr *)&mine, &len) == 0 && len == sizeof mine, "getsockname");
    CHECK(mine.Family == AF_HYPERV && same_guid(mine.VmId, sandbox_id), "our own id");
    len = sizeof theirs;
    CHECK(getpeername(c, (struct sockaddr *)&theirs, &len) == 0, "getpeername");
    len = sizeof acc_local;
    CHECK(getsockname(a, (struct sockaddr *)&acc_local, &len) == 0, "getsockname(accepted)");
    CHECK(same_guid(theirs.VmId, acc_local.VmId), "both ends agree on the host's id");
    CHECK(int_opt(c, SOL_SOCKET, SO_DOMAIN) == AF_HYPERV, "SO_DOMAIN once connected");
    CHECK(so_error(c) == 0, "SO_ERROR once connected");
    {
        /* A truncated address, as the kernel does it. */
        char small[8];
        len = sizeof small;
        CHECK(getpeername(c, (struct sockaddr *)small, &len) == 0 && len == sizeof(SOCKADDR_HV),
              "truncated getpeername");
    }
    transfer(c, a, "ping");
    transfer(a, c, "pong");
    CHECK(shutdown(c, SHUT_WR) == 0, "shutdown");
    CHECK(wait_fd(a, POLLIN, 5000) & POLLIN, "EOF is readable");
    CHECK(recv(a, buf, sizeof buf, 0) == 0, "EOF after the peer's shutdown");
    close(c);
    close(a);
    close(l);
    printf("ok sandbox_to_host\n");
}

static void check_nonblocking_poll(void)
{
    int l, c, a, r;
    SOCKADDR_HV peer;
    as_host();
    l = hvlisten(HV_GUID_LOOPBACK, base + 4, 8);

    c = hvsocket(SOCK_NONBLOCK);
    EXPECT_ERRNO(hvconnect(c, HV_GUID_LOOPBACK, base + 4), EINPROGRESS);
    r = wait_fd(c, POLLOUT, 5000);
    CHECK(r & POLLOUT, "writable when connected (revents %#x)", r);
    CHECK(so_error(c) == 0, "SO_ERROR after a successful connect");
    CHECK(fcntl(c, F_GETFL) & O_NONBLOCK, "still non-blocking");
    EXPECT_ERRNO(hvconnect(c, HV_GUID_LOOPBACK, base + 4), EISCONN);
    a = accept_within(l, &peer);
    transfer(c, a, "x");
    close(a);
    close(c);

    /* Refused: writable, and the error in SO_ERROR (once); then the socket can connect again. */
    c = hvsocket(SOCK_NONBLOCK);
    EXPECT_ERRNO(hvconnect(c, HV_GUID_LOOPBACK, base + 9), EINPROGRESS);
    r = wait_fd(c, POLLOUT, 5000);
    CHECK(r & POLLOUT, "writable when refused (revents %#x)", r);
    CHECK(so_error(c) == ECONNREFUSED, "SO_ERROR is ECONNREFUSED");
    CHECK(so_error(c) == 0, "SO_ERROR is read once");
    EXPECT_ERRNO(hvconnect(c, HV_GUID_LOOPBACK, base + 4), EINPROGRESS);
    CHECK(wait_fd(c, POLLOUT, 5000) & POLLOUT, "writable");
    CHECK(so_error(c) == 0, "the second connect worked");
    a = accept_within(l, &peer);
    transfer(a, c, "again");
    close(a);
    close(c);
    close(l);

    /* A connect that stays pending (a full backlog): EALREADY, then close it while pending. */
    l = hvlisten(HV_GUID_LOOPBACK, base + 5, 1);
    {
        int first = hvsocket(0), pending = hvsocket(SOCK_NONBLOCK);
        CHECK(hvconnect(first, HV_GUID_LOOPBACK, base + 5) == 0, "fills the backlog");
        EXPECT_ERRNO(hvconnect(pending, HV_GUID_LOOPBACK, base + 5), EINPROGRESS);
        EXPECT_ERRNO(hvconnect(pending, HV_GUID_LOOPBACK, base + 5), EALREADY);
        CHECK(wait_fd(pending, POLLOUT | POLLIN, 100) == 0, "neither readable nor writable while pending");
        CHECK(close(pending) == 0, "close while a connect is under way");
        close(first);
    }
    close(l);
    printf("ok nonblocking_poll\n");
}

static void check_nonblocking_epoll_select(void)
{
    int l, c, a, ep, n;
    struct epoll_event ev, got;
    SOCKADDR_HV peer;
    char buf[16];
    as_host();
    l = hvlisten(HV_GUID_LOOPBACK, base + 6, 8);
    ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0, "epoll_create1");

    /* Registered after EINPROGRESS, edge-triggered, kept for the connection's whole life. */
    c = hvsocket(SOCK_NONBLOCK);
    EXPECT_ERRNO(hvconnect(c, HV_GUID_LOOPBACK, base + 6), EINPROGRESS);
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.u64 = 42;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) == 0, "epoll_ctl ADD");
    n = epoll_wait(ep, &got, 1, 5000);
    CHECK(n == 1 && got.data.u64 == 42 && (got.events & EPOLLOUT), "EPOLLOUT when connected (n %d, events %#x)",
          n, n == 1 ? got.events : 0);
    CHECK(!(got.events & (EPOLLHUP | EPOLLERR)), "no HUP/ERR (events %#x)", got.events);
    CHECK(so_error(c) == 0, "SO_ERROR");
    a = accept_within(l, &peer);
    CHECK(send(a, "hello", 5, 0) == 5, "send");
    n = epoll_wait(ep, &got, 1, 5000);
    CHECK(n == 1 && got.data.u64 == 42 && (got.events & EPOLLIN), "EPOLLIN through the same registration");
    CHECK(recv(c, buf, sizeof buf, 0) == 5, "recv");
    ev.events = EPOLLIN;
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev) == 0, "epoll_ctl MOD after the connect");
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL) == 0, "epoll_ctl DEL after the connect");
    close(a);
    close(c);

    /* Registered before connect() (level-triggered). */
    c = hvsocket(SOCK_NONBLOCK);
    ev.events = EPOLLOUT;
    ev.data.u64 = 7;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) == 0, "epoll_ctl ADD before connect");
    EXPECT_ERRNO(hvconnect(c, HV_GUID_LOOPBACK, base + 6), EINPROGRESS);
    n = epoll_wait(ep, &got, 1, 5000);
    CHECK(n == 1 && got.data.u64 == 7 && (got.events & EPOLLOUT), "EPOLLOUT for a registration made before connect");
    {
        SOCKADDR_HV p;
        socklen_t len = sizeof p;
        CHECK(getpeername(c, (struct sockaddr *)&p, &len) == 0, "connected when EPOLLOUT came");
    }
    a = accept_within(l, &peer);
    close(a);
    close(c);
    close(ep);
    close(l);

    /* select() on a refused non-blocking connect: writable, SO_ERROR ECONNREFUSED. */
    c = hvsocket(SOCK_NONBLOCK);
    EXPECT_ERRNO(hvconnect(c, HV_GUID_LOOPBACK, base + 9), EINPROGRESS);
    {
        fd_set w;
        struct timeval tv = {5, 0};
        FD_ZERO(&w);
        FD_SET(c, &w);
        CHECK(select(c + 1, NULL, &w, NULL, &tv) == 1 && FD_ISSET(c, &w), "select: writable");
    }
    CHECK(so_error(c) == ECONNREFUSED, "SO_ERROR after select");
    close(c);
    printf("ok nonblocking_epoll_select\n");
}

static void check_close_and_rebind(void)
{
    int l, s, i, ok = 0;
    as_host();
    l = hvlisten(HV_GUID_LOOPBACK, base + 7, 4);
    CHECK(close(l) == 0, "close a listener");
    /* The address is free again once hvsockd has seen the close (a few ms). */
    for (i = 0; i < 100 && !ok; i++) {
        SOCKADDR_HV a = hvaddr(HV_GUID_LOOPBACK, base + 7);
        s = hvsocket(0);
        CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind");
        if (listen(s, 4) == 0) {
            ok = 1;
            close(s);
        } else {
            CHECK(errno == EADDRINUSE, "listen again");
            close(s);
            usleep(20000);
        }
    }
    CHECK(ok, "the address stayed in use for 2 s after close");
    /* Nothing listens once closed. */
    for (i = 0, ok = 0; i < 100 && !ok; i++) {
        s = hvsocket(0);
        if (hvconnect(s, HV_GUID_LOOPBACK, base + 7) != 0 && errno == ECONNREFUSED)
            ok = 1;
        close(s);
        if (!ok)
            usleep(20000);
    }
    CHECK(ok, "still reachable after close");
    /* Bound, never listening, closed: nothing held. */
    s = hvsocket(0);
    {
        SOCKADDR_HV a = hvaddr(HV_GUID_LOOPBACK, base + 7);
        CHECK(bind(s, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    }
    CHECK(close(s) == 0, "close a bound socket");
    l = hvlisten(HV_GUID_LOOPBACK, base + 7, 4);
    close(l);
    printf("ok close_and_rebind\n");
}

static void check_accept_flags(void)
{
    int l, c1, c2, a;
    char buf[4];
    as_host();
    l = hvlisten(HV_GUID_LOOPBACK, base + 8, 8);
    CHECK(fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK) == 0, "O_NONBLOCK on the listener");
    EXPECT_ERRNO(accept(l, NULL, NULL), EAGAIN);
    c1 = hvsocket(0);
    CHECK(hvconnect(c1, HV_GUID_LOOPBACK, base + 8) == 0, "connect");
    CHECK(wait_fd(l, POLLIN, 5000) & POLLIN, "the listener is readable when a connection waits");
    a = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    CHECK(a >= 0, "accept4");
    CHECK(fcntl(a, F_GETFL) & O_NONBLOCK, "SOCK_NONBLOCK");
    CHECK(fcntl(a, F_GETFD) & FD_CLOEXEC, "SOCK_CLOEXEC");
    EXPECT_ERRNO((int)recv(a, buf, sizeof buf, 0), EAGAIN);
    close(a);
    c2 = hvsocket(0);
    CHECK(hvconnect(c2, HV_GUID_LOOPBACK, base + 8) == 0, "connect");
    CHECK(wait_fd(l, POLLIN, 5000) & POLLIN, "readable");
    a = accept(l, NULL, NULL);
    CHECK(a >= 0, "accept");
    CHECK(!(fcntl(a, F_GETFD) & FD_CLOEXEC), "accept() without SOCK_CLOEXEC");
    CHECK(!(fcntl(a, F_GETFL) & O_NONBLOCK), "accept() gives a blocking socket");
    close(a);
    close(c1);
    close(c2);
    close(l);
    printf("ok accept_flags\n");
}

static void check_fork(void)
{
    int l, a, c, status;
    pid_t pid;
    SOCKADDR_HV peer;
    char buf[16];
    as_host();
    l = hvlisten(HV_GUID_LOOPBACK, base + 10, 8);

    /* The child connects (a fresh control connection to hvsockd), the parent accepts. */
    pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        int s = socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW);
        SOCKADDR_HV to = hvaddr(HV_GUID_LOOPBACK, base + 10);
        if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) != 0)
            _exit(2);
        _exit(send(s, "child", 5, 0) == 5 ? 0 : 3);
    }
    a = accept_within(l, &peer);
    CHECK(wait_fd(a, POLLIN, 5000) & POLLIN, "the child's bytes");
    CHECK(recv(a, buf, sizeof buf, 0) == 5 && memcmp(buf, "child", 5) == 0, "from the child");
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child's connect (status %d)", status);
    close(a);

    /* The child accepts on the listener it inherited; the parent connects. */
    pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        socklen_t len = sizeof peer;
        int got = accept(l, (struct sockaddr *)&peer, &len);
        _exit(got >= 0 && send(got, "hi", 2, 0) == 2 ? 0 : 4);
    }
    c = hvsocket(0);
    CHECK(hvconnect(c, HV_GUID_LOOPBACK, base + 10) == 0, "connect to the child's accept");
    CHECK(wait_fd(c, POLLIN, 5000) & POLLIN, "the child answers");
    CHECK(recv(c, buf, sizeof buf, 0) == 2, "from the child's accept");
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child's accept (status %d)", status);
    close(c);

    /* A child that closes every descriptor and reuses the numbers (as daemons do), then
       connects: libhvsock must not close the parent's control connection by its old number,
       which is now one of the child's files. */
    pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        int fd, s;
        SOCKADDR_HV to = hvaddr(HV_GUID_LOOPBACK, base + 10);
        for (fd = 3; fd < 256; fd++)
            close(fd);
        for (fd = 3; fd < 64; fd++)
            if (open("/dev/null", O_RDONLY) != fd)
                _exit(5);
        s = socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW);
        if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) != 0)
            _exit(6);
        for (fd = 3; fd < 64; fd++)
            if (fcntl(fd, F_GETFD) < 0)
                _exit(7); /* one of the child's files was closed behind its back */
        _exit(0);
    }
    a = accept_within(l, &peer);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a child that reused its descriptors (status %d)", status);
    close(a);
    close(l);

    /* A non-blocking connect under way at the fork completes in the parent only; in the child
       the socket is writable at once with ECONNABORTED in SO_ERROR. */
    l = hvlisten(HV_GUID_LOOPBACK, base + 13, 1);
    {
        int first = hvsocket(0), pending = hvsocket(SOCK_NONBLOCK);
        CHECK(hvconnect(first, HV_GUID_LOOPBACK, base + 13) == 0, "fills the backlog");
        EXPECT_ERRNO(hvconnect(pending, HV_GUID_LOOPBACK, base + 13), EINPROGRESS);
        pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
            int v = -1;
            socklen_t len = sizeof v;
            if (!(wait_fd(pending, POLLOUT, 1000) & POLLOUT))
                _exit(8);
            if (getsockopt(pending, SOL_SOCKET, SO_ERROR, &v, &len) != 0 || v != ECONNABORTED)
                _exit(9);
            _exit(0);
        }
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "a connect under way in the child (status %d)", status);
        a = accept_within(l, &peer); /* the parent's backlog frees up: its connect completes */
        CHECK(wait_fd(pending, POLLOUT, 5000) & POLLOUT, "the parent's connect completes");
        CHECK(so_error(pending) == 0, "in the parent");
        close(a);
        close(pending);
        close(first);
    }
    close(l);
    printf("ok fork\n");
}

#define THREADS 8
#define PER_THREAD 20

static void *connector(void *arg)
{
    int i;
    (void)arg;
    for (i = 0; i < PER_THREAD; i++) {
        int s = socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW);
        char b = 0;
        SOCKADDR_HV to = hvaddr(HV_GUID_LOOPBACK, base + 11);
        if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) != 0)
            return (void *)1;
        if (send(s, "t", 1, 0) != 1 || recv(s, &b, 1, 0) != 1 || b != 't')
            return (void *)2;
        close(s);
    }
    return NULL;
}

static void check_threads(void)
{
    pthread_t t[THREADS];
    int l, i, served = 0;
    as_host();
    l = hvlisten(HV_GUID_LOOPBACK, base + 11, 64);
    for (i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, connector, NULL) == 0, "pthread_create");
    while (served < THREADS * PER_THREAD) {
        SOCKADDR_HV peer;
        int a = accept_within(l, &peer);
        char b;
        CHECK(wait_fd(a, POLLIN, 5000) & POLLIN, "a connector's byte");
        CHECK(recv(a, &b, 1, 0) == 1 && send(a, &b, 1, 0) == 1, "echo");
        close(a);
        served++;
    }
    for (i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        CHECK(r == NULL, "connector thread %d failed (%ld)", i, (long)r);
    }
    close(l);
    printf("ok threads\n");
}

static void check_other_families_untouched(void)
{
    int pair[2], l, c, a;
    struct sockaddr_in in;
    socklen_t len = sizeof in;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0, "socketpair");
    transfer(pair[0], pair[1], "unix");
    CHECK(close(pair[0]) == 0 && close(pair[1]) == 0, "close a socketpair");

    l = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(l >= 0, "TCP socket");
    memset(&in, 0, sizeof in);
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(l, (struct sockaddr *)&in, sizeof in) == 0 && listen(l, 4) == 0, "TCP listen");
    CHECK(getsockname(l, (struct sockaddr *)&in, &len) == 0 && in.sin_family == AF_INET, "TCP name");
    c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(c >= 0, "TCP socket");
    if (connect(c, (struct sockaddr *)&in, sizeof in) != 0)
        CHECK(errno == EINPROGRESS, "TCP connect");
    CHECK(wait_fd(c, POLLOUT, 5000) & POLLOUT, "TCP connected");
    CHECK(so_error(c) == 0 && int_opt(c, SOL_SOCKET, SO_DOMAIN) == AF_INET, "TCP options");
    a = accept(l, NULL, NULL);
    CHECK(a >= 0, "TCP accept");
    transfer(c, a, "tcp");
    close(a);
    close(c);
    close(l);
    printf("ok other_families_untouched\n");
}

static void check_options_follow(void)
{
    int l, c, a, small = 8192, v;
    SOCKADDR_HV peer;
    as_host();
    l = hvlisten(HV_GUID_LOOPBACK, base + 12, 4);
    c = hvsocket(0);
    CHECK(setsockopt(c, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) == 0, "SO_RCVBUF before connect");
    CHECK(hvconnect(c, HV_GUID_LOOPBACK, base + 12) == 0, "connect");
    v = int_opt(c, SOL_SOCKET, SO_RCVBUF);
    CHECK(v <= 4 * small, "SO_RCVBUF set before connect applies to the connection (%d)", v);
    a = accept_within(l, &peer);
    close(a);
    close(c);
    close(l);
    printf("ok options_follow\n");
}

static const struct {
    const char *name;
    void (*run)(void);
} checks[] = {
    {"socket_basics", check_socket_basics},
    {"errno_table", check_errno_table},
    {"sandbox_to_host", check_sandbox_to_host},
    {"nonblocking_poll", check_nonblocking_poll},
    {"nonblocking_epoll_select", check_nonblocking_epoll_select},
    {"close_and_rebind", check_close_and_rebind},
    {"accept_flags", check_accept_flags},
    {"fork", check_fork},
    {"threads", check_threads},
    {"other_families_untouched", check_other_families_untouched},
    {"options_follow", check_options_follow},
};

int main(int argc, char **argv)
{
    unsigned i;
    int k;
    if (argc < 5) {
        fprintf(stderr, "usage: api_check HOST_DIR SANDBOX_ENDPOINT SANDBOX_VMID BASE_PORT [CHECK...]\n");
        return 2;
    }
    host_dir = argv[1];
    sandbox_ep = argv[2];
    {
        unsigned d1, d2, d3, b[8], j;
        if (sscanf(argv[3], "%8x-%4x-%4x-%2x%2x-%2x%2x%2x%2x%2x%2x", &d1, &d2, &d3, &b[0], &b[1],
                   &b[2], &b[3], &b[4], &b[5], &b[6], &b[7]) != 11) {
            fprintf(stderr, "bad VmId %s\n", argv[3]);
            return 2;
        }
        sandbox_id.Data1 = d1;
        sandbox_id.Data2 = (uint16_t)d2;
        sandbox_id.Data3 = (uint16_t)d3;
        for (j = 0; j < 8; j++)
            sandbox_id.Data4[j] = (uint8_t)b[j];
    }
    base = (unsigned)strtoul(argv[4], NULL, 10);
    alarm(120);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        int wanted = argc == 5;
        for (k = 5; k < argc; k++)
            wanted |= strcmp(argv[k], checks[i].name) == 0;
        if (wanted)
            checks[i].run();
    }
    printf("all checks passed\n");
    return 0;
}
