/* W2: open+read+close of N files laid out as DIR/dNNN/fNNNNN (the layout
 * bench/lib.py writes); prints the mean cost per file in microseconds.
 * Names are computed, not listed, so no directory walk is timed.
 * usage: read_files DIR N PER_DIR */
#include "common.h"

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: read_files DIR N PER_DIR\n"); return 2; }
    const char *dir = argv[1];
    long n = strtol(argv[2], NULL, 10), per = strtol(argv[3], NULL, 10);
    char **names = calloc((size_t)n, sizeof *names);
    for (long i = 0; i < n; i++)
        if (asprintf(&names[i], "%s/d%03ld/f%05ld", dir, i / per, i) < 0) return 1;
    static char buf[65536];
    long errors = 0, bytes = 0;
    int first_err = 0;
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        int fd = open(names[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) { errors++; if (!first_err) first_err = errno; continue; }
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0) bytes += r;
        if (r < 0) { errors++; if (!first_err) first_err = errno; }
        close(fd);
    }
    double dt = now_s() - t0;
    printf("us_per_file=%.3f n=%ld bytes=%ld total_s=%.6f errors=%ld first_errno=%d\n",
           dt * 1e6 / (double)n, n, bytes, dt, errors, first_err);
    return errors ? 1 : 0;
}
