#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#define P 4096UL
/* A workload for `shootdown replay --expect-maps`: anonymous and file mappings, merges, splits,
 * a move and the heap, then a copy of /proc/self/maps made with open/read/write only (no call
 * that maps memory), so the saved maps are the state at the end of the log.
 * Recorded with
 *   gcc -O1 -o maps-snapshot maps-snapshot.c
 *   strace -f -y -e trace=memory,process -o maps-snapshot.strace ./maps-snapshot maps-snapshot.maps */
int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int fd = open("/etc/ld.so.cache", O_RDONLY);
  char *a = mmap(NULL, 16 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  mprotect(a + 4 * P, 4 * P, PROT_READ);          /* split in three */
  mprotect(a + 4 * P, 4 * P, PROT_READ | PROT_WRITE); /* merged again */
  munmap(a + 12 * P, 4 * P);
  char *f = mmap(NULL, 8 * P, PROT_READ, MAP_PRIVATE, fd, 0);
  mmap(f + 4 * P, 4 * P, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 4 * P);  /* contiguous offsets: merges */
  char *g = mmap(NULL, 4 * P, PROT_READ, MAP_PRIVATE, fd, 2 * P);
  mprotect(g, P, PROT_READ | PROT_WRITE);
  g[0] = 1;                                          /* a private copy of the file page */
  mprotect(g, P, PROT_READ);                         /* keeps ac: stays apart */
  char *s = mmap(NULL, 2 * P, PROT_READ, MAP_SHARED, fd, 0);
  char *m = mmap(NULL, 8 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  m[0] = 1;
  char *moved = mremap(m, 8 * P, 16 * P, MREMAP_MAYMOVE);
  madvise(moved, 4 * P, MADV_DONTFORK);
  void *b = sbrk(0);
  brk((char *)b + 64 * P);
  brk((char *)b + 32 * P);
  (void)s;
  char buf[65536];
  int in = open("/proc/self/maps", O_RDONLY), out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ssize_t n;
  while ((n = read(in, buf, sizeof buf)) > 0) write(out, buf, n);
  return 0;
}
