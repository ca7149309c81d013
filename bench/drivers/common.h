/* Small helpers shared by the bench drivers: a monotonic clock and a spawn
 * that reports exec failures as an errno (posix_spawn does, fork+exec would
 * need a pipe). Every driver prints one line of key=value pairs on stdout. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Returns 0 and the wait status in *status, or an errno when the exec failed. */
static inline int spawn_wait(const char *path, int use_fork, int *status) {
    char *argv[] = {(char *)path, NULL};
    pid_t pid;
    if (use_fork) {
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC) != 0) return errno;
        pid = fork();
        if (pid < 0) return errno;
        if (pid == 0) {
            execve(path, argv, environ);
            int e = errno;
            (void)!write(pfd[1], &e, sizeof e);
            _exit(127);
        }
        close(pfd[1]);
        int e = 0;
        ssize_t n = read(pfd[0], &e, sizeof e);
        close(pfd[0]);
        if (waitpid(pid, status, 0) < 0) return errno;
        return n == (ssize_t)sizeof e ? e : 0;
    }
    int rc = posix_spawn(&pid, path, NULL, NULL, argv, environ);
    if (rc != 0) return rc;
    if (waitpid(pid, status, 0) < 0) return errno;
    return 0;
}
#endif
