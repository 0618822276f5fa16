/* Keeps live state only in vector registers (ymm0-ymm3, xmm15) inside an endless asm loop:
 * ymm1 counts up by ymm2 every iteration, ymm3/xmm15 hold fixed patterns that are checked
 * every iteration. The loop stores the count and a "pattern broken" flag to memory; SIGUSR1
 * reports both. If the FPU/AVX state were not restored exactly, the count would jump or the
 * flag would be set. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>

static volatile uint64_t counter[4] __attribute__((aligned(32)));
static volatile uint64_t broken;
static int out;

static void report(int s) {
    (void)s;
    dprintf(out, "%llu %llu %llu\n", (unsigned long long)counter[0], (unsigned long long)counter[3],
            (unsigned long long)broken);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    out = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    signal(SIGUSR1, report);
    static const uint64_t ones[4] __attribute__((aligned(32))) = {1, 1, 1, 1};
    static const uint64_t pat[4] __attribute__((aligned(32))) = {
        0x0123456789abcdefull, 0xfedcba9876543210ull, 0xdeadbeefcafebabeull, 0x5555aaaa3333ccccull};
    dprintf(out, "ready\n");
    __asm__ volatile(
        "vpxor %%ymm1, %%ymm1, %%ymm1\n"
        "vmovdqa %[ones], %%ymm2\n"
        "vmovdqa %[pat], %%ymm3\n"
        "vmovdqa %[pat], %%xmm15\n"
        "1:\n"
        "vpaddq %%ymm2, %%ymm1, %%ymm1\n"
        "vmovdqa %%ymm1, %[cnt]\n"
        "vpcmpeqq %[pat], %%ymm3, %%ymm0\n"
        "vpmovmskb %%ymm0, %%eax\n"
        "cmp $-1, %%eax\n"
        "jne 2f\n"
        "vpcmpeqq %[pat], %%ymm15, %%ymm0\n"
        "vpmovmskb %%xmm0, %%eax\n"
        "cmp $0xffff, %%eax\n"
        "je 1b\n"
        "2:\n"
        "movq $1, %[brk]\n"
        "jmp 1b\n"
        : [cnt] "=m"(*(volatile uint64_t(*)[4])counter), [brk] "=m"(broken)
        : [ones] "m"(ones), [pat] "m"(pat)
        : "rax", "xmm0", "xmm1", "xmm2", "xmm3", "xmm15", "memory", "cc");
    return 0;
}
