// The core's Verilog in a C++ harness: a Verilator executable that owns the core's memories,
// answers its AXI4 masters and drives its AXI4-Lite control slave as a host does, and serves
// commands from Python (flightgen.sim.harness) over stdin/stdout. Python only moves data and
// starts runs; every cycle is simulated here.
//
// Build: flightgen.sim.harness.build_harness prepends a prelude to this file (the Verilated
// class, the line width, the HBM ports and the control register offsets, all from the Python
// sources of truth: CoreConfig, hw.core.register_map, hw.control) and compiles it with
// Verilator --cc --exe --build. Verilator names a port "hbm__0__araddr" of the Verilog
// "hbm___05F0___05Faraddr" in C++ (it escapes double underscores): FG_SIG pastes these names.
//
// Memories
// --------
// One byte array per HBM port (bus address HBM_BASE * (p + 1) is byte 0 of port p) and one for
// the program (bus address PROGRAM_BASE), the base addresses of the cocotb bench
// (flightgen.sim.benches.core). Each answers its master with the rules of
// flightgen.sim.axi_model.AxiMemoryModel and the timing of flightgen.sim.benches.axi.AxiMemory:
// INCR bursts of full-width beats that never cross 4 KiB (anything else is a violation),
// bursts answered in order with any number outstanding, the first R beat (or the B response,
// counted from the last W beat) valid `latency` cycles after the address (or that beat) was
// taken, beats back to back, WSTRB honoured, no W beat before its burst's address; a burst
// that reaches past the memory answers DECERR (RRESP/BRESP = 3): reads return zeros, writes
// are dropped. With --stall P the ready signals are low and R beats held back with probability
// P each cycle (a splitmix64 generator seeded with --seed); the default never stalls, so runs
// are deterministic. A core with the barrier (FG_SYNC_PORT, the exchange port) has one more
// master, `sync`: its pointer is the exchange port's base, and it is answered from that port's
// memory by a second slave with its own bursts under the same rules; its traffic counts in
// that port's counters.
//
// Command line: core_harness [--latency LO[:HI]] [--stall P] [--seed S] [--timeout CYCLES]
// (defaults 40, 0, 1, 100000000).
//
// Protocol (all integers little-endian)
// ------------------------------------
// Request: u32 opcode, u64 payload length, payload. Reply: u32 status, u64 payload length,
// payload. Status 0 is success; otherwise the payload is a one-line UTF-8 message (1: a bad
// request, 2: the core broke an AXI rule; the core is reset after it).
//
//   0 QUIT                                      -> (no reply; the process exits 0)
//   1 RESIZE  i32 port, u64 size                -> ()  port's memory becomes `size` zero bytes
//   2 WRITE   i32 port, u64 address, bytes      -> ()
//   3 READ    i32 port, u64 address, u64 size   -> `size` bytes
//   4 PROGRAM bytes (32-byte words)             -> ()  the program memory, padded to a line
//   5 RUN     u32 r1..r7, u64 timeout (0: the command line's)
//             -> u32 error, u32 error_pc, u64 cycles, u32 retired, u32 timed_out,
//                u64 harness cycles (from ap_start to the end of the status reads),
//                then per HBM port: u64 R beats, u64 first AR cycle, u64 last R cycle,
//                u64 bytes written (the cycles of the port's model, as the cocotb bench's),
//                then u64 n and n retirement records (checking only, else n = 0):
//                u32 unit, u32 pc, u64 cycle (from ap_start), u32 crc, u32 0
//   6 CHECK   records u32 pc, u32 kind, u64 start, u64 size  -> ()
//             What each pc of the loaded program writes, for the runs that follow (an empty
//             table turns checking off): kind < 16 is buffer `kind` (flightgen Buffer), lines
//             [start, start + size); kind 16 + p is HBM port p, bytes [start, start + size).
//             At each retirement the harness takes the CRC-32 (zlib's) of those lines of its
//             mirror of the buffers, or of those bytes, in the table's order (0 if an HBM span
//             reaches past its memory): what flightgen.isa.machine.Machine.written_crc
//             computes for the same instruction.
//   7 TRACE   u32 from, u32 to, bytes path  -> ()
//             The next RUN writes an FST waveform to `path` for the window of pcs [from, to]:
//             from the cycle the first of them is dispatched to the cycle the last of them
//             retires (or the run ends), plus 4 cycles. Needs a harness built with tracing
//             (FG_TRACE); otherwise a bad request.
//
// Port -1 is the program memory. RUN does what a host does through AXI4-Lite: writes the
// program and HBM pointers, `length` (the words of the last PROGRAM) and r1..r7, sets
// ap_start, waits for the interrupt (GIE and IER's done bit are set after reset; the harness
// watches `irq` every cycle rather than polling), reads the control register (clearing
// ap_done), clears ISR, then reads error, error_pc, cycles (two words) and retired. A run that
// exceeds its timeout reports timed_out = 1 with the status as it then stands, and the core
// is reset (its memories and buffers are kept).
//
// The buffer mirror: every cycle the harness copies each buffer's write port (the core's
// `buffer_writes` outputs) into a byte array per buffer, so it holds exactly what the core's
// buffers hold (both start as zeros). A unit's last write for an instruction happens in or
// before the cycle it retires (the core's contract), so the mirror at a retirement shows
// what that instruction wrote.

#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "verilated.h"
#include FG_TOP_HEADER
#ifdef FG_TRACE
#include "verilated_fst_c.h"
#endif

namespace {

constexpr uint8_t RESP_OKAY = 0;
constexpr uint8_t RESP_DECERR = 3;
constexpr uint8_t BURST_INCR = 1;
constexpr uint64_t BOUNDARY = 4096;
constexpr uint64_t PROGRAM_BASE = 0x40000000ull;
constexpr uint64_t HBM_BASE = 0x100000000ull;
constexpr int WORD_BYTES = 32;
// Cycles an AXI4-Lite access may wait for the slave before the harness gives up.
constexpr int LITE_PATIENCE = 1000;

enum Opcode : uint32_t {
    QUIT = 0, RESIZE = 1, WRITE = 2, READ = 3, PROGRAM = 4, RUN = 5, CHECK = 6, TRACE = 7
};
// The kind of a CHECK span that names HBM port 0 (buffers are 0 .. FG_BUFFERS - 1).
constexpr uint32_t KIND_HBM = FG_KIND_HBM;
// Cycles dumped after a waveform window closes.
constexpr uint64_t TRACE_TAIL = 4;
enum Status : uint32_t { OK = 0, BAD_REQUEST = 1, VIOLATION = 2 };

struct Failure {
    Status status;
    std::string message;
};

[[noreturn]] void fail(Status status, const char* format, ...) {
    char text[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof text, format, args);
    va_end(args);
    throw Failure{status, text};
}

// splitmix64: the random stalls, identical for a given --seed.
struct Random {
    uint64_t state;
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
};

// CRC-32 with zlib's polynomial (reflected 0xEDB88320): crc32(data, crc) as Python's
// zlib.crc32, so chained calls equal one call over the concatenation.
class Crc32 {
  public:
    Crc32() {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table_[i] = c;
        }
    }
    uint32_t operator()(const uint8_t* data, uint64_t size, uint32_t crc) const {
        crc = ~crc;
        for (uint64_t i = 0; i < size; i++) crc = table_[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
        return ~crc;
    }

  private:
    uint32_t table_[256];
};

// Bits [lo, lo + n) (n <= 32) of a little-endian array of 32-bit words.
uint32_t bits(const uint32_t* words, unsigned lo, unsigned n) {
    uint64_t pair = words[lo / 32];
    if (lo % 32 + n > 32) pair |= uint64_t(words[lo / 32 + 1]) << 32;
    return uint32_t(pair >> (lo % 32)) & uint32_t((uint64_t(1) << n) - 1);
}

// What one pc writes (see CHECK).
struct Span {
    uint32_t kind;
    uint64_t start, size;
};

struct Retirement {
    uint32_t unit, pc;
    uint64_t cycle;
    uint32_t crc;
};

struct Settings {
    uint64_t latency_lo = 40, latency_hi = 40;
    double stall = 0.0;
    uint64_t seed = 1;
    uint64_t timeout = 100000000;
};

// The signals of one AXI4 master port of the design.
struct Port {
    // design outputs
    CData *arvalid, *arlen, *arsize, *arburst, *rready;
    CData *awvalid, *awlen, *awsize, *awburst, *wvalid, *wlast, *bready;
    QData *araddr, *awaddr;
    const void *wdata, *wstrb;
    // design inputs
    CData *arready, *rvalid, *rresp, *rlast, *awready, *wready, *bvalid, *bresp;
    void* rdata;
};

#define FG_SIG(prefix, name) top->prefix##___05F##name
#define FG_BIND_(port, prefix)                                                                 \
    do {                                                                                       \
        port.arvalid = &FG_SIG(prefix, arvalid);                                               \
        port.arlen = &FG_SIG(prefix, arlen);                                                   \
        port.arsize = &FG_SIG(prefix, arsize);                                                 \
        port.arburst = &FG_SIG(prefix, arburst);                                               \
        port.rready = &FG_SIG(prefix, rready);                                                 \
        port.awvalid = &FG_SIG(prefix, awvalid);                                               \
        port.awlen = &FG_SIG(prefix, awlen);                                                   \
        port.awsize = &FG_SIG(prefix, awsize);                                                 \
        port.awburst = &FG_SIG(prefix, awburst);                                               \
        port.wvalid = &FG_SIG(prefix, wvalid);                                                 \
        port.wlast = &FG_SIG(prefix, wlast);                                                   \
        port.bready = &FG_SIG(prefix, bready);                                                 \
        port.araddr = &FG_SIG(prefix, araddr);                                                 \
        port.awaddr = &FG_SIG(prefix, awaddr);                                                 \
        port.wdata = &FG_SIG(prefix, wdata);                                                   \
        port.wstrb = &FG_SIG(prefix, wstrb);                                                   \
        port.arready = &FG_SIG(prefix, arready);                                               \
        port.rvalid = &FG_SIG(prefix, rvalid);                                                 \
        port.rresp = &FG_SIG(prefix, rresp);                                                   \
        port.rlast = &FG_SIG(prefix, rlast);                                                   \
        port.awready = &FG_SIG(prefix, awready);                                               \
        port.wready = &FG_SIG(prefix, wready);                                                 \
        port.bvalid = &FG_SIG(prefix, bvalid);                                                 \
        port.bresp = &FG_SIG(prefix, bresp);                                                   \
        port.rdata = &FG_SIG(prefix, rdata);                                                   \
    } while (0)
#define FG_BIND(port, prefix) FG_BIND_(port, prefix)
#define FG_HBM(p) hbm___05F##p

// One buffer bank's write port among the core's `buffer_writes` outputs (`line` is the
// buffer's line).
struct WritePort {
    int buffer;
    const CData* en;
    const SData* line;
    const void* data;
};

struct Burst {
    uint64_t addr;  // relative to byte 0 of the memory, aligned to the beat
    uint32_t beats;
    uint8_t resp;
    uint64_t due = 0;
    uint32_t beat = 0;
};

// An AXI4 slave memory (see the file header for its rules and timing). One built on a
// `shared` memory is a second slave port of it: the same bytes and counters, its own bursts
// (the barrier engine's master on the exchange port's memory).
class Memory {
  private:
    std::vector<uint8_t> own_;

  public:
    std::vector<uint8_t>& bytes;
    // counters since the last clear_counters() (a shared memory's are its owner's)
    uint64_t r_beats = 0, first_ar = 0, last_r = 0, bytes_written = 0;
    bool seen_ar = false;

    Memory(const char* name, Port port, uint64_t base, const Settings& settings, Random& random,
           Memory* shared = nullptr)
        : bytes(shared ? shared->bytes : own_), name_(name), s_(port), base_(base),
          settings_(settings), random_(random), home_(shared ? shared : this) {}

    void clear_counters() {
        r_beats = first_ar = last_r = bytes_written = 0;
        seen_ar = false;
    }

    // Forget every burst (the design was reset).
    void clear() {
        reads_.clear();
        writes_.clear();
        responses_.clear();
        r_offered_ = b_offered_ = false;
        fire_ar_ = fire_r_ = fire_aw_ = fire_w_ = fire_b_ = false;
    }

    // After a rising edge: apply the transfers of that edge, then drive this cycle's inputs.
    void after_edge() {
        cycle_++;
        if (fire_ar_) {
            Burst burst = make("read", ar_addr_, ar_len_, ar_size_, ar_burst_);
            burst.due = cycle_ + delay();
            reads_.push_back(burst);
            if (!home_->seen_ar) {
                home_->first_ar = cycle_;
                home_->seen_ar = true;
            }
        }
        if (fire_r_) {
            Burst& head = reads_.front();
            head.beat++;
            home_->r_beats++;
            home_->last_r = cycle_;
            if (head.beat == head.beats) reads_.pop_front();
        }
        if (fire_aw_) writes_.push_back(make("write", aw_addr_, aw_len_, aw_size_, aw_burst_));
        if (fire_w_) {
            if (writes_.empty()) fail(VIOLATION, "%s: write data before its address", name_);
            Burst& head = writes_.front();
            bool last = head.beat == head.beats - 1;
            if (w_last_ != last)
                fail(VIOLATION, "%s: wlast %s on beat %u of %u", name_, w_last_ ? "set" : "clear",
                     head.beat, head.beats);
            write_beat(head);
            head.beat++;
            if (head.beat == head.beats) {
                head.due = cycle_ + delay();
                responses_.push_back(head);
                writes_.pop_front();
            }
        }
        if (fire_b_) responses_.pop_front();

        *s_.arready = ready();
        *s_.awready = ready();
        *s_.wready = !writes_.empty() && ready();
        if (!r_offered_ || fire_r_)
            r_offered_ = !reads_.empty() && reads_.front().due <= cycle_ && ready();
        if (r_offered_) {
            const Burst& head = reads_.front();
            if (head.resp == RESP_OKAY)
                std::memcpy(s_.rdata, &bytes[head.addr + uint64_t(head.beat) * FG_LINE_BYTES],
                            FG_LINE_BYTES);
            else
                std::memset(s_.rdata, 0, FG_LINE_BYTES);
            *s_.rresp = head.resp;
            *s_.rlast = head.beat == head.beats - 1;
        }
        *s_.rvalid = r_offered_;
        if (!b_offered_ || fire_b_)
            b_offered_ = !responses_.empty() && responses_.front().due <= cycle_;
        if (b_offered_) *s_.bresp = responses_.front().resp;
        *s_.bvalid = b_offered_;
    }

    // With the inputs settled before a rising edge: which transfers that edge makes.
    void sample() {
        fire_ar_ = *s_.arvalid && *s_.arready;
        if (fire_ar_) {
            ar_addr_ = *s_.araddr;
            ar_len_ = *s_.arlen;
            ar_size_ = *s_.arsize;
            ar_burst_ = *s_.arburst;
        }
        fire_aw_ = *s_.awvalid && *s_.awready;
        if (fire_aw_) {
            aw_addr_ = *s_.awaddr;
            aw_len_ = *s_.awlen;
            aw_size_ = *s_.awsize;
            aw_burst_ = *s_.awburst;
        }
        fire_w_ = *s_.wvalid && *s_.wready;
        if (fire_w_) {
            std::memcpy(w_data_, s_.wdata, FG_LINE_BYTES);
            std::memcpy(w_strb_, s_.wstrb, FG_LINE_BYTES / 8);
            w_last_ = *s_.wlast;
        }
        fire_r_ = r_offered_ && *s_.rready;
        fire_b_ = b_offered_ && *s_.bready;
    }

  private:
    const char* name_;
    Port s_;
    uint64_t base_;
    const Settings& settings_;
    Random& random_;
    Memory* home_;  // whose counters this port's traffic counts in
    uint64_t cycle_ = 0;
    std::deque<Burst> reads_, writes_, responses_;
    bool r_offered_ = false, b_offered_ = false;
    bool fire_ar_ = false, fire_r_ = false, fire_aw_ = false, fire_w_ = false, fire_b_ = false;
    uint64_t ar_addr_ = 0, aw_addr_ = 0;
    uint8_t ar_len_ = 0, ar_size_ = 0, ar_burst_ = 0, aw_len_ = 0, aw_size_ = 0, aw_burst_ = 0;
    uint8_t w_data_[FG_LINE_BYTES];
    uint8_t w_strb_[FG_LINE_BYTES / 8];
    bool w_last_ = false;

    uint64_t delay() {
        uint64_t lo = settings_.latency_lo, hi = settings_.latency_hi;
        return lo == hi ? lo : lo + random_.next() % (hi - lo + 1);
    }

    bool ready() { return !(settings_.stall > 0 && random_.uniform() < settings_.stall); }

    Burst make(const char* kind, uint64_t addr, unsigned length, unsigned size, unsigned type) {
        unsigned full = __builtin_ctz(FG_LINE_BYTES);
        if (size != full)
            fail(VIOLATION, "%s: %s at %#llx: size %u, not the full width %u", name_, kind,
                 (unsigned long long)addr, size, full);
        if (type != BURST_INCR)
            fail(VIOLATION, "%s: %s at %#llx: burst type %u, not INCR", name_, kind,
                 (unsigned long long)addr, type);
        uint64_t aligned = addr & ~uint64_t(FG_LINE_BYTES - 1);
        uint32_t beats = length + 1;
        uint64_t span = uint64_t(beats) * FG_LINE_BYTES;
        if (aligned / BOUNDARY != (aligned + span - 1) / BOUNDARY)
            fail(VIOLATION, "%s: %s at %#llx of %u beats crosses a 4 KiB boundary", name_, kind,
                 (unsigned long long)addr, beats);
        bool outside = aligned < base_ || aligned - base_ + span > bytes.size();
        return Burst{aligned - base_, beats, outside ? RESP_DECERR : RESP_OKAY};
    }

    void write_beat(const Burst& burst) {
        if (burst.resp != RESP_OKAY) return;
        uint8_t* line = &bytes[burst.addr + uint64_t(burst.beat) * FG_LINE_BYTES];
        for (int i = 0; i < FG_LINE_BYTES; i++) {
            if (w_strb_[i / 8] >> (i % 8) & 1) {
                line[i] = w_data_[i];
                home_->bytes_written++;
            }
        }
    }
};

struct RunResult {
    uint32_t error, error_pc;
    uint64_t cycles;
    uint32_t retired, timed_out;
    uint64_t harness_cycles;
};

class Harness {
  public:
    explicit Harness(const Settings& settings)
        : settings_(settings), random_{settings.seed} {
#ifdef FG_TRACE
        context_.traceEverOn(true);
#endif
        top.reset(new FG_TOP{&context_});
        Port port;
        FG_BIND(port, program);
        program_ = std::make_unique<Memory>("program", port, PROGRAM_BASE, settings_, random_);
#define FG_ADD_PORT(p)                                                                         \
    FG_BIND(port, FG_HBM(p));                                                                  \
    hbm_.push_back(std::make_unique<Memory>("hbm" #p, port, HBM_BASE * (p + 1), settings_,     \
                                            random_));
        FG_FOR_EACH_HBM_PORT(FG_ADD_PORT)
#undef FG_ADD_PORT
#ifdef FG_SYNC_PORT
        FG_BIND(port, sync);
        sync_ = std::make_unique<Memory>("sync", port, HBM_BASE * (FG_SYNC_PORT + 1), settings_,
                                         random_, hbm_[FG_SYNC_PORT].get());
#endif
#define FG_ADD_BUFFER(b, lines) mirror_[b].assign(uint64_t(lines) * FG_LINE_BYTES, 0);
        FG_FOR_EACH_BUFFER(FG_ADD_BUFFER)
#undef FG_ADD_BUFFER
#define FG_ADD_MONITOR(k, b)                                                                   \
    writes_[k] = {b, &top->buffer_writes___05F##k##___05Fen,                                  \
                  &top->buffer_writes___05F##k##___05Fline,                                   \
                  &top->buffer_writes___05F##k##___05Fdata};
        FG_FOR_EACH_MONITOR(FG_ADD_MONITOR)
#undef FG_ADD_MONITOR
        top->clk = 0;
        top->control___05Fawvalid = top->control___05Fwvalid = top->control___05Fbready = 0;
        top->control___05Farvalid = top->control___05Frready = 0;
        reset();
    }

    ~Harness() {
        close_trace();
        top->final();
    }

    Memory& memory(int32_t port) {
        if (port == -1) return *program_;
        if (port < 0 || port >= int32_t(hbm_.size()))
            fail(BAD_REQUEST, "no port %d: the core has %zu HBM ports (-1 is the program)", port,
                 hbm_.size());
        return *hbm_[port];
    }

    void load_program(const uint8_t* data, uint64_t size) {
        if (size % WORD_BYTES)
            fail(BAD_REQUEST, "a program of %llu bytes is not whole 32-byte words",
                 (unsigned long long)size);
        words_ = size / WORD_BYTES;
        uint64_t padded = (size + FG_LINE_BYTES - 1) / FG_LINE_BYTES * FG_LINE_BYTES;
        program_->bytes.assign(padded, 0);
        if (size) std::memcpy(program_->bytes.data(), data, size);
    }

    RunResult run(const uint32_t registers[7], uint64_t timeout) {
        try {
            RunResult result = run_(registers, timeout ? timeout : settings_.timeout);
            close_trace();
            return result;
        } catch (const Failure&) {
            close_trace();
            reset();
            throw;
        }
    }

    // Replace the table of what each pc writes (empty: stop checking).
    void set_check(const std::vector<uint8_t>& payload) {
        constexpr size_t RECORD = 24;
        if (payload.size() % RECORD) fail(BAD_REQUEST, "a CHECK table is whole 24-byte records");
        spans_.clear();
        for (size_t at = 0; at < payload.size(); at += RECORD) {
            uint32_t pc, kind;
            Span span;
            std::memcpy(&pc, &payload[at], 4);
            std::memcpy(&kind, &payload[at + 4], 4);
            std::memcpy(&span.start, &payload[at + 8], 8);
            std::memcpy(&span.size, &payload[at + 16], 8);
            span.kind = kind;
            const std::vector<uint8_t>* target = nullptr;
            uint64_t unit = 1;
            if (kind < FG_BUFFERS) {
                target = &mirror_[kind];
                unit = FG_LINE_BYTES;
            } else if (kind >= KIND_HBM && kind - KIND_HBM < hbm_.size()) {
                target = &hbm_[kind - KIND_HBM]->bytes;
            } else {
                fail(BAD_REQUEST, "CHECK: pc %u: no buffer or port of kind %u", pc, kind);
            }
            // an HBM span may reach past its memory (a STORE or BARRIER the core refuses with
            // an AXI error): its pc's CRC is then 0, as Machine.written_crc's
            if (kind < FG_BUFFERS &&
                (span.start > target->size() / unit || span.size > target->size() / unit - span.start))
                fail(BAD_REQUEST, "CHECK: pc %u: span %llu+%llu of kind %u is out of range", pc,
                     (unsigned long long)span.start, (unsigned long long)span.size, kind);
            if (pc >= spans_.size()) spans_.resize(pc + 1);
            spans_[pc].push_back(span);
        }
        checking_ = !payload.empty();
    }

    bool checking() const { return checking_; }
    const std::vector<Retirement>& retirements() const { return retirements_; }

    // Write a waveform of the window [from, to] of pcs during the next run.
    void set_trace(uint32_t from, uint32_t to, const std::string& path) {
#ifdef FG_TRACE
        if (from > to) fail(BAD_REQUEST, "TRACE: from %u is after to %u", from, to);
        trace_ = {true, from, to, path};
#else
        (void)from, (void)to, (void)path;
        fail(BAD_REQUEST, "this harness was built without waveform support (build it with "
                          "trace=True)");
#endif
    }

  private:
    Settings settings_;
    Random random_;
    VerilatedContext context_;
    std::unique_ptr<FG_TOP> top;
    std::unique_ptr<Memory> program_;
    std::vector<std::unique_ptr<Memory>> hbm_;
    std::unique_ptr<Memory> sync_;  // the barrier engine's master, on the exchange port's memory
    uint64_t words_ = 0;
    uint64_t cycle_ = 0;
    uint64_t run_start_ = 0;
    Crc32 crc32_;
    std::vector<uint8_t> mirror_[FG_BUFFERS];
    WritePort writes_[FG_MONITORS];
    std::vector<std::vector<Span>> spans_;
    bool checking_ = false;
    std::vector<Retirement> retirements_;
    // this cycle's buffer writes and retirements, sampled before its rising edge
    struct LineWrite {
        int buffer;
        uint32_t line;
        uint8_t data[FG_LINE_BYTES];
    } pending_writes_[FG_MONITORS];
    int pending_count_ = 0;
    uint32_t retiring_[FG_UNITS];
    bool retiring_valid_[FG_UNITS] = {};
    bool dispatching_ = false;
    uint32_t dispatched_pc_ = 0;
    // the waveform window
    struct TraceRequest {
        bool armed = false;
        uint32_t from = 0, to = 0;
        std::string path;
    } trace_;
#ifdef FG_TRACE
    std::unique_ptr<VerilatedFstC> fst_;
    uint64_t trace_left_ = 0, trace_tail_ = 0;
    bool tracing_ = false;
#endif

    void close_trace() {
#ifdef FG_TRACE
        if (fst_) {
            fst_->close();
            fst_.reset();
        }
        tracing_ = false;
#endif
        trace_.armed = false;
    }

    void dump(uint64_t time) {
#ifdef FG_TRACE
        if (tracing_) fst_->dump(time);
#else
        (void)time;
#endif
    }

    // Sample what the core shows this cycle (evaluated, before the edge).
    void observe() {
        pending_count_ = 0;
        for (int k = 0; k < FG_MONITORS; k++) {
            if (!*writes_[k].en) continue;
            LineWrite& w = pending_writes_[pending_count_++];
            w.buffer = writes_[k].buffer;
            w.line = *writes_[k].line;
            std::memcpy(w.data, writes_[k].data, FG_LINE_BYTES);
        }
        const auto* retire = reinterpret_cast<const uint32_t*>(&top->retire);
        for (int u = 0; u < FG_UNITS; u++) {
            retiring_valid_[u] = bits(retire, 33 * u, 1);
            if (retiring_valid_[u]) retiring_[u] = bits(retire, 33 * u + 1, 32);
        }
        dispatching_ = top->dispatched & 1;
        dispatched_pc_ = uint32_t(top->dispatched >> 1);
    }

    // After the edge: the writes land in the mirror, then the retirements are checked.
    void commit() {
        for (int i = 0; i < pending_count_; i++) {
            const LineWrite& w = pending_writes_[i];
            std::vector<uint8_t>& mirror = mirror_[w.buffer];
            uint64_t at = uint64_t(w.line) * FG_LINE_BYTES;
            if (at + FG_LINE_BYTES <= mirror.size())
                std::memcpy(&mirror[at], w.data, FG_LINE_BYTES);
        }
#ifdef FG_TRACE
        if (trace_.armed && !tracing_ && dispatching_ && dispatched_pc_ >= trace_.from &&
            dispatched_pc_ <= trace_.to) {
            start_trace();
        }
#endif
        for (int u = 0; u < FG_UNITS; u++) {
            if (!retiring_valid_[u]) continue;
            uint32_t pc = retiring_[u];
#ifdef FG_TRACE
            if (tracing_ && trace_left_ && pc >= trace_.from && pc <= trace_.to) trace_left_--;
#endif
            if (!checking_) continue;
            uint32_t crc = 0;
            if (pc < spans_.size()) {
                for (const Span& span : spans_[pc]) {
                    if (span.kind < FG_BUFFERS) {
                        crc = crc32_(&mirror_[span.kind][span.start * FG_LINE_BYTES],
                                     span.size * FG_LINE_BYTES, crc);
                        continue;
                    }
                    const std::vector<uint8_t>& bytes = hbm_[span.kind - KIND_HBM]->bytes;
                    if (span.start > bytes.size() || span.size > bytes.size() - span.start) {
                        crc = 0;  // past the memory: nothing written
                        break;
                    }
                    crc = crc32_(&bytes[span.start], span.size, crc);
                }
            }
            retirements_.push_back({uint32_t(u), pc, cycle_ - run_start_, crc});
        }
#ifdef FG_TRACE
        if (tracing_ && trace_left_ == 0 && trace_tail_++ >= TRACE_TAIL) close_trace();
#endif
    }

#ifdef FG_TRACE
    void start_trace() {
        fst_ = std::make_unique<VerilatedFstC>();
        top->trace(fst_.get(), 99);
        fst_->open(trace_.path.c_str());
        if (!fst_->isOpen()) fail(BAD_REQUEST, "TRACE: cannot open %s", trace_.path.c_str());
        tracing_ = true;
        uint32_t last = std::min<uint64_t>(trace_.to, words_ ? words_ - 1 : 0);
        trace_left_ = last >= trace_.from ? last - trace_.from + 1 : 0;
        trace_tail_ = 0;
    }
#endif

    // One clock cycle in two halves, so that the AXI4-Lite master can look at the settled
    // outputs between them: settle() drives the memories' inputs for this cycle, evaluates and
    // samples the transfers the coming edge makes; edge() makes the rising edge.
    void settle() {
        program_->after_edge();
        for (auto& memory : hbm_) memory->after_edge();
        if (sync_) sync_->after_edge();
        top->clk = 0;
        top->eval();
        dump(10 * cycle_);
        program_->sample();
        for (auto& memory : hbm_) memory->sample();
        if (sync_) sync_->sample();
        observe();
    }

    void edge() {
        top->clk = 1;
        top->eval();
        dump(10 * cycle_ + 5);
        cycle_++;
        commit();
    }

    void tick() {
        settle();
        edge();
    }

    void reset() {
        top->rst = 1;
        for (int i = 0; i < 3; i++) tick();
        top->rst = 0;
        program_->clear();
        for (auto& memory : hbm_) memory->clear();
        if (sync_) sync_->clear();
        lite_write(FG_REG_GIE, 1);
        lite_write(FG_REG_IER, 1);  // the done interrupt
    }

    void lite_write(uint32_t addr, uint32_t value) {
        top->control___05Fawaddr = addr;
        top->control___05Fwdata = value;
        top->control___05Fwstrb = 0xF;
        top->control___05Fawvalid = top->control___05Fwvalid = 1;
        bool aw = false, w = false;
        for (int waited = 0; !(aw && w); waited++) {
            if (waited == LITE_PATIENCE) fail(VIOLATION, "control: write %#x not taken", addr);
            settle();
            bool aw_now = !aw && top->control___05Fawready;
            bool w_now = !w && top->control___05Fwready;
            edge();
            aw = aw || aw_now;
            w = w || w_now;
            if (aw) top->control___05Fawvalid = 0;
            if (w) top->control___05Fwvalid = 0;
        }
        top->control___05Fbready = 1;
        for (int waited = 0;; waited++) {
            if (waited == LITE_PATIENCE) fail(VIOLATION, "control: no response to write %#x", addr);
            settle();
            bool done = top->control___05Fbvalid;
            edge();
            if (done) break;
        }
        top->control___05Fbready = 0;
    }

    void lite_write64(uint32_t addr, uint64_t value) {
        lite_write(addr, uint32_t(value));
        lite_write(addr + 4, uint32_t(value >> 32));
    }

    uint32_t lite_read(uint32_t addr) {
        top->control___05Faraddr = addr;
        top->control___05Farvalid = 1;
        for (int waited = 0;; waited++) {
            if (waited == LITE_PATIENCE) fail(VIOLATION, "control: read %#x not taken", addr);
            settle();
            bool taken = top->control___05Farready;
            edge();
            if (taken) break;
        }
        top->control___05Farvalid = 0;
        top->control___05Frready = 1;
        uint32_t value = 0;
        for (int waited = 0;; waited++) {
            if (waited == LITE_PATIENCE) fail(VIOLATION, "control: no data for read %#x", addr);
            settle();
            bool valid = top->control___05Frvalid;
            value = top->control___05Frdata;
            edge();
            if (valid) break;
        }
        top->control___05Frready = 0;
        return value;
    }

    RunResult run_(const uint32_t registers[7], uint64_t timeout) {
        uint64_t started = cycle_;
        lite_write64(FG_REG_PROGRAM, PROGRAM_BASE);
        for (size_t p = 0; p < hbm_.size(); p++) lite_write64(FG_REG_HBM[p], HBM_BASE * (p + 1));
#ifdef FG_SYNC_PORT
        lite_write64(FG_REG_SYNC, HBM_BASE * (FG_SYNC_PORT + 1));  // the exchange port's buffer
#endif
        lite_write(FG_REG_LENGTH, uint32_t(words_));
        for (int i = 0; i < 7; i++) lite_write(FG_REG_R1 + 4 * i, registers[i]);
        for (auto& memory : hbm_) memory->clear_counters();
        retirements_.clear();
        lite_write(FG_REG_CONTROL, FG_AP_START);
        uint64_t start = cycle_;
        run_start_ = start;
        RunResult result{};
        while (!top->irq) {
            if (cycle_ - start >= timeout) {
                result.timed_out = 1;
                break;
            }
            tick();
        }
        if (!result.timed_out) {
            uint32_t control = lite_read(FG_REG_CONTROL);
            if (!(control & FG_AP_DONE))
                fail(VIOLATION, "control: interrupt without ap_done (control %#x)", control);
            lite_write(FG_REG_ISR, 1);  // writing 1 toggles the done bit back to 0
        }
        result.error = lite_read(FG_REG_ERROR);
        result.error_pc = lite_read(FG_REG_ERROR_PC);
        result.cycles = lite_read(FG_REG_CYCLES) | uint64_t(lite_read(FG_REG_CYCLES + 4)) << 32;
        result.retired = lite_read(FG_REG_RETIRED);
        result.harness_cycles = cycle_ - started;
        if (result.timed_out) reset();
        return result;
    }

  public:
    size_t ports() const { return hbm_.size(); }
    const Memory& port(size_t p) const { return *hbm_[p]; }
};

// --- the pipe ----------------------------------------------------------------------------------

int out_fd = 1;

bool read_exact(void* data, size_t size) {
    auto* bytes = static_cast<uint8_t*>(data);
    while (size) {
        ssize_t got = ::read(0, bytes, size);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return false;
        bytes += got;
        size -= size_t(got);
    }
    return true;
}

void write_exact(const void* data, size_t size) {
    auto* bytes = static_cast<const uint8_t*>(data);
    while (size) {
        ssize_t put = ::write(out_fd, bytes, size);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) std::exit(3);  // the reader went away
        bytes += put;
        size -= size_t(put);
    }
}

void reply(uint32_t status, const void* data, uint64_t size) {
    uint8_t header[12];
    std::memcpy(header, &status, 4);
    std::memcpy(header + 4, &size, 8);
    write_exact(header, sizeof header);
    if (size) write_exact(data, size);
}

template <typename T>
T take(const std::vector<uint8_t>& payload, size_t& at) {
    if (at + sizeof(T) > payload.size()) fail(BAD_REQUEST, "request too short");
    T value;
    std::memcpy(&value, payload.data() + at, sizeof(T));
    at += sizeof(T);
    return value;
}

void check_range(const Memory& memory, int32_t port, uint64_t address, uint64_t size) {
    if (address > memory.bytes.size() || size > memory.bytes.size() - address)
        fail(BAD_REQUEST, "%llu bytes at %#llx reach past port %d's memory of %zu bytes",
             (unsigned long long)size, (unsigned long long)address, port, memory.bytes.size());
}

template <typename T>
void put(std::vector<uint8_t>& out, T value) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
    out.insert(out.end(), bytes, bytes + sizeof(T));
}

// Serve one request; false after QUIT or end of input.
bool serve(Harness& harness) {
    uint8_t header[12];
    if (!read_exact(header, sizeof header)) return false;
    uint32_t opcode;
    uint64_t length;
    std::memcpy(&opcode, header, 4);
    std::memcpy(&length, header + 4, 8);
    std::vector<uint8_t> payload(length);
    if (length && !read_exact(payload.data(), length)) return false;
    if (opcode == QUIT) return false;
    try {
        size_t at = 0;
        std::vector<uint8_t> out;
        switch (opcode) {
            case RESIZE: {
                auto port = take<int32_t>(payload, at);
                auto size = take<uint64_t>(payload, at);
                harness.memory(port).bytes.assign(size, 0);
                break;
            }
            case WRITE: {
                auto port = take<int32_t>(payload, at);
                auto address = take<uint64_t>(payload, at);
                Memory& memory = harness.memory(port);
                uint64_t size = payload.size() - at;
                check_range(memory, port, address, size);
                if (size) std::memcpy(&memory.bytes[address], payload.data() + at, size);
                break;
            }
            case READ: {
                auto port = take<int32_t>(payload, at);
                auto address = take<uint64_t>(payload, at);
                auto size = take<uint64_t>(payload, at);
                Memory& memory = harness.memory(port);
                check_range(memory, port, address, size);
                reply(OK, memory.bytes.data() + address, size);
                return true;
            }
            case PROGRAM:
                harness.load_program(payload.data(), payload.size());
                break;
            case RUN: {
                uint32_t registers[7];
                for (auto& r : registers) r = take<uint32_t>(payload, at);
                auto timeout = take<uint64_t>(payload, at);
                RunResult r = harness.run(registers, timeout);
                put(out, r.error);
                put(out, r.error_pc);
                put(out, r.cycles);
                put(out, r.retired);
                put(out, r.timed_out);
                put(out, r.harness_cycles);
                for (size_t p = 0; p < harness.ports(); p++) {
                    const Memory& m = harness.port(p);
                    put(out, m.r_beats);
                    put(out, m.first_ar);
                    put(out, m.last_r);
                    put(out, m.bytes_written);
                }
                put(out, uint64_t(harness.retirements().size()));
                for (const Retirement& r : harness.retirements()) {
                    put(out, r.unit);
                    put(out, r.pc);
                    put(out, r.cycle);
                    put(out, r.crc);
                    put(out, uint32_t(0));
                }
                break;
            }
            case CHECK:
                harness.set_check(payload);
                break;
            case TRACE: {
                auto from = take<uint32_t>(payload, at);
                auto to = take<uint32_t>(payload, at);
                harness.set_trace(from, to, std::string(payload.begin() + at, payload.end()));
                break;
            }
            default:
                fail(BAD_REQUEST, "unknown opcode %u", opcode);
        }
        reply(OK, out.data(), out.size());
    } catch (const Failure& failure) {
        reply(failure.status, failure.message.data(), failure.message.size());
    }
    return true;
}

bool parse(int argc, char** argv, Settings& settings) {
    for (int i = 1; i < argc; i++) {
        std::string flag = argv[i];
        if (flag.rfind("+verilator", 0) == 0) continue;
        if (i + 1 >= argc) return false;
        const char* value = argv[++i];
        char* end = nullptr;
        if (flag == "--latency") {
            settings.latency_lo = settings.latency_hi = std::strtoull(value, &end, 10);
            if (*end == ':') settings.latency_hi = std::strtoull(end + 1, &end, 10);
        } else if (flag == "--stall") {
            settings.stall = std::strtod(value, &end);
        } else if (flag == "--seed") {
            settings.seed = std::strtoull(value, &end, 0);
        } else if (flag == "--timeout") {
            settings.timeout = std::strtoull(value, &end, 10);
        } else {
            return false;
        }
        if (*end) return false;
    }
    return settings.latency_lo >= 1 && settings.latency_lo <= settings.latency_hi &&
           settings.stall >= 0 && settings.stall < 1 && settings.timeout > 0;
}

}  // namespace

int main(int argc, char** argv) {
    // Replies go to the original stdout; anything else printed (Verilator's messages) goes to
    // stderr so it cannot corrupt the protocol.
    out_fd = dup(1);
    dup2(2, 1);
    Verilated::commandArgs(argc, argv);
    Settings settings;
    if (!parse(argc, argv, settings)) {
        std::fprintf(stderr,
                     "usage: %s [--latency LO[:HI]] [--stall P] [--seed S] [--timeout CYCLES]\n",
                     argv[0]);
        return 2;
    }
    try {
        Harness harness(settings);
        while (serve(harness)) {
        }
    } catch (const Failure& failure) {
        std::fprintf(stderr, "core harness: %s\n", failure.message.c_str());
        return 1;
    }
    return 0;
}
