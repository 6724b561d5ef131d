#include <stdio.h>
#include <stdlib.h>
#include <time.h>
__attribute__((noinline)) int probed(void *p, long n) { __asm__ volatile(""); return (int)n; }
int main(int argc, char **argv) {
    long n = atol(argv[1]), s = 0; struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) s += probed(&s, i);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f ns/call\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return s == 42;
}
