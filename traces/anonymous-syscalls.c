#define _GNU_SOURCE
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#define P 4096UL
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
/* A workload for `shootdown replay`: every anonymous-memory call, successes and failures.
 * Recorded unprivileged, with the final /proc/PID/maps, by
 *   gcc -O1 -o anonymous-syscalls anonymous-syscalls.c
 *   scripts/record-trace anonymous-syscalls \
 *     setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all ./anonymous-syscalls
 * (scripts/record-trace runs strace -f -y -e trace=memory,process; an strace older than mseal
 * prints it as syscall_0x1ce). */
int main(){
  unsigned char v[64];
  /* 16 pages with a 48-page hole above them, so the calls that run past the end meet only a hole. */
  char *a = mmap(NULL, 64*P, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
  munmap(a + 16*P, 48*P);
  a = mmap(a, 16*P, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED, -1, 0);
  for (int i = 0; i < 8; i++) a[i*P] = 1;
  mincore(a, 16*P, v); mincore(a+1, P, v); mincore(a, 32*P, v);
  madvise(a, 4*P, MADV_DONTNEED); madvise(a, 4*P, MADV_FREE); madvise(a, 16*P, MADV_DONTFORK); madvise(a, 16*P, MADV_DOFORK);
  madvise(a, 16*P, MADV_WIPEONFORK); madvise(a, 16*P, MADV_KEEPONFORK); madvise(a, 16*P, MADV_DONTDUMP); madvise(a, 16*P, MADV_DODUMP);
  madvise(a, 16*P, MADV_RANDOM); madvise(a, 16*P, MADV_SEQUENTIAL); madvise(a, 16*P, MADV_NORMAL); madvise(a, 16*P, MADV_WILLNEED);
  madvise(a, 16*P, MADV_COLD); madvise(a, 16*P, MADV_PAGEOUT); madvise(a, 16*P, MADV_POPULATE_READ); madvise(a, 16*P, MADV_POPULATE_WRITE);
  madvise(a, 16*P, MADV_REMOVE); madvise(a, 16*P, MADV_MERGEABLE); madvise(a, 16*P, MADV_UNMERGEABLE); madvise(a, 16*P, MADV_HUGEPAGE);
  madvise(a, 16*P, MADV_NOHUGEPAGE); madvise(a, 16*P, MADV_COLLAPSE); madvise(a+4*P, P, MADV_GUARD_INSTALL); madvise(a+4*P, P, MADV_GUARD_REMOVE);
  madvise(a, 32*P, MADV_DONTNEED); madvise(a, 16*P, 999);
  mlock(a, 4*P); mlock2(a+4*P, 4*P, MLOCK_ONFAULT); mlock2(a, P, 8); madvise(a, 4*P, MADV_DONTNEED); madvise(a, 4*P, MADV_DONTNEED_LOCKED);
  msync(a, 4*P, MS_INVALIDATE); msync(a, 4*P, MS_SYNC); msync(a, 32*P, MS_ASYNC); munlock(a, 16*P);
  mlockall(MCL_CURRENT|MCL_ONFAULT); munlockall(); mlockall(MCL_FUTURE);
  char *b = mmap(NULL, 4*P, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0); munlockall();
  mprotect(a+2*P, 4*P, PROT_READ); mprotect(a, 32*P, PROT_READ|PROT_WRITE);
  char *c = mremap(a, 16*P, 16*P, MREMAP_MAYMOVE|MREMAP_DONTUNMAP, NULL);
  mremap(c, 8*P, 4*P, 0); mremap(c, 4*P, 4*P, MREMAP_MAYMOVE|MREMAP_FIXED, b);
  char *d = mmap(NULL, 4*P, PROT_READ, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
  syscall(462, d, 4*P, 0); munmap(d, P); mprotect(d, P, PROT_NONE); madvise(d, P, MADV_DONTNEED); syscall(462, d, P, 1);
  void *brk0 = sbrk(0); brk((char*)brk0 + 3*P + 5); brk((char*)brk0 + P); brk((char*)brk0 - (1UL << 32)); brk(brk0);
  munmap(a, 16*P); munmap(b, 4*P);
  return 0;
}
