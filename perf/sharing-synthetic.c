// A synthetic probe for perf/test-sharing: the protocol of `shootdown perf-probe NAME --sharing`
// (see CLI/Sources/shootdown/PerfSharingProbe.swift) with RMWs whose classification is known:
//   shared_increment        one global counter both threads RMW: shared
//   false_shared_increment  each thread its own counter, but both in one cache line: shared
//   private_increment       each thread its own counter on its own cache line: private
//   private_exchange        xchg with memory (locked implicitly) on the thread's own line: private
// Thread A runs, then parks until B (started only once A parked) is done, as the real probe does.
// Before its second marker, A also starts a bystander thread and waits for it: the bystander RMWs
// the shared counter and A's private counter ten times per operation, and none of that may count
// (it is not a marked thread, like liburcu's call_rcu thread in the real probes); the few RMWs of
// pthread_create and pthread_join themselves are A's.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long operations = 1024;
static _Alignas(64) long shared_counter;
static _Alignas(64) long false_shared[2];            // one line, two threads
static _Alignas(64) long private_counter[2][8];      // one line each
static long private_word[2][8] __attribute__((aligned(64)));
static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int a_parked, b_done;

__attribute__((noinline)) static void shared_increment(void) { __atomic_fetch_add(&shared_counter, 1, __ATOMIC_SEQ_CST); }
__attribute__((noinline)) static void false_shared_increment(int t) { __atomic_fetch_add(&false_shared[t], 1, __ATOMIC_SEQ_CST); }
__attribute__((noinline)) static void private_increment(int t) { __atomic_fetch_add(&private_counter[t][0], 1, __ATOMIC_SEQ_CST); }
__attribute__((noinline)) static void private_exchange(int t, long v) { __atomic_exchange_n(&private_word[t][0], v, __ATOMIC_SEQ_CST); }
__attribute__((noinline)) static void marker(void) { getppid(); }

static void *bystander(void *argument) {
    (void)argument;
    for (long i = 0; i < 10 * operations; i++) {
        shared_increment();
        private_increment(0);
    }
    return 0;
}

static void *body(void *argument) {
    int t = (int)(long)argument;
    marker();
    for (long i = 0; i < operations; i++) {
        shared_increment();
        false_shared_increment(t);
        private_increment(t);
        private_exchange(t, i);
    }
    if (t == 0) {
        pthread_t other;
        pthread_create(&other, 0, bystander, 0);
        pthread_join(other, 0);
    }
    marker();
    pthread_mutex_lock(&mutex);
    if (t == 0) {
        a_parked = 1;
        pthread_cond_broadcast(&cond);
        while (!b_done) pthread_cond_wait(&cond, &mutex);
    } else {
        b_done = 1;
        pthread_cond_broadcast(&cond);
    }
    pthread_mutex_unlock(&mutex);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[2], "--list") == 0) { puts("synthetic"); return 0; }
    for (int i = 1; i + 1 < argc; i++) if (strcmp(argv[i], "--operations") == 0) operations = atol(argv[i + 1]);
    pthread_t a, b;
    pthread_create(&a, 0, body, (void *)0L);
    pthread_mutex_lock(&mutex);
    while (!a_parked) pthread_cond_wait(&cond, &mutex);
    pthread_mutex_unlock(&mutex);
    pthread_create(&b, 0, body, (void *)1L);
    pthread_join(b, 0);
    pthread_join(a, 0);
    printf("operations %ld\n", operations);
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[4096];
    while (maps && fgets(line, sizeof line, maps)) printf("map %s", line);
    return 0;
}
