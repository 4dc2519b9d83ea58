/* cpu.c - which optional instruction sets the code may use (internal.h). */
#include "internal.h"

#include <stdlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

/* Whether PDEP and PEXT take a few cycles: on Intel processors with BMI2 and
 * on AMD's from family 19h (Zen 3) on; AMD's Zen 1 and 2 run them in
 * microcode, a few hundred cycles each. */
static bool fast_pext(void) {
  if (!__builtin_cpu_supports("bmi2")) return false;
  if (__builtin_cpu_is("intel")) return true;
  if (!__builtin_cpu_is("amd")) return false;
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  unsigned family = (eax >> 8) & 0xf;
  if (family == 0xf) family += (eax >> 20) & 0xff;
  return family >= 0x19;
}
#endif

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
    if ((f & BP__CPU_SSSE3) && (f & BP__CPU_POPCNT) && __builtin_cpu_supports("avx2") && fast_pext())
      f |= BP__CPU_BMI2;
  }
#endif
  __atomic_store_n(&features, f, __ATOMIC_RELAXED);
  return (unsigned)f;
}
