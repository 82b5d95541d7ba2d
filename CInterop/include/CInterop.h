// CInterop: the only place C enters Shootdown.
//
// Every symbol here carries the `cinterop_` prefix and is wrapped exactly once on the Swift side
// (RCU, Futex, ThreadSlot, PageArena, Clock). Header `static inline` functions are imported and
// inlined by Swift; that is how the liburcu memb read side costs about a nanosecond instead of a
// 10 ns library call (docs/rcu.md, "The memb read side").
//
// Licensing: `_LGPL_SOURCE` inlines liburcu's read-side fast path, whose functions are kept under
// the LGPL ten-line criterion by upstream; the library itself stays dynamically linked.
#ifndef SHOOTDOWN_CINTEROP_H
#define SHOOTDOWN_CINTEROP_H

#define _LGPL_SOURCE 1
#include <urcu/urcu-memb.h>
#include <stdint.h>
#include <stdbool.h>
#include <stddef.h>

// ThreadSanitizer does not understand grace periods. In TSan builds every read-side unlock
// releases, and every post-grace-period reclamation acquires, one synchronisation address, which
// is exactly the happens-before edge RCU guarantees. Swift's clang importer does not see
// `-fsanitize=thread`, so TSan runs also pass `-Xcc -DSHOOTDOWN_TSAN` (see .ci/run).
#if defined(SHOOTDOWN_TSAN)
#define CINTEROP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CINTEROP_TSAN 1
#endif
#endif

#ifdef CINTEROP_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
extern char cinterop_rcu_tsan_grace_period;
#endif

// MARK: - Per-thread state: liburcu registration and a thread slot

/// Bit 0: this thread is registered with liburcu-memb (by us, or by liburcu for its own worker
/// threads). Bits 8...: thread slot + 1 (0 = no slot yet).
extern __thread uint32_t cinterop_thread_state;

/// Number of thread slots. Slots `0 ..< CINTEROP_THREAD_SLOTS - 1` are owned by exactly one live
/// thread; the last slot is shared by every thread beyond that and must be updated with RMWs.
#define CINTEROP_THREAD_SLOTS 64u

/// Registers the calling thread with liburcu-memb and claims a thread slot. Installs a pthread-key
/// destructor that unregisters and releases the slot when the thread exits, so an exiting thread
/// never leaves a grace period hanging (docs/rcu.md, "Thread registration"). Idempotent.
void cinterop_thread_attach_slow(void);

static inline __attribute__((always_inline)) void cinterop_thread_attach(void) {
    if (__builtin_expect(!(cinterop_thread_state & 1u), 0)) cinterop_thread_attach_slow();
}

/// The calling thread's slot in `0 ..< CINTEROP_THREAD_SLOTS`. Slots below the last one are
/// exclusive to the calling thread while it lives.
static inline __attribute__((always_inline)) uint32_t cinterop_thread_slot(void) {
    uint32_t state = cinterop_thread_state;
    if (__builtin_expect((state >> 8) == 0, 0)) {
        cinterop_thread_attach_slow();
        state = cinterop_thread_state;
    }
    return (state >> 8) - 1u;
}

/// log2 of the bytes per slot in per-slot tables indexed by ``cinterop_thread_block_offset``.
#define CINTEROP_SLOT_BLOCK_SHIFT 13u

/// The byte offset of the calling thread's block in a table of `CINTEROP_THREAD_SLOTS` blocks of
/// `1 << CINTEROP_SLOT_BLOCK_SHIFT` bytes whose block 0 is not a slot's: `(slot + 1) << SHIFT` for
/// a thread that owns its slot, 0 for one that shares the overflow slot or has no slot yet. One TLS
/// load and a test find a thread's own block (the software TLBs use it; docs/tlb.md).
extern __thread uint64_t cinterop_thread_block_offset;

static inline __attribute__((always_inline)) uint64_t cinterop_thread_block(void) {
    return cinterop_thread_block_offset;
}

/// Spin locks (split page-table locks and other non-sleeping locks) the calling thread holds.
/// Maintained only by debug builds of the engine, which check it before every operation that may
/// sleep (the kernel's `might_sleep()` debug check).
extern __thread uint32_t cinterop_spin_depth;

static inline __attribute__((always_inline)) void cinterop_spin_depth_add(int32_t delta) {
    cinterop_spin_depth += (uint32_t)delta;
}

static inline __attribute__((always_inline)) uint32_t cinterop_spin_depth_get(void) {
    return cinterop_spin_depth;
}

/// Notifier callbacks the calling thread is running (nesting depth). Maintained only by debug builds
/// of the engine, which trap when a callback calls what must not run inside one (removing a
/// notifier, unregistering, waiting for the notifier domain).
extern __thread uint32_t cinterop_callback_depth;

static inline __attribute__((always_inline)) void cinterop_callback_depth_add(int32_t delta) {
    cinterop_callback_depth += (uint32_t)delta;
}

static inline __attribute__((always_inline)) uint32_t cinterop_callback_depth_get(void) {
    return cinterop_callback_depth;
}

/// Mmap locks the calling thread holds, most recent last (debug builds of the engine only): each
/// entry is the lock's address with bit 0 set when held for writing. Taking one this thread holds
/// already deadlocks (the lock prefers writers, so even a second read acquisition waits behind a
/// queued writer), and debug builds trap instead.
#define CINTEROP_HELD_MMAP_LOCKS 8u
extern __thread uintptr_t cinterop_held_mmap_locks[CINTEROP_HELD_MMAP_LOCKS];
/// Number of mmap locks held; entries beyond CINTEROP_HELD_MMAP_LOCKS are counted, not recorded.
extern __thread uint32_t cinterop_held_mmap_lock_count;
/// Entries below this index are hidden from lookups: a test interleaving hook runs "another
/// thread's" steps on this thread, which does not hold the locks recorded before it.
extern __thread uint32_t cinterop_held_mmap_lock_floor;

static inline uint32_t cinterop_mmap_lock_floor_get(void) { return cinterop_held_mmap_lock_floor; }
static inline void cinterop_mmap_lock_floor_set(uint32_t floor) { cinterop_held_mmap_lock_floor = floor; }
static inline uint32_t cinterop_mmap_lock_count_get(void) { return cinterop_held_mmap_lock_count; }

/// The entry for `lock` if the calling thread holds it (with bit 0 set for writing), else 0.
static inline uintptr_t cinterop_mmap_lock_held(const void *_Nonnull lock) {
    uint32_t count = cinterop_held_mmap_lock_count;
    if (count > CINTEROP_HELD_MMAP_LOCKS) count = CINTEROP_HELD_MMAP_LOCKS;
    for (uint32_t i = cinterop_held_mmap_lock_floor; i < count; i++) {
        if ((cinterop_held_mmap_locks[i] & ~(uintptr_t)1) == (uintptr_t)lock) return cinterop_held_mmap_locks[i];
    }
    return 0;
}

/// Records that the calling thread took `lock`.
static inline void cinterop_mmap_lock_push(const void *_Nonnull lock, bool write) {
    uint32_t count = cinterop_held_mmap_lock_count;
    if (count < CINTEROP_HELD_MMAP_LOCKS) cinterop_held_mmap_locks[count] = (uintptr_t)lock | (write ? 1u : 0u);
    cinterop_held_mmap_lock_count = count + 1;
}

/// Records that the calling thread released `lock` (its most recent acquisition).
static inline void cinterop_mmap_lock_pop(const void *_Nonnull lock) {
    uint32_t count = cinterop_held_mmap_lock_count;
    if (count == 0) return;
    uint32_t recorded = count > CINTEROP_HELD_MMAP_LOCKS ? CINTEROP_HELD_MMAP_LOCKS : count;
    for (uint32_t i = recorded; i-- > cinterop_held_mmap_lock_floor;) {
        if ((cinterop_held_mmap_locks[i] & ~(uintptr_t)1) == (uintptr_t)lock) {
            for (uint32_t j = i; j + 1 < recorded; j++) cinterop_held_mmap_locks[j] = cinterop_held_mmap_locks[j + 1];
            break;
        }
    }
    cinterop_held_mmap_lock_count = count - 1;
}

// MARK: - liburcu memb read side (inlined)

static inline __attribute__((always_inline)) void cinterop_rcu_read_lock(void) {
    cinterop_thread_attach();
    _urcu_memb_read_lock();
}

static inline __attribute__((always_inline)) void cinterop_rcu_read_unlock(void) {
#ifdef CINTEROP_TSAN
    __tsan_release(&cinterop_rcu_tsan_grace_period);
#endif
    _urcu_memb_read_unlock();
}

static inline __attribute__((always_inline)) bool cinterop_rcu_read_ongoing(void) {
    return (cinterop_thread_state & 1u) && _urcu_memb_read_ongoing();
}

/// `rcu_dereference`: a consume load of a published pointer.
static inline __attribute__((always_inline)) void *_Nullable
cinterop_rcu_dereference(void *_Nullable const *_Nonnull slot) {
    return rcu_dereference(*(void **)slot);
}

/// `rcu_assign_pointer`: a release store publishing a fully initialised object.
static inline __attribute__((always_inline)) void
cinterop_rcu_assign_pointer(void *_Nullable *_Nonnull slot, void *_Nullable value) {
    rcu_assign_pointer(*slot, value);
}

/// `rcu_xchg_pointer`: exchange with full-barrier semantics.
static inline __attribute__((always_inline)) void *_Nullable
cinterop_rcu_xchg_pointer(void *_Nullable *_Nonnull slot, void *_Nullable value) {
    return rcu_xchg_pointer(slot, value);
}

// MARK: - liburcu memb grace periods (out of line)

/// `synchronize_rcu`: waits for every pre-existing read-side section. Must not be called inside a
/// read-side section.
void cinterop_rcu_synchronize(void);

/// `call_rcu`: runs `fn(context)` on liburcu's worker thread after a grace period.
void cinterop_rcu_call(void (*_Nonnull fn)(void *_Nullable), void *_Nullable context);

/// `rcu_barrier`: waits until every callback queued by `cinterop_rcu_call` has run (~10 ms).
void cinterop_rcu_barrier(void);

/// Whether liburcu uses `membarrier(PRIVATE_EXPEDITED)`; without it the memb read side falls back
/// to full fences (~70 ns per section).
bool cinterop_rcu_has_sys_membarrier(void);

// MARK: - Software TLB shootdown (docs/tlb.md)

/// A compiler-only barrier: the compiler may not move memory accesses across it; the CPU may (a
/// store may still be overtaken by a later load). An access to a software TLB marks itself "in
/// access" with a plain store and this barrier; the shootdown's membarrier supplies the CPU
/// barrier only when a shootdown needs it, the way liburcu's memb read side pairs
/// `cmm_barrier()` with `membarrier` in `synchronize_rcu`.
static inline __attribute__((always_inline)) void cinterop_compiler_barrier(void) {
    __asm__ __volatile__("" ::: "memory");
}

/// Whether `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` works in this process: the kernel
/// supports it and the process is registered (liburcu-memb registers at start-up; this registers
/// again if needed, which is idempotent). Computed once.
bool cinterop_membarrier_expedited_available(void);

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: when it returns, every CPU that was running a
/// thread of this process during the call has executed a full memory barrier (an IPI), and every
/// other thread has passed a context switch, which is one. Precondition: available.
void cinterop_membarrier_expedited(void);

// MARK: - Futex

/// Sleeps while `*word == expected`. Returns early on wake-up, signal, or spuriously.
void cinterop_futex_wait(uint32_t *_Nonnull word, uint32_t expected);
/// Wakes up to `count` waiters on `word`.
void cinterop_futex_wake(uint32_t *_Nonnull word, int32_t count);

// MARK: - CPU and time

static inline __attribute__((always_inline)) void cinterop_cpu_relax(void) { caa_cpu_relax(); }

/// Prefetches the cache line at `address` for reading (`__builtin_prefetch`): lets several misses
/// of a tree descent overlap instead of queueing one behind another.
static inline __attribute__((always_inline)) void cinterop_prefetch(const void *_Nonnull address) {
    __builtin_prefetch(address, 0, 3);
}

/// Yields the processor (sched_yield).
void cinterop_yield(void);

/// Starts a detached thread running `fn(context)`. Returns false (and runs nothing) if the thread
/// cannot be created.
bool cinterop_thread_start(void (*_Nonnull fn)(void *_Nullable), void *_Nullable context);

/// Pins the calling thread to the `index`-th CPU (modulo their number) of the process's allowed
/// set. Benchmarks only: threads that start on one CPU can run there for milliseconds before the
/// scheduler spreads them. Returns false (and pins nothing) with one allowed CPU or on error.
bool cinterop_pin_thread(uint32_t index);

/// Sleeps for `nanoseconds` (nanosleep). Library code uses it only for bounded back-off and for
/// the CLI's deliberately slow notifier; tests never synchronise with sleeps.
void cinterop_sleep_ns(uint64_t nanoseconds);

/// CLOCK_MONOTONIC in nanoseconds.
uint64_t cinterop_monotonic_ns(void);

// MARK: - Memory

/// Maps `length` bytes of zeroed anonymous memory aligned to `alignment` (a power of two that is a
/// multiple of the page size). Returns NULL on failure.
void *_Nullable cinterop_map_aligned(size_t length, size_t alignment);
/// Asks for transparent huge pages over `[base, base + length)` (`madvise(MADV_HUGEPAGE)`): fewer
/// TLB misses when hot metadata is swept or walked. Best effort; returns whether the kernel took it.
bool cinterop_advise_huge_pages(void *_Nonnull base, size_t length);
/// Unmaps memory returned by `cinterop_map_aligned`.
void cinterop_unmap(void *_Nonnull base, size_t length);

/// AddressSanitizer poisoning of recycled blocks (no-ops unless built with ASan).
void cinterop_asan_poison(void *_Nonnull base, size_t length);
void cinterop_asan_unpoison(void *_Nonnull base, size_t length);
bool cinterop_asan_is_poisoned(void *_Nonnull address);
/// Whether this build runs under AddressSanitizer.
bool cinterop_asan_enabled(void);

// MARK: - Profiling (perf/)

/// Resets callgrind's counters (`CALLGRIND_ZERO_STATS`) when running under valgrind's callgrind;
/// a no-op otherwise, or when valgrind's headers were absent at build time.
void cinterop_profile_region_begin(void);
/// Dumps callgrind's counters since the last reset (`CALLGRIND_DUMP_STATS_AT`).
void cinterop_profile_region_end(void);
/// Whether the profile hooks were compiled in (valgrind's headers were present at build time).
bool cinterop_profile_hooks_available(void);

// MARK: - Signals (CLI)

/// Installs a SIGINT handler that sets a flag readable with `cinterop_interrupted`.
void cinterop_install_interrupt_handler(void);
bool cinterop_interrupted(void);

// MARK: - Kernel oracle (ShootdownVerification)
//
// A child process that runs raw memory syscalls for the verification harness, so the real kernel
// judges the engine. `cinterop_oracle_spawn` forks and re-executes the running binary
// (`/proc/self/exe`) with ASLR off and a fixed stack limit; a constructor in CInterop.c recognises
// the environment variable below before `main` runs and serves commands on the inherited socket
// until EOF, then `_exit`s. So the same child exists in every binary that links CInterop (the
// test runner and the CLI).
//
// Wire format (one Unix stream socket per process): a request header, then `payload_length`
// bytes; a reply header, then `payload_length` bytes. A reply to `FORK` carries the new
// process's socket as SCM_RIGHTS ancillary data.

/// Environment variable that turns a freshly executed binary into an oracle child.
#define CINTEROP_ORACLE_ENVIRONMENT "SHOOTDOWN_KERNEL_ORACLE_CHILD"

/// Commands of the oracle child.
enum {
    /// `arguments[0]` = syscall number, `arguments[1...6]` = its arguments. Only memory syscalls
    /// are accepted (anything else replies `CINTEROP_ORACLE_REFUSED`). Reply `result` = raw return
    /// value, or `-errno`. For mincore, `arguments[3]` is ignored unless `arguments[6]` is 1:
    /// the child passes its own vector and the reply's payload is the vector (one byte per page).
    CINTEROP_ORACLE_SYSCALL = 1,
    /// `arguments[0]` = address: a load of 8 bytes. Reply `value` = the loaded bytes, or status
    /// `CINTEROP_ORACLE_FAULTED` with `result` = the signal number.
    CINTEROP_ORACLE_LOAD = 2,
    /// `arguments[0]` = address, `arguments[1]` = value: a store of 8 bytes (status as for LOAD).
    CINTEROP_ORACLE_STORE = 3,
    /// Payload: `count` addresses (uint64). Reply payload: `count` records of
    /// `cinterop_oracle_load_record` (a load each, faults caught).
    CINTEROP_ORACLE_LOAD_MANY = 4,
    /// Forks. The new process serves the socket sent back as SCM_RIGHTS; `result` = its pid.
    CINTEROP_ORACLE_FORK = 5,
    /// Replies, then exits (`_exit(0)`).
    CINTEROP_ORACLE_EXIT = 6,
    /// Reply `result` = pid, `value` = lowest address of the mappings the child filled around
    /// (the bottom of its guard filler page).
    CINTEROP_ORACLE_HELLO = 7,
};

/// Reply statuses.
enum {
    CINTEROP_ORACLE_OK = 0,
    CINTEROP_ORACLE_FAULTED = 1,
    CINTEROP_ORACLE_REFUSED = 2,
};

typedef struct {
    uint32_t command;
    uint32_t payload_length;
    uint64_t arguments[7];
} cinterop_oracle_request;

typedef struct {
    int64_t result;
    uint64_t value;
    uint32_t status;
    uint32_t payload_length;
} cinterop_oracle_reply;

typedef struct {
    uint64_t value;
    /// 0: loaded; otherwise the signal that stopped the load.
    uint64_t signal;
} cinterop_oracle_load_record;

typedef struct {
    /// `RLIMIT_STACK` soft limit of the child (fixes the kernel's `mmap_base`).
    uint64_t stack_limit;
    /// If `drop_privileges`: the uid and gid the child switches to (after exec, before serving),
    /// which clears every capability.
    uint32_t uid;
    uint32_t gid;
    bool drop_privileges;
    /// `PR_SET_THP_DISABLE` in the child.
    bool disable_transparent_huge_pages;
    /// The CPU the child (and every process it forks) is pinned to: an index into the CPUs the
    /// spawner may use, modulo their count; -1 pins it to the CPU it starts on.
    int32_t cpu;
} cinterop_oracle_options;

/// Spawns an oracle child. Returns 0 and sets `*pid` and `*channel`, or returns an errno value.
/// The child dies with the calling thread's process (PR_SET_PDEATHSIG) and at EOF on its socket.
int32_t cinterop_oracle_spawn(const cinterop_oracle_options *_Nonnull options, int32_t *_Nonnull pid,
                              int32_t *_Nonnull channel);

/// Sends a request (header and `payload_length` bytes of `payload`) and receives the reply header;
/// the reply payload (at most `capacity` bytes; more is an error) goes to `buffer`. A descriptor
/// received with the reply is stored in `*received_fd` (else -1). Returns 0 or an errno value
/// (EPIPE/ECONNRESET if the child died, EMSGSIZE if the payload does not fit).
int32_t cinterop_oracle_exchange(int32_t channel, const cinterop_oracle_request *_Nonnull request,
                                 const void *_Nullable payload, cinterop_oracle_reply *_Nonnull reply,
                                 void *_Nullable buffer, size_t capacity, int32_t *_Nonnull received_fd);

/// Closes an oracle socket.
void cinterop_oracle_close(int32_t channel);

/// Sends SIGKILL to `pid` if `kill_first`, then waits for it (EINTR retried). Returns the raw wait
/// status, or -errno (e.g. -ECHILD for a process that is not our child).
int32_t cinterop_oracle_reap(int32_t pid, bool kill_first);

/// Reads the whole of a (proc) file into `buffer`. Returns the byte count, -errno on failure, or
/// -EFBIG if it does not fit in `capacity` (grow the buffer and retry).
int64_t cinterop_read_file(const char *_Nonnull path, void *_Nonnull buffer, size_t capacity);

/// Reads `length` bytes of a file at `offset` (`/proc/PID/pagemap`: 8 bytes per page). Returns the
/// byte count (short only at the end of the file) or -errno.
int64_t cinterop_read_file_at(const char *_Nonnull path, uint64_t offset, void *_Nonnull buffer, size_t length);

/// One mapping found by `cinterop_smaps_scan`: its range, and where its fields are in the text.
typedef struct {
    uint64_t start;
    uint64_t end;
    /// Offset of the four permission letters.
    uint32_t permissions;
    /// Offset and length of the name (path or `[heap]`…; length 0 for none).
    uint32_t name;
    uint32_t name_length;
    /// Offset and length of the text after `VmFlags:` (length 0 if the line is absent).
    uint32_t flags;
    uint32_t flags_length;
    /// `THPeligible:` value, or -1 if absent.
    int32_t transparent_huge_page_eligible;
    uint64_t rss_kib;
    uint64_t anonymous_huge_kib;
} cinterop_smaps_record;

/// Splits the text of `/proc/PID/smaps` (or `maps`) into one record per mapping: a mapping starts
/// at a line beginning with a lower-case hex digit; the `Key: value` lines after it belong to it.
/// The interpretation (letters, flags) is the Swift side's; this only finds things, at C speed,
/// because the harness scans smaps after every operation in debug builds too. Returns the number of
/// mappings (if more than `capacity`, only the first `capacity` were stored: call again with more
/// room), or -1 for a malformed text, with the offending line's offset in `*error_offset`.
int64_t cinterop_smaps_scan(const char *_Nonnull text, size_t length, cinterop_smaps_record *_Nullable records,
                            size_t capacity, size_t *_Nonnull error_offset);

/// The kernel release (`uname -r`) into `buffer`; returns false on failure.
bool cinterop_kernel_release(char *_Nonnull buffer, size_t capacity);

/// The real uid of the calling process.
uint32_t cinterop_real_uid(void);

#endif
