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

/* ---- power-loss record: per file, what an fsync made durable ----
 *
 * Each fsync of a file copies what it holds then to a shadow file (its data
 * regions only: space allocated ahead and never written is a hole): the
 * durable image. Frames written through a writable mapping reach the file
 * without a call through the table, so the image is what tells, after the
 * cut, which sectors no fsync covered: those that differ from it. */
#define MAX_FILES 4096
#define MAX_FDS 4096
typedef struct tracked {
  char path[512];
  char shadow[600];             /* the durable image, "" before the first */
  int64_t durable;              /* bytes durable from the start of the file */
} tracked;
static tracked files[MAX_FILES];
static int nfiles;
static int fd_file[MAX_FDS];    /* fd -> index in files, -1 */
static bool tracking;
static const char *cut_record;
static char shadow_dir[64];

/* Copies the data regions of the file open as wfd (size bytes; it may be
 * open for writing only) to the file at to. */
static int copy_data(int wfd, off_t size, const char *to) {
  char self[64];
  snprintf(self, sizeof self, "/proc/self/fd/%d", wfd);
  int fd = open(self, O_RDONLY);
  if (fd < 0) return -1;
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (out < 0) {
    close(fd);
    return -1;
  }
  static uint8_t buf[1 << 16];
  off_t at = 0;
  int rc = 0;
  while (at < size && !rc) {
    off_t d = lseek(fd, at, SEEK_DATA);
    if (d < 0 || d >= size) break;
    off_t h = lseek(fd, d, SEEK_HOLE);
    if (h < 0 || h > size) h = size;
    for (off_t x = d; x < h && !rc;) {
      size_t n = (size_t)(h - x < (off_t)sizeof buf ? h - x : (off_t)sizeof buf);
      ssize_t got = pread(fd, buf, n, x);
      if (got <= 0 || pwrite(out, buf, (size_t)got, x) != got) rc = -1;
      else x += got;
    }
    at = h;
  }
  if (!rc && ftruncate(out, size) != 0) rc = -1;
  close(out);
  close(fd);
  return rc;
}

static void take_image(tracked *t, int fd, off_t size) {
  if (!t->shadow[0]) snprintf(t->shadow, sizeof t->shadow, "%s/%d", shadow_dir, (int)(t - files));
  if (copy_data(fd, size, t->shadow) != 0) _exit(92);
}

static tracked *file_of(const char *path) {
  for (int i = 0; i < nfiles; i++)
    if (strcmp(files[i].path, path) == 0) return &files[i];
  if (nfiles == MAX_FILES) return NULL;
  tracked *t = &files[nfiles++];
  snprintf(t->path, sizeof t->path, "%s", path);
  t->shadow[0] = 0;
  t->durable = -1;
  return t;
}

static void save_record(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) _exit(90);
  for (int i = 0; i < nfiles; i++) {
    char line[1200];
    int n = snprintf(line, sizeof line, "%lld %s\t%s\n", (long long)files[i].durable, files[i].path,
                     files[i].shadow[0] ? files[i].shadow : "-");
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
      if (t->durable < 0 || (fl & O_TRUNC)) {
        t->durable = existed && !(fl & O_TRUNC) ? (int64_t)st.st_size : 0;
        take_image(t, fd, (off_t)t->durable);
      }
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
    if (fstat(fd, &st) == 0) {
      files[fd_file[fd]].durable = (int64_t)st.st_size;
      take_image(&files[fd_file[fd]], fd, st.st_size);
    }
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
    if (to && from && to != from) {
      to->durable = from->durable;
      /* The image goes with the file; the old name has none. */
      char keep[600];
      snprintf(keep, sizeof keep, "%s", to->shadow);
      snprintf(to->shadow, sizeof to->shadow, "%s", from->shadow);
      snprintf(from->shadow, sizeof from->shadow, "%s", keep);
    }
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
  if (r == 0 && tracking && fd >= 0 && fd < MAX_FDS && fd_file[fd] >= 0 && files[fd_file[fd]].durable > len) {
    files[fd_file[fd]].durable = len;
    if (files[fd_file[fd]].shadow[0] && truncate(files[fd_file[fd]].shadow, len) != 0) _exit(93);
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static void *ff_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
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
  snprintf(shadow_dir, sizeof shadow_dir, "/tmp/batpak-ffshadow-XXXXXX");
  if (!mkdtemp(shadow_dir)) _exit(94);
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

/* Reads bytes [at, at + n) of a file into buf, zeros past its end. */
static void read_zero_padded(int fd, off_t size, off_t at, uint8_t *buf, size_t n) {
  memset(buf, 0, n);
  if (at >= size) return;
  size_t have = (size_t)(size - at < (off_t)n ? size - at : (off_t)n);
  if (pread(fd, buf, have, at) < 0) memset(buf, 0, n);
}

int ff_power_apply(const char *record_path, unsigned seed) {
  FILE *f = fopen(record_path, "r");
  if (!f) return -1;
  srand(seed);
  int damaged = 0;
  long long durable;
  char path[600], shadow[700];
  char dir[700] = "";
  while (fscanf(f, "%lld %599[^\t]\t%699[^\n]\n", &durable, path, shadow) == 3) {
    bool has_image = strcmp(shadow, "-") != 0;
    if (has_image && !dir[0]) {
      snprintf(dir, sizeof dir, "%s", shadow);
      char *slash = strrchr(dir, '/');
      if (slash) *slash = 0;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (durable < 0) durable = 0;
    int fd = open(path, O_RDWR);
    int img = has_image ? open(shadow, O_RDONLY) : -1;
    if (fd < 0) return -1;
    /* What no fsync covered is lost, garbled or kept, 512-byte sector by
     * sector, as a power failure tears it: every sector that differs from
     * the durable image, and the file's length past the durable one. */
    off_t size = st.st_size;
    if (size > durable && rand() % 2 == 0) size = (off_t)durable;
    bool touched = size != st.st_size;
    for (off_t at = 0; at < size; at += 512) {
      uint8_t now[512], then[512];
      size_t n = (size_t)(size - at < 512 ? size - at : 512);
      read_zero_padded(fd, st.st_size, at, now, n);
      read_zero_padded(img, img >= 0 ? (off_t)durable : 0, at, then, n);
      if (memcmp(now, then, n) == 0) continue;
      int what = rand() % 3;              /* 0: lost, 1: garbled, 2: kept */
      if (what == 2) continue;
      /* Garbled: the bytes written since the fsync turn to junk; those the
       * fsync had made durable and nothing rewrote stay (a drive writes a
       * sector whole or not at all; it is what the write held that tears). */
      if (what == 1)
        for (size_t i = 0; i < n; i++)
          if (now[i] != then[i]) then[i] = (uint8_t)rand();
      if (pwrite(fd, then, n, at) != (ssize_t)n) return -1;
      touched = true;
    }
    if (size != st.st_size && ftruncate(fd, size) != 0) return -1;
    close(fd);
    if (img >= 0) close(img);
    if (has_image) unlink(shadow);
    damaged += touched;
  }
  fclose(f);
  if (dir[0]) rmdir(dir);
  return damaged;
}
