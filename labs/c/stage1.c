// stage1: the time service, one client at a time (OSTEP's homework, part 1).
//
// The server waits in accept(2) for a client, writes the current time and
// closes the connection; then it waits for the next. While it serves one
// client the others wait in the kernel's listen queue: that is fine for a
// reply that takes microseconds, and the reason for every later stage.
//
//   cd labs/c && build/stage1 --port 0 --service time
#include "lab.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

// A socket bound to 127.0.0.1:port, listening.
static int listen_on(int port) {
    // lab:begin
    // lab:todo Return a TCP socket that listens on 127.0.0.1 at `port` (0: the kernel picks
    // lab:todo one). A server restarted at once must be able to bind the same port again
    // lab:todo while old connections linger in TIME_WAIT. Any failure ends the program
    // lab:todo with a message naming the call (die() in lab.h). man 7 ip, man 2 listen.
    int sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        die("socket");
    int reuse = 1;
    if (setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse) < 0)
        die("setsockopt SO_REUSEADDR");
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(sock, SOMAXCONN) < 0)
        die("listen");
    return sock;
    // lab:stub (void)port;
    // lab:stub lab_todo("listen_on(), the listening socket");
    // lab:end
}

// Writes all n bytes to the blocking socket fd; -1 if the client left.
static int send_all(int fd, const char *bytes, size_t n) {
    while (n > 0) {
        ssize_t sent = write(fd, bytes, n);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0)
            return -1; // the client hung up
        bytes += sent;
        n -= (size_t)sent;
    }
    return 0;
}

// Serves the time forever, one client after another.
static void serve_time(int listener) {
    // lab:begin
    // lab:todo Forever: wait for the next client; write it the current time in UTC as
    // lab:todo RFC 3339 with a newline (2026-11-27T12:00:00Z), then hang up. No request is
    // lab:todo read. A client that hangs up early, or a signal that interrupts the wait,
    // lab:todo must not stop the server; every connection is closed (no fd leaks).
    // lab:todo man 2 accept, man 3 gmtime_r, man 3 strftime; send_all() above writes.
    for (;;) { // one client after another
        int client = accept(listener, NULL, NULL);
        if (client < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            die("accept");
        }
        char line[32];
        time_t now = time(NULL);
        struct tm utc;
        gmtime_r(&now, &utc);
        size_t len = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%SZ\n", &utc);
        (void)send_all(client, line, len);
        close(client);
    }
    // lab:stub (void)listener;
    // lab:stub (void)send_all;
    // lab:stub lab_todo("serve_time(), the accept-serve-close loop");
    // lab:end
}

int main(int argc, char **argv) {
    struct lab_config cfg;
    lab_parse(argc, argv, &cfg);
    if (!cfg.time_service) {
        fprintf(stderr, "stage1 serves only the time: run it with --service time\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN); // a write to a client that left fails (EPIPE), not kills
    int listener = listen_on(cfg.port);
    lab_announce(listener);
    serve_time(listener);
}
