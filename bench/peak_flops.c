// The machine's practical fp32 peak: independent fused multiply-adds on every core, with
// 256-bit (AVX2) vectors and, where the CPU has them, 512-bit (AVX-512) vectors.
// docs/performance.md divides achieved GFLOP/s by the larger of the two.
//
//   cc -O2 bench/peak_flops.c -o /tmp/peak_flops -lpthread && /tmp/peak_flops [threads]
//
// Twelve independent accumulators hide the FMA latency (4 cycles, 2 pipes); each FMA is
// 2 FLOP per lane: 16 FLOP on a 256-bit vector, 32 on a 512-bit one.
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

// One spinning thread's work: ACCUMULATORS independent FMA chains on vectors of type VEC.
#define SPIN(NAME, TARGET, VEC, SET1, FMADD, STOREU, LANES)                               \
    __attribute__((target(TARGET))) static void *NAME(void *sink) {                        \
        VEC acc[ACCUMULATORS];                                                              \
        const VEC a = SET1(0.999f), b = SET1(0.001f);                                       \
        for (int i = 0; i < ACCUMULATORS; i++) acc[i] = SET1((float)i);                     \
        for (long it = 0; it < ITERATIONS; it++) {                                          \
            /* Fully unrolled so that the accumulators stay in registers. */                \
            _Pragma("GCC unroll 12")                                                        \
            for (int i = 0; i < ACCUMULATORS; i++) acc[i] = FMADD(acc[i], a, b);            \
        }                                                                                   \
        float total = 0, lanes[LANES];                                                      \
        for (int i = 0; i < ACCUMULATORS; i++) {                                            \
            STOREU(lanes, acc[i]);                                                          \
            total += lanes[0];                                                              \
        }                                                                                   \
        *(float *)sink = total; /* keeps the loop from being optimised away */              \
        return NULL;                                                                        \
    }

SPIN(spin256, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps, 8)
SPIN(spin512, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps, 16)

static void measure(const char *name, void *(*spin)(void *), int flop_per_fma, long cores) {
    long counts[2] = {1, cores};
    for (int c = 0; c < (cores > 1 ? 2 : 1); c++) {
        long threads = counts[c];
        pthread_t ids[threads];
        float sinks[threads];
        double start = seconds();
        for (long t = 0; t < threads; t++) pthread_create(&ids[t], NULL, spin, &sinks[t]);
        for (long t = 0; t < threads; t++) pthread_join(ids[t], NULL);
        double elapsed = seconds() - start;
        printf("%s, %ld thread(s): %.1f GFLOP/s\n", name, threads,
               threads * (double)ITERATIONS * ACCUMULATORS * flop_per_fma / elapsed / 1e9);
    }
}

int main(int argc, char **argv) {
    long cores = argc > 1 ? atol(argv[1]) : sysconf(_SC_NPROCESSORS_ONLN);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        measure("AVX2 (256-bit FMA)", spin256, 16, cores);
    if (__builtin_cpu_supports("avx512f"))
        measure("AVX-512 (512-bit FMA)", spin512, 32, cores);
    else
        printf("AVX-512: not available on this CPU\n");
    return 0;
}
