/*
 * head.c - the head file, <dir>/batpak.head: where the writer says how far
 * the log it has published goes, for read-only handles in other processes
 * (docs/FOLLOWERS.md; the layout is in docs/FORMAT.md).
 *
 * One page, mapped shared by the writer and every follower. The writer
 * rewrites a small record under a sequence lock after each publish, then
 * moves the futex word `wake` and wakes the followers that said they sleep.
 * The file holds nothing the log does not: followers read frames from the
 * segments and check them, and only trust the record while its writer is
 * alive, which the writer's open-file-description lock on the page's first
 * byte tells without taking anything (a lock test). Nothing here is made
 * durable: after a reboot no writer holds the lock and the record is ignored.
 *
 * Memory order: the writer makes seq odd, stores the fields, makes seq even
 * (release); a reader loads seq (acquire), the fields, then seq again after
 * an acquire fence, and retries while it was odd or moved. Every field is
 * read and written with atomic operations of its own size, so a torn read is
 * impossible and the retry is only for consistency between fields.
 */
#include "store/store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAGIC "BPXHEAD1"
#define HEAD_VERSION 1u
#define HEAD_SIZE 4096u

/* The page as both sides map it, in the machine's byte order (the file
 * never leaves it). Offsets are part of the format (docs/FORMAT.md). */
typedef struct bp__head_page {
  char magic[8];            /*   0 */
  uint32_t version;         /*   8 */
  uint32_t size;            /*  12 the page's size, 4096 */
  uint8_t reserved0[24];    /*  16 */
  uint32_t seq;             /*  40 sequence lock: odd while the record changes */
  uint32_t reserved1;       /*  44 */
  int64_t epoch;            /*  48 the log epoch (created_ns of the lowest segment) */
  uint64_t count;           /*  56 events published */
  uint64_t segment;         /*  64 the segment the last published frame is in */
  uint64_t frames_end;      /*  72 the offset just past it */
  uint64_t durable;         /*  80 events known durable */
  uint8_t reserved2[40];    /*  88 */
  uint32_t wake;            /* 128 the futex word: moves with every publish */
  uint32_t sleepers;        /* 132 followers about to wait on wake */
} bp__head_page;

_Static_assert(offsetof(bp__head_page, seq) == 40, "head layout");
_Static_assert(offsetof(bp__head_page, wake) == 128, "head layout");
_Static_assert(sizeof(bp__head_page) <= HEAD_SIZE, "head layout");

#define LOAD(p) __atomic_load_n(&(p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELAXED)

static void head_path(const bp_store *s, char *buf, size_t size) {
  snprintf(buf, size, "%s/%s", s->dir, BP__HEAD_FILE);
}

static bool page_valid(const bp__head_page *p) {
  return memcmp(p->magic, HEAD_MAGIC, 8) == 0 && LOAD(p->version) == HEAD_VERSION;
}

static void head_unmap(bp__head *h) {
  if (h->page) bp__os_table.munmap(h->page, HEAD_SIZE);
  if (h->fd >= 0) bp__os_table.close(h->fd);
  h->page = NULL;
  h->fd = -1;
  h->writable = false;
}

/* The open-file-description lock on byte 0 that says a writer is alive. */
static int writer_lock(int fd, short type, int cmd) {
  struct flock l = {0};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = 0;
  l.l_len = 1;
  int rc = fcntl(fd, cmd, &l);
  if (rc != 0) return -1;
  return cmd == F_OFD_GETLK ? l.l_type != F_UNLCK : 0;
}

bp_status bp__head_attach_writer(bp_store *s, const bp__head_rec *first) {
  bp__head *h = &s->head;
  char path[4400];
  head_path(s, path, sizeof path);
  const char *what = "open";
  int err = 0;
  h->fd = bp__os_table.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  struct stat sb;
  if (h->fd < 0) err = errno;
  else if (bp__os_table.fstat(h->fd, &sb) != 0) err = errno, what = "stat";
  else if (sb.st_size != HEAD_SIZE && bp__os_table.ftruncate(h->fd, HEAD_SIZE) != 0) err = errno, what = "size";
  if (!err) {
    void *m = bp__os_table.mmap(NULL, HEAD_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, h->fd, 0);
    if (m == MAP_FAILED) err = errno, what = "map";
    else h->page = m;
  }
  if (err) {
    /* Followers then read the log to its end, as without a head file. */
    bp__log(s, BP_LOG_WARN, "%s: %s failed (%s); read-only handles in other processes will not follow this writer",
            path, what, strerror(err ? err : EIO));
    head_unmap(h);
    return BP_OK;
  }
  bp__head_page *p = h->page;
  if (!page_valid(p)) {
    /* A new file (or one of another version): everything but the futex
     * words, on which followers may already wait, starts from zero. */
    STORE(p->seq, 0);
    memset(p->reserved0, 0, sizeof p->reserved0);
    memset(p->reserved2, 0, sizeof p->reserved2);
    STORE(p->epoch, 0);
    STORE(p->count, 0);
    STORE(p->segment, 0);
    STORE(p->frames_end, 0);
    STORE(p->durable, 0);
    STORE(p->version, HEAD_VERSION);
    STORE(p->size, HEAD_SIZE);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(p->magic, HEAD_MAGIC, 8);
  }
  h->writable = true;
  h->writer = true;
  /* The record first, the lock after it: a follower that finds the writer
   * live must find its record too, not the previous writer's or zeros. */
  bp__head_publish(h, first);
  if (writer_lock(h->fd, F_WRLCK, F_OFD_SETLK) != 0) {
    bp__log(s, BP_LOG_WARN, "%s: lock failed (%s); read-only handles in other processes will not follow this "
            "writer", path, strerror(errno));
    head_unmap(h);
    h->writer = false;
  }
  return BP_OK;
}

void bp__head_publish(bp__head *h, const bp__head_rec *r) {
  bp__head_page *p = h->page;
  if (!p || !h->writer) return;
  /* Nothing changed (an open after a close, a close after nothing was
   * appended): the page is not touched, so that such an open writes
   * nothing, and nobody is woken for nothing. */
  if (LOAD(p->epoch) == r->epoch && LOAD(p->count) == r->count && LOAD(p->segment) == r->segment &&
      LOAD(p->frames_end) == r->frames_end && LOAD(p->durable) == r->durable)
    return;
  uint32_t q = LOAD(p->seq);
  __atomic_store_n(&p->seq, q | 1u, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  STORE(p->epoch, r->epoch);
  STORE(p->count, r->count);
  STORE(p->segment, r->segment);
  STORE(p->frames_end, r->frames_end);
  STORE(p->durable, r->durable);
  __atomic_store_n(&p->seq, (q | 1u) + 1, __ATOMIC_RELEASE);
  /* Dekker with a follower going to sleep (bp__head_wait): it raises
   * sleepers and then looks at wake; here wake moves and then sleepers is
   * looked at. Sequentially consistent on both sides, so one of the two
   * sees the other's store: the follower does not sleep, or it is woken. */
  __atomic_fetch_add(&p->wake, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST) != 0) bp__park_wake_shared((_Atomic uint32_t *)&p->wake);
}

void bp__head_detach(bp__head *h) {
  /* Closing the descriptor releases the writer's lock: followers then know
   * the record for final (until the next writer). They need no wake-up:
   * nothing was published. */
  head_unmap(h);
  h->writer = false;
}

bool bp__head_attach_reader(bp_store *s) {
  bp__head *h = &s->head;
  if (h->page) return true;
  char path[4400];
  head_path(s, path, sizeof path);
  bool writable = true;
  int fd = bp__os_table.open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0 && (errno == EACCES || errno == EROFS || errno == EPERM)) {
    writable = false; /* it can read the record, not say that it sleeps: it looks every 50 ms */
    fd = bp__os_table.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
  }
  if (fd < 0) return false;
  struct stat sb;
  void *m = MAP_FAILED;
  if (bp__os_table.fstat(fd, &sb) == 0 && sb.st_size >= HEAD_SIZE)
    m = bp__os_table.mmap(NULL, HEAD_SIZE, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    bp__os_table.close(fd);
    return false;
  }
  h->fd = fd;
  h->page = m;
  h->writable = writable;
  h->writer = false;
  return true;
}

bool bp__head_read(const bp__head *h, bp__head_rec *r) {
  const bp__head_page *p = h->page;
  if (!p || !page_valid(p)) return false;
  for (;;) {
    uint32_t q = __atomic_load_n(&p->seq, __ATOMIC_ACQUIRE);
    if (q & 1u) {
      sched_yield();
      continue;
    }
    r->epoch = LOAD(p->epoch);
    r->count = LOAD(p->count);
    r->segment = LOAD(p->segment);
    r->frames_end = LOAD(p->frames_end);
    r->durable = LOAD(p->durable);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (LOAD(p->seq) == q) break;
  }
  r->live = writer_lock(h->fd, F_RDLCK, F_OFD_GETLK) == 1;
  return true;
}

uint32_t bp__head_wake_seen(const bp__head *h) {
  return h->page ? __atomic_load_n(&h->page->wake, __ATOMIC_SEQ_CST) : 0;
}

void bp__head_wait(bp__head *h, uint32_t seen, int timeout_ms) {
  bp__head_page *p = h->page;
  if (!p || !h->writable) {
    /* Nothing to sleep on, or no way to say so: look again shortly. */
    int ms = timeout_ms < 0 || timeout_ms > BP__HEAD_POLL_MS ? BP__HEAD_POLL_MS : timeout_ms;
    struct timespec t = {0, (long)ms * 1000000};
    nanosleep(&t, NULL);
    return;
  }
  __atomic_fetch_add(&p->sleepers, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&p->wake, __ATOMIC_SEQ_CST) == seen)
    bp__park_wait_shared((_Atomic uint32_t *)&p->wake, seen, timeout_ms);
  __atomic_fetch_sub(&p->sleepers, 1, __ATOMIC_SEQ_CST);
}

void bp__head_nudge(bp__head *h) {
  if (h->page && h->writable) {
    __atomic_fetch_add(&h->page->wake, 1, __ATOMIC_SEQ_CST);
    bp__park_wake_shared((_Atomic uint32_t *)&h->page->wake);
  }
}

void bp__head_free(bp__head *h) { head_unmap(h); }
