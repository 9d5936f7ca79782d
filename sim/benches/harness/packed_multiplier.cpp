// Exhaustive check of flightgen.hw.dsp.PackedMultiplier: every (a0, a1, w) of WIDTH bits
// (2**(3 WIDTH) cases: 16,777,216 for 8 bits, 134,217,728 for 9) through the Verilated
// pipeline, compared with the plain products. Compile with -DWIDTH=8 or 9. At 9 bits the high
// lane a1 = -256 is outside the contract (a1 * 2**18 + a0 would leave the 27-bit operand) and
// is skipped: 134,217,728 - 262,144 = 133,955,584 cases.
// Prints "checked N mismatches M" and exits non-zero on any mismatch.
#include <cstdint>
#include <cstdio>
#include "verilated.h"
#include "Vpacked_multiplier.h"

int main(int argc, char** argv) {
    Verilated::commandArgs(argc, argv);
    Vpacked_multiplier top;
    const int latency = 3;
    top.clk = 0;
    top.rst = 1;
    top.en = 1;
    top.eval();
    top.clk = 1;
    top.eval();
    top.clk = 0;
    top.rst = 0;
    top.eval();
    const uint32_t total = 1u << (3 * WIDTH);
    const uint32_t mask = (1u << WIDTH) - 1;
    auto sext = [](uint32_t v) { return (int)(v << (32 - WIDTH)) >> (32 - WIDTH); };
    uint64_t checked = 0, mismatches = 0;
    for (uint32_t i = 0; i < total + latency - 1; i++) {
        if (i < total) {
            top.a0 = i & mask;
            top.a1 = (i >> WIDTH) & mask;
            top.w = (i >> (2 * WIDTH)) & mask;
        }
        top.clk = 1;
        top.eval();
        top.clk = 0;
        top.eval();
        if (i + 1 < (uint32_t)latency) continue;
        uint32_t j = i - (latency - 1);  // the inputs whose products are now at the outputs
        int a0 = sext(j & mask), a1 = sext((j >> WIDTH) & mask), w = sext(j >> (2 * WIDTH));
        int p0 = (int32_t)(top.p0 << (32 - 2 * WIDTH)) >> (32 - 2 * WIDTH);
        int p1 = (int32_t)(top.p1 << (32 - 2 * WIDTH)) >> (32 - 2 * WIDTH);
        if (WIDTH == 9 && a1 == -256) continue;
        checked++;
        if (p0 != a0 * w || p1 != a1 * w) {
            if (mismatches < 5)
                std::printf("mismatch: a0=%d a1=%d w=%d -> p0=%d p1=%d (want %d %d)\n", a0, a1,
                            w, p0, p1, a0 * w, a1 * w);
            mismatches++;
        }
    }
    std::printf("checked %llu mismatches %llu\n", (unsigned long long)checked,
                (unsigned long long)mismatches);
    return mismatches ? 1 : 0;
}
