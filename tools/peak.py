"""This machine's 8-bit MAC rate per dot-product instruction: the bench's peak bound.

Each rate is measured, not taken from a data sheet: a small C program runs a register-only loop
of independent chains of the instruction (enough chains to cover its latency) on every thread,
and the best of five runs counts.  ``peak_macs(instruction, threads)`` returns MACs per second,
or None where the instruction has no microbenchmark, the compiler lacks its flag or this CPU
cannot run it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

# instruction -> (the loop body, 8-bit MACs per loop).  Written in assembly on fixed registers:
# independent accumulator chains (12 cover vpdpbusd's latency at its throughput; vpmaddwd's
# pairs with a vpaddd each) whose operands never leave the registers, which C would not
# guarantee (gcc spilled accumulators inside the loop when 16 ymm registers were all in use).
_VECTOR = {
    # AVX2: 8-bit values widened to 16 bits, pair products summed into int32, then added
    "vpmaddwd": ("".join(f"vpmaddwd %%ymm{i}, %%ymm15, %%ymm{12 + i % 2}\\n"
                         f"vpaddd %%ymm{12 + i % 2}, %%ymm{6 + i}, %%ymm{6 + i}\\n"
                         for i in range(6)), 6 * 16),
    # AVX-512 VNNI: u8 x s8, 4-deep, 16 lanes
    "vpdpbusd": ("".join(f"vpdpbusd %%zmm14, %%zmm15, %%zmm{i}\\n" for i in range(12)),
                 12 * 64),
    # AVX-VNNI: the VEX form on ymm, 8 lanes ({vex}: braces are escaped in extended asm)
    "vpdpbusd.ymm": ("".join(f"%{{vex%}} vpdpbusd %%ymm14, %%ymm15, %%ymm{i}\\n"
                             for i in range(12)), 12 * 32),
}
_VECTOR_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
  long n = 20000000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < n; k++)
    __asm__ volatile("BODY" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
                     "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double dt = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%f\n", n * MACS.0 / dt);
  return 0;
}
"""

_AMX_C = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
/* AMX-INT8: four independent 16x16 int32 tiles, each tdpbusd 16 x 16 x 64 u8 x s8 MACs */
typedef struct {
  uint8_t palette, start, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} cfg_t;
int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */)) return 1;
  cfg_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
  _tile_loadconfig(&cfg);
  static int8_t buf[16 * 64];
  static int32_t out[16 * 16];
  for (int i = 0; i < 16 * 64; i++) buf[i] = (int8_t)(i % 7);
  _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64);  /* the tile number is an immediate */
  _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  long n = 5000000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < n; k++) {
    _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  _tile_stored(0, out, 64);
  _tile_release();
  double dt = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%f %d\n", n * 4.0 * 16 * 16 * 64 / dt, out[0]); /* out: keeps the work */
  return 0;
}
"""
AMX = "tdpbusd"
# the CPU flag each instruction needs
NEEDS = {"vpmaddwd": "avx2", "vpdpbusd": "avx512_vnni", "vpdpbusd.ymm": "avx_vnni",
         AMX: "amx_int8"}


def _vector_source(instruction: str) -> str:
    body, macs = _VECTOR[instruction]
    return _VECTOR_C.replace("BODY", body).replace("MACS", str(macs))


def peak_macs(instruction: str | None, threads: int, cpu_flags=None) -> float | None:
    """8-bit MACs per second of ``instruction`` on ``threads`` threads, measured here (None if
    unknown: no microbenchmark, no compiler support, or ``cpu_flags`` lacks the instruction)."""
    if instruction not in NEEDS:
        return None
    if cpu_flags is not None and NEEDS[instruction] not in cpu_flags:
        return None
    flags, src = ("-mamx-tile -mamx-int8", _AMX_C) if instruction == AMX else (
        "", _vector_source(instruction))
    with tempfile.TemporaryDirectory() as d:
        path, exe = os.path.join(d, "peak.c"), os.path.join(d, "peak")
        with open(path, "w") as f:
            f.write(src)
        if subprocess.run(["gcc", "-O2", *flags.split(), path, "-o", exe],
                          capture_output=True).returncode:
            return None
        best = 0.0
        time.sleep(1.0)  # measured after timed rounds: let their worker threads go idle
        for _ in range(5):  # shared cores: keep the best of five
            procs = [subprocess.Popen([exe], stdout=subprocess.PIPE, text=True)
                     for _ in range(threads)]
            outs = [p.communicate()[0].split() for p in procs]
            if any(p.returncode or not o for p, o in zip(procs, outs)):
                return None
            best = max(best, sum(float(o[0]) for o in outs))
    return best
