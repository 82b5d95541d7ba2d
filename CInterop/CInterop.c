// Out-of-line parts of CInterop. See CInterop.h for the contract of each function.
#define _GNU_SOURCE 1
#include "CInterop.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/auxv.h>
#include <sys/wait.h>
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
__thread uint32_t cinterop_callback_depth;
__thread uintptr_t cinterop_held_mmap_locks[CINTEROP_HELD_MMAP_LOCKS];
__thread uint32_t cinterop_held_mmap_lock_count;
__thread uint32_t cinterop_held_mmap_lock_floor;
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

// MARK: - Kernel oracle: the child
//
// Everything the child runs after its setup uses raw syscalls and static buffers only: no malloc
// (the harness may move the program break or unmap heap pages), no stdio, no locks. The child is
// single-threaded, so forking it with a raw fork (no atfork handlers) is sound.

enum {
    CINTEROP_ORACLE_MAX_PAYLOAD = 1 << 20,
    CINTEROP_ORACLE_MAX_LOADS = CINTEROP_ORACLE_MAX_PAYLOAD / (int)sizeof(cinterop_oracle_load_record),
    /// mincore vector capacity (bytes = pages); a guard page follows it, so a longer vector faults
    /// (EFAULT) instead of overwriting the child.
    CINTEROP_ORACLE_VECTOR_BYTES = 1 << 20,
    /// Mappings below the stack that lie within this distance of each other form the top cluster
    /// (loader, libraries, vdso, early anonymous memory) whose gaps the child fills.
    CINTEROP_ORACLE_CLUSTER_GAP = 1 << 30,
};

/// Where the mincore vector is mapped: 16 TiB, below the executable and far from the window (the
/// harness sees it as one of the child's initial mappings).
#define CINTEROP_ORACLE_VECTOR_ADDRESS ((uintptr_t)0x100000000000ull)

static sigjmp_buf cinterop_oracle_jump;
static volatile sig_atomic_t cinterop_oracle_touching;
static unsigned char cinterop_oracle_payload[CINTEROP_ORACLE_MAX_PAYLOAD];
static cinterop_oracle_load_record cinterop_oracle_records[CINTEROP_ORACLE_MAX_LOADS];
static char cinterop_oracle_text[1 << 20];
static char cinterop_oracle_altstack[64 << 10];
static unsigned char *cinterop_oracle_vector;
static uint64_t cinterop_oracle_guard_low;

static void cinterop_oracle_on_fault(int signo) {
    if (cinterop_oracle_touching) siglongjmp(cinterop_oracle_jump, signo);
    // A fault outside a touch is a bug in the child: die of it (the access repeats with the
    // default action restored).
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(signo, &sa, NULL);
}

/// Loads (or stores, if `store`) 8 bytes at `address`; returns 0 or the signal that stopped it.
static int cinterop_oracle_touch(uint64_t address, bool store, uint64_t *value) {
    int signo = sigsetjmp(cinterop_oracle_jump, 1);
    if (signo != 0) {
        cinterop_oracle_touching = 0;
        return signo;
    }
    cinterop_oracle_touching = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (store) {
        *(volatile uint64_t *)(uintptr_t)address = *value;
    } else {
        *value = *(volatile uint64_t *)(uintptr_t)address;
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    cinterop_oracle_touching = 0;
    return 0;
}

static bool cinterop_oracle_read_exactly(int fd, void *buffer, size_t length) {
    unsigned char *cursor = buffer;
    while (length > 0) {
        ssize_t got = read(fd, cursor, length);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        cursor += got;
        length -= (size_t)got;
    }
    return true;
}

static bool cinterop_oracle_write_exactly(int fd, const void *buffer, size_t length) {
    const unsigned char *cursor = buffer;
    while (length > 0) {
        ssize_t put = write(fd, cursor, length);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) return false;
        cursor += put;
        length -= (size_t)put;
    }
    return true;
}

static bool cinterop_oracle_send(int fd, int64_t result, uint64_t value, uint32_t status, const void *payload,
                                 uint32_t length) {
    cinterop_oracle_reply reply = {.result = result, .value = value, .status = status, .payload_length = length};
    return cinterop_oracle_write_exactly(fd, &reply, sizeof reply) &&
           (length == 0 || cinterop_oracle_write_exactly(fd, payload, length));
}

/// Whether `number` is a memory syscall the child runs on request.
static bool cinterop_oracle_allowed(uint64_t number) {
    switch (number) {
    case SYS_mmap: case SYS_munmap: case SYS_mprotect: case SYS_mremap: case SYS_madvise:
    case SYS_mlock: case SYS_munlock: case SYS_mlockall: case SYS_munlockall: case SYS_brk:
    case SYS_msync: case SYS_mincore:
    case 325: /* mlock2 */
    case 462: /* mseal */
        return true;
    default:
        return false;
    }
}

static int64_t cinterop_oracle_raw_syscall(const uint64_t *a) {
    long result = syscall((long)a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
    return result == -1 ? -(int64_t)errno : (int64_t)result;
}

/// Serves requests on `channel` until EOF or EXIT; never returns.
static void __attribute__((noreturn)) cinterop_oracle_serve(int channel) {
    for (;;) {
        cinterop_oracle_request request;
        if (!cinterop_oracle_read_exactly(channel, &request, sizeof request)) _exit(0);
        uint32_t length = request.payload_length;
        if (length > CINTEROP_ORACLE_MAX_PAYLOAD) {
            // Cannot resynchronise the stream: give up (the harness sees EOF).
            _exit(3);
        }
        if (length > 0 && !cinterop_oracle_read_exactly(channel, cinterop_oracle_payload, length)) _exit(0);
        const uint64_t *a = request.arguments;
        bool sent = true;
        switch (request.command) {
        case CINTEROP_ORACLE_HELLO:
            sent = cinterop_oracle_send(channel, (int64_t)getpid(), cinterop_oracle_guard_low, CINTEROP_ORACLE_OK,
                                        NULL, 0);
            break;
        case CINTEROP_ORACLE_SYSCALL: {
            if (!cinterop_oracle_allowed(a[0]) || (a[0] == SYS_mmap && (int32_t)a[5] != -1)) {
                sent = cinterop_oracle_send(channel, 0, 0, CINTEROP_ORACLE_REFUSED, NULL, 0);
                break;
            }
            if (a[0] == SYS_mincore && a[6] == 1) {
                uint64_t arguments[7] = {a[0], a[1], a[2], (uint64_t)(uintptr_t)cinterop_oracle_vector, 0, 0, 0};
                int64_t result = cinterop_oracle_raw_syscall(arguments);
                uint64_t pages = 0;
                if (result == 0) {
                    uint64_t span = a[2] + (a[1] & 4095u);
                    pages = span / 4096u + (span % 4096u != 0);
                    if (pages > CINTEROP_ORACLE_VECTOR_BYTES) pages = CINTEROP_ORACLE_VECTOR_BYTES;
                }
                sent = cinterop_oracle_send(channel, result, pages, CINTEROP_ORACLE_OK, cinterop_oracle_vector,
                                            (uint32_t)(pages < CINTEROP_ORACLE_MAX_PAYLOAD ? pages : 0));
                break;
            }
            int64_t result = cinterop_oracle_raw_syscall(a);
            sent = cinterop_oracle_send(channel, result, 0, CINTEROP_ORACLE_OK, NULL, 0);
            break;
        }
        case CINTEROP_ORACLE_LOAD:
        case CINTEROP_ORACLE_STORE: {
            uint64_t value = a[1];
            int signo = cinterop_oracle_touch(a[0], request.command == CINTEROP_ORACLE_STORE, &value);
            sent = signo == 0 ? cinterop_oracle_send(channel, 0, value, CINTEROP_ORACLE_OK, NULL, 0)
                              : cinterop_oracle_send(channel, signo, 0, CINTEROP_ORACLE_FAULTED, NULL, 0);
            break;
        }
        case CINTEROP_ORACLE_LOAD_MANY: {
            uint32_t count = length / 8u;
            if (count > (uint32_t)CINTEROP_ORACLE_MAX_LOADS) count = 0;
            const uint64_t *addresses = (const uint64_t *)(void *)cinterop_oracle_payload;
            for (uint32_t i = 0; i < count; i++) {
                uint64_t value = 0;
                int signo = cinterop_oracle_touch(addresses[i], false, &value);
                cinterop_oracle_records[i].value = signo == 0 ? value : 0;
                cinterop_oracle_records[i].signal = (uint64_t)signo;
            }
            sent = cinterop_oracle_send(channel, count, 0, CINTEROP_ORACLE_OK, cinterop_oracle_records,
                                        count * (uint32_t)sizeof(cinterop_oracle_load_record));
            break;
        }
        case CINTEROP_ORACLE_FORK: {
            int pair[2];
            if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) {
                sent = cinterop_oracle_send(channel, -(int64_t)errno, 0, CINTEROP_ORACLE_OK, NULL, 0);
                break;
            }
            pid_t parent = getpid();
            // Raw fork: no atfork handlers (they may allocate), same address-space copy as fork(2).
            long pid = syscall(SYS_fork);
            if (pid == 0) {
                close(channel);
                close(pair[0]);
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != parent) _exit(0);
                cinterop_oracle_serve(pair[1]);
            }
            close(pair[1]);
            if (pid < 0) {
                int error = errno;
                close(pair[0]);
                sent = cinterop_oracle_send(channel, -(int64_t)error, 0, CINTEROP_ORACLE_OK, NULL, 0);
                break;
            }
            cinterop_oracle_reply reply = {.result = pid, .value = 0, .status = CINTEROP_ORACLE_OK, .payload_length = 0};
            struct iovec vector = {.iov_base = &reply, .iov_len = sizeof reply};
            union {
                struct cmsghdr header;
                char bytes[CMSG_SPACE(sizeof(int))];
            } control;
            memset(&control, 0, sizeof control);
            struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1, .msg_control = control.bytes,
                                     .msg_controllen = sizeof control.bytes};
            struct cmsghdr *cmsg = CMSG_FIRSTHDR(&message);
            cmsg->cmsg_level = SOL_SOCKET;
            cmsg->cmsg_type = SCM_RIGHTS;
            cmsg->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cmsg), &pair[0], sizeof(int));
            ssize_t put;
            do {
                put = sendmsg(channel, &message, MSG_NOSIGNAL);
            } while (put < 0 && errno == EINTR);
            close(pair[0]);
            sent = put == (ssize_t)sizeof reply;
            break;
        }
        case CINTEROP_ORACLE_EXIT:
            cinterop_oracle_send(channel, 0, 0, CINTEROP_ORACLE_OK, NULL, 0);
            _exit(0);
        default:
            sent = cinterop_oracle_send(channel, 0, 0, CINTEROP_ORACLE_REFUSED, NULL, 0);
            break;
        }
        if (!sent) _exit(0);
    }
}

static uint64_t cinterop_oracle_parse_hex(const char **cursor) {
    uint64_t value = 0;
    for (;; (*cursor)++) {
        char c = **cursor;
        if (c >= '0' && c <= '9') value = value * 16 + (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f') value = value * 16 + (uint64_t)(c - 'a' + 10);
        else return value;
    }
}

static uint64_t cinterop_oracle_parse_decimal(const char **cursor) {
    uint64_t value = 0;
    while (**cursor >= '0' && **cursor <= '9') value = value * 10 + (uint64_t)(*(*cursor)++ - '0');
    return value;
}

/// Reads /proc/self/maps into `starts`/`ends` (address order); returns the count, or -1.
static int cinterop_oracle_self_maps(uint64_t *starts, uint64_t *ends, int capacity) {
    int64_t length = cinterop_read_file("/proc/self/maps", cinterop_oracle_text, sizeof cinterop_oracle_text - 1);
    if (length < 0) return -1;
    cinterop_oracle_text[length] = 0;
    int count = 0;
    const char *cursor = cinterop_oracle_text;
    while (*cursor && count < capacity) {
        starts[count] = cinterop_oracle_parse_hex(&cursor);
        if (*cursor == '-') cursor++;
        ends[count] = cinterop_oracle_parse_hex(&cursor);
        count++;
        while (*cursor && *cursor != '\n') cursor++;
        if (*cursor == '\n') cursor++;
    }
    return count;
}

static bool cinterop_oracle_fill(uint64_t start, uint64_t end) {
    if (end <= start) return true;
    void *placed = mmap((void *)(uintptr_t)start, end - start, PROT_NONE,
                        MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    return placed == (void *)(uintptr_t)start;
}

/// Unmaps every file mapping except the executable's, the C library's and the dynamic loader's:
/// the child never calls into the Swift runtime or the other libraries again, and a process with
/// fewer mappings makes `/proc/PID/smaps`, which the harness reads after every operation, several
/// times cheaper. Anonymous mappings stay (one of them holds the thread's TLS block). Needs every
/// symbol bound already (the spawner sets LD_BIND_NOW): lazy binding would search the unmapped
/// libraries' symbol tables.
static bool cinterop_oracle_shed_libraries(void) {
    int64_t length = cinterop_read_file("/proc/self/maps", cinterop_oracle_text, sizeof cinterop_oracle_text - 1);
    if (length < 0) return false;
    cinterop_oracle_text[length] = 0;
    uint64_t keep[3] = {(uint64_t)(uintptr_t)&cinterop_oracle_serve, (uint64_t)(uintptr_t)&syscall,
                        (uint64_t)getauxval(AT_BASE)};
    // First pass: the inode of each mapping to keep (a library is identified by its device and inode).
    char kept[3][32] = {{0}};
    for (int pass = 0; pass < 2; pass++) {
        const char *cursor = cinterop_oracle_text;
        while (*cursor) {
            const char *line = cursor;
            uint64_t start = cinterop_oracle_parse_hex(&cursor);
            if (*cursor == '-') cursor++;
            uint64_t end = cinterop_oracle_parse_hex(&cursor);
            // Skip "perms offset", then take "dev inode" as the identity.
            int spaces = 0;
            while (*cursor && *cursor != '\n' && spaces < 3) {
                if (*cursor == ' ') spaces++;
                cursor++;
            }
            char identity[32] = {0};
            int used = 0;
            while (*cursor && *cursor != '\n' && *cursor != ' ' && used < 14) identity[used++] = *cursor++;
            if (*cursor == ' ') identity[used++] = *cursor++;
            while (*cursor && *cursor != '\n' && *cursor != ' ' && used < 31) identity[used++] = *cursor++;
            while (*cursor && *cursor != '\n') cursor++;
            if (*cursor == '\n') cursor++;
            bool file = strcmp(identity + (used > 1 ? used - 2 : 0), " 0") != 0 && used > 2;
            if (pass == 0) {
                for (int i = 0; i < 3; i++) {
                    if (keep[i] >= start && keep[i] < end && file) memcpy(kept[i], identity, sizeof identity);
                }
            } else if (file && strcmp(identity, kept[0]) != 0 && strcmp(identity, kept[1]) != 0 &&
                       strcmp(identity, kept[2]) != 0) {
                (void)line;
                if (munmap((void *)(uintptr_t)start, end - start) != 0) return false;
            }
        }
        if (pass == 0 && (kept[0][0] == 0 || kept[1][0] == 0 || kept[2][0] == 0)) return false;
    }
    return true;
}

/// Fills every gap of the top cluster (the mappings below the stack, down to the first gap of
/// `CINTEROP_ORACLE_CLUSTER_GAP`) and of the area up to the kernel's mmap base with shared
/// PROT_NONE mappings, then places one more filler page directly below the cluster. Afterwards
/// the kernel's top-down search for a new mapping starts at that page's bottom, and no private
/// mapping placed there can merge with a pre-existing one. Returns false on failure.
static bool cinterop_oracle_layout(uint64_t stack_pointer) {
    static uint64_t starts[8192], ends[8192];
    int count = cinterop_oracle_self_maps(starts, ends, 8192);
    if (count <= 0) return false;
    int stack = -1;
    for (int i = 0; i < count; i++) {
        if (starts[i] <= stack_pointer && stack_pointer < ends[i]) stack = i;
    }
    if (stack <= 0) return false;
    // The cluster: from the mapping below the stack downwards, while gaps stay small.
    int lowest = stack - 1;
    while (lowest > 0 && starts[lowest] - ends[lowest - 1] < CINTEROP_ORACLE_CLUSTER_GAP) lowest--;
    uint64_t low = starts[lowest];
    for (int i = lowest; i < stack - 1; i++) {
        if (!cinterop_oracle_fill(ends[i], starts[i + 1])) return false;
    }
    // Above the cluster's top, up to the mmap base: probe with one-page mappings, which the kernel
    // places at the highest free page below its mmap base, until one lands below the cluster.
    for (int probes = 0; probes < 4096; probes++) {
        void *page = mmap(NULL, 4096, PROT_NONE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED) return false;
        uint64_t address = (uint64_t)(uintptr_t)page;
        if (address == low - 4096) {
            cinterop_oracle_guard_low = address;
            return true;
        }
        if (address < low) return false;  // a gap the cluster scan missed below it: give up
        // A gap above the page: fill down to the next mapping below it in one go.
        int below = cinterop_oracle_self_maps(starts, ends, 8192);
        if (below <= 0) return false;
        uint64_t floor = low;
        for (int i = 0; i < below; i++) {
            if (ends[i] <= address && ends[i] > floor) floor = ends[i];
        }
        if (!cinterop_oracle_fill(floor, address)) return false;
    }
    return false;
}

/// Pins the calling process to one CPU: the `index`th (modulo their count) of those it may run on,
/// or the one it runs on now when `index` is negative. Pages a process faults in wait in a per-CPU
/// batch before they reach the LRU lists, and `MADV_PAGEOUT`/`MADV_COLD` drain only the batch of
/// the CPU they run on and skip pages still in another CPU's: on one CPU every page an operation
/// touched is on the lists when the next operation runs (measured), so reclaim by madvise does not
/// depend on where the scheduler put the child. Forked processes inherit the pinning.
static bool cinterop_oracle_pin(int64_t index) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
    int count = CPU_COUNT(&allowed);
    if (count == 0) return false;
    int chosen = -1;
    if (index < 0) {
        chosen = sched_getcpu();
    } else {
        int64_t wanted = index % count;
        for (int cpu = 0; cpu < CPU_SETSIZE && chosen < 0; cpu++) {
            if (CPU_ISSET(cpu, &allowed) && wanted-- == 0) chosen = cpu;
        }
    }
    if (chosen < 0 || !CPU_ISSET(chosen, &allowed)) return false;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(chosen, &one);
    return sched_setaffinity(0, sizeof one, &one) == 0;
}

/// Runs in every process that links CInterop, before `main`: does nothing unless this process
/// was spawned as an oracle child. Environment: `fd:parent_pid:uid:gid:drop:no_thp:cpu+1`.
__attribute__((constructor)) static void cinterop_oracle_child_entry(void) {
    const char *setting = getenv(CINTEROP_ORACLE_ENVIRONMENT);
    if (setting == NULL) return;
    const char *cursor = setting;
    uint64_t fields[7] = {0};
    for (int i = 0; i < 7; i++) {
        fields[i] = cinterop_oracle_parse_decimal(&cursor);
        if (*cursor == ':') cursor++;
    }
    int channel = (int)fields[0];
    if (fields[4]) {
        gid_t gid = (gid_t)fields[3];
        if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 ||
            setresuid((uid_t)fields[2], (uid_t)fields[2], (uid_t)fields[2]) != 0) {
            _exit(4);
        }
    }
    // Credential changes clear the parent-death signal: set it afterwards.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if ((uint64_t)getppid() != fields[1]) _exit(0);
    prctl(PR_SET_DUMPABLE, 1);
    if (fields[5]) prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    if (!cinterop_oracle_pin(fields[6] == 0 ? -1 : (int64_t)fields[6] - 1)) _exit(8);

    // Every signal to its default action first: handlers the runtime installed point into
    // libraries about to be unmapped.
    for (int signo = 1; signo < 65; signo++) {
        struct sigaction reset;
        memset(&reset, 0, sizeof reset);
        reset.sa_handler = SIG_DFL;
        sigaction(signo, &reset, NULL);
    }
    if (!cinterop_oracle_shed_libraries()) _exit(7);

    stack_t alternate = {.ss_sp = cinterop_oracle_altstack, .ss_size = sizeof cinterop_oracle_altstack};
    sigaltstack(&alternate, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cinterop_oracle_on_fault;
    sa.sa_flags = SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGCHLD, &sa, NULL);  // forked processes are reaped automatically
    sigaction(SIGPIPE, &sa, NULL);

    // The mincore vector lives far below everything else: mincore checks the whole vector
    // against TASK_SIZE before it starts, and from here a vector for any valid range passes,
    // wherever the harness's window is. A guard page turns an overlong write into EFAULT.
    void *vector = mmap((void *)CINTEROP_ORACLE_VECTOR_ADDRESS, CINTEROP_ORACLE_VECTOR_BYTES + 4096,
                        PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (vector != (void *)CINTEROP_ORACLE_VECTOR_ADDRESS) _exit(5);
    if (mprotect((char *)vector + CINTEROP_ORACLE_VECTOR_BYTES, 4096, PROT_NONE) != 0) _exit(5);
    cinterop_oracle_vector = vector;

    uint64_t marker = 0;
    if (!cinterop_oracle_layout((uint64_t)(uintptr_t)&marker)) _exit(6);
    cinterop_oracle_serve(channel);
}

// MARK: - Kernel oracle: the parent side

int32_t cinterop_oracle_spawn(const cinterop_oracle_options *options, int32_t *pid, int32_t *channel) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return errno;
    // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
    char setting[160];
    snprintf(setting, sizeof setting, "%s=%d:%d:%u:%u:%d:%d:%lld", CINTEROP_ORACLE_ENVIRONMENT, pair[1],
             (int)getpid(), options->uid, options->gid, options->drop_privileges ? 1 : 0,
             options->disable_transparent_huge_pages ? 1 : 0, options->cpu < 0 ? 0LL : (long long)options->cpu + 1);
    // A fixed, minimal environment: the child's layout must not depend on the caller's.
    char library_path[4096];
    const char *inherited = getenv("LD_LIBRARY_PATH");
    // LD_BIND_NOW: the child unmaps most libraries, so nothing may be bound lazily afterwards.
    char bind_now[] = "LD_BIND_NOW=1";
    char *environment[4] = {setting, bind_now, NULL, NULL};
    if (inherited != NULL && strlen(inherited) + 17 < sizeof library_path) {
        snprintf(library_path, sizeof library_path, "LD_LIBRARY_PATH=%s", inherited);
        environment[2] = library_path;
    }
    char *arguments[] = {"shootdown-kernel-oracle", NULL};
    struct rlimit stack_limit;
    if (getrlimit(RLIMIT_STACK, &stack_limit) != 0) return errno;
    stack_limit.rlim_cur = options->stack_limit;
    if (stack_limit.rlim_max != RLIM_INFINITY && stack_limit.rlim_max < stack_limit.rlim_cur) {
        close(pair[0]);
        close(pair[1]);
        return EPERM;
    }
    pid_t child = fork();
    if (child < 0) {
        int error = errno;
        close(pair[0]);
        close(pair[1]);
        return error;
    }
    if (child == 0) {
        if (fcntl(pair[1], F_SETFD, 0) != 0) _exit(126);
        int persona = (int)syscall(SYS_personality, 0xffffffffUL);
        if (persona == -1 || syscall(SYS_personality, (unsigned long)(persona | ADDR_NO_RANDOMIZE)) == -1) _exit(126);
        if (setrlimit(RLIMIT_STACK, &stack_limit) != 0) _exit(126);
        execve("/proc/self/exe", arguments, environment);
        _exit(127);
    }
    close(pair[1]);
    *pid = child;
    *channel = pair[0];
    return 0;
}

int32_t cinterop_oracle_exchange(int32_t channel, const cinterop_oracle_request *request, const void *payload,
                                 cinterop_oracle_reply *reply, void *buffer, size_t capacity, int32_t *received_fd) {
    *received_fd = -1;
    struct iovec parts[2] = {{.iov_base = (void *)request, .iov_len = sizeof *request},
                             {.iov_base = (void *)payload, .iov_len = request->payload_length}};
    struct msghdr out = {.msg_iov = parts, .msg_iovlen = request->payload_length > 0 ? 2 : 1};
    size_t total = sizeof *request + request->payload_length;
    size_t sent = 0;
    while (sent < total) {
        ssize_t put = sendmsg(channel, &out, MSG_NOSIGNAL);
        if (put < 0 && errno == EINTR) continue;
        if (put < 0) return errno;
        sent += (size_t)put;
        // Advance the iovecs past what was sent.
        size_t skip = (size_t)put;
        while (skip > 0 && out.msg_iovlen > 0) {
            if (skip >= out.msg_iov[0].iov_len) {
                skip -= out.msg_iov[0].iov_len;
                out.msg_iov++;
                out.msg_iovlen--;
            } else {
                out.msg_iov[0].iov_base = (char *)out.msg_iov[0].iov_base + skip;
                out.msg_iov[0].iov_len -= skip;
                skip = 0;
            }
        }
    }
    // The reply header may carry a descriptor: receive it with recvmsg.
    union {
        struct cmsghdr header;
        char bytes[CMSG_SPACE(sizeof(int))];
    } control;
    size_t got = 0;
    while (got < sizeof *reply) {
        struct iovec part = {.iov_base = (char *)reply + got, .iov_len = sizeof *reply - got};
        struct msghdr in = {.msg_iov = &part, .msg_iovlen = 1, .msg_control = control.bytes,
                            .msg_controllen = sizeof control.bytes};
        ssize_t n = recvmsg(channel, &in, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno;
        if (n == 0) return ECONNRESET;
        for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&in); cmsg != NULL; cmsg = CMSG_NXTHDR(&in, cmsg)) {
            if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
                memcpy(received_fd, CMSG_DATA(cmsg), sizeof(int));
            }
        }
        got += (size_t)n;
    }
    if (reply->payload_length > capacity) return EMSGSIZE;
    if (reply->payload_length > 0 && !cinterop_oracle_read_exactly(channel, buffer, reply->payload_length)) {
        return ECONNRESET;
    }
    return 0;
}

void cinterop_oracle_close(int32_t channel) { close(channel); }

int32_t cinterop_oracle_reap(int32_t pid, bool kill_first) {
    if (kill_first) kill(pid, SIGKILL);
    int status = 0;
    for (;;) {
        pid_t done = waitpid(pid, &status, 0);
        if (done == pid) return status;
        if (done < 0 && errno == EINTR) continue;
        return -errno;
    }
}

static int cinterop_open_read_only(const char *path) {
    int fd;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/// Reads into `buffer` until it is full or the file ends: from the file position when `offset`
/// is negative, else from `offset` (pread). Returns the byte count or -errno (EINTR retried).
static int64_t cinterop_fill(int fd, void *buffer, size_t length, int64_t offset) {
    size_t total = 0;
    while (total < length) {
        ssize_t got = offset < 0 ? read(fd, (char *)buffer + total, length - total)
                                 : pread(fd, (char *)buffer + total, length - total, (off_t)(offset + (int64_t)total));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return -(int64_t)errno;
        if (got == 0) break;
        total += (size_t)got;
    }
    return (int64_t)total;
}

int64_t cinterop_read_file(const char *path, void *buffer, size_t capacity) {
    int fd = cinterop_open_read_only(path);
    if (fd < 0) return -(int64_t)errno;
    int64_t total = cinterop_fill(fd, buffer, capacity, -1);
    if (total == (int64_t)capacity) {
        // Full: EOF now means it fit exactly; anything more means it did not.
        char probe;
        ssize_t more;
        do {
            more = read(fd, &probe, 1);
        } while (more < 0 && errno == EINTR);
        if (more != 0) total = -(int64_t)EFBIG;
    }
    close(fd);
    return total;
}

int64_t cinterop_read_file_at(const char *path, uint64_t offset, void *buffer, size_t length) {
    if (offset > (uint64_t)INT64_MAX) return -(int64_t)EINVAL;  // pread's offset is signed
    int fd = cinterop_open_read_only(path);
    if (fd < 0) return -(int64_t)errno;
    int64_t total = cinterop_fill(fd, buffer, length, (int64_t)offset);
    close(fd);
    return total;
}

static bool cinterop_prefix(const char *line, const char *end, const char *prefix) {
    size_t length = strlen(prefix);
    return (size_t)(end - line) >= length && memcmp(line, prefix, length) == 0;
}

static uint64_t cinterop_decimal_field(const char *cursor, const char *end) {
    while (cursor < end && *cursor == ' ') cursor++;
    uint64_t value = 0;
    while (cursor < end && *cursor >= '0' && *cursor <= '9') value = value * 10 + (uint64_t)(*cursor++ - '0');
    return value;
}

int64_t cinterop_smaps_scan(const char *text, size_t length, cinterop_smaps_record *records, size_t capacity,
                            size_t *error_offset) {
    const char *cursor = text;
    const char *limit = text + length;
    int64_t count = 0;
    cinterop_smaps_record *current = NULL;
    while (cursor < limit) {
        const char *line_end = memchr(cursor, '\n', (size_t)(limit - cursor));
        if (line_end == NULL) line_end = limit;
        char first = *cursor;
        if ((first >= '0' && first <= '9') || (first >= 'a' && first <= 'f')) {
            // start-end perms offset dev inode [name]
            const char *p = cursor;
            uint64_t start = cinterop_oracle_parse_hex(&p);
            if (p >= line_end || *p != '-') goto malformed;
            p++;
            uint64_t end = cinterop_oracle_parse_hex(&p);
            if (p >= line_end || *p != ' ') goto malformed;
            p++;
            const char *permissions = p;
            if (line_end - permissions < 4) goto malformed;
            p += 4;
            for (int field = 0; field < 3; field++) {  // offset, dev, inode
                while (p < line_end && *p == ' ') p++;
                if (p >= line_end) goto malformed;
                while (p < line_end && *p != ' ') p++;
            }
            while (p < line_end && *p == ' ') p++;
            current = (size_t)count < capacity && records != NULL ? &records[count] : NULL;
            if (current != NULL) {
                memset(current, 0, sizeof *current);
                current->start = start;
                current->end = end;
                current->permissions = (uint32_t)(permissions - text);
                current->name = (uint32_t)(p - text);
                current->name_length = (uint32_t)(line_end - p);
                current->transparent_huge_page_eligible = -1;
            }
            count++;
        } else if (first >= 'A' && first <= 'Z') {
            if (count == 0) goto malformed;
            if (current != NULL) {
                if (cinterop_prefix(cursor, line_end, "VmFlags:")) {
                    const char *p = cursor + 8;
                    while (p < line_end && *p == ' ') p++;
                    current->flags = (uint32_t)(p - text);
                    current->flags_length = (uint32_t)(line_end - p);
                } else if (cinterop_prefix(cursor, line_end, "THPeligible:")) {
                    current->transparent_huge_page_eligible =
                        cinterop_decimal_field(cursor + 12, line_end) != 0 ? 1 : 0;
                } else if (cinterop_prefix(cursor, line_end, "Rss:")) {
                    current->rss_kib = cinterop_decimal_field(cursor + 4, line_end);
                } else if (cinterop_prefix(cursor, line_end, "AnonHugePages:")) {
                    current->anonymous_huge_kib = cinterop_decimal_field(cursor + 14, line_end);
                }
            }
        } else if (line_end != cursor) {
            goto malformed;
        }
        cursor = line_end + 1;
        continue;
    malformed:
        *error_offset = (size_t)(cursor - text);
        return -1;
    }
    return count;
}

bool cinterop_kernel_release(char *buffer, size_t capacity) {
    struct utsname name;
    if (uname(&name) != 0 || capacity == 0) return false;
    snprintf(buffer, capacity, "%s", name.release);
    return true;
}

uint32_t cinterop_real_uid(void) { return (uint32_t)getuid(); }
