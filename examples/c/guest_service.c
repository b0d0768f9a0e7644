/*
 * guest_service.c: step 3 of Microsoft's "Make your own integration services" (the guest
 * side), written as the document writes it, in C on Linux with libhvsock.
 *
 * It creates an AF_HYPERV socket, connects to HV_GUID_PARENT (the host) and the service id,
 * sends each MESSAGE and prints the host's reply, then closes.
 *
 *   guest_service [PORT [MESSAGE...]]   PORT: the service's vsock port (default 5000)
 *
 * The same binary runs in a sandbox on the host (through its partition's endpoint:
 * HVSOCK_ENDPOINT=DIR/partitions/<vmid>.sock) and inside a Linux VM (HVSOCK_TRANSPORT=vsock).
 * Build it like host_service.c (linked with `pkg-config --libs hvsock`, or with the header
 * alone and run under LD_PRELOAD=libhvsock.so).
 */
#include <hvsocket.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#pragma weak hv_last_error

static void fail(const char *what)
{
    int err = errno;
    fprintf(stderr, "guest_service: %s: %s", what, strerror(err));
    if (hv_last_error && *hv_last_error())
        fprintf(stderr, " (%s)", hv_last_error());
    fprintf(stderr, "\n");
    exit(1);
}

int main(int argc, char **argv)
{
    unsigned long port = argc > 1 ? strtoul(argv[1], NULL, 10) : 5000;
    SOCKADDR_HV addr;
    int sock, i;

    /* Create a Hyper-V socket. */
    sock = socket(AF_HYPERV, SOCK_STREAM, HV_PROTOCOL_RAW);
    if (sock < 0)
        fail("socket");

    /* Connect to the parent partition (the host), to our service id. */
    memset(&addr, 0, sizeof addr);
    addr.Family = AF_HYPERV;
    addr.VmId = HV_GUID_PARENT;
    addr.ServiceId = HV_GUID_VSOCK_TEMPLATE;
    addr.ServiceId.Data1 = (uint32_t)port;
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0)
        fail("connect");

    /* Send each message; print the reply. */
    for (i = 2; i < argc; i++) {
        char reply[4096 + 7];
        size_t len = strlen(argv[i]), got = 0;

        if (len > 4096) {
            fprintf(stderr, "guest_service: a message is at most 4096 bytes\n");
            return 2;
        }
        if (send(sock, argv[i], len, MSG_NOSIGNAL) != (ssize_t)len)
            fail("send");
        /* The reply is "host> " and the message. */
        while (got < len + 6) {
            ssize_t n = recv(sock, reply + got, len + 6 - got, 0);
            if (n <= 0) {
                if (n == 0)
                    errno = ECONNRESET;
                fail("recv");
            }
            got += (size_t)n;
        }
        reply[got] = '\0';
        printf("%s\n", reply);
        fflush(stdout);
    }
    close(sock);
    return 0;
}
