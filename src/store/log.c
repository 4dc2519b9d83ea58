/*
 * log.c - the store's log callback and clock: the bottom of src/store/, which
 * every layer above uses to say what it did and when.
 */
#include "store/store_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

void bp__log(bp_store *s, int level, const char *fmt, ...) {
  if (!s->cfg.log_fn) return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  s->cfg.log_fn(level, msg, s->cfg.log_ctx);
}

int64_t bp__now_us(const bp_store *s) {
  if (s->cfg.clock) return s->cfg.clock(s->cfg.clock_ctx);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}
