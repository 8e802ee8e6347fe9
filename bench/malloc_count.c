/* malloc_count.c - LD_PRELOAD shim that counts heap allocation calls (bench/run.py --alloc-check).
 *
 *   cc -O2 -shared -fPIC -o libmalloc_count.so bench/malloc_count.c
 *   MALLOC_COUNT_FILE=/tmp/counts LD_PRELOAD=./libmalloc_count.so some-server ...
 *
 * Counts calls to malloc, calloc, realloc/reallocarray, the aligned family (memalign,
 * aligned_alloc, posix_memalign, valloc, pvalloc) and free, plus the bytes requested. The real work
 * is done by glibc's exported __libc_* entry points, so there is no dlsym() bootstrap problem.
 *
 * Reading the counts:
 *   - MALLOC_COUNT_FILE=<path>: the counters live in that file, mmap'ed MAP_SHARED (the file must
 *     exist and be >= 4096 bytes; it is not truncated, so a process that exec()s, like taskset,
 *     keeps adding to the same counters, and so do fork()ed children). Layout: little-endian
 *     uint64 [malloc, calloc, realloc, aligned, free, bytes]. Another process reads them at any
 *     time without disturbing the server: this is what bench/run.py uses.
 *   - SIGUSR2 (only if the program had not installed a handler of its own when the shim loaded)
 *     and process exit print one line to stderr.
 *
 * What it does NOT see: allocations served from CPython's pymalloc arenas (objects <= 512 bytes
 * never reach malloc), from other custom allocators, or made with mmap() directly. So "0 per
 * request" means "no malloc-family call per request", not "no Python object was created".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

enum { C_MALLOC, C_CALLOC, C_REALLOC, C_ALIGNED, C_FREE, C_BYTES, C_N };
static uint64_t local_counts[C_N];
static uint64_t *counts = local_counts;

static inline void bump(int i, uint64_t v) { __atomic_fetch_add(&counts[i], v, __ATOMIC_RELAXED); }

void *malloc(size_t n) {
    bump(C_MALLOC, 1);
    bump(C_BYTES, n);
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b) {
    bump(C_CALLOC, 1);
    bump(C_BYTES, (uint64_t)a * b);
    return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n) {
    bump(C_REALLOC, 1);
    bump(C_BYTES, n);
    return __libc_realloc(p, n);
}

void *reallocarray(void *p, size_t a, size_t b) {
    size_t n;
    if (__builtin_mul_overflow(a, b, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n);
}

void free(void *p) {
    if (p) bump(C_FREE, 1);
    __libc_free(p);
}

void *memalign(size_t align, size_t n) {
    bump(C_ALIGNED, 1);
    bump(C_BYTES, n);
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }

int posix_memalign(void **out, size_t align, size_t n) {
    if (align < sizeof(void *) || (align & (align - 1)) != 0) return EINVAL;
    void *p = memalign(align, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t n) { return memalign((size_t)sysconf(_SC_PAGESIZE), n); }

void *pvalloc(size_t n) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return memalign(page, (n + page - 1) & ~(page - 1));
}

static size_t fmt_u64(char *out, uint64_t v) {
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* async-signal-safe: only write(2) */
static void report(void) {
    static const char *names[C_N] = {"malloc=", " calloc=", " realloc=", " aligned=", " free=", " bytes="};
    char buf[256];
    size_t len = 0;
    const char *prefix = "malloc_count: pid=";
    memcpy(buf, prefix, strlen(prefix));
    len += strlen(prefix);
    len += fmt_u64(buf + len, (uint64_t)getpid());
    buf[len++] = ' ';
    for (int i = 0; i < C_N; i++) {
        size_t l = strlen(names[i]);
        memcpy(buf + len, names[i], l);
        len += l;
        len += fmt_u64(buf + len, __atomic_load_n(&counts[i], __ATOMIC_RELAXED));
    }
    buf[len++] = '\n';
    ssize_t r = write(2, buf, len);
    (void)r;
}

static void on_sigusr2(int sig) {
    (void)sig;
    report();
}

__attribute__((constructor)) static void malloc_count_init(void) {
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (path && *path) {
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd >= 0) {
            void *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (m != MAP_FAILED) counts = (uint64_t *)m;
        }
    }
    struct sigaction old;
    if (sigaction(SIGUSR2, NULL, &old) == 0 && old.sa_handler == SIG_DFL) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_sigusr2;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR2, &sa, NULL);
    }
}

__attribute__((destructor)) static void malloc_count_fini(void) {
    if (getenv("MALLOC_COUNT_QUIET") == NULL) report();
}
