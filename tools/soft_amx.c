/* A software AMX tile unit: the register-numbered tile instructions the x86-amx kernels call
 * (ldtilecfg, sttilecfg, tilezero, tileloadd, tdpbusd, tilestored), as functions on eight tile
 * registers of the calling thread, following the instructions' definitions (Intel SDM, "Intel
 * AMX"): a register has the rows and bytes per row the configuration gives it;
 * tdpbusd(c, a, b): C[m][n] += sum over k < K of A[m][k] (u8) * B[k / 4][4 n + k % 4] (s8),
 * M = c's rows, N = c's bytes per row / 4, K = a's bytes per row.
 *
 * tools/soft_amx.py reroutes a kernel's intrinsic calls here, so the kernels' own instruction
 * sequence (register numbers, pointers, strides, configuration) runs on a CPU without AMX,
 * and counts what it executes.  Anything the hardware would fault on (a register used
 * unconfigured, shapes that do not match) aborts with a message. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  uint8_t palette;
  uint8_t rows[8];
  uint16_t colsb[8];
  uint8_t data[8][16][64];
} tiles_t;

static __thread tiles_t T;
static __thread int64_t last_dot[8]; /* per accumulator: this thread's dot count at its last dot */
static __thread int64_t dots_here;

/* executed, over all threads since the last reset (see f8tvm_soft_counts) */
enum { DOTS, MACS, LOADS, LOAD_BYTES, STORES, CONFIGS, GAP1, GAP2, GAP3, NCOUNTS };
static int64_t counts[NCOUNTS];

static void add(int what, int64_t n) { __atomic_fetch_add(&counts[what], n, __ATOMIC_RELAXED); }

void f8tvm_soft_counts(int64_t* out) {
  for (int i = 0; i < NCOUNTS; ++i) out[i] = __atomic_load_n(&counts[i], __ATOMIC_RELAXED);
}

void f8tvm_soft_reset(void) {
  for (int i = 0; i < NCOUNTS; ++i) __atomic_store_n(&counts[i], 0, __ATOMIC_RELAXED);
}

static void fail(const char* what, int reg) {
  fprintf(stderr, "soft_amx: %s (tile register %d)\n", what, reg);
  abort();
}

static void check(int reg) {
  if (reg < 0 || reg > 7) fail("no such register", reg);
  if (T.palette != 1) fail("used before ldtilecfg", reg);
  if (T.rows[reg] == 0 || T.rows[reg] > 16 || T.colsb[reg] == 0 || T.colsb[reg] > 64)
    fail("register not configured", reg);
}

int32_t f8tvm_soft_ldtilecfg(const void* cfg) {
  const uint8_t* c = (const uint8_t*)cfg;
  add(CONFIGS, 1);
  memset(&T, 0, sizeof(T));
  T.palette = c[0];
  for (int r = 0; r < 8; ++r) {
    T.colsb[r] = (uint16_t)(c[16 + 2 * r] | (c[17 + 2 * r] << 8));
    T.rows[r] = c[48 + r];
  }
  return 0;
}

int32_t f8tvm_soft_sttilecfg(void* cfg) {
  uint8_t* c = (uint8_t*)cfg;
  memset(c, 0, 64);
  if (T.palette == 0) return 0; /* not configured: all zero, as the instruction stores */
  c[0] = T.palette;
  for (int r = 0; r < 8; ++r) {
    c[16 + 2 * r] = (uint8_t)(T.colsb[r] & 0xff);
    c[17 + 2 * r] = (uint8_t)(T.colsb[r] >> 8);
    c[48 + r] = T.rows[r];
  }
  return 0;
}

int32_t f8tvm_soft_tilezero(int8_t reg) {
  check(reg);
  memset(T.data[reg], 0, sizeof(T.data[reg]));
  last_dot[reg] = -8; /* a fresh accumulator: no dot to wait for */
  return 0;
}

int32_t f8tvm_soft_tileloadd64(int8_t reg, const void* base, int64_t stride) {
  check(reg);
  add(LOADS, 1);
  add(LOAD_BYTES, (int64_t)T.rows[reg] * T.colsb[reg]);
  for (int m = 0; m < T.rows[reg]; ++m)
    memcpy(T.data[reg][m], (const uint8_t*)base + m * stride, T.colsb[reg]);
  return 0;
}

int32_t f8tvm_soft_tilestored64(int8_t reg, void* base, int64_t stride) {
  check(reg);
  add(STORES, 1);
  for (int m = 0; m < T.rows[reg]; ++m)
    memcpy((uint8_t*)base + m * stride, T.data[reg][m], T.colsb[reg]);
  return 0;
}

int32_t f8tvm_soft_tdpbusd(int8_t c, int8_t a, int8_t b) {
  check(c);
  check(a);
  check(b);
  if (c == a || c == b || a == b) fail("tdpbusd operands must be distinct", c);
  int M = T.rows[c], N = T.colsb[c] / 4, K = T.colsb[a];
  if (T.rows[a] != M || K % 4 || T.rows[b] != K / 4 || T.colsb[b] != T.colsb[c])
    fail("tdpbusd shapes do not match", c);
  add(DOTS, 1);
  add(MACS, (int64_t)M * N * K);
  /* how many dots ago this accumulator was last added into: 1 means right before (the dot
   * waits for that one's result) */
  int64_t gap = dots_here - last_dot[(int)c];
  if (gap >= 1 && gap <= 3) add(GAP1 + (int)gap - 1, 1);
  last_dot[(int)c] = dots_here;
  ++dots_here;
  for (int m = 0; m < M; ++m) {
    int32_t* acc = (int32_t*)T.data[c][m];
    for (int n = 0; n < N; ++n) {
      int32_t sum = 0;
      for (int k = 0; k < K; ++k)
        sum += (int32_t)T.data[a][m][k] * (int32_t)(int8_t)T.data[b][k / 4][4 * n + k % 4];
      acc[n] += sum;
    }
  }
  return 0;
}
