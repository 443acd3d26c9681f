// stage4-threads: reads that do not block the loop, on reader threads.
//
// stage3 plus asynchronous reads, the other way: the loop hands each read
// to a small pool of reader threads (a queue under a mutex, a condition
// variable to wake them) and goes on serving others. A reader does the
// slow part (the storage delay, pread) and hands the result back: onto a
// list under the same mutex, and one byte into a pipe that the loop
// watches with its sockets. Only the loop touches sockets and client
// state; a reader touches a client's file and buffer only while the read
// is its own. From here on, small files are kept in memory (the cache).
//
//   cd labs/c && build/stage4-threads --port 0 --root ../../docs --read-delay-ms 250
#include "lab.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
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
#define CACHE_MAX (32 << 20) // bytes of file contents kept in memory
#define READERS 8            // reader threads

enum { IDLE, SUBMITTED, DONE }; // a client's read

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
    off_t file_off;           // where its next piece starts
    char *path;               // its request: the cache's key
    int read;                 // IDLE, SUBMITTED or DONE
    int64_t start_at;         // when slow storage lets the read start
    ssize_t result;           // DONE: what the read returned
    char *piece;              // the read's buffer: a reader's until the read is DONE
    struct client *next_read; // its place in the queue or the finished list
};

static int wake[2]; // the pipe: a byte in it says a read finished
// lab:begin
// lab:todo What the loop and the readers share: a queue of reads to do, oldest first; a
// lab:todo list of reads done; a lock that guards both; a way for idle readers to sleep
// lab:todo until the queue has work. man 3 pthread_mutex_lock, man 3 pthread_cond_wait.
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; // guards the two lists
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;   // the queue is not empty
static struct client *queued, **queued_end = &queued;    // reads to do, oldest first
static struct client *finished;                          // reads done
// lab:stub // (your shared state)
// lab:end

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
}

static int walk_beneath(int root, const char *path) {
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
}

// The file a request names, opened beneath the root: an fd, or -errno.
static int open_beneath(int root, const char *path) {
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
        long fd = syscall(SYS_openat2, root, clean, &how, sizeof how);
        if (fd >= 0 || errno != ENOSYS)
            return fd >= 0 ? (int)fd : -errno;
    }
#endif // elsewhere: the walk
    return walk_beneath(root, clean);
}

// The status of a request refused with errno err.
static int status_of(int err) {
    if (err == ENOENT || err == ENOTDIR || err == ENAMETOOLONG)
        return 404;
    if (err == EACCES || err == EPERM || err == EXDEV || err == ELOOP || err == EMLINK || err == EISDIR)
        return 403;
    return 500;
}

// The cache: whole small files (one piece) by request, newest first. When
// it would pass CACHE_MAX it starts over: simple, and enough for a lab.
struct entry {
    struct entry *next;
    char *path, *bytes;
    size_t len;
};
static struct entry *cache;
static size_t cache_bytes;

static struct entry *cache_find(const char *path) {
    for (struct entry *e = cache; e != NULL; e = e->next)
        if (strcmp(e->path, path) == 0)
            return e;
    return NULL;
}

static void cache_clear(void) {
    while (cache != NULL) {
        struct entry *e = cache;
        cache = e->next;
        free(e->path);
        free(e->bytes);
        free(e);
    }
    cache_bytes = 0;
}

static void cache_put(const char *path, const char *bytes, size_t len) {
    if (cache_find(path) != NULL)
        return;
    if (cache_bytes + len > CACHE_MAX)
        cache_clear();
    struct entry *e = malloc_or_die(sizeof *e);
    e->path = strdup_or_die(path);
    e->bytes = malloc_or_die(len);
    memcpy(e->bytes, bytes, len);
    e->len = len;
    e->next = cache;
    cache = e;
    cache_bytes += len;
}

// How much the next read of client c's file asks for.
static size_t piece_size(const struct client *c) {
    return c->file_left < PIECE ? c->file_left : PIECE;
}

// A reader thread: takes the oldest read queued, does it, hands it back.
static void *reader(void *unused) {
    (void)unused;
    for (;;) {
        // lab:begin
        // lab:todo Wait (without spinning) until a read is queued and take the oldest; wait
        // lab:todo out its slow storage (until c->start_at) and read piece_size(c) bytes of
        // lab:todo c->file at c->file_off into c->piece here, outside the lock; then put it on
        // lab:todo the finished list with its result and wake the loop. Once a client is on
        // lab:todo that list, the loop may free it: touch it no more. Every list is touched
        // lab:todo under the lock only. man 3 pthread_cond_wait, man 2 pread.
        pthread_mutex_lock(&lock);
        while (queued == NULL)
            pthread_cond_wait(&work, &lock);
        struct client *c = queued;
        queued = c->next_read;
        if (queued == NULL)
            queued_end = &queued;
        pthread_mutex_unlock(&lock);
        int64_t wait = c->start_at - lab_now_ms();
        if (wait > 0)
            lab_sleep_ms((int)wait); // slow storage: this thread waits, not the loop
        ssize_t n = pread(c->file, c->piece, piece_size(c), c->file_off);
        pthread_mutex_lock(&lock);
        c->result = n;
        c->next_read = finished;
        finished = c;
        pthread_mutex_unlock(&lock);
        while (write(wake[1], "r", 1) < 0 && errno == EINTR) {
        }
        // lab:stub lab_todo("reader(), a reader thread");
        // lab:end
    }
    return NULL; // never: a reader lives as long as the server
}

static void start_readers(void) {
    // lab:begin
    // lab:todo Start READERS reader threads, detached (nobody joins them; they live as long
    // lab:todo as the server). man 3 pthread_create, man 3 pthread_detach.
    for (int i = 0; i < READERS; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, reader, NULL) != 0 || pthread_detach(thread) != 0)
            die("pthread_create");
    }
    // lab:stub (void)reader;
    // lab:end
}

// Starts reading the next piece of client c's file into c->piece.
static void start_read(struct client *c) {
    // lab:begin
    // lab:todo Hand the read of client c's next piece to the readers and return at once
    // lab:todo (c->read = SUBMITTED): queue it, oldest first, and wake one reader.
    c->read = SUBMITTED;
    c->next_read = NULL;
    pthread_mutex_lock(&lock);
    *queued_end = c;
    queued_end = &c->next_read;
    pthread_cond_signal(&work);
    pthread_mutex_unlock(&lock);
    // lab:stub lab_todo_once("start_read(), a read handed to the readers");
    // lab:stub int64_t wait = c->start_at - lab_now_ms(); // slow storage, in the loop
    // lab:stub lab_sleep_ms(wait > 0 ? (int)wait : 0);
    // lab:stub c->result = pread(c->file, c->piece, piece_size(c), c->file_off);
    // lab:stub c->read = DONE; // inline, as in stage 3: the loop waits for the disk
    // lab:end
}

// The loop was woken by a byte in the pipe: some reads finished.
static void collect_reads(void) {
    // lab:begin
    // lab:todo Empty the pipe, then take the whole finished list (under the lock) and mark
    // lab:todo each of its reads DONE, for the loop to finish. A byte may stand for several
    // lab:todo reads, and a read may finish between the two: none may be lost.
    char drained[64];
    while (read(wake[0], drained, sizeof drained) > 0) {
    }
    pthread_mutex_lock(&lock);
    struct client *done = finished;
    finished = NULL;
    pthread_mutex_unlock(&lock);
    for (; done != NULL; done = done->next_read)
        done->read = DONE;
    // lab:stub // (nothing is collected yet: no read is handed over)
    // lab:end
}

// A read is DONE: its bytes are owed to the client (and a whole small file
// goes to the cache); a failed or short read ends the connection.
static void finish_read(struct client *c) {
    c->read = IDLE;
    if (c->result <= 0) {
        c->closing = 1; // the size promised in `OK <size>` cannot be kept
    } else {
        size_t n = (size_t)c->result;
        owe(c, c->piece, n);
        if (c->file_off == 0 && n == c->file_left)
            cache_put(c->path, c->piece, n);
        c->file_off += (off_t)n;
        c->file_left -= n;
    }
    if (c->file_left == 0 || c->closing) {
        close(c->file);
        c->file = -1;
        free(c->path);
        c->path = NULL;
    }
}

// Answers one request line of len bytes: an error, or `OK <size>` and the
// file's first piece (the rest follows as the client takes it), or the bytes
// of the cache.
static void respond(struct client *c, int root, const char *line, size_t len, int delay_ms) {
    int bad = len == 0;
    for (size_t i = 0; i < len; i++)
        bad |= (unsigned char)line[i] < 0x20 || line[i] == 0x7f;
    if (bad) {
        owe_error(c, 400, "malformed request");
        c->closing = 1; // once told
        return;
    }
    struct entry *hit = cache_find(line);
    if (hit != NULL) {
        char head[32];
        owe(c, head, (size_t)snprintf(head, sizeof head, "OK %zu\n", hit->len));
        owe(c, hit->bytes, hit->len);
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
    char head[32]; // OK <size>
    owe(c, head, (size_t)snprintf(head, sizeof head, "OK %lld\n", (long long)st.st_size));
    c->file = fd;
    c->file_left = (size_t)st.st_size;
    c->file_off = 0;
    c->path = strdup_or_die(line);
    c->start_at = lab_now_ms() + delay_ms; // slow storage: its first read waits this long
}

// Moves client c on: a finished read to what it is owed; the next read while
// little is owed; the answer to its next request once its file is sent.
static void advance(struct client *c, int root, int delay_ms) {
    char line[REQUEST_MAX + 2];
    for (;;) {
        if (c->read == DONE)
            finish_read(c);
        if (c->file >= 0 && c->read == IDLE && c->out_len - c->out_sent < PIECE)
            start_read(c);
        if (c->read == DONE)
            continue; // read at once (the handout's inline stand-in)
        if (c->closing || c->file >= 0 || c->out_sent != c->out_len)
            return;
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
    free(c->path);
    free(c->piece);
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
        c->piece = malloc_or_die(PIECE);
        clients[fd] = c;
    }
}

// Serves files over the line protocol to every client at once.
static void serve_files(int listener, const struct lab_config *cfg) {
    int root = open_root_or_die(cfg->root);
    set_nonblocking(listener);
    pipe_or_die(wake);
    start_readers();
    for (;;) {
        fd_set readable, writable;
        FD_ZERO(&readable);
        FD_ZERO(&writable);
        FD_SET(listener, &readable);
        FD_SET(wake[0], &readable);
        int max = listener > wake[0] ? listener : wake[0];
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
        if (FD_ISSET(wake[0], &readable))
            collect_reads();
        for (int fd = 0; fd <= max; fd++) {
            struct client *c = clients[fd];
            if (c == NULL)
                continue;
            if (FD_ISSET(fd, &readable))
                on_readable(c);
            if (FD_ISSET(fd, &writable) || c->out_sent < c->out_len)
                on_writable(c);
            advance(c, root, cfg->read_delay_ms);
            if (c->closing && c->out_sent == c->out_len && c->read != SUBMITTED)
                drop_client(c); // never while a read may still write to its buffer
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
