/* W1: warm exec of one binary N times; prints the mean cost of one
 * spawn+exec+wait in microseconds. The first exec is a warm-up, untimed, so
 * page cache and scanner verdict caches are hot.
 * usage: spawn_loop [-f] PATH N     (-f: fork+execve instead of posix_spawn) */
#include "common.h"

int main(int argc, char **argv) {
    int use_fork = 0, a = 1;
    if (argc > 1 && strcmp(argv[1], "-f") == 0) { use_fork = 1; a++; }
    if (argc - a != 2) { fprintf(stderr, "usage: spawn_loop [-f] PATH N\n"); return 2; }
    const char *path = argv[a];
    long n = strtol(argv[a + 1], NULL, 10);
    int st = 0, failures = 0, first_err = 0;
    int rc = spawn_wait(path, use_fork, &st);
    if (rc != 0) { fprintf(stderr, "spawn_loop: warm-up exec %s: %s\n", path, strerror(rc)); return 1; }
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        rc = spawn_wait(path, use_fork, &st);
        if (rc != 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            failures++;
            if (!first_err) first_err = rc ? rc : -1;
        }
    }
    double dt = now_s() - t0;
    printf("us_per_exec=%.3f n=%ld total_s=%.6f failures=%d first_errno=%d mode=%s\n",
           dt * 1e6 / (double)n, n, dt, failures, first_err, use_fork ? "fork" : "posix_spawn");
    return failures ? 1 : 0;
}
