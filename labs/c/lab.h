// lab.h: what every lab program needs and none of them teaches, in the
// manner of OSTEP's io_helper.h: wrappers that die with a message a person
// can act on, the command line of docs/assignment.md, and the one line a
// server prints on stdout once it accepts connections.
#ifndef LAB_H
#define LAB_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE // glibc: POSIX and Linux interfaces under -std=c11
#endif

#include <stddef.h>
#include <stdint.h>

// The command line: --port N --root DIR --read-delay-ms N --service file|time.
struct lab_config {
    int port;          // 0: the kernel picks
    const char *root;  // files are served from beneath it
    int read_delay_ms; // simulated slow storage, per file read that misses the cache
    int time_service;  // --service time (else file)
};

// Parses argv into *cfg, or prints the usage and exits 2.
void lab_parse(int argc, char **argv, struct lab_config *cfg);

// Prints `listening on <ip>:<port>` for the bound socket fd, and flushes.
void lab_announce(int listener);

// Prints `<program>: <what>: <strerror(errno)>` on stderr and exits 1.
_Noreturn void die(const char *what);

// A handout's stand-in for code not written yet: says so and exits 3.
_Noreturn void lab_todo(const char *what);
// The same for a stand-in that still works (the stage before's way): says so, once.
void lab_todo_once(const char *what);

void *malloc_or_die(size_t size);
void *realloc_or_die(void *ptr, size_t size);
char *strdup_or_die(const char *s);
void pipe_or_die(int fds[2]); // both ends non-blocking and close-on-exec
int open_root_or_die(const char *root); // the root as a directory fd

// Installs handler for sig (with SA_RESTART), or dies.
void sigaction_or_die(int sig, void (*handler)(int));

int64_t lab_now_ms(void);   // a monotonic clock, in milliseconds
void lab_sleep_ms(int ms);  // sleeps, retrying after signals

#endif
