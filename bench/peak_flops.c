// The machine's practical fp32 peak: independent AVX2 fused multiply-adds on every core.
// docs/performance.md divides achieved GFLOP/s by this number.
//
//   cc -O2 -mavx2 -mfma bench/peak_flops.c -o /tmp/peak_flops -lpthread && /tmp/peak_flops [threads]
//
// Twelve independent accumulators hide the FMA latency (4 cycles, 2 pipes); each FMA on a
// 256-bit vector is 16 FLOP.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define ACCUMULATORS 12
static const long ITERATIONS = 200000000;

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *spin(void *sink) {
    __m256 acc[ACCUMULATORS];
    const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
    for (int i = 0; i < ACCUMULATORS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < ITERATIONS; it++) {
        // Fully unrolled so that the accumulators stay in registers.
#pragma GCC unroll 12
        for (int i = 0; i < ACCUMULATORS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    }
    float total = 0, lanes[8];
    for (int i = 0; i < ACCUMULATORS; i++) {
        _mm256_storeu_ps(lanes, acc[i]);
        total += lanes[0];
    }
    *(float *)sink = total;  // keeps the loop from being optimised away
    return NULL;
}

int main(int argc, char **argv) {
    long cores = argc > 1 ? atol(argv[1]) : sysconf(_SC_NPROCESSORS_ONLN);
    long counts[2] = {1, cores};
    for (int c = 0; c < (cores > 1 ? 2 : 1); c++) {
        long threads = counts[c];
        pthread_t ids[threads];
        float sinks[threads];
        double start = seconds();
        for (long t = 0; t < threads; t++) pthread_create(&ids[t], NULL, spin, &sinks[t]);
        for (long t = 0; t < threads; t++) pthread_join(ids[t], NULL);
        double elapsed = seconds() - start;
        printf("%ld thread(s): %.1f GFLOP/s\n", threads,
               threads * (double)ITERATIONS * ACCUMULATORS * 16 / elapsed / 1e9);
    }
    return 0;
}
