/*
 * os.h - every file-system call the store makes goes through bp__os_table, so
 * that tests can inject failures (EIO, ENOSPC, short writes, failed fsyncs,
 * failed renames or mmaps) without touching the code under test.
 */
#ifndef BATPAK_STORE_OS_H
#define BATPAK_STORE_OS_H

#include "internal.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct bp__os {
  int (*open)(const char *path, int flags, mode_t mode);
  int (*close)(int fd);
  ssize_t (*pread)(int fd, void *buf, size_t n, off_t off);
  ssize_t (*pwritev)(int fd, const struct iovec *iov, int cnt, off_t off);
  int (*fsync)(int fd);
  int (*fdatasync)(int fd);
  int (*ftruncate)(int fd, off_t len);
  int (*rename)(const char *from, const char *to);
  int (*unlink)(const char *path);
  int (*mkdir)(const char *path, mode_t mode);
  int (*rmdir)(const char *path);
  int (*link)(const char *from, const char *to);
  int (*fstat)(int fd, struct stat *st);
  void *(*mmap)(void *addr, size_t len, int prot, int flags, int fd, off_t off);
  int (*munmap)(void *addr, size_t len);
  int (*flock)(int fd, int op);
  int (*fallocate)(int fd, int mode, off_t off, off_t len);
} bp__os;

/* The table in use. Tests replace entries and restore them; the library never
 * changes it. */
extern bp__os bp__os_table;
/* The real system calls, for restoring the table. */
extern const bp__os bp__os_default;

/* Writes every byte of iov at off, retrying short writes and EINTR.
 * Returns 0, or an errno value (ENOSPC for a write that made no progress). */
int bp__os_write_all(int fd, const struct iovec *iov, int cnt, uint64_t off);
/* Writes b's bytes at *at, moves *at past them and empties b (files written
 * a piece at a time). Returns 0 or an errno value. */
int bp__os_write_buf(int fd, bp__buf *b, uint64_t *at);
/* Reads exactly n bytes at off. Returns 0, an errno value, or -1 at end of file. */
int bp__os_read_all(int fd, void *buf, size_t n, uint64_t off);
/* fsync or fdatasync by mode (0 = all, 1 = data). Returns 0 or an errno value. */
int bp__os_sync(int fd, int mode);
/* fsyncs a directory so that creations and renames in it are durable. */
int bp__os_sync_dir(const char *path);
/* The memory page size, read once. */
size_t bp__os_page_size(void);
/* x rounded down, or up, to a whole number of pages. */
static inline uint64_t bp__os_page_floor(uint64_t x) { return x / bp__os_page_size() * bp__os_page_size(); }
static inline uint64_t bp__os_page_ceil(uint64_t x) { return bp__os_page_floor(x + bp__os_page_size() - 1); }

/* madvise requests that map pages in at once (Linux 5.14); defined here for
 * older headers, older kernels answer EINVAL and the pages fault in as usual. */
#ifdef MADV_POPULATE_READ
#  define BP__MADV_POPULATE_READ MADV_POPULATE_READ
#else
#  define BP__MADV_POPULATE_READ 22
#endif
#ifdef MADV_POPULATE_WRITE
#  define BP__MADV_POPULATE_WRITE MADV_POPULATE_WRITE
#else
#  define BP__MADV_POPULATE_WRITE 23
#endif

/* Zeroed memory for large tables that are mostly never touched (directories
 * of chunks, tables by kind): fresh pages from the kernel, so that nothing
 * is written to zero them and untouched pages cost nothing. NULL when out
 * of memory. Freed with bp__os_zfree and the same size. */
void *bp__os_zalloc(size_t size);
void bp__os_zfree(void *p, size_t size);

/* Maps in, writable, the pages of [p, p + len) of private memory that are not
 * mapped yet, a run of pages per call. Memory the allocator hands out again
 * is usually mapped already: asking the kernel to populate it anyway costs a
 * page-table walk under a lock per page, so resident pages are skipped (one
 * mincore call tells which). Only a hint: nothing fails. */
void bp__os_prefault_write(void *p, size_t len);

#endif
