/*
 * follow_proto.c - the prototype behind docs/FOLLOWERS.md: how a writer
 * process can tell follower processes that it published events, measured.
 *
 * A writer process publishes a sequence number (and the CLOCK_MONOTONIC time
 * of the publish) in a small file both processes map, at random intervals of
 * 0.5-2.5 ms; a follower process waits for each publish and records how long
 * after it the follower ran. Three ways to wait:
 *   futex    FUTEX_WAIT on the mapped word; the writer calls FUTEX_WAKE only
 *            when a follower said it sleeps (a flag in the same page);
 *   inotify  the follower polls an inotify fd watching the file (IN_MODIFY);
 *            the writer pwrite()s the word, when a follower said it sleeps;
 *   fifo     the follower polls a named pipe; the writer writes a byte to it
 *            (non-blocking), when a follower said it sleeps.
 * inotify and fifo give the follower a file descriptor (what bp_sub_fd must
 * be); futex needs a thread per follower to turn a wake-up into one.
 * Also measured: the writer's cost per publish with and without a sleeping
 * follower.
 *
 * usage: follow-proto [SAMPLES]        (default 3000 per way)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct shared {
  _Atomic uint32_t seq;      /* the published counter (the futex word) */
  _Atomic uint32_t sleeping; /* a follower is about to sleep or sleeps */
  _Atomic uint64_t at_ns;    /* when seq was published */
  _Atomic uint32_t done;
} shared;

enum way { FUTEX, INOTIFY, FIFO };
static const char *const way_name[] = {"futex", "inotify", "fifo"};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static long futex(_Atomic uint32_t *w, int op, uint32_t v) {
  return syscall(SYS_futex, (uint32_t *)w, op, v, NULL, NULL, 0);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static void follower(shared *sh, enum way w, const char *file, const char *fifo, int samples, int out) {
  int fd = -1;
  if (w == INOTIFY) {
    fd = inotify_init1(IN_NONBLOCK);
    inotify_add_watch(fd, file, IN_MODIFY);
  } else if (w == FIFO) {
    fd = open(fifo, O_RDONLY | O_NONBLOCK);
  }
  uint64_t *lat = calloc((size_t)samples, sizeof *lat);
  uint32_t seen = atomic_load(&sh->seq);
  int got = 0;
  while (got < samples) {
    uint32_t cur = atomic_load(&sh->seq);
    if (cur != seen) {
      lat[got++] = now_ns() - atomic_load(&sh->at_ns);
      seen = cur;
      continue;
    }
    atomic_store(&sh->sleeping, 1);
    if (atomic_load(&sh->seq) != seen) continue; /* published meanwhile */
    if (w == FUTEX) {
      futex(&sh->seq, FUTEX_WAIT, seen);
    } else {
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, 1, 1000);
      char buf[4096];
      while (read(fd, buf, sizeof buf) > 0) {}
    }
  }
  atomic_store(&sh->done, 1);
  qsort(lat, (size_t)samples, sizeof *lat, cmp_u64);
  uint64_t r[3] = {lat[samples / 2], lat[samples * 99 / 100], lat[samples - 1]};
  if (write(out, r, sizeof r) != (ssize_t)sizeof r) _exit(1);
  free(lat);
  _exit(0);
}

/* The writer's side of one publish; returns its cost in ns. */
static uint64_t publish(shared *sh, enum way w, int file_fd, int fifo_fd) {
  uint64_t t0 = now_ns();
  atomic_store(&sh->at_ns, t0);
  uint32_t v = atomic_fetch_add(&sh->seq, 1) + 1;
  if (atomic_exchange(&sh->sleeping, 0)) {
    if (w == FUTEX) futex(&sh->seq, FUTEX_WAKE, INT32_MAX);
    else if (w == INOTIFY) (void)!pwrite(file_fd, &v, sizeof v, 64);
    else (void)!write(fifo_fd, "x", 1);
  }
  return now_ns() - t0;
}

int main(int argc, char **argv) {
  int samples = argc > 1 ? atoi(argv[1]) : 3000;
  if (samples < 100) samples = 100;
  char dir[] = "/tmp/follow-proto-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char file[128], fifo[128];
  snprintf(file, sizeof file, "%s/head", dir);
  snprintf(fifo, sizeof fifo, "%s/wake", dir);
  mkfifo(fifo, 0600);
  printf("%-8s %10s %10s %10s   %s\n", "way", "p50 us", "p99 us", "max us", "writer ns/publish: follower asleep, none");
  for (int w = FUTEX; w <= FIFO; w++) {
    int file_fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (ftruncate(file_fd, 4096) != 0) return 1;
    shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, file_fd, 0);
    int p[2];
    if (pipe(p) != 0) return 1;
    pid_t pid = fork();
    if (pid == 0) follower(sh, (enum way)w, file, fifo, samples, p[1]);
    int fifo_fd = w == FIFO ? open(fifo, O_WRONLY) : -1; /* waits for the follower's open */
    if (fifo_fd >= 0) fcntl(fifo_fd, F_SETFL, O_NONBLOCK);
    usleep(100000);
    uint64_t woke = 0, n_woke = 0;
    unsigned seed = 1;
    while (!atomic_load(&sh->done)) {
      struct timespec d = {0, 500000 + (long)(rand_r(&seed) % 2000000)};
      nanosleep(&d, NULL);
      bool asleep = atomic_load(&sh->sleeping);
      uint64_t c = publish(sh, (enum way)w, file_fd, fifo_fd);
      if (asleep) woke += c, n_woke++;
    }
    uint64_t r[3];
    if (read(p[0], r, sizeof r) != (ssize_t)sizeof r) return 1;
    waitpid(pid, NULL, 0);
    /* Without a follower: the flag stays clear, a publish is two atomics. */
    uint64_t t0 = now_ns();
    for (int i = 0; i < 100000; i++) publish(sh, (enum way)w, file_fd, fifo_fd);
    uint64_t idle = (now_ns() - t0) / 100000;
    printf("%-8s %10.1f %10.1f %10.1f   %llu, %llu\n", way_name[w], r[0] / 1e3, r[1] / 1e3, r[2] / 1e3,
           (unsigned long long)(n_woke ? woke / n_woke : 0), (unsigned long long)idle);
    munmap(sh, 4096);
    close(file_fd);
    if (fifo_fd >= 0) close(fifo_fd);
    close(p[0]);
    close(p[1]);
  }
  unlink(file);
  unlink(fifo);
  rmdir(dir);
  return 0;
}
