/* cpu.c - which optional instruction sets the code may use (internal.h). */
#include "internal.h"

#include <stdlib.h>

static int features = -1; /* -1 until known; every thread computes the same value */

unsigned bp__cpu_features(void) {
  int f = __atomic_load_n(&features, __ATOMIC_RELAXED);
  if (f >= 0) return (unsigned)f;
  f = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (!getenv("BATPAK_NO_SIMD")) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1")) f |= BP__CPU_CLMUL;
    if (__builtin_cpu_supports("ssse3")) f |= BP__CPU_SSSE3;
    if (__builtin_cpu_supports("popcnt")) f |= BP__CPU_POPCNT;
    if ((f & BP__CPU_CLMUL) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq"))
      f |= BP__CPU_VCLMUL;
  }
#endif
  __atomic_store_n(&features, f, __ATOMIC_RELAXED);
  return (unsigned)f;
}
