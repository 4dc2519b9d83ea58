/* faultfs.c - fault injection and a power-loss model over the store's
 * file-system table (faultfs.h). */
#define _GNU_SOURCE
#include "faultfs.h"
#include "store/os.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int calls_left = -1;     /* calls before the fault; -1: none armed */
static bool crash_mode, hit;

/* ---- power-loss record: per file, the bytes an fsync made durable ---- */
#define MAX_FILES 4096
#define MAX_FDS 4096
typedef struct tracked {
  char path[512];
  int64_t durable;              /* bytes durable from the start of the file */
} tracked;
static tracked files[MAX_FILES];
static int nfiles;
static int fd_file[MAX_FDS];    /* fd -> index in files, -1 */
static bool tracking;
static const char *cut_record;

static tracked *file_of(const char *path) {
  for (int i = 0; i < nfiles; i++)
    if (strcmp(files[i].path, path) == 0) return &files[i];
  if (nfiles == MAX_FILES) return NULL;
  tracked *t = &files[nfiles++];
  snprintf(t->path, sizeof t->path, "%s", path);
  t->durable = -1;
  return t;
}

static void save_record(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) _exit(90);
  for (int i = 0; i < nfiles; i++) {
    char line[600];
    int n = snprintf(line, sizeof line, "%lld %s\n", (long long)files[i].durable, files[i].path);
    if (write(fd, line, (size_t)n) != n) _exit(91);
  }
  fsync(fd);
  close(fd);
}

/* Counts a call; true when it is the one to fail. Called with lock held. */
static bool fault_now(void) {
  if (calls_left < 0) return false;
  if (calls_left-- > 0) return false;
  calls_left = -1;
  hit = true;
  if (cut_record) {
    save_record(cut_record);
    _exit(0);
  }
  if (crash_mode) _exit(FF_CRASH_EXIT);
  errno = EIO;
  return true;
}

static bool enter(void) {
  pthread_mutex_lock(&lock);
  bool f = fault_now();
  if (f) pthread_mutex_unlock(&lock);
  return f;
}

static int ff_open(const char *p, int fl, mode_t m) {
  if (enter()) return -1;
  struct stat st;
  bool existed = stat(p, &st) == 0;
  bool regular = !existed || S_ISREG(st.st_mode);
  int fd = bp__os_default.open(p, fl, m);
  if (tracking && fd >= 0 && fd < MAX_FDS && (fl & O_ACCMODE) != O_RDONLY && regular) {
    tracked *t = file_of(p);
    if (t) {
      /* What was there before tracking began, or before the truncation, was durable. */
      if (t->durable < 0 || (fl & O_TRUNC)) t->durable = existed && !(fl & O_TRUNC) ? (int64_t)st.st_size : 0;
      fd_file[fd] = (int)(t - files);
    }
  }
  pthread_mutex_unlock(&lock);
  return fd;
}

static int ff_close(int fd) {
  pthread_mutex_lock(&lock);
  if (fd >= 0 && fd < MAX_FDS) fd_file[fd] = -1;
  pthread_mutex_unlock(&lock);
  return bp__os_default.close(fd);
}

static ssize_t ff_pwritev(int fd, const struct iovec *v, int n, off_t o) {
  if (enter()) return -1;
  ssize_t r = bp__os_default.pwritev(fd, v, n, o);
  pthread_mutex_unlock(&lock);
  return r;
}

static int synced(int fd, int (*fn)(int)) {
  if (enter()) return -1;
  int r = fn(fd);
  if (r == 0 && tracking && fd >= 0 && fd < MAX_FDS && fd_file[fd] >= 0) {
    struct stat st;
    if (fstat(fd, &st) == 0) files[fd_file[fd]].durable = (int64_t)st.st_size;
  }
  pthread_mutex_unlock(&lock);
  return r;
}
static int ff_fsync(int fd) { return synced(fd, bp__os_default.fsync); }
static int ff_fdatasync(int fd) { return synced(fd, bp__os_default.fdatasync); }

static int ff_rename(const char *a, const char *b) {
  if (enter()) return -1;
  int r = bp__os_default.rename(a, b);
  if (r == 0 && tracking) {
    /* The file keeps its record under its new name. */
    tracked *from = NULL;
    for (int i = 0; i < nfiles; i++)
      if (strcmp(files[i].path, a) == 0) from = &files[i];
    tracked *to = file_of(b);
    if (to) to->durable = from ? from->durable : to->durable;
    if (from) from->durable = 0;
    for (int fd = 0; from && to && fd < MAX_FDS; fd++)
      if (fd_file[fd] == (int)(from - files)) fd_file[fd] = (int)(to - files);
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static int ff_unlink(const char *p) {
  if (enter()) return -1;
  int r = bp__os_default.unlink(p);
  pthread_mutex_unlock(&lock);
  return r;
}

static int ff_link(const char *from, const char *to) {
  if (enter()) return -1;
  int r = bp__os_default.link(from, to);
  pthread_mutex_unlock(&lock);
  return r;
}

static int ff_mkdir(const char *p, mode_t m) {
  if (enter()) return -1;
  int r = bp__os_default.mkdir(p, m);
  pthread_mutex_unlock(&lock);
  return r;
}

static int ff_ftruncate(int fd, off_t len) {
  if (enter()) return -1;
  int r = bp__os_default.ftruncate(fd, len);
  if (r == 0 && tracking && fd >= 0 && fd < MAX_FDS && fd_file[fd] >= 0 && files[fd_file[fd]].durable > len)
    files[fd_file[fd]].durable = len;
  pthread_mutex_unlock(&lock);
  return r;
}

static void *ff_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
  if (tracking && (prot & PROT_WRITE)) {
    errno = ENODEV; /* every write through the table */
    return MAP_FAILED;
  }
  return bp__os_default.mmap(addr, len, prot, flags, fd, off);
}

static void install(void) {
  bp__os_table.open = ff_open;
  bp__os_table.close = ff_close;
  bp__os_table.pwritev = ff_pwritev;
  bp__os_table.fsync = ff_fsync;
  bp__os_table.fdatasync = ff_fdatasync;
  bp__os_table.rename = ff_rename;
  bp__os_table.unlink = ff_unlink;
  bp__os_table.link = ff_link;
  bp__os_table.mkdir = ff_mkdir;
  bp__os_table.ftruncate = ff_ftruncate;
  bp__os_table.mmap = ff_mmap;
}

void ff_arm(int after, bool crash) {
  install();
  pthread_mutex_lock(&lock);
  calls_left = after;
  crash_mode = crash;
  hit = false;
  pthread_mutex_unlock(&lock);
}

void ff_disarm(void) {
  pthread_mutex_lock(&lock);
  calls_left = -1;
  tracking = false;
  cut_record = NULL;
  pthread_mutex_unlock(&lock);
  bp__os_table = bp__os_default;
}

bool ff_hit(void) {
  pthread_mutex_lock(&lock);
  bool h = hit;
  pthread_mutex_unlock(&lock);
  return h;
}

void ff_power_track(void) {
  pthread_mutex_lock(&lock);
  nfiles = 0;
  for (int i = 0; i < MAX_FDS; i++) fd_file[i] = -1;
  tracking = true;
  pthread_mutex_unlock(&lock);
  install();
}

void ff_power_cut_after(int after, const char *record_path) {
  pthread_mutex_lock(&lock);
  cut_record = record_path;
  calls_left = after;
  pthread_mutex_unlock(&lock);
}

void ff_power_cut(const char *record_path) {
  pthread_mutex_lock(&lock);
  save_record(record_path);
  _exit(0);
}

int ff_power_apply(const char *record_path, unsigned seed) {
  FILE *f = fopen(record_path, "r");
  if (!f) return -1;
  srand(seed);
  int damaged = 0;
  long long durable;
  char path[600];
  while (fscanf(f, "%lld %599[^\n]\n", &durable, path) == 2) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= durable) continue;
    if (durable < 0) durable = 0;
    int what = rand() % 3;                /* 0: dropped, 1: garbled, 2: kept */
    if (what == 2) continue;
    damaged++;
    if (what == 0) {
      if (truncate(path, durable) != 0) return -1;
      continue;
    }
    int fd = open(path, O_WRONLY);
    if (fd < 0) return -1;
    /* A power failure tears at sector granularity: garble whole 512-byte
     * sectors from one at or after the durable end. */
    off_t from = (off_t)durable + (off_t)(rand() % 2 ? 0 : rand() % 512);
    for (off_t at = from; at < st.st_size; at += 512) {
      uint8_t junk[512];
      for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)rand();
      size_t n = (size_t)(st.st_size - at < 512 ? st.st_size - at : 512);
      if (pwrite(fd, junk, n, at) != (ssize_t)n) return -1;
    }
    close(fd);
  }
  fclose(f);
  return damaged;
}
