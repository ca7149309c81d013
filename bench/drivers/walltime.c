/* Wall time of one command (W2's grep -r, W4's untar), measured here rather
 * than in Python so interpreter start-up noise stays out of it.
 * usage: walltime CMD [ARGS...]   prints: wall_s=... status=... */
#include "common.h"

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: walltime CMD [ARGS...]\n"); return 2; }
    pid_t pid;
    double t0 = now_s();
    int rc = posix_spawnp(&pid, argv[1], NULL, NULL, argv + 1, environ);
    if (rc != 0) { fprintf(stderr, "walltime: %s: %s\n", argv[1], strerror(rc)); return 127; }
    int st = 0;
    waitpid(pid, &st, 0);
    double dt = now_s() - t0;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    printf("wall_s=%.6f status=%d\n", dt, code);
    return 0;
}
