// Out-of-line parts of CInterop. See CInterop.h for the contract of each function.
#define _GNU_SOURCE 1
#include "CInterop.h"

#include <errno.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CINTEROP_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CINTEROP_ASAN 1
#endif
#ifdef CINTEROP_ASAN
#include <sanitizer/asan_interface.h>
#endif

#ifdef CINTEROP_TSAN
char cinterop_rcu_tsan_grace_period;
#endif

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define CINTEROP_CALLGRIND 1
#endif
#endif

__thread uint32_t cinterop_thread_state;
__thread uint32_t cinterop_spin_depth;
__thread uint64_t cinterop_thread_block_offset;

// MARK: - Thread slots and automatic liburcu registration

static pthread_key_t cinterop_thread_key;
static pthread_once_t cinterop_thread_key_once = PTHREAD_ONCE_INIT;
// Bit i set: slot i is owned by a live thread. The last slot is shared and never owned.
static uint64_t cinterop_slot_bitmap;

enum { CINTEROP_REGISTERED_BY_US = 1, CINTEROP_OWNS_SLOT = 2 };

static void cinterop_thread_exit(void *value) {
    uintptr_t what = (uintptr_t)value;
    if (what & CINTEROP_REGISTERED_BY_US) {
        urcu_memb_unregister_thread();
    }
    if (what & CINTEROP_OWNS_SLOT) {
        uint32_t slot = (cinterop_thread_state >> 8) - 1u;
        // Release: every relaxed update this thread made to slot-indexed data happens before the
        // next owner's acquire in cinterop_claim_slot.
        __atomic_fetch_and(&cinterop_slot_bitmap, ~(1ull << slot), __ATOMIC_RELEASE);
    }
    cinterop_thread_state = 0;
    cinterop_thread_block_offset = 0;
}

static void cinterop_make_key(void) {
    if (pthread_key_create(&cinterop_thread_key, cinterop_thread_exit) != 0) abort();
}

static uint32_t cinterop_claim_slot(int *owned) {
    uint64_t bits = __atomic_load_n(&cinterop_slot_bitmap, __ATOMIC_RELAXED);
    for (;;) {
        uint64_t free_bits = ~bits & ((1ull << (CINTEROP_THREAD_SLOTS - 1u)) - 1ull);
        if (free_bits == 0) {
            *owned = 0;
            return CINTEROP_THREAD_SLOTS - 1u;
        }
        uint32_t slot = (uint32_t)__builtin_ctzll(free_bits);
        if (__atomic_compare_exchange_n(&cinterop_slot_bitmap, &bits, bits | (1ull << slot), 1,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            *owned = 1;
            return slot;
        }
    }
}

void cinterop_thread_attach_slow(void) {
    if (cinterop_thread_state & 1u) return;
    pthread_once(&cinterop_thread_key_once, cinterop_make_key);
    uintptr_t what = 0;
    // liburcu registers its own worker threads (call_rcu); registering twice aborts.
    if (!URCU_TLS(urcu_memb_reader).registered) {
        urcu_memb_register_thread();
        what |= CINTEROP_REGISTERED_BY_US;
    }
    int owned = 0;
    uint32_t slot = cinterop_claim_slot(&owned);
    if (owned) what |= CINTEROP_OWNS_SLOT;
    cinterop_thread_state = 1u | ((slot + 1u) << 8);
    cinterop_thread_block_offset = owned ? (uint64_t)(slot + 1u) << CINTEROP_SLOT_BLOCK_SHIFT : 0;
    // A non-NULL value makes the destructor run at thread exit.
    pthread_setspecific(cinterop_thread_key, (void *)(what | 4u));
}

// MARK: - Grace periods

void cinterop_rcu_synchronize(void) {
    cinterop_thread_attach();
    urcu_memb_synchronize_rcu();
#ifdef CINTEROP_TSAN
    __tsan_acquire(&cinterop_rcu_tsan_grace_period);
#endif
}

struct cinterop_deferred {
    struct rcu_head head;
    void (*fn)(void *);
    void *context;
};

static void cinterop_deferred_trampoline(struct rcu_head *head) {
    struct cinterop_deferred *d = caa_container_of(head, struct cinterop_deferred, head);
#ifdef CINTEROP_TSAN
    __tsan_acquire(&cinterop_rcu_tsan_grace_period);
#endif
    d->fn(d->context);
    free(d);
}

void cinterop_rcu_call(void (*fn)(void *), void *context) {
    cinterop_thread_attach();
    struct cinterop_deferred *d = malloc(sizeof *d);
    if (d == NULL) abort();
    d->fn = fn;
    d->context = context;
#ifdef CINTEROP_TSAN
    // Everything before call_rcu (this record, the context and what it retires) happens before the
    // callback, which acquires in the trampoline; liburcu's queue is invisible to TSan.
    __tsan_release(&cinterop_rcu_tsan_grace_period);
#endif
    urcu_memb_call_rcu(&d->head, cinterop_deferred_trampoline);
}

void cinterop_rcu_barrier(void) {
    cinterop_thread_attach();
    urcu_memb_barrier();
}

bool cinterop_rcu_has_sys_membarrier(void) { return urcu_memb_has_sys_membarrier != 0; }

// MARK: - Software TLB shootdown

static int cinterop_membarrier_state;  // 0: unknown, 1: available, 2: unavailable
static pthread_once_t cinterop_membarrier_once = PTHREAD_ONCE_INIT;

static void cinterop_membarrier_probe(void) {
    long commands = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    int available = commands >= 0 && (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED)
        && syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
    __atomic_store_n(&cinterop_membarrier_state, available ? 1 : 2, __ATOMIC_RELEASE);
}

bool cinterop_membarrier_expedited_available(void) {
    pthread_once(&cinterop_membarrier_once, cinterop_membarrier_probe);
    return __atomic_load_n(&cinterop_membarrier_state, __ATOMIC_ACQUIRE) == 1;
}

void cinterop_membarrier_expedited(void) {
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) abort();
}

// MARK: - Futex

void cinterop_futex_wait(uint32_t *word, uint32_t expected) {
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

void cinterop_futex_wake(uint32_t *word, int32_t count) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

// MARK: - CPU and time

void cinterop_yield(void) { sched_yield(); }

struct cinterop_thread_start_args {
    void (*fn)(void *);
    void *context;
};

static void *cinterop_thread_main(void *raw) {
    struct cinterop_thread_start_args args = *(struct cinterop_thread_start_args *)raw;
    free(raw);
    args.fn(args.context);
    return NULL;
}

bool cinterop_thread_start(void (*fn)(void *), void *context) {
    struct cinterop_thread_start_args *args = malloc(sizeof *args);
    if (args == NULL) return false;
    args->fn = fn;
    args->context = context;
    pthread_attr_t attributes;
    if (pthread_attr_init(&attributes) != 0) {
        free(args);
        return false;
    }
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int result = pthread_create(&thread, &attributes, cinterop_thread_main, args);
    pthread_attr_destroy(&attributes);
    if (result != 0) {
        free(args);
        return false;
    }
    return true;
}

bool cinterop_pin_thread(uint32_t index) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
    int count = CPU_COUNT(&allowed);
    if (count <= 1) return false;
    uint32_t wanted = index % (uint32_t)count;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (wanted-- != 0) continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
    }
    return false;
}

void cinterop_sleep_ns(uint64_t nanoseconds) {
    struct timespec ts = {.tv_sec = (time_t)(nanoseconds / 1000000000ull),
                          .tv_nsec = (long)(nanoseconds % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

uint64_t cinterop_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// MARK: - Memory

void *cinterop_map_aligned(size_t length, size_t alignment) {
    size_t span = length + alignment;
    void *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    uintptr_t base = (uintptr_t)raw;
    uintptr_t aligned = (base + alignment - 1) & ~(uintptr_t)(alignment - 1);
    if (aligned > base) munmap(raw, aligned - base);
    uintptr_t tail = aligned + length;
    uintptr_t end = base + span;
    if (end > tail) munmap((void *)tail, end - tail);
    return (void *)aligned;
}

void cinterop_unmap(void *base, size_t length) { munmap(base, length); }

bool cinterop_advise_huge_pages(void *base, size_t length) {
    return madvise(base, length, MADV_HUGEPAGE) == 0;
}

void cinterop_asan_poison(void *base, size_t length) {
#ifdef CINTEROP_ASAN
    __asan_poison_memory_region(base, length);
#else
    (void)base;
    (void)length;
#endif
}

void cinterop_asan_unpoison(void *base, size_t length) {
#ifdef CINTEROP_ASAN
    __asan_unpoison_memory_region(base, length);
#else
    (void)base;
    (void)length;
#endif
}

bool cinterop_asan_is_poisoned(void *address) {
#ifdef CINTEROP_ASAN
    return __asan_address_is_poisoned(address) != 0;
#else
    (void)address;
    return false;
#endif
}

bool cinterop_asan_enabled(void) {
#ifdef CINTEROP_ASAN
    return true;
#else
    return false;
#endif
}

// MARK: - Profiling

void cinterop_profile_region_begin(void) {
#ifdef CINTEROP_CALLGRIND
    CALLGRIND_ZERO_STATS;
#endif
}

void cinterop_profile_region_end(void) {
#ifdef CINTEROP_CALLGRIND
    CALLGRIND_DUMP_STATS_AT("measured region");
#endif
}

bool cinterop_profile_hooks_available(void) {
#ifdef CINTEROP_CALLGRIND
    return true;
#else
    return false;
#endif
}

// MARK: - Signals

static volatile sig_atomic_t cinterop_interrupt_flag;

static void cinterop_on_interrupt(int signo) {
    (void)signo;
    if (cinterop_interrupt_flag) _exit(130);  // second Ctrl-C: stop now
    cinterop_interrupt_flag = 1;
}

void cinterop_install_interrupt_handler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cinterop_on_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

bool cinterop_interrupted(void) { return cinterop_interrupt_flag != 0; }
