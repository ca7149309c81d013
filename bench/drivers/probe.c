/* Does a scanner block this file? Tries open+read and then exec, and prints
 * the errno of each (0 = allowed). An exec of a non-ELF file that is allowed
 * fails with ENOEXEC, which is still "not blocked".
 * usage: probe PATH   prints: open_errno=N exec_errno=N exec_status=N */
#include "common.h"

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: probe PATH\n"); return 2; }
    int open_err = 0;
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) open_err = errno;
    else {
        char buf[4096];
        if (read(fd, buf, sizeof buf) < 0) open_err = errno;
        close(fd);
    }
    int st = 0;
    int exec_err = spawn_wait(argv[1], 0, &st);
    int code = exec_err ? -1 : (WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    printf("open_errno=%d exec_errno=%d exec_status=%d\n", open_err, exec_err, code);
    return 0;
}
