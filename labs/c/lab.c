// lab.c: the helpers of lab.h. Nothing here is a lesson.
#include "lab.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *program = "lab";

static _Noreturn void usage(const char *why) {
    fprintf(stderr, "%s: %s\nusage: %s [--port N] [--root DIR] [--read-delay-ms N] [--service file|time]\n",
            program, why, program);
    exit(2);
}

static int number(const char *flag, const char *text) {
    char *end;
    errno = 0;
    long n = strtol(text, &end, 10);
    if (errno != 0 || *text == '\0' || *end != '\0' || n < 0 || n > 65535 * 1000L) {
        fprintf(stderr, "%s: %s wants a number, not %s\n", program, flag, text);
        exit(2);
    }
    return (int)n;
}

void lab_parse(int argc, char **argv, struct lab_config *cfg) {
    const char *slash = strrchr(argv[0], '/');
    program = slash ? slash + 1 : argv[0];
    *cfg = (struct lab_config){.port = 7070, .root = ".", .read_delay_ms = 0, .time_service = 0};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (i + 1 == argc)
            usage(strcmp(flag, "--help") == 0 ? "a file server (docs/assignment.md)" : "a flag without its value");
        const char *value = argv[++i];
        if (strcmp(flag, "--port") == 0) {
            cfg->port = number(flag, value);
            if (cfg->port > 65535)
                usage("--port is at most 65535");
        } else if (strcmp(flag, "--root") == 0) {
            cfg->root = value;
        } else if (strcmp(flag, "--read-delay-ms") == 0) {
            cfg->read_delay_ms = number(flag, value);
        } else if (strcmp(flag, "--service") == 0) {
            if (strcmp(value, "time") != 0 && strcmp(value, "file") != 0)
                usage("--service is file or time");
            cfg->time_service = strcmp(value, "time") == 0;
        } else {
            usage("unknown flag");
        }
    }
}

void lab_announce(int listener) {
    struct sockaddr_in bound;
    socklen_t len = sizeof bound;
    if (getsockname(listener, (struct sockaddr *)&bound, &len) < 0)
        die("getsockname");
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &bound.sin_addr, ip, sizeof ip);
    printf("listening on %s:%d\n", ip, ntohs(bound.sin_port));
    fflush(stdout);
}

void die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", program, what, strerror(errno));
    exit(1);
}

void lab_todo(const char *what) {
    fprintf(stderr, "%s: TODO: %s is not written yet (see the TODO in the source)\n", program, what);
    exit(3);
}

void lab_todo_once(const char *what) {
    static int told;
    if (!told)
        fprintf(stderr, "%s: TODO: %s is not written yet (see the TODO in the source)\n", program, what);
    told = 1;
}

void *malloc_or_die(size_t size) {
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        die("malloc");
    return p;
}

void *realloc_or_die(void *ptr, size_t size) {
    void *p = realloc(ptr, size ? size : 1);
    if (p == NULL)
        die("realloc");
    return p;
}

char *strdup_or_die(const char *s) {
    char *p = strdup(s);
    if (p == NULL)
        die("strdup");
    return p;
}

void pipe_or_die(int fds[2]) {
    if (pipe(fds) < 0)
        die("pipe");
    for (int i = 0; i < 2; i++)
        if (fcntl(fds[i], F_SETFL, O_NONBLOCK) < 0 || fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0)
            die("fcntl");
}

int open_root_or_die(const char *root) {
    int dir = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        fprintf(stderr, "%s: --root %s: %s\n", program, root, strerror(errno));
        exit(1);
    }
    return dir;
}

void sigaction_or_die(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) < 0)
        die("sigaction");
}

int64_t lab_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void lab_sleep_ms(int ms) {
    struct timespec left = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
    while (nanosleep(&left, &left) < 0 && errno == EINTR) {
    }
}
