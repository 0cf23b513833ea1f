/* LD_PRELOAD shim for the fault tests: makes writes or syncs of files whose path contains $FAULT_MATCH fail.
 *
 * While the file named by $FAULT_CONTROL exists, it says what to break: "<errno> <call>" where call is "write"
 * (write, pwrite, pwrite64, writev) or "fsync" (fsync, fdatasync), e.g. "5 write" for EIO. A third word "once"
 * makes the fault fire one time: the shim removes the control file when it does. Without the control file every
 * call goes straight through (one access() per call on a matching descriptor is the only cost).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int should_fail(int fd, const char *call) {
    const char *control = getenv("FAULT_CONTROL");
    const char *match = getenv("FAULT_MATCH");
    if (!control || !match || access(control, F_OK) != 0) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) return 0;
    target[n] = 0;
    if (!strstr(target, match)) return 0;
    FILE *f = fopen(control, "r");
    if (!f) return 0;
    int code = 0;
    char which[32] = "", once[32] = "";
    int got = fscanf(f, "%d %31s %31s", &code, which, once);
    fclose(f);
    if (got < 2 || strcmp(which, call) != 0) return 0;
    if (strcmp(once, "once") == 0 && unlink(control) != 0) return 0; /* another thread fired it first */
    errno = code;
    return 1;
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    if (should_fail(fd, "write")) return -1;
    return real(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    if (should_fail(fd, "write")) return -1;
    return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite64);
    if (should_fail(fd, "write")) return -1;
    return real(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(writev);
    if (should_fail(fd, "write")) return -1;
    return real(fd, iov, iovcnt);
}

int fsync(int fd) {
    REAL(fsync);
    if (should_fail(fd, "fsync")) return -1;
    return real(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    if (should_fail(fd, "fsync")) return -1;
    return real(fd);
}
