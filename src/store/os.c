/* os.c - the file-system call table and retrying helpers. */
#include "store/os.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

static int os_open(const char *path, int flags, mode_t mode) { return open(path, flags, mode); }

#define OS_DEFAULTS                                                                          \
  {                                                                                          \
    .open = os_open, .close = close, .pread = pread, .pwritev = pwritev, .fsync = fsync,     \
    .fdatasync = fdatasync, .ftruncate = ftruncate, .rename = rename, .unlink = unlink,       \
    .mkdir = mkdir, .rmdir = rmdir, .link = link, .fstat = fstat, .mmap = mmap,              \
    .munmap = munmap, .flock = flock, .fallocate = fallocate                                 \
  }

const bp__os bp__os_default = OS_DEFAULTS;
bp__os bp__os_table = OS_DEFAULTS;

#define MAX_IOV 64

int bp__os_write_all(int fd, const struct iovec *iov, int cnt, uint64_t off) {
  struct iovec local[MAX_IOV];
  while (cnt > 0) {
    int n = cnt < MAX_IOV ? cnt : MAX_IOV;
    memcpy(local, iov, sizeof(struct iovec) * (size_t)n);
    struct iovec *v = local;
    int left = n;
    while (left > 0) {
      ssize_t w = bp__os_table.pwritev(fd, v, left, (off_t)off);
      if (w < 0) {
        if (errno == EINTR) continue;
        return errno ? errno : EIO;
      }
      if (w == 0) return ENOSPC;
      off += (uint64_t)w;
      size_t done = (size_t)w;
      while (left > 0 && done >= v->iov_len) {
        done -= v->iov_len;
        v++;
        left--;
      }
      if (left > 0) {
        v->iov_base = (char *)v->iov_base + done;
        v->iov_len -= done;
      }
    }
    iov += n;
    cnt -= n;
  }
  return 0;
}

int bp__os_write_buf(int fd, bp__buf *b, uint64_t *at) {
  struct iovec iov = {b->data, b->len};
  int rc = bp__os_write_all(fd, &iov, 1, *at);
  *at += b->len;
  b->len = 0;
  return rc;
}

int bp__os_read_all(int fd, void *buf, size_t n, uint64_t off) {
  uint8_t *p = buf;
  while (n > 0) {
    ssize_t r = bp__os_table.pread(fd, p, n, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno ? errno : EIO;
    }
    if (r == 0) return -1;
    p += r;
    n -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

int bp__os_sync(int fd, int mode) {
  int rc = mode == 1 ? bp__os_table.fdatasync(fd) : bp__os_table.fsync(fd);
  return rc == 0 ? 0 : (errno ? errno : EIO);
}

int bp__os_sync_dir(const char *path) {
  int fd = bp__os_table.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) return errno;
  int rc = bp__os_sync(fd, 0);
  bp__os_table.close(fd);
  return rc;
}

size_t bp__os_page_size(void) {
  static _Atomic size_t page; /* 0 until read; every thread reads the same value */
  size_t v = atomic_load_explicit(&page, memory_order_relaxed);
  if (!v) {
    long got = sysconf(_SC_PAGESIZE);
    v = got > 0 ? (size_t)got : 4096;
    atomic_store_explicit(&page, v, memory_order_relaxed);
  }
  return v;
}

void bp__os_prefault_write(void *p, size_t len) {
  size_t page = bp__os_page_size();
  uintptr_t from = (uintptr_t)bp__os_page_ceil((uintptr_t)p), to = (uintptr_t)bp__os_page_floor((uintptr_t)p + len);
  unsigned char vec[1024]; /* residency of up to 1024 pages per mincore call */
  while (from < to) {
    size_t pages = (to - from) / page < sizeof vec ? (to - from) / page : sizeof vec;
    if (mincore((void *)from, pages * page, vec) != 0) {
      madvise((void *)from, to - from, BP__MADV_POPULATE_WRITE);
      return;
    }
    for (size_t i = 0; i < pages;) {
      if (vec[i] & 1) { i++; continue; }
      size_t run = i;
      while (run < pages && !(vec[run] & 1)) run++;
      madvise((void *)(from + i * page), (run - i) * page, BP__MADV_POPULATE_WRITE);
      i = run;
    }
    from += pages * page;
  }
}

void *bp__os_zalloc(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void bp__os_zfree(void *p, size_t size) {
  if (p) munmap(p, size);
}
