/* fpucheck SECONDS: holds one random value in all 16 vector registers (ymm with AVX2, else xmm),
 * spins, reads them back and prints a MISMATCH line when they changed. The registers are only
 * written by this process, so a change means the kernel or the hypervisor restored another
 * context's state into it (bench/lab_health.py runs two of these in dom0 during its cycles). */
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __AVX2__
#define W 32
#define R(n) "%%ymm" #n
#define MOV "vmovdqu"
#else
#define W 16
#define R(n) "%%xmm" #n
#define MOV "movdqu"
#endif

int main(int argc, char **argv) {
    long secs = argc > 1 ? atol(argv[1]) : 60;
    time_t end = time(NULL) + secs;
    unsigned long iters = 0, bad = 0;
    unsigned seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    unsigned char want[W], got[16][W];
    while (time(NULL) < end) {
        for (int i = 0; i < W; i++) want[i] = (unsigned char)rand_r(&seed);
        __asm__ volatile(
            MOV " %[w], " R(0) "\n\t"
            MOV " " R(0) ", " R(1) "\n\t" MOV " " R(0) ", " R(2) "\n\t" MOV " " R(0) ", " R(3) "\n\t"
            MOV " " R(0) ", " R(4) "\n\t" MOV " " R(0) ", " R(5) "\n\t" MOV " " R(0) ", " R(6) "\n\t"
            MOV " " R(0) ", " R(7) "\n\t" MOV " " R(0) ", " R(8) "\n\t" MOV " " R(0) ", " R(9) "\n\t"
            MOV " " R(0) ", " R(10) "\n\t" MOV " " R(0) ", " R(11) "\n\t" MOV " " R(0) ", " R(12) "\n\t"
            MOV " " R(0) ", " R(13) "\n\t" MOV " " R(0) ", " R(14) "\n\t" MOV " " R(0) ", " R(15) "\n\t"
            "mov $200000, %%ecx\n1:\n\tpause\n\tdec %%ecx\n\tjnz 1b\n\t"
            MOV " " R(0) ", 0*%c[w2](%[g])\n\t" MOV " " R(1) ", 1*%c[w2](%[g])\n\t"
            MOV " " R(2) ", 2*%c[w2](%[g])\n\t" MOV " " R(3) ", 3*%c[w2](%[g])\n\t"
            MOV " " R(4) ", 4*%c[w2](%[g])\n\t" MOV " " R(5) ", 5*%c[w2](%[g])\n\t"
            MOV " " R(6) ", 6*%c[w2](%[g])\n\t" MOV " " R(7) ", 7*%c[w2](%[g])\n\t"
            MOV " " R(8) ", 8*%c[w2](%[g])\n\t" MOV " " R(9) ", 9*%c[w2](%[g])\n\t"
            MOV " " R(10) ", 10*%c[w2](%[g])\n\t" MOV " " R(11) ", 11*%c[w2](%[g])\n\t"
            MOV " " R(12) ", 12*%c[w2](%[g])\n\t" MOV " " R(13) ", 13*%c[w2](%[g])\n\t"
            MOV " " R(14) ", 14*%c[w2](%[g])\n\t" MOV " " R(15) ", 15*%c[w2](%[g])\n\t"
            :
            : [w] "m"(want), [g] "r"(got), [w2] "i"(W)
            : "ecx", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
              "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
        iters++;
        for (int r = 0; r < 16; r++) {
            if (memcmp(got[r], want, W) == 0) continue;
            bad++;
            printf("MISMATCH iter %lu reg %d: want", iters, r);
            for (int i = 0; i < W; i++) printf(" %02x", want[i]);
            printf(" got");
            for (int i = 0; i < W; i++) printf(" %02x", got[r][i]);
            printf("\n");
            fflush(stdout);
        }
        if (iters % 64 == 0) sched_yield();
    }
    printf("fpucheck: %lu iterations, %lu registers changed\n", iters, bad);
    return bad != 0;
}
