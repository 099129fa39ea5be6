/*
 * Disk faults for one kairos process, by LD_PRELOAD: its fdatasync() and
 * fsync() fail with EIO while the file named by KAIROS_TEST_FAIL_SYNC_IF
 * exists, and sleep first for the milliseconds written in the file named
 * by KAIROS_TEST_SLOW_SYNC_IF while that one exists; otherwise they are
 * the real calls.
 *
 * With KAIROS_TEST_WRITE_LOG and KAIROS_TEST_WRITE_LOG_UNDER set, it also
 * logs, to the first, every pwrite() to a file whose path begins with the
 * second ("W <offset> <length> <path>") and every fsync()/fdatasync() of
 * one ("S <path>"), so that after a kill -9 the harness knows which bytes
 * no sync had covered: what a power cut may lose or tear (the chaos fault
 * torn_write). A write is logged before it is made and a sync before it is
 * asked, so a write logged after the last sync of its file was never
 * covered by a sync the process relied on, and nothing a sync covered is
 * ever taken as unsynced; a write made just before a kill may go unlogged
 * (it is then left intact). Built with the system C compiler by the test kit
 * (tests/testkit/src/preload.rs), for tests/disk_faults.rs and the
 * chaos harness (chaos/src/disk_shim.rs):
 *
 *   cc -shared -fPIC -o libdisk_faults.so disk_faults.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static int write_log = -1;
static const char *tracked_under = NULL;
static pthread_once_t write_log_opened = PTHREAD_ONCE_INIT;

static void open_write_log(void) {
    const char *path = getenv("KAIROS_TEST_WRITE_LOG");
    tracked_under = getenv("KAIROS_TEST_WRITE_LOG_UNDER");
    if (path == NULL || tracked_under == NULL || tracked_under[0] == 0) return;
    write_log = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* Writes `path` of `fd` into `out` and returns 1 if its writes are logged. */
static int tracked(int fd, char *out, size_t size) {
    pthread_once(&write_log_opened, open_write_log);
    if (write_log < 0) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n <= 0) return 0;
    out[n] = 0;
    return strncmp(out, tracked_under, strlen(tracked_under)) == 0;
}

/* One line per write(2): O_APPEND keeps concurrent lines whole. */
static void log_line(const char *line, int length) {
    if (length > 0) (void)!write(write_log, line, (size_t)length);
}

static void log_write(int fd, long long offset, size_t count) {
    char path[4096], line[4200];
    if (count == 0 || !tracked(fd, path, sizeof path)) return;
    log_line(line, snprintf(line, sizeof line, "W %lld %zu %s\n", offset, count, path));
}

static void log_sync(int fd) {
    char path[4096], line[4200];
    if (!tracked(fd, path, sizeof path)) return;
    log_line(line, snprintf(line, sizeof line, "S %s\n", path));
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off_t);
    if (real == NULL) real = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    log_write(fd, (long long)offset, count);
    return real(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    static ssize_t (*real)(int, const void *, size_t, off64_t);
    if (real == NULL) real = (ssize_t (*)(int, const void *, size_t, off64_t))dlsym(RTLD_NEXT, "pwrite64");
    log_write(fd, (long long)offset, count);
    return real(fd, buf, count, offset);
}

static int exists(const char *variable) {
    const char *path = getenv(variable);
    return path != NULL && access(path, F_OK) == 0;
}

static void maybe_slow(void) {
    const char *path = getenv("KAIROS_TEST_SLOW_SYNC_IF");
    if (path == NULL) return;
    FILE *file = fopen(path, "r");
    if (file == NULL) return;
    long ms = 0;
    if (fscanf(file, "%ld", &ms) != 1) ms = 0;
    fclose(file);
    if (ms > 0) {
        struct timespec pause = { ms / 1000, (ms % 1000) * 1000000L };
        nanosleep(&pause, NULL);
    }
}

int fdatasync(int fd) {
    log_sync(fd);
    maybe_slow();
    if (exists("KAIROS_TEST_FAIL_SYNC_IF")) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int fsync(int fd) {
    log_sync(fd);
    maybe_slow();
    if (exists("KAIROS_TEST_FAIL_SYNC_IF")) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
