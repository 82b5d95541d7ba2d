// Measures the Linux kernel itself on the workloads `shootdown bench` models, on this machine, so
// the README can put Shootdown's figures beside the kernel's where the comparison is fair.
// Build and run with perf/linux-baseline. Each figure is the median of several runs, in ns per
// 4 KiB page.
//
//   fault      first write to each page of a fresh anonymous mapping
//   munmap     unmapping a populated anonymous mapping
//   fork       fork() plus the child's first write to every page (copy-on-write)
//   softdirty  echo 4 > /proc/self/clear_refs, then write every page again
//   dontneed   madvise(MADV_DONTNEED) of a populated mapping
//   mprotect   mprotect(PROT_READ) of a populated mapping
//   thp-munmap unmapping a mapping populated with 2 MiB pages (MADV_HUGEPAGE)
//
// Then, per call, what `shootdown bench shootdown` measures: munmap and mprotect(PROT_READ) of a
// populated 16-page mapping while 0, 1 and 3 other threads of the process keep loading from
// another mapping (so their CPUs are in the mm's cpumask and the kernel sends them TLB-flush
// IPIs). Every thread is pinned: the caller to the first allowed CPU, the others round-robin.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static char *map_region(size_t pages) {
    char *region = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    return region;
}

static void touch(char *region, size_t pages, char value) {
    for (size_t i = 0; i < pages; i++) region[i * PAGE] = value;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int count) {
    qsort(values, (size_t)count, sizeof *values, compare);
    return values[count / 2];
}

static double fault(size_t pages) {
    char *region = map_region(pages);
    double start = now_ns();
    touch(region, pages, 1);
    double elapsed = now_ns() - start;
    munmap(region, pages * PAGE);
    return elapsed / (double)pages;
}

static double unmap(size_t pages) {
    char *region = map_region(pages);
    touch(region, pages, 1);
    double start = now_ns();
    munmap(region, pages * PAGE);
    return (now_ns() - start) / (double)pages;
}

static double fork_cow(size_t pages) {
    char *region = map_region(pages);
    touch(region, pages, 1);
    int pipefd[2];
    if (pipe(pipefd) != 0) exit(1);
    double start = now_ns();
    pid_t child = fork();
    if (child == 0) {
        touch(region, pages, 2);
        double end = now_ns();
        if (write(pipefd[1], &end, sizeof end) != sizeof end) _exit(1);
        _exit(0);
    }
    double end = 0;
    if (read(pipefd[0], &end, sizeof end) != sizeof end) exit(1);
    waitpid(child, NULL, 0);
    close(pipefd[0]);
    close(pipefd[1]);
    munmap(region, pages * PAGE);
    return (end - start) / (double)pages;
}

static double softdirty(size_t pages) {
    char *region = map_region(pages);
    touch(region, pages, 1);
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd < 0) return -1;
    double start = now_ns();
    if (write(fd, "4", 1) != 1) return -1;
    touch(region, pages, 2);
    double elapsed = now_ns() - start;
    close(fd);
    munmap(region, pages * PAGE);
    return elapsed / (double)pages;
}

// Time of `call` on a populated mapping of `pages` pages, per page.
static double on_populated(size_t pages, int (*call)(char *, size_t)) {
    char *region = map_region(pages);
    touch(region, pages, 1);
    double start = now_ns();
    call(region, pages * PAGE);
    double elapsed = now_ns() - start;
    munmap(region, pages * PAGE);
    return elapsed / (double)pages;
}

static int call_dontneed(char *region, size_t length) { return madvise(region, length, MADV_DONTNEED); }
static int call_protect(char *region, size_t length) { return mprotect(region, length, PROT_READ); }

static double dontneed(size_t pages) { return on_populated(pages, call_dontneed); }
static double protect(size_t pages) { return on_populated(pages, call_protect); }

static double thp_unmap(size_t pages) {
    size_t huge = 2UL << 20;
    char *raw = map_region(pages + huge / PAGE);
    char *region = (char *)(((unsigned long)raw + huge - 1) & ~(huge - 1));
    madvise(region, pages * PAGE, MADV_HUGEPAGE);
    touch(region, pages, 1);
    double start = now_ns();
    munmap(region, pages * PAGE);
    double elapsed = now_ns() - start;
    munmap(raw, pages * PAGE + huge);
    return elapsed / (double)pages;
}

// Pins the calling thread to the `index`-th allowed CPU of `allowed` (modulo their number).
static void pin(const cpu_set_t *allowed, int index) {
    int count = CPU_COUNT(allowed), wanted = index % (count > 0 ? count : 1);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, allowed) || wanted-- != 0) continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        pthread_setaffinity_np(pthread_self(), sizeof one, &one);
        return;
    }
}

struct loader {
    const cpu_set_t *allowed;
    int index;
    volatile char *region;
    size_t pages;
    int *stop;
    int *ready;
};

// A thread of the process that keeps loading from `region` until told to stop.
static void *loader_main(void *raw) {
    struct loader *l = raw;
    pin(l->allowed, l->index);
    unsigned long x = 0x5DEECE66DUL + (unsigned long)l->index;
    unsigned long sink = 0;
    __atomic_add_fetch(l->ready, 1, __ATOMIC_RELEASE);
    while (!__atomic_load_n(l->stop, __ATOMIC_RELAXED)) {
        for (int i = 0; i < 64; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sink += (unsigned long)l->region[(x % l->pages) * PAGE];
        }
    }
    return (void *)sink;
}

// Median ns per munmap and per mprotect(PROT_READ) of a populated `pages`-page mapping over
// `calls` calls, with `others` loading threads.
static void per_call(const cpu_set_t *allowed, size_t pages, int others, int calls, double *unmap_ns, double *protect_ns) {
    size_t loaded_pages = 64;
    char *loaded = map_region(loaded_pages);
    touch(loaded, loaded_pages, 1);
    int stop = 0, ready = 0;
    pthread_t threads[16];
    struct loader loaders[16];
    for (int t = 0; t < others && t < 16; t++) {
        loaders[t] = (struct loader){allowed, t + 1, loaded, loaded_pages, &stop, &ready};
        pthread_create(&threads[t], NULL, loader_main, &loaders[t]);
    }
    while (__atomic_load_n(&ready, __ATOMIC_ACQUIRE) < others) {
    }
    double *samples = malloc(sizeof *samples * (size_t)calls);
    for (int c = 0; c < calls; c++) {
        char *region = map_region(pages);
        touch(region, pages, 1);
        double start = now_ns();
        munmap(region, pages * PAGE);
        samples[c] = now_ns() - start;
    }
    *unmap_ns = median(samples, calls);
    char *region = map_region(pages);
    for (int c = 0; c < calls; c++) {
        touch(region, pages, 2);  // writable and dirty again
        double start = now_ns();
        mprotect(region, pages * PAGE, PROT_READ);
        samples[c] = now_ns() - start;
        mprotect(region, pages * PAGE, PROT_READ | PROT_WRITE);
    }
    *protect_ns = median(samples, calls);
    munmap(region, pages * PAGE);
    free(samples);
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    for (int t = 0; t < others && t < 16; t++) pthread_join(threads[t], NULL);
    munmap(loaded, loaded_pages * PAGE);
}

int main(int argc, char **argv) {
    size_t pages = argc > 1 ? strtoul(argv[1], NULL, 10) : 262144;
    int runs = argc > 2 ? atoi(argv[2]) : 5;
    struct { const char *name; double (*measure)(size_t); } workloads[] = {
        {"fault", fault}, {"munmap", unmap}, {"fork", fork_cow}, {"softdirty", softdirty},
        {"dontneed", dontneed}, {"mprotect", protect}, {"thp-munmap", thp_unmap},
    };
    printf("Linux on this machine, %zu pages, median of %d runs (ns per 4 KiB page)\n", pages, runs);
    for (size_t w = 0; w < sizeof workloads / sizeof *workloads; w++) {
        double values[64];
        for (int r = 0; r < runs && r < 64; r++) values[r] = workloads[w].measure(pages);
        printf("  %-11s %8.1f\n", workloads[w].name, median(values, runs < 64 ? runs : 64));
    }

    cpu_set_t allowed, original;
    sched_getaffinity(0, sizeof original, &original);
    allowed = original;
    pin(&allowed, 0);
    size_t call_pages = 16;
    int calls = 2000;
    printf("Per call, %zu-page mapping, other threads loading from the same process, median of %d runs (ns per call)\n",
           call_pages, runs);
    printf("  %-7s %9s %9s\n", "others", "munmap", "mprotect");
    int counts[] = {0, 1, 3};
    for (size_t k = 0; k < sizeof counts / sizeof *counts; k++) {
        double unmaps[64], protects[64];
        for (int r = 0; r < runs && r < 64; r++) per_call(&allowed, call_pages, counts[k], calls, &unmaps[r], &protects[r]);
        int n = runs < 64 ? runs : 64;
        printf("  %-7d %9.1f %9.1f\n", counts[k], median(unmaps, n), median(protects, n));
    }
    sched_setaffinity(0, sizeof original, &original);
    return 0;
}
