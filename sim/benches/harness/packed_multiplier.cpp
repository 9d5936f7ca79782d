// Exhaustive check of flightgen.hw.dsp.PackedMultiplier: every (a0, a1, w) in [-128, 127]^3
// (16,777,216 cases) through the Verilated pipeline, compared with the plain products.
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
    const uint32_t total = 1u << 24;
    uint64_t checked = 0, mismatches = 0;
    for (uint32_t i = 0; i < total + latency - 1; i++) {
        if (i < total) {
            top.a0 = (uint8_t)(i);
            top.a1 = (uint8_t)(i >> 8);
            top.w = (uint8_t)(i >> 16);
        }
        top.clk = 1;
        top.eval();
        top.clk = 0;
        top.eval();
        if (i + 1 < (uint32_t)latency) continue;
        uint32_t j = i - (latency - 1);  // the inputs whose products are now at the outputs
        int a0 = (int8_t)(j), a1 = (int8_t)(j >> 8), w = (int8_t)(j >> 16);
        int p0 = (int16_t)top.p0, p1 = (int16_t)top.p1;
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
