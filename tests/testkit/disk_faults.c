/*
 * Disk faults for one kairos process, by LD_PRELOAD: its fdatasync() and
 * fsync() fail with EIO while the file named by KAIROS_TEST_FAIL_SYNC_IF
 * exists, and sleep first for the milliseconds written in the file named
 * by KAIROS_TEST_SLOW_SYNC_IF while that one exists; otherwise they are
 * the real calls. Built with the system C compiler by the test kit
 * (tests/testkit/src/preload.rs), for tests/disk_faults.rs and the
 * chaos harness (chaos/src/disk_shim.rs):
 *
 *   cc -shared -fPIC -o libdisk_faults.so disk_faults.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

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
    maybe_slow();
    if (exists("KAIROS_TEST_FAIL_SYNC_IF")) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int fsync(int fd) {
    maybe_slow();
    if (exists("KAIROS_TEST_FAIL_SYNC_IF")) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
