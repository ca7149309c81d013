/* W3: write N new, distinct executables (a copy of SRC plus a unique
 * trailer, so no content-hash cache can answer for them) into DIR, and exec
 * each once right after it is closed: the path a freshly downloaded or
 * compiled binary takes. Prints the mean cost per file in microseconds.
 * usage: write_exec SRC DIR N */
#include "common.h"
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: write_exec SRC DIR N\n"); return 2; }
    const char *src = argv[1], *dir = argv[2];
    long n = strtol(argv[3], NULL, 10);
    int sfd = open(src, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (sfd < 0 || fstat(sfd, &sb) != 0) { perror(src); return 1; }
    char *img = malloc((size_t)sb.st_size);
    if (read(sfd, img, (size_t)sb.st_size) != sb.st_size) { perror("read"); return 1; }
    close(sfd);
    long failures = 0;
    int first_err = 0;
    char path[4096], trailer[96];
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/x%05ld", dir, i);
        int tl = snprintf(trailer, sizeof trailer, "\nonaccess-bench pid=%d t=%.9f i=%ld\n",
                          (int)getpid(), now_s(), i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
        if (fd < 0) { failures++; if (!first_err) first_err = errno; continue; }
        if (write(fd, img, (size_t)sb.st_size) != sb.st_size || write(fd, trailer, (size_t)tl) != tl) {
            failures++; if (!first_err) first_err = errno;
        }
        close(fd);
        int st = 0;
        int rc = spawn_wait(path, 0, &st);
        if (rc != 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            failures++; if (!first_err) first_err = rc ? rc : -1;
        }
    }
    double dt = now_s() - t0;
    printf("us_per_file=%.3f n=%ld total_s=%.6f failures=%ld first_errno=%d\n",
           dt * 1e6 / (double)n, n, dt, failures, first_err);
    return failures ? 1 : 0;
}
