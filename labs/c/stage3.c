// stage3: files over the line protocol, safely (OSTEP's homework, part 3).
//
// stage2-select plus what a real file server needs. Framing: a request is
// a line of at most 4096 bytes, which may arrive in pieces or several in
// one read; requests are answered one at a time, in order. The sandbox:
// nothing outside --root is ever opened (the kernel resolves the path
// beneath the root: openat2 with RESOLVE_BENEATH; elsewhere a walk, one
// component at a time), a FIFO cannot hang the loop, only regular files
// are served. Large files go out in pieces, one piece read each time the
// client has taken the last: memory per client stays bounded, and a slow
// reader never stalls the others. Reads still block the loop (stage 4).
//
//   cd labs/c && build/stage3 --port 0 --root ../../docs
#include "lab.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/openat2.h>
#include <sys/syscall.h>
#endif

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

#define REQUEST_MAX 4096  // bytes in a request line, its "\r\n" not counted
#define PIECE (64 * 1024) // a large file goes out this much at a time

struct client {
    int fd;
    char in[REQUEST_MAX + 2]; // the request line so far, with room for "\r\n"
    size_t in_len;
    char *out;                // owed: out[out_sent] up to out[out_len]
    size_t out_len, out_sent;
    int closing;              // it must go: close once nothing is owed
    int eof;                  // it sent all it will: close once its requests are answered
    int file;                 // the file being sent, or -1
    size_t file_left;         // its bytes not read yet
};

static struct client *clients[FD_SETSIZE]; // by fd: select speaks in fds

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        die("fcntl O_NONBLOCK");
}

static void owe(struct client *c, const void *bytes, size_t n) {
    c->out = realloc_or_die(c->out, c->out_len + n);
    memcpy(c->out + c->out_len, bytes, n);
    c->out_len += n;
}

static void owe_error(struct client *c, int code, const char *reason) {
    char line[80];
    owe(c, line, (size_t)snprintf(line, sizeof line, "ERR %d %s\n", code, reason));
}

static long next_line(struct client *c, char line[REQUEST_MAX + 2]) {
    // lab:begin
    // lab:todo Take the next request line out of c's input, if a whole one is there: copy it
    // lab:todo to `line` (NUL-terminated, without its `\n` or a `\r` just before it) and return
    // lab:todo its length; -1 while it has not ended; -2 if it is longer than REQUEST_MAX bytes,
    // lab:todo the `\r\n` not counted (4096 bytes and `\r\n` are fine, 4097 are not). The grader
    // lab:todo sends several requests in one write, one byte per write, and 4096 bytes and the
    // lab:todo `\r` in one write with the `\n` in the next. man 3 memchr.
    char *newline = memchr(c->in, '\n', c->in_len);
    if (newline == NULL)
        return c->in_len == sizeof c->in ? -2 : -1; // full, and still no end
    size_t len = (size_t)(newline - c->in), consumed = len + 1;
    if (len > 0 && c->in[len - 1] == '\r')
        len--;
    if (len > REQUEST_MAX)
        return -2;
    memcpy(line, c->in, len);
    line[len] = '\0';
    memmove(c->in, c->in + consumed, c->in_len - consumed);
    c->in_len -= consumed;
    return (long)len;
    // lab:stub (void)c;
    // lab:stub (void)line;
    // lab:stub lab_todo("next_line(), the framing");
    // lab:end
}

static int walk_beneath(int root, const char *path) {
    // lab:begin
    // lab:todo Open `path` beneath the directory fd `root` one component at a time (where
    // lab:todo openat2 is missing): never follow a symlink blindly; read it and walk its target
    // lab:todo in its place, only while that stays beneath the root (an absolute target, or a
    // lab:todo `..` above the root: -EXDEV); at most 40 of them (-ELOOP). A last component that
    // lab:todo is a directory: -EISDIR. Returns the fd, opened non-blocking, or -errno.
    // lab:todo man 2 openat (O_NOFOLLOW: ELOOP, or EMLINK on FreeBSD), man 2 readlinkat.
    char rest[2 * REQUEST_MAX + 2], target[REQUEST_MAX], joined[sizeof rest];
    int dirs[64], depth = 0, links = 0, result = -EISDIR;
    dirs[0] = root;
    snprintf(rest, sizeof rest, "%s", path);
    for (char *name = rest;;) {
        name += strspn(name, "/");
        char *end = name + strcspn(name, "/");
        int last = end[strspn(end, "/")] == '\0';
        if (*end != '\0')
            *end++ = '\0';
        if (strcmp(name, "..") == 0 && depth == 0) {
            result = -EXDEV; // above the root
        } else if (strcmp(name, "..") == 0) {
            close(dirs[depth--]);
        } else if (*name != '\0' && strcmp(name, ".") != 0) {
            int fd = openat(dirs[depth], name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
            ssize_t n = fd < 0 && (errno == ELOOP || errno == EMLINK)
                            ? readlinkat(dirs[depth], name, target, sizeof target - 1) : -1;
            if (n >= 0) { // a symlink: walk its target in its place
                target[n] = '\0';
                result = target[0] == '/' ? -EXDEV : ++links > 40 ? -ELOOP : 0;
                if (result == 0 && snprintf(joined, sizeof joined, "%s/%s", target, last ? "" : end)
                                       < (int)sizeof joined) {
                    memcpy(rest, joined, sizeof rest);
                    name = rest;
                    result = -EISDIR;
                    continue;
                }
                result = result == 0 ? -ENAMETOOLONG : result;
            } else if (fd < 0) {
                result = -errno;
            } else if (last) {
                result = fd;
            } else if (depth + 1 < 64) {
                dirs[++depth] = fd;
            } else {
                close(fd); // too deep
                result = -ENAMETOOLONG;
            }
        }
        if (last || result != -EISDIR)
            break;
        name = end;
    }
    while (depth > 0)
        close(dirs[depth--]);
    return result;
    // lab:stub (void)root;
    // lab:stub (void)path;
    // lab:stub lab_todo("walk_beneath(), the portable sandbox");
    // lab:end
}

// The file a request names, opened beneath the root: an fd, or -errno.
static int open_beneath(int root, const char *path) {
    // lab:begin
    // lab:todo Open the file a request names, beneath the directory fd `root`, for reading;
    // lab:todo return the fd, or -errno. Nothing outside the root, ever: an absolute path or a
    // lab:todo `..` component is -EXDEV, a hidden name (a component starting with `.`, a lone
    // lab:todo `.` excepted) -EACCES; `.` and empty components are skipped (`dir//./x` is
    // lab:todo `dir/x`); a symlink is followed only while it stays beneath the root. Open
    // lab:todo non-blocking: a FIFO with no writer must not hang the loop. On Linux the kernel
    // lab:todo resolves beneath the root (man 2 openat2, RESOLVE_BENEATH; glibc has no wrapper:
    // lab:todo syscall(2); EAGAIN, a rename racing a `..`, is worth a retry); where it is missing
    // lab:todo (ENOSYS, or LAB_SANDBOX=walk), walk_beneath().
    char clean[REQUEST_MAX + 1];
    size_t used = 0;
    if (path[0] == '/')
        return -EXDEV;
    for (const char *name = path; *name != '\0';) {
        size_t n = strcspn(name, "/");
        if (n == 2 && name[1] == '.' && name[0] == '.')
            return -EXDEV;
        if (n > 1 && name[0] == '.')
            return -EACCES; // hidden
        if (n > 0 && !(n == 1 && name[0] == '.')) {
            used += (size_t)snprintf(clean + used, sizeof clean - used, "%s%.*s", used ? "/" : "", (int)n, name);
        }
        name += n + strspn(name + n, "/");
    }
    if (used == 0)
        return -EISDIR; // the root itself
#if defined(__linux__) // openat2: Linux 5.6
    const char *sandbox = getenv("LAB_SANDBOX");
    if (sandbox == NULL || strcmp(sandbox, "walk") != 0) {
        struct open_how how = {.flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC,
                               .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS};
        long fd;
        int tries = 0;
        do // EAGAIN: a rename raced the check of a `..`; worth a retry
            fd = syscall(SYS_openat2, root, clean, &how, sizeof how);
        while (fd < 0 && errno == EAGAIN && ++tries < 8);
        if (fd >= 0 || errno != ENOSYS)
            return fd >= 0 ? (int)fd : -errno;
    }
#endif // elsewhere: the walk
    return walk_beneath(root, clean);
    // lab:stub (void)root;
    // lab:stub (void)path;
    // lab:stub (void)walk_beneath;
    // lab:stub lab_todo("open_beneath(), the sandbox");
    // lab:end
}

// The status of a request refused with errno err.
static int status_of(int err) {
    // lab:begin
    // lab:todo The contract's codes: no such file (or a path through a non-directory, or too
    // lab:todo long) is 404; a refusal by the sandbox or the permissions, or not a regular
    // lab:todo file, is 403; anything else (an I/O error) is 500. man 3 errno.
    if (err == ENOENT || err == ENOTDIR || err == ENAMETOOLONG)
        return 404;
    if (err == EACCES || err == EPERM || err == EXDEV || err == ELOOP || err == EMLINK || err == EISDIR)
        return 403;
    return 500;
    // lab:stub (void)err;
    // lab:stub lab_todo("status_of(), the error codes");
    // lab:end
}

static void refill(struct client *c) {
    // lab:begin
    // lab:todo Read the next piece of the file client c is being sent (at most PIECE bytes,
    // lab:todo never more than is left) onto what it is owed: memory per client stays bounded
    // lab:todo whatever the file's size (the grader asks for 64 MiB). Close the file after its
    // lab:todo last piece. A file that ends early or fails cannot keep the size promised in
    // lab:todo `OK <size>`: close the connection. man 2 read.
    size_t want = c->file_left < PIECE ? c->file_left : PIECE;
    c->out = realloc_or_die(c->out, c->out_len + want);
    ssize_t n;
    do
        n = read(c->file, c->out + c->out_len, want);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->out_len += (size_t)n;
        c->file_left -= (size_t)n;
    } else {
        c->closing = 1; // the file shrank or failed: the size promised cannot be kept
    }
    if (c->file_left == 0 || c->closing) {
        close(c->file); // its last piece is read, or it failed
        c->file = -1; // no file in flight
    }
    // lab:stub (void)c;
    // lab:stub lab_todo("refill(), a large file in pieces");
    // lab:end
}

// Answers one request line of len bytes: an error, or `OK <size>` and the
// file's first piece (the rest follows as the client takes it).
static void respond(struct client *c, int root, const char *line, size_t len, int delay_ms) {
    // lab:begin
    // lab:todo An empty line, or one with a control byte (NUL included: `line` may hold
    // lab:todo one before its end): ERR 400, then close. Otherwise open it beneath the root;
    // lab:todo anything but a regular file (a directory, a FIFO, a device) is ERR 403; a
    // lab:todo refusal is `ERR <status_of(errno)>`. Simulate slow storage: wait delay_ms
    // lab:todo (this blocks the loop: stage 4's question). Then owe `OK <size>\n` and the
    // lab:todo first piece. man 2 fstat.
    int bad = len == 0;
    for (size_t i = 0; i < len; i++)
        bad |= (unsigned char)line[i] < 0x20 || line[i] == 0x7f;
    if (bad) {
        owe_error(c, 400, "malformed request");
        c->closing = 1; // once told
        return;
    }
    struct stat st; // its type and size
    int fd = open_beneath(root, line);
    if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
        close(fd); // a directory, a FIFO, a device: not served
        fd = -EISDIR; // not a regular file
    }
    if (fd < 0) { // refused
        owe_error(c, status_of(-fd), strerror(-fd));
        return;
    }
    if (delay_ms > 0)
        lab_sleep_ms(delay_ms);
    char head[32]; // OK <size>
    owe(c, head, (size_t)snprintf(head, sizeof head, "OK %lld\n", (long long)st.st_size));
    c->file = fd;
    c->file_left = (size_t)st.st_size;
    refill(c); // the first piece goes with the header
    // lab:stub (void)c;
    // lab:stub (void)root;
    // lab:stub (void)line;
    // lab:stub (void)len;
    // lab:stub (void)delay_ms;
    // lab:stub (void)open_beneath;
    // lab:stub (void)status_of;
    // lab:stub lab_todo("respond(), a request answered");
    // lab:end
}

// While client c is owed nothing: the next piece of its file, or the answer
// to its next request; ends it once it will send no more.
static void advance(struct client *c, int root, int delay_ms) {
    char line[REQUEST_MAX + 2];
    while (!c->closing && c->out_sent == c->out_len) {
        if (c->file >= 0) {
            refill(c);
            continue;
        }
        long len = next_line(c, line);
        if (len == -1) {
            c->closing = c->eof; // no more will come: nothing left to answer
            return;
        }
        if (len == -2) {
            owe_error(c, 414, "request line too long");
            c->closing = 1;
            return;
        }
        respond(c, root, line, (size_t)len, delay_ms);
    }
}

// Reads what client c sent, as far as its buffer has room.
static void on_readable(struct client *c) {
    while (c->in_len < sizeof c->in) {
        ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            c->eof = 1;
            return;
        }
        c->in_len += (size_t)n;
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
    clients[c->fd] = NULL;
    close(c->fd);
    if (c->file >= 0)
        close(c->file);
    free(c->out);
    free(c);
}

static void accept_clients(int listener) {
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        if (fd < 0)
            return; // EAGAIN: nobody else waits (or out of fds: they wait in the queue)
        if (fd >= FD_SETSIZE) {
            ssize_t ignored = write(fd, "ERR 503 server full\n", 20);
            (void)ignored;
            close(fd);
            continue;
        }
        set_nonblocking(fd);
        struct client *c = malloc_or_die(sizeof *c);
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->file = -1;
        clients[fd] = c;
    }
}

// Serves files over the line protocol to every client at once.
static void serve_files(int listener, const struct lab_config *cfg) {
    int root = open_root_or_die(cfg->root);
    set_nonblocking(listener);
    for (;;) {
        fd_set readable, writable;
        FD_ZERO(&readable);
        FD_ZERO(&writable);
        FD_SET(listener, &readable);
        int max = listener;
        for (int fd = 0; fd < FD_SETSIZE; fd++) {
            struct client *c = clients[fd];
            if (c == NULL)
                continue;
            if (!c->closing && !c->eof && c->in_len < sizeof c->in)
                FD_SET(fd, &readable);
            if (c->out_sent < c->out_len)
                FD_SET(fd, &writable);
            max = fd > max ? fd : max;
        }
        if (select(max + 1, &readable, &writable, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            die("select");
        }
        for (int fd = 0; fd <= max; fd++) {
            struct client *c = clients[fd];
            if (c == NULL)
                continue;
            if (FD_ISSET(fd, &readable))
                on_readable(c);
            if (FD_ISSET(fd, &writable) || c->out_sent < c->out_len)
                on_writable(c);
            advance(c, root, cfg->read_delay_ms);
            if (c->closing && c->out_sent == c->out_len)
                drop_client(c);
        }
        if (FD_ISSET(listener, &readable))
            accept_clients(listener);
    }
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
