// Decode layer: compile-time shape of the batch-decode kernel for one (query type, KV type, head
// dim): tile sizes, pipeline depth, shared-memory layout and its swizzle. Heuristics live here,
// apart from the kernel body.
#pragma once

#include <type_traits>

#include "../common/math.cuh"
#include "../common/types.cuh"

namespace fib::decode {

// Shared memory for the KV pipeline: three 32 KB stages of bf16 hd128 (64 keys of K and V) keep
// 64 KB of loads in flight per CTA and let two CTAs share an SM (2 x ~100 KB of 228 KB).
constexpr int kPipelineBudgetBytes = 96 * 1024;

template <typename QT, typename KVT, int HeadDim>
struct DecodeTraits {
  static_assert(HeadDim == 64 || HeadDim == 128 || HeadDim == 256, "decode is built for head dims 64, 128, 256");

  using QNative = native_t<QT>;
  using KvType = KVT;
  using KvNative = native_t<KVT>;
  static constexpr bool kFp8 = kIsFp8<KVT>;
  // Tensor-core operand type. fp8 KV is widened to fp16 by bit moves alone (convert.cuh), exactly;
  // bf16 queries are then rounded to fp16, which holds them exactly across the range queries take.
  using Math = std::conditional_t<kFp8, __half, QNative>;
  static_assert(kFp8 || std::is_same_v<QNative, KvNative>, "16-bit KV must have the query's dtype");

  static constexpr int kHeadDim = HeadDim;
  static constexpr int kKvBytes = kFp8 ? 1 : 2;
  static constexpr int kRowBytes = HeadDim * kKvBytes;  // one key (or value) row of one KV head

  // A row is copied in kChunks pieces of kChunkBytes: 16-byte cp.async wherever a row has at
  // least 8 of them (the swizzle and the RoPE pairing below need 8 or more chunks per row).
  static constexpr int kChunkBytes = kRowBytes / 8 < 16 ? kRowBytes / 8 : 16;
  static constexpr int kChunks = kRowBytes / kChunkBytes;
  static constexpr int kChunkElems = kChunkBytes / kKvBytes;
  static constexpr int kChunkWords = kChunkBytes / 4;
  static_assert(kChunks == 8 || kChunks == 16 || kChunks == 32, "8 to 32 chunks per row");

  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kSliceKeys = 16;  // keys per warp step: k of the P V mma
  // Keys per pipeline stage: 16 KB of K (and of V) per stage wherever that is at least a slice per
  // warp. Each tile iteration carries fixed latencies (a barrier, the page lookups it publishes),
  // so a smaller tile for fp8 (half the bytes per key) capped fp8 at ~77% of the copy bandwidth
  // on an H100 where bf16 with the same key count reached 100%.
  static constexpr int kTileBytes = 16 * 1024;
  static constexpr int kTileKv = kTileBytes / kRowBytes < kSliceKeys * kWarps   ? kSliceKeys * kWarps
                                 : kTileBytes / kRowBytes > 4 * kSliceKeys * kWarps ? 4 * kSliceKeys * kWarps
                                                                                  : kTileBytes / kRowBytes;
  static constexpr int kTileSlices = kTileKv / kSliceKeys;
  static_assert(kTileSlices % kWarps == 0, "a warp's slices (every 1, 2 or 4) continue evenly across tiles");
  // Slices a step for warps with stacked rows (decode_kernel.cuh): 4 (64 keys) where the output
  // accumulators leave room for 8 n-tiles of S and their K chunks; 2 at head dim 256 (4 spill).
  static constexpr int kWideSlices = HeadDim <= 128 ? 4 : 2;
  static_assert(kTileSlices % kWideSlices == 0, "wide steps tile the KV tile");
  // Slack of the online softmax's reference max, in log2 units (warp_mma_sm80.cuh, softmax_step).
  static constexpr float kRescaleSlack = 8.0f;
  static constexpr int kTileQ = 16 * kWarps;             // packed query rows per CTA: one m-tile per warp at most

  // Lane (r, c) = (lane / 4, lane % 4) reads, of key row r, chunks c + 4m (Q K^T), and of value
  // rows 2c, 2c+1, 2c+8, 2c+9, chunks r * kVChunksPerLane + p (P V): see warp_mma_sm80.cuh.
  static constexpr int kKChunksPerLane = kChunks / 4;
  static constexpr int kVChunksPerLane = kChunks / 8;
  static constexpr int kKPairs = HeadDim / 8;    // 32-bit operand words of one key row per lane
  static constexpr int kKSteps = HeadDim / 16;   // mma k-steps of Q K^T
  static constexpr int kDimTiles = HeadDim / 8;  // mma n-tiles of P V (output dims per lane: one per tile)

  static constexpr int kStageBytes = 2 * kTileKv * kRowBytes;  // K tile then V tile
  static constexpr int kStages = kPipelineBudgetBytes / kStageBytes < 2   ? 2
                                 : kPipelineBudgetBytes / kStageBytes > 4 ? 4
                                                                          : kPipelineBudgetBytes / kStageBytes;
  static constexpr int kRowsPerLoader = kTileKv * kChunks / kThreads;  // key rows each thread copies per tile
  static constexpr int kLookupsPerThread = ceil_div(kTileKv, kThreads);  // page lookups per thread per tile
  static constexpr int kOffsetSlots = kStages + 1;  // tiles whose row offsets are held (see decode_kernel.cuh)

  // Query fragments stay in registers up to head dim 128; at 256 they would crowd out the output
  // accumulators (128 registers), so they are re-read from shared memory per key slice.
  static constexpr bool kQInRegisters = HeadDim <= 128;
  static constexpr int kQPitch = HeadDim * 2 + (kQInRegisters ? 0 : 16);  // bytes per query row
  static constexpr int kQBytes = kTileQ * kQPitch;

  // After the mainloop the pipeline buffers hold each warp's (o, m, l) for the cross-warp combine.
  static constexpr int kOPitch = HeadDim + 4;  // floats; the pad spreads rows over banks
  static constexpr int kCombineBytes = kWarps * 16 * (kOPitch + 2) * 4;

  static constexpr int kPipeBytes = kStages * kStageBytes > kCombineBytes ? kStages * kStageBytes : kCombineBytes;
  static constexpr int kOffsetsAt = kPipeBytes;  // int64 row offsets, [kOffsetSlots][kTileKv]
  static constexpr int kOffsetsBytes = kOffsetSlots * kTileKv * 8;
  // With Q in registers, Q is staged in the last stage's buffer, which the prologue leaves empty.
  static constexpr int kQAt = kQInRegisters ? (kStages - 1) * kStageBytes : kOffsetsAt + kOffsetsBytes;
  // RoPE variants' per-CTA table (warp_mma_sm80.cuh, KeyRope::Table): each rotation pair's
  // frequency and its turns by 8 keys and by a warp's slice stride.
  static constexpr int kRopeAt = kOffsetsAt + kOffsetsBytes + (kQInRegisters ? 0 : kQBytes);
  static constexpr int kRopeBytes = HeadDim / 2 * 3 * 8;
  static constexpr int kSmemBytes = kRopeAt + kRopeBytes;
  static_assert(!kQInRegisters || kQBytes <= kStageBytes, "staged Q must fit in one pipeline stage");

  // XOR swizzle of a row's 16-byte chunk index (bits 0-2) so that every shared-memory access of
  // a warp phase hits distinct banks: the cp.async writes (8 consecutive chunks of one row), the
  // K reads (rows 2j, 2j+1, chunks c + 4m: bit 2 from the row's parity splits the two rows) and
  // the V reads (rows 2c for c = 0..3 at chunks {p, kVChunksPerLane + p}: h() spreads the four
  // rows over the bits the lane's chunk index leaves free).
  __device__ __forceinline__ static int swizzle(int row) {
    constexpr int kLowMask = kVChunksPerLane - 1;
    const int j = (row >> 1) & 3;
    const int h = (j & kLowMask) | ((j & ~kLowMask) << 1);
    return ((row & 1) << 2) ^ h;
  }

  // Byte offset of chunk `chunk` of key row `row` inside a K or V tile.
  __device__ __forceinline__ static int chunk_at(int row, int chunk) {
    return row * kRowBytes + (chunk ^ swizzle(row)) * kChunkBytes;
  }

  // chunk_at(row + 8 * y, chunk ^ x) == moved(chunk_at(row, chunk), x, y) for any x < kChunks: the
  // swizzle repeats every 8 rows and only permutes a row's chunks. The warps' loops address their
  // reads from a few per-lane chunk_at values so (warp_mma_sm80.cuh, LaneOffsets) instead of
  // recomputing the swizzle each step.
  __device__ __forceinline__ static int moved(int at, int x, int y) { return (at ^ (x * kChunkBytes)) + y * 8 * kRowBytes; }
  static_assert(kSliceKeys % 8 == 0, "slices start where the swizzle repeats");
};

}  // namespace fib::decode
