/*
 * Clock faults for one kairos process, by LD_PRELOAD: its wall clock reads
 * the real time plus the offset, in milliseconds (negative: behind), written
 * in the file named by KAIROS_TEST_CLOCK_OFFSET_FILE; no offset while that
 * file is missing or empty. The file is re-read at most every 20 ms, so a
 * new offset applies within 20 ms. Write it by rename, not in place: a
 * reader must never see it half written.
 *
 * Only the wall clock moves (clock_gettime of CLOCK_REALTIME and
 * CLOCK_REALTIME_COARSE, gettimeofday, time): that is what a skewed host,
 * an NTP step or an operator's `date -s` changes. The monotonic clocks, by
 * which the process measures timeouts and sleeps, keep the real time. A
 * fast or slow clock is an offset that the test moves a little at a time.
 * Built with the system C compiler by the test kit
 * (tests/testkit/src/preload.rs) for the chaos harness's clock faults:
 *
 *   cc -shared -fPIC -o libclock_faults.so clock_faults.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RECHECK_NS 20000000LL

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static _Atomic(clock_gettime_fn) real_clock_gettime_ptr;
static _Atomic long long offset_ns;
static _Atomic long long next_check_ns;

static int real_clock_gettime(clockid_t clock, struct timespec *ts) {
    clock_gettime_fn real = atomic_load(&real_clock_gettime_ptr);
    if (real == NULL) {
        real = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
        atomic_store(&real_clock_gettime_ptr, real);
    }
    return real(clock, ts);
}

/* Reads the offset file: its offset in ns, 0 when missing, empty or bad. */
static long long read_offset_ns(void) {
    const char *path = getenv("KAIROS_TEST_CLOCK_OFFSET_FILE");
    if (path == NULL) return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char text[32];
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = '\0';
    char *end = NULL;
    long long ms = strtoll(text, &end, 10);
    if (end == text) return 0;
    return ms * 1000000LL;
}

/* The current offset; one caller re-reads the file when it is due. */
static long long current_offset_ns(void) {
    struct timespec now;
    if (real_clock_gettime(CLOCK_MONOTONIC, &now) != 0) return atomic_load(&offset_ns);
    long long now_ns = now.tv_sec * 1000000000LL + now.tv_nsec;
    long long due = atomic_load(&next_check_ns);
    if (now_ns >= due && atomic_compare_exchange_strong(&next_check_ns, &due, now_ns + RECHECK_NS)) {
        atomic_store(&offset_ns, read_offset_ns());
    }
    return atomic_load(&offset_ns);
}

static void shift(struct timespec *ts, long long by_ns) {
    long long ns = ts->tv_nsec + by_ns % 1000000000LL;
    long long sec = ts->tv_sec + by_ns / 1000000000LL;
    if (ns < 0) { ns += 1000000000LL; sec -= 1; }
    if (ns >= 1000000000LL) { ns -= 1000000000LL; sec += 1; }
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)ns;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    int result = real_clock_gettime(clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        shift(ts, current_offset_ns());
    }
    return result;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int result = clock_gettime(CLOCK_REALTIME, &ts);
    if (result == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return result;
}

time_t time(time_t *out) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (time_t)-1;
    if (out != NULL) *out = ts.tv_sec;
    return ts.tv_sec;
}
