/*
 * host_service.c: step 2 of Microsoft's "Make your own integration services" (the host side),
 * written as the document writes it, in C on Linux with libhvsock.
 *
 * It creates an AF_HYPERV socket, binds it to HV_GUID_WILDCARD and a service id, listens, and
 * serves many guests at once with select(): it prints who connected (the peer's VmId) and
 * answers every message with "host> " and the message, until each guest closes.
 *
 *   host_service [PORT]     PORT: the service's vsock port (default 5000), i.e. the service id
 *                            xxxxxxxx-facb-11e6-bd58-64006a7986d3 with Data1 = PORT
 *
 * Build and run it (docs/c.md has the whole walk-through; hvsockd must be running, and the
 * service registered and enabled with `hvsock service add NAME --port PORT`):
 *
 *   cc host_service.c $(pkg-config --cflags --libs hvsock) -o host_service
 *   HVSOCK_DIR=./demo ./host_service 5000
 *
 * or, built with the header alone, unchanged under LD_PRELOAD:
 *
 *   cc host_service.c $(pkg-config --cflags hvsock) -o host_service
 *   HVSOCK_DIR=./demo LD_PRELOAD=libhvsock.so ./host_service 5000
 *
 * What differs from the Windows version: an int descriptor instead of SOCKET, close() instead
 * of closesocket(), errno instead of WSAGetLastError(), and no WSAStartup().
 */
#include <hvsocket.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

/* The reason behind the last failure, when libhvsock is there (linked or preloaded). */
#pragma weak hv_last_error

static void fail(const char *what)
{
    int err = errno;
    fprintf(stderr, "host_service: %s: %s", what, strerror(err));
    if (hv_last_error && *hv_last_error())
        fprintf(stderr, " (%s)", hv_last_error());
    fprintf(stderr, "\n");
    exit(1);
}

static void print_guid(FILE *f, const GUID *g)
{
    fprintf(f, "%08x-%04x-%04x-%02x%02x-%02x%02x%02x%02x%02x%02x", (unsigned)g->Data1,
            g->Data2, g->Data3, g->Data4[0], g->Data4[1], g->Data4[2], g->Data4[3],
            g->Data4[4], g->Data4[5], g->Data4[6], g->Data4[7]);
}

int main(int argc, char **argv)
{
    unsigned long port = argc > 1 ? strtoul(argv[1], NULL, 10) : 5000;
    SOCKADDR_HV addr;
    int clients[FD_SETSIZE];
    int nclients = 0;
    int listener, i;

    /* Create a Hyper-V socket. */
    listener = socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW);
    if (listener < 0)
        fail("socket");

    /* Bind it: any partition that may reach this one (HV_GUID_WILDCARD), our service id. */
    memset(&addr, 0, sizeof addr);
    addr.Family = AF_HYPERV;
    addr.VmId = HV_GUID_WILDCARD;
    addr.ServiceId = HV_GUID_VSOCK_TEMPLATE;
    addr.ServiceId.Data1 = (uint32_t)port;
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0)
        fail("bind");
    if (listen(listener, SOMAXCONN) != 0)
        fail("listen");
    printf("listening on ");
    print_guid(stdout, &addr.VmId);
    printf(":");
    print_guid(stdout, &addr.ServiceId);
    printf("\n");
    fflush(stdout);

    for (;;) {
        fd_set readable;
        int top = listener;

        FD_ZERO(&readable);
        FD_SET(listener, &readable);
        for (i = 0; i < nclients; i++) {
            FD_SET(clients[i], &readable);
            if (clients[i] > top)
                top = clients[i];
        }
        if (select(top + 1, &readable, NULL, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            fail("select");
        }

        /* A guest connects: accept it and say who it is. */
        if (FD_ISSET(listener, &readable)) {
            SOCKADDR_HV peer;
            socklen_t len = sizeof peer;
            int client = accept(listener, (struct sockaddr *)&peer, &len);
            if (client < 0)
                fail("accept");
            if (nclients == FD_SETSIZE || client >= FD_SETSIZE) {
                close(client);
            } else {
                clients[nclients++] = client;
                print_guid(stdout, &peer.VmId);
                printf(" connected\n");
                fflush(stdout);
            }
        }

        /* A guest sent something (or closed): answer it (or close ours). */
        for (i = 0; i < nclients; i++) {
            char buf[4096], reply[4096 + 6];
            ssize_t n;

            if (!FD_ISSET(clients[i], &readable))
                continue;
            n = recv(clients[i], buf, sizeof buf, 0);
            if (n <= 0) {
                close(clients[i]);
                clients[i--] = clients[--nclients];
                printf("a guest left\n");
                fflush(stdout);
                continue;
            }
            memcpy(reply, "host> ", 6);
            memcpy(reply + 6, buf, (size_t)n);
            if (send(clients[i], reply, (size_t)n + 6, MSG_NOSIGNAL) < 0)
                perror("host_service: send");
        }
    }
}
