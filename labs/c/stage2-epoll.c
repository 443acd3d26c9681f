// stage2-epoll: many clients at once, in one thread, on Linux's epoll(7).
//
// stage2-select's loop, waiting in epoll: a socket is registered once, and
// epoll reports only those that became ready, once (edge-triggered): reads
// drain to EAGAIN; writability is asked for only while output is owed.
//
//   cd labs/c && build/stage2-epoll --port 0 --root ../../docs
#include "lab.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef __linux__
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// A socket bound to 127.0.0.1:port, listening.
static int listen_on(int port) {
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
}


#define REQUEST_MAX 4096 // bytes in a request line, its "\r\n" not counted
#define MAX_CLIENTS 4096 // more at once get ERR 503

// lab:begin
// lab:todo Keep, for each client, what the loop needs between its turns: its socket, the
// lab:todo bytes of a line not ended yet, the bytes it is owed and how many were sent,
// lab:todo whether to close it once they are, and the events epoll watches for it.
// lab:todo owe() adds n bytes to what client c is owed (they go out when its socket
// lab:todo can take them); owe_error() adds `ERR <code> <reason>\n`.
// lab:todo Answer the request `path`: `OK <size>\n` and the whole file beneath the directory
// lab:todo fd `root`, read now. An absolute path or a `..`: ERR 403 (stage 3 does the sandbox
// lab:todo properly); missing: ERR 404; not a regular file: ERR 403; not read whole: ERR 500
// lab:todo and none of its bytes. Close what you open. man 2 openat, man 2 fstat.
struct client {
    int fd;
    char in[REQUEST_MAX + 2]; // the request line so far, with room for "\r\n"
    size_t in_len;
    char *out;                // owed: out[out_sent] up to out[out_len]
    size_t out_len, out_sent;
    int closing;              // it hung up or must go: close once nothing is owed
    uint32_t events;          // what epoll watches for it now
};

static int nclients;

static void owe(struct client *c, const void *bytes, size_t n) {
    c->out = realloc_or_die(c->out, c->out_len + n);
    memcpy(c->out + c->out_len, bytes, n);
    c->out_len += n;
}

static void owe_error(struct client *c, int code, const char *reason) {
    char line[80];
    owe(c, line, (size_t)snprintf(line, sizeof line, "ERR %d %s\n", code, reason));
}

static void serve_file(struct client *c, int root, const char *path) {
    if (path[0] == '/' || strstr(path, "..") != NULL) {
        owe_error(c, 403, "forbidden");
        return;
    }
    int fd = openat(root, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        owe_error(c, errno == ENOENT ? 404 : 403, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        owe_error(c, 403, "not a regular file");
        return;
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *body = malloc_or_die(size);
    while (got < size) {
        ssize_t n = read(fd, body + got, size - got);
        if (n == 0 || (n < 0 && errno != EINTR))
            break;
        got += n > 0 ? (size_t)n : 0;
    }
    close(fd);
    if (got == size) {
        char head[32];
        owe(c, head, (size_t)snprintf(head, sizeof head, "OK %zu\n", size));
        owe(c, body, size);
    } else {
        owe_error(c, 500, "cannot read the file");
    }
    free(body);
}
// lab:stub // (your struct client and what else the loop keeps; owe(), owe_error(), serve_file())
// lab:end

// lab:begin
// lab:todo Read what client c sent until the socket has no more for now (edge-triggered),
// lab:todo and answer every whole line in it, in order (a read may hold half a line, or
// lab:todo several); a `\r` before the `\n` is not part of the path. A line that fills the
// lab:todo buffer: ERR 414, then close. End-of-file or an error: close once nothing is owed.
// lab:todo Send client c what it is owed, as much as its socket takes now. A write may take
// lab:todo fewer bytes than asked, or none (EAGAIN): keep the rest for the next turn. A
// lab:todo client that has gone (EPIPE, ECONNRESET) is closed. man 2 write.
// lab:todo Tell epoll what client c waits for now, if that changed: input unless it is
// lab:todo closing; room to write only while it is owed bytes (else every turn wakes the
// lab:todo loop for nothing). man 2 epoll_ctl, man 7 epoll (EPOLLET).
static void on_readable(struct client *c, int root) {
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            c->closing = 1;
            return;
        }
        c->in_len += (size_t)n;
        char *newline;
        while ((newline = memchr(c->in, '\n', c->in_len)) != NULL) {
            *newline = '\0';
            if (newline > c->in && newline[-1] == '\r')
                newline[-1] = '\0';
            serve_file(c, root, c->in);
            size_t used = (size_t)(newline + 1 - c->in);
            memmove(c->in, newline + 1, c->in_len - used);
            c->in_len -= used;
        }
        if (c->in_len == sizeof c->in) {
            owe_error(c, 414, "request line too long");
            c->closing = 1;
            return;
        }
    }
}

static void on_writable(struct client *c) {
    while (c->out_sent < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_sent, c->out_len - c->out_sent);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) {
            c->closing = 1;
            c->out_sent = c->out_len; // it left: nobody to owe
            break;
        }
        c->out_sent += (size_t)n;
    }
    c->out_len = c->out_sent = 0; // all sent: the buffer starts over
}

static void drop_client(struct client *c) {
    nclients--;
    close(c->fd); // closing the fd also takes it out of the epoll set
    free(c->out);
    free(c);
}

static void watch(int epoll, struct client *c) {
    uint32_t events = EPOLLET | (c->closing ? 0 : EPOLLIN) | (c->out_sent < c->out_len ? EPOLLOUT : 0);
    if (events == c->events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epoll, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl MOD");
    c->events = events;
}
// lab:stub // (your on_readable(), on_writable(), watch() and what closes a client)
// lab:end

// lab:begin
// lab:todo Accept every waiting client (until EAGAIN: the listener is reported once), each
// lab:todo non-blocking (one call that waits for one client stops every client), with a
// lab:todo fresh state, registered with epoll once, edge-triggered. Past MAX_CLIENTS at
// lab:todo once: send `ERR 503 <reason>` and close. man 2 accept4.
static void accept_clients(int epoll, int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        if (fd < 0)
            return; // EAGAIN: nobody else waits (or out of fds: they wait in the queue)
        if (nclients >= MAX_CLIENTS) {
            ssize_t ignored = write(fd, "ERR 503 server full\n", 20);
            (void)ignored;
            close(fd);
            continue;
        }
        struct client *c = malloc_or_die(sizeof *c);
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->events = EPOLLIN | EPOLLET;
        struct epoll_event ev = {.events = c->events, .data.ptr = c};
        if (epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl ADD");
        nclients++;
    }
}
// lab:stub // (your accept_clients())
// lab:end

// Serves files over the line protocol to every client at once.
static void serve_files(int listener, const struct lab_config *cfg) {
    // lab:begin
    // lab:todo The loop: wait until epoll reports ready sockets (a listener that is
    // lab:todo non-blocking too), serve each one, close a closing client once nothing is
    // lab:todo owed, else update what epoll watches for it. A signal may interrupt the
    // lab:todo wait (EINTR). man 2 fcntl (O_NONBLOCK), man 2 epoll_create1, epoll_wait.
    int root = open_root_or_die(cfg->root);
    if (fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK) < 0)
        die("fcntl O_NONBLOCK");
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL}; // NULL: the listener
    if (epoll < 0 || epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &ev) < 0)
        die("epoll");
    for (;;) {
        struct epoll_event ready[64];
        int n = epoll_wait(epoll, ready, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct client *c = ready[i].data.ptr;
            if (c == NULL) {
                accept_clients(epoll, listener);
                continue;
            }
            if (ready[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c, root);
            if (c->out_sent < c->out_len)
                on_writable(c);
            if (c->closing && c->out_sent == c->out_len)
                drop_client(c);
            else
                watch(epoll, c);
        }
    }
    // lab:stub (void)listener;
    // lab:stub (void)cfg;
    // lab:stub lab_todo("serve_files(), the epoll loop");
    // lab:end
}

int main(int argc, char **argv) {
    struct lab_config cfg;
    lab_parse(argc, argv, &cfg);
    signal(SIGPIPE, SIG_IGN); // a write to a client that left fails (EPIPE), not kills
    int listener = listen_on(cfg.port);
    lab_announce(listener);
    if (cfg.time_service)
        serve_time(listener);
    serve_files(listener, &cfg);
}
#else
int main(void) {
    fprintf(stderr, "stage2-epoll needs Linux (epoll); here, run stage2-select instead\n");
    return EXIT_FAILURE;
}
#endif
