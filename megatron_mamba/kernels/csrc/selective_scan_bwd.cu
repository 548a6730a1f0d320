// Mamba1's selective-scan backward (softplus delta with a bias, D, gated by silu(z)) with several
// channels to a block, so that dB and dC are summed over those channels in shared memory before
// their atomic adds. Why: at CALD's shape (batch 4, d_inner 5120, d_state 16, length 2048) the
// 1.34 billion fp32 atomics of one channel a block take 1.7 of mamba_ssm's 2.95 ms
// (benchmarks/scan_atomics.py); summed over 4 channels first they take 0.5 ms.
// Where it stands (device_run.sh scan_cuda, benchmarks/RESULTS.md): 2.56 ms against mamba_ssm's
// 2.96 at two channels of 256 threads, with a scan as lean as mamba_ssm's (one-instruction exp2,
// 16-byte shared stores, h_t reused for dC). Tilings with two states a pass (twice the independent
// shuffle chains, half the barriers) measured slower: 214 registers at 1 × 256 (3.71 ms), 128 with
// spills at 2 × 256 (2.80 ms).
//
// The recurrences (a_t = exp(Δ_t A), h_t = a_t h_{t-1} + Δ_t B_t u_t, y_t = C_t·h_t + D u_t,
// out_z = y · silu(z); g_y the gradient of out_z):
//   dy_t = g_y silu(z_t),  dz_t = g_y y_t silu'(z_t)
//   e_t  = a_t (C_t dy_t + e_{t+1})          (the gradient leaving h_t towards h_{t-1})
//   dh_t = C_t dy_t + e_{t+1}
//   dB_t += dh_t Δ_t u_t,  dC_t += h_t dy_t,  du_t += dh_t Δ_t B_t (+ D dy_t)
//   dΔ_t += dh_t (B_t u_t + A a_t h_{t-1}),  dA += dh_t Δ_t a_t h_{t-1}
// Each channel's chunk of kThreads × kItems positions is one warp group's: every thread holds
// kItems consecutive positions, composes them in registers, and the group scans the threads'
// compositions (warp shuffles, then the warps' totals through shared memory), forward for h and
// backward for e. A sequence longer than a chunk starts each chunk from the state mamba_ssm's
// forward saved at the previous chunk's end (chunks of 2048), and carries e across chunks.

// Plain CUDA behind a C entry point (no torch headers), loaded with ctypes by
// kernels/scan_backward_cuda.py, which builds it with nvcc once per source and GPU kind.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kWarp = 32;
constexpr int kSavedChunk = 2048;  // mamba_ssm's forward saves a state every 2048 positions
constexpr float kLog2e = 1.4426950408889634f;

// One step h ← a h + b; `then(first, second)` applies first, then second.
struct Step {
  float a, b;
};

__device__ __forceinline__ Step then(Step first, Step second) {
  return {first.a * second.a, second.a * first.b + second.b};
}

__device__ __forceinline__ Step shuffle_up(Step s, int offset) {
  return {__shfl_up_sync(0xffffffffu, s.a, offset), __shfl_up_sync(0xffffffffu, s.b, offset)};
}

__device__ __forceinline__ Step shuffle_down(Step s, int offset) {
  return {__shfl_down_sync(0xffffffffu, s.a, offset), __shfl_down_sync(0xffffffffu, s.b, offset)};
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// 2^x with one MUFU instruction, results below 2^-126 flushed to zero (exp2f would add a
// subnormal fix-up around it; a decay that small is zero for the scan either way).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// kItems consecutive elements from `row` starting at `start` (zero past `length`); 16-byte loads
// where the whole run is in bounds and aligned.
template <typename T, int kItems>
__device__ __forceinline__ void load(const T* row, int start, int length, float (&out)[kItems]) {
  constexpr int kPerVector = 16 / sizeof(T);
  const T* p = row + start;
  if constexpr (kItems % kPerVector == 0) {
    if (start + kItems <= length && (reinterpret_cast<uintptr_t>(p) % 16) == 0) {
#pragma unroll
      for (int v = 0; v < kItems / kPerVector; ++v) {
        uint4 raw = reinterpret_cast<const uint4*>(p)[v];
        const T* items = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < kPerVector; ++i) out[v * kPerVector + i] = to_float(items[i]);
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) out[i] = start + i < length ? to_float(p[i]) : 0.f;
}

template <typename T, int kItems>
__device__ __forceinline__ void store(T* row, int start, int length, const float (&in)[kItems]) {
  constexpr int kPerVector = 16 / sizeof(T);
  T* p = row + start;
  if constexpr (kItems % kPerVector == 0) {
    if (start + kItems <= length && (reinterpret_cast<uintptr_t>(p) % 16) == 0) {
#pragma unroll
      for (int v = 0; v < kItems / kPerVector; ++v) {
        uint4 raw;
        T* items = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < kPerVector; ++i) items[i] = from_float<T>(in[v * kPerVector + i]);
        reinterpret_cast<uint4*>(p)[v] = raw;
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i)
    if (start + i < length) p[i] = from_float<T>(in[i]);
}

struct Params {
  int batch, channels, length, state, channels_per_group, chunks, saved_chunks;
  bool softplus;
  // [b, d, l] tensors, contiguous in l: strides of b and d
  const void *u, *delta, *z, *grad, *y;
  int64_t u_b, u_d, delta_b, delta_d, z_b, z_d, grad_b, grad_d, y_b, y_d;
  void *du, *ddelta, *dz, *out_z;
  int64_t du_b, du_d, ddelta_b, ddelta_d, dz_b, dz_d, out_z_b, out_z_d;
  const float* A;  // [d, n], contiguous
  const void *B, *C;  // [b, g, n, l], contiguous in l
  int64_t B_b, B_g, B_n, C_b, C_g, C_n;
  const float *D, *bias;  // [d] or null
  const float2* saved;  // mamba_ssm's forward state: [b, d, saved_chunks, n] (product, h)
  float *dA, *dB, *dC, *dD, *dbias;  // dB, dC: [b, g, n, l] contiguous
};

// Shared memory: dB and dC of each channel and state of a pass, then the warps' totals and the
// carried e of each state. Four words of padding every 32 positions: a thread writes its kItems
// consecutive positions (a multiple of 4) as 16-byte stores, and the eight threads of one store
// phase then fall on distinct banks; the readers take 32 consecutive positions, one bank each.
__host__ __device__ constexpr int padded(int position) { return position + position / kWarp * 4; }

// A warp's sums of two values at once: lanes 0-15 end with the first's total (lane 0 holds it),
// lanes 16-31 with the second's (lane 16): 5 shuffles instead of 10.
__device__ __forceinline__ float warp_sum_pair(float first, float second, int lane) {
  const bool low = lane < kWarp / 2;
  float v = (low ? first : second) + __shfl_xor_sync(0xffffffffu, low ? second : first, kWarp / 2);
#pragma unroll
  for (int offset = kWarp / 4; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// kPass: states scanned together (1 or 2), each pass's shuffle chains interleaved and its two
// barriers shared. kMinBlocks: blocks an SM must hold, which caps the registers (3 × 128
// threads: 168 each, 4.5 ms against 5.0 at 224 registers and 2 blocks).
template <typename T, int kThreads, int kItems, int kChannels, int kPass, int kMinBlocks>
__global__ void __launch_bounds__(kThreads* kChannels, kMinBlocks)
    scan_backward_kernel(Params p) {
  constexpr int kChunk = kThreads * kItems;
  static_assert(kChunk == kSavedChunk, "chunks start from the forward's saved states");
  static_assert(kPass == 1 || kPass == 2, "one or two states a pass");
  constexpr int kWarps = kThreads / kWarp;  // a channel's warps
  constexpr int kRow = padded(kChunk);
  extern __shared__ float shared[];
  float* reduce = shared;  // [kChannels][kPass][2][kRow]
  Step* forward_totals = reinterpret_cast<Step*>(reduce + kChannels * kPass * 2 * kRow);  // [kChannels][kPass][kWarps]
  Step* backward_totals = forward_totals + kChannels * kPass * kWarps;  // [kChannels][kPass][kWarps]
  float* carried = reinterpret_cast<float*>(backward_totals + kChannels * kPass * kWarps);  // [2][kChannels][state]

  const int member = threadIdx.x / kThreads;  // which of the block's channels
  const int thread = threadIdx.x % kThreads;  // within the channel
  const int warp = thread / kWarp, lane = threadIdx.x % kWarp;
  const int b = blockIdx.y;
  const int d = blockIdx.x * kChannels + member;
  const int g = blockIdx.x * kChannels / p.channels_per_group;
  const int state = p.state;

  const T* u_row = static_cast<const T*>(p.u) + b * p.u_b + d * p.u_d;
  const T* delta_row = static_cast<const T*>(p.delta) + b * p.delta_b + d * p.delta_d;
  const T* z_row = static_cast<const T*>(p.z) + b * p.z_b + d * p.z_d;
  const T* grad_row = static_cast<const T*>(p.grad) + b * p.grad_b + d * p.grad_d;
  const T* y_row = static_cast<const T*>(p.y) + b * p.y_b + d * p.y_d;
  T* du_row = static_cast<T*>(p.du) + b * p.du_b + d * p.du_d;
  T* ddelta_row = static_cast<T*>(p.ddelta) + b * p.ddelta_b + d * p.ddelta_d;
  T* dz_row = static_cast<T*>(p.dz) + b * p.dz_b + d * p.dz_d;
  T* out_z_row = static_cast<T*>(p.out_z) + b * p.out_z_b + d * p.out_z_d;
  const T* B_rows = static_cast<const T*>(p.B) + b * p.B_b + g * p.B_g;
  const T* C_rows = static_cast<const T*>(p.C) + b * p.C_b + g * p.C_g;
  const int64_t group_rows = (static_cast<int64_t>(b) * (p.channels / p.channels_per_group) + g) * state * p.length;
  float* dB_rows = p.dB + group_rows;
  float* dC_rows = p.dC + group_rows;
  const float D = p.D != nullptr ? p.D[d] : 0.f;
  const float bias = p.bias != nullptr ? p.bias[d] : 0.f;
  float dD = 0.f, dbias = 0.f;
  const float* A_row = p.A + d * state;
  // a thread's kItems positions never straddle a padding gap (kItems divides the warp width)
  static_assert(kWarp % kItems == 0 && kItems % 4 == 0, "a thread's positions: whole 16-byte runs of one row");
  // state s of a pass: its dB at dB_shared + s * kStateStride, its dC kRow floats further
  float4* dB_shared = reinterpret_cast<float4*>(reduce + member * kPass * 2 * kRow + padded(thread * kItems));
  constexpr int kStateStride = 2 * kRow / 4, kCStride = kRow / 4;  // in float4s

  for (int chunk = p.chunks - 1; chunk >= 0; --chunk) {
    const int start = chunk * kChunk + thread * kItems;
    // Over the states, each position accumulates Σ_n dh B and Σ_n A dh a h_{t-1}: du and dΔ
    // follow from them once (du = Δ Σ dh B + D dy, dΔ = u Σ dh B + Σ A dh a h_{t-1}).
    float delta[kItems], delta_u[kItems], dy[kItems], sum_dh_B[kItems], sum_dh_Ah[kItems];
    {
      float u[kItems], z[kItems], grad[kItems], y[kItems], dz[kItems], out_z[kItems];
      load<T, kItems>(u_row, start, p.length, u);
      load<T, kItems>(delta_row, start, p.length, delta);
      load<T, kItems>(z_row, start, p.length, z);
      load<T, kItems>(grad_row, start, p.length, grad);
      load<T, kItems>(y_row, start, p.length, y);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const float raw = delta[i] + bias;
        delta[i] = p.softplus ? (raw <= 20.f ? log1pf(__expf(raw)) : raw) : raw;
        const float sigmoid_z = 1.f / (1.f + __expf(-z[i]));
        const float silu_z = z[i] * sigmoid_z;
        dy[i] = grad[i] * silu_z;
        dz[i] = grad[i] * y[i] * sigmoid_z * (1.f + z[i] * (1.f - sigmoid_z));
        out_z[i] = y[i] * silu_z;
        dD += dy[i] * u[i];
        sum_dh_B[i] = 0.f, sum_dh_Ah[i] = 0.f;
        if (start + i >= p.length) delta[i] = 0.f, dy[i] = 0.f;  // positions past the end: a = 1, no input
        delta_u[i] = delta[i] * u[i];
      }
      store<T, kItems>(dz_row, start, p.length, dz);
      store<T, kItems>(out_z_row, start, p.length, out_z);
    }
    const int chunk_from = chunk * kChunk;
    const int saved_chunk = chunk_from / kSavedChunk - 1;  // the saved state this chunk starts from
    const float2* saved =
        saved_chunk >= 0 ? p.saved + ((static_cast<int64_t>(b) * p.channels + d) * p.saved_chunks + saved_chunk) * state
                         : nullptr;
    const T* B_row = B_rows;  // the pass's first state's rows, advanced with n
    const T* C_row = C_rows;
    float* dB_row = dB_rows + chunk_from;
    float* dC_row = dC_rows + chunk_from;

    for (int n = 0; n < state; n += kPass, B_row += kPass * p.B_n, C_row += kPass * p.C_n,
             dB_row += kPass * p.length, dC_row += kPass * p.length) {
      // per state and position: the decay a, the input Δ u B and the output gradient C dy
      float A[kPass], Bn[kPass][kItems], a[kPass][kItems], input[kPass][kItems], g[kPass][kItems];
#pragma unroll
      for (int s = 0; s < kPass; ++s) {
        A[s] = A_row[n + s];
        const float A2 = A[s] * kLog2e;
        float Cn[kItems];
        load<T, kItems>(B_row + s * p.B_n, start, p.length, Bn[s]);
        load<T, kItems>(C_row + s * p.C_n, start, p.length, Cn);
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          a[s][i] = fast_exp2(delta[i] * A2);
          input[s][i] = delta_u[i] * Bn[s][i];
          g[s][i] = Cn[i] * dy[i];
        }
      }
      // h forward: the thread's steps composed, scanned over the channel's threads; e backward:
      // steps e ← a_t e + a_t g_t from the chunk's end, composed right to left
      Step inclusive[kPass], inclusive_back[kPass];
#pragma unroll
      for (int s = 0; s < kPass; ++s) {
        inclusive[s] = {1.f, 0.f};
#pragma unroll
        for (int i = 0; i < kItems; ++i) inclusive[s] = then(inclusive[s], {a[s][i], input[s][i]});
      }
#pragma unroll
      for (int offset = 1; offset < kWarp; offset *= 2) {
#pragma unroll
        for (int s = 0; s < kPass; ++s) {
          const Step before = shuffle_up(inclusive[s], offset);
          if (lane >= offset) inclusive[s] = then(before, inclusive[s]);
        }
      }
#pragma unroll
      for (int s = 0; s < kPass; ++s)
        if (lane == kWarp - 1) forward_totals[(member * kPass + s) * kWarps + warp] = inclusive[s];
#pragma unroll
      for (int s = 0; s < kPass; ++s) {
        inclusive_back[s] = {1.f, 0.f};
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i)
          inclusive_back[s] = then(inclusive_back[s], {a[s][i], a[s][i] * g[s][i]});
      }
#pragma unroll
      for (int offset = 1; offset < kWarp; offset *= 2) {
#pragma unroll
        for (int s = 0; s < kPass; ++s) {
          const Step after = shuffle_down(inclusive_back[s], offset);
          if (lane + offset < kWarp) inclusive_back[s] = then(after, inclusive_back[s]);
        }
      }
#pragma unroll
      for (int s = 0; s < kPass; ++s)
        if (lane == 0) backward_totals[(member * kPass + s) * kWarps + warp] = inclusive_back[s];
      __syncthreads();

      float dA[kPass];
#pragma unroll
      for (int s = 0; s < kPass; ++s) {
        // the state entering this thread's first position, and e entering its last
        float h = saved != nullptr ? saved[n + s].y : 0.f;
#pragma unroll
        for (int w = 0; w < kWarps - 1; ++w) {
          if (w < warp) {
            const Step total = forward_totals[(member * kPass + s) * kWarps + w];
            h = total.a * h + total.b;
          }
        }
        const Step before = shuffle_up(inclusive[s], 1);
        if (lane > 0) h = before.a * h + before.b;
        float e = chunk + 1 < p.chunks ? carried[(((chunk + 1) & 1) * kChannels + member) * state + n + s] : 0.f;
#pragma unroll
        for (int w = kWarps - 1; w > 0; --w) {
          if (w > warp) {
            const Step total = backward_totals[(member * kPass + s) * kWarps + w];
            e = total.a * e + total.b;
          }
        }
        const Step after = shuffle_down(inclusive_back[s], 1);
        if (lane < kWarp - 1) e = after.a * e + after.b;

        float hs[kItems + 1];  // hs[i] = h_{t-1}, hs[i + 1] = h_t of position i
        hs[0] = h;
#pragma unroll
        for (int i = 0; i < kItems; ++i) hs[i + 1] = a[s][i] * hs[i] + input[s][i];
        float dB[kItems], dC[kItems];
        dA[s] = 0.f;
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          const float dh = g[s][i] + e;
          const float carried_back = a[s][i] * hs[i];  // a_t h_{t-1}
          e = a[s][i] * dh;
          dB[i] = dh * delta_u[i];
          dC[i] = hs[i + 1] * dy[i];
          sum_dh_B[i] += dh * Bn[s][i];
          const float q = dh * carried_back;
          sum_dh_Ah[i] += A[s] * q;
          dA[s] += delta[i] * q;
        }
        float4* dB_state = dB_shared + s * kStateStride;
#pragma unroll
        for (int v = 0; v < kItems / 4; ++v) {
          dB_state[v] = make_float4(dB[4 * v], dB[4 * v + 1], dB[4 * v + 2], dB[4 * v + 3]);
          dB_state[kCStride + v] = make_float4(dC[4 * v], dC[4 * v + 1], dC[4 * v + 2], dC[4 * v + 3]);
        }
        if (thread == 0) carried[((chunk & 1) * kChannels + member) * state + n + s] = e;
      }
      if constexpr (kPass == 1) {
        const float total = warp_sum(dA[0]);
        if (lane == 0) atomicAdd(p.dA + d * state + n, total);
      } else {
        const float total = warp_sum_pair(dA[0], dA[1], lane);
        if (lane % (kWarp / 2) == 0) atomicAdd(p.dA + d * state + n + lane / (kWarp / 2), total);
      }
      __syncthreads();

      // dB and dC summed over the block's channels, then one atomic add per position; the
      // positions a thread sends are fixed at compile time, so the loop unrolls into plain adds
      constexpr int kPerThread = kChunk / (kThreads * kChannels);
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int position = threadIdx.x + j * kThreads * kChannels;
#pragma unroll
        for (int s = 0; s < kPass; ++s) {
          float sum_B = 0.f, sum_C = 0.f;
#pragma unroll
          for (int m = 0; m < kChannels; ++m) {
            sum_B += reduce[((m * kPass + s) * 2) * kRow + padded(position)];
            sum_C += reduce[((m * kPass + s) * 2 + 1) * kRow + padded(position)];
          }
          if (chunk_from + position < p.length) {
            atomicAdd(dB_row + s * p.length + position, sum_B);
            atomicAdd(dC_row + s * p.length + position, sum_C);
          }
        }
      }
    }

    float u[kItems], raw_delta[kItems], du[kItems], ddelta[kItems];
    load<T, kItems>(u_row, start, p.length, u);
    load<T, kItems>(delta_row, start, p.length, raw_delta);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      du[i] = D * dy[i] + delta[i] * sum_dh_B[i];
      ddelta[i] = u[i] * sum_dh_B[i] + sum_dh_Ah[i];
      if (p.softplus) ddelta[i] /= 1.f + __expf(-(raw_delta[i] + bias));  // softplus' = sigmoid
      if (start + i < p.length) dbias += ddelta[i];
    }
    store<T, kItems>(du_row, start, p.length, du);
    store<T, kItems>(ddelta_row, start, p.length, ddelta);
  }
  dD = warp_sum(dD);
  dbias = warp_sum(dbias);
  if (lane == 0) {
    if (p.D != nullptr) atomicAdd(p.dD + d, dD);
    if (p.bias != nullptr) atomicAdd(p.dbias + d, dbias);
  }
}

template <typename T, int kThreads, int kItems, int kChannels, int kPass, int kMinBlocks>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  constexpr int kChunk = kThreads * kItems;
  constexpr int kWarps = kThreads / kWarp;
  const size_t shared = (kChannels * kPass * 2 * padded(kChunk)) * sizeof(float) +
                        2 * kChannels * kPass * kWarps * sizeof(Step) + 2 * kChannels * p.state * sizeof(float);
  auto kernel = scan_backward_kernel<T, kThreads, kItems, kChannels, kPass, kMinBlocks>;
  cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared);
  if (status != cudaSuccess) return status;
  kernel<<<dim3(p.channels / kChannels, p.batch), kThreads * kChannels, shared, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for(const Params& p, int threads, int channels_per_block, int states_per_pass,
                       cudaStream_t stream) {
  if (states_per_pass == 1) {
    if (threads == 128 && channels_per_block == 1) return launch<T, 128, 16, 1, 1, 3>(p, stream);
    if (threads == 128 && channels_per_block == 2) return launch<T, 128, 16, 2, 1, 1>(p, stream);
    if (threads == 256 && channels_per_block == 1) return launch<T, 256, 8, 1, 1, 2>(p, stream);
    if (threads == 256 && channels_per_block == 2) return launch<T, 256, 8, 2, 1, 1>(p, stream);
    if (threads == 256 && channels_per_block == 4) return launch<T, 256, 8, 4, 1, 1>(p, stream);
  }
  if (states_per_pass == 2 && p.state % 2 == 0) {
    if (threads == 256 && channels_per_block == 1) return launch<T, 256, 8, 1, 2, 1>(p, stream);
    if (threads == 256 && channels_per_block == 2) return launch<T, 256, 8, 2, 2, 1>(p, stream);
  }
  return cudaErrorInvalidConfiguration;
}

}  // namespace

// Gradients of out_z = selective_scan(u, delta, A, B, C, D, z, bias, softplus) for `grad`, given
// the forward's ungated output `y` and saved states, into the buffers `p` names (dA, dB, dC, dD,
// dbias zeroed by the caller, float32). `dtype`: 0 float32, 1 bfloat16 (u, delta, z, grad, y, B,
// C and the outputs alike). Tilings (threads a channel, channels a block, states a pass): (128, 1,
// 1), (128, 2, 1), (256, 1, 1), (256, 2, 1), (256, 4, 1), and with an even state size (256, 1, 2),
// (256, 2, 2). Returns a cudaError_t.
// (`params` is a Params; void here so that the symbol keeps external linkage.)
extern "C" int megatron_mamba_scan_backward(const void* params, int dtype, int threads, int channels_per_block,
                                            int states_per_pass, void* stream) {
  const Params& p = *static_cast<const Params*>(params);
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == 0) return launch_for<float>(p, threads, channels_per_block, states_per_pass, s);
  if (dtype == 1) return launch_for<__nv_bfloat16>(p, threads, channels_per_block, states_per_pass, s);
  return cudaErrorInvalidValue;
}

extern "C" const char* megatron_mamba_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}
