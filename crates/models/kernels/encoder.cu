// DataFactory's fused CUDA kernels for the BERT / XLM-RoBERTa encoder
// (crates/models/src/cuda_kernels.rs launches them; ARCHITECTURE.md,
// "Fused CUDA kernels"). Compiled to PTX at build time by build.rs with the
// `cuda` feature, for compute_80 (any GPU from Ampere on; the driver compiles
// the PTX for the card it loads on).
//
// Every kernel exists in f32, f16 and bf16 (suffix _f32, _f16, _bf16), reads
// and writes the model's dtype and does its arithmetic in f32. Tensors are
// contiguous and row-major; the Rust side checks shapes and layouts before a
// launch. Indices are 32-bit: the Rust side refuses tensors of 2^31 elements
// or more.
//
// The kernels are written for correctness first: simple grid-stride loops,
// 16-byte vector loads where a row's width and the pointers allow them (a
// uniform branch, checked on the device), one warp per softmax row, one block
// per layer-norm row.

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Activations, as the model's `hidden_act` names them.
#define ACT_NONE 0
#define ACT_GELU_ERF 1   // "gelu": 0.5 x (1 + erf(x / sqrt 2))
#define ACT_GELU_TANH 2  // "gelu_new", "gelu_pytorch_tanh", "gelu_fast"
#define ACT_RELU 3

__device__ __forceinline__ float activate(float x, int act) {
  switch (act) {
    case ACT_GELU_ERF:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case ACT_GELU_TANH:
      return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case ACT_RELU:
      return x > 0.0f ? x : 0.0f;
    default:
      return x;
  }
}

__device__ __forceinline__ bool aligned16(const void *p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum of `v` over the block, returned to every thread. blockDim.x is a
// multiple of 32 (at most 1024) and every thread of the block calls it.
// `shared` holds 32 floats; the first barrier keeps a previous call's
// readers ahead of this call's writers.
__device__ float block_sum(float v, float *shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  return warp_sum(lane < warps ? shared[lane] : 0.0f);
}

// y[r, c] = act(y[r, c] + bias[c]) in place; y is [rows, n] (total = rows * n).
template <typename T>
__device__ void bias_act(T *__restrict__ y, const T *__restrict__ bias, uint32_t total, uint32_t n, int act) {
  constexpr uint32_t VEC = 16 / sizeof(T);
  const uint32_t start = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
  if (n % VEC == 0 && aligned16(y) && aligned16(bias)) {
    const uint32_t chunks = total / VEC;
    for (uint32_t i = start; i < chunks; i += stride) {
      uint4 yv = reinterpret_cast<const uint4 *>(y)[i];
      const uint4 bv = *reinterpret_cast<const uint4 *>(bias + (i * VEC) % n);
      T *ye = reinterpret_cast<T *>(&yv);
      const T *be = reinterpret_cast<const T *>(&bv);
#pragma unroll
      for (uint32_t j = 0; j < VEC; ++j) ye[j] = from_f<T>(activate(to_f(ye[j]) + to_f(be[j]), act));
      reinterpret_cast<uint4 *>(y)[i] = yv;
    }
  } else {
    for (uint32_t i = start; i < total; i += stride) y[i] = from_f<T>(activate(to_f(y[i]) + to_f(bias[i % n]), act));
  }
}

// LayerNorm(y + bias + residual) in place, one block per row of [rows, n].
// params is [3, n]: the dense layer's bias, the norm's weight, the norm's
// bias. The sum is rounded to T once and stored, as PyTorch's f16/bf16
// models do; mean and variance are taken in f32 over the stored values
// (two passes, the row stays in L1/L2), then the row is normalised.
template <typename T>
__device__ void bias_residual_layer_norm(T *__restrict__ y, const T *__restrict__ residual,
                                         const T *__restrict__ params, uint32_t n, float eps) {
  __shared__ float shared[32];
  T *row = y + (size_t)blockIdx.x * n;
  const T *res = residual + (size_t)blockIdx.x * n;
  const T *bias = params, *gamma = params + n, *beta = params + 2 * (size_t)n;
  float sum = 0.0f;
  for (uint32_t c = threadIdx.x; c < n; c += blockDim.x) {
    const T v = from_f<T>(to_f(row[c]) + to_f(bias[c]) + to_f(res[c]));
    row[c] = v;
    sum += to_f(v);
  }
  const float mean = block_sum(sum, shared) / (float)n;
  float sq = 0.0f;
  for (uint32_t c = threadIdx.x; c < n; c += blockDim.x) {
    const float d = to_f(row[c]) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(block_sum(sq, shared) / (float)n + eps);
  for (uint32_t c = threadIdx.x; c < n; c += blockDim.x)
    row[c] = from_f<T>((to_f(row[c]) - mean) * rstd * to_f(gamma[c]) + to_f(beta[c]));
}

// The fused Q/K/V projection's output [b * l, 3 * h] plus its bias, split
// into out [3, b, heads, l, d] (q, k, v, each [b, heads, l, d] contiguous).
template <typename T>
__device__ void qkv_split(const T *__restrict__ qkv, const T *__restrict__ bias, T *__restrict__ out, uint32_t b,
                          uint32_t l, uint32_t heads, uint32_t d) {
  constexpr uint32_t VEC = 16 / sizeof(T);
  const uint32_t h = heads * d, h3 = 3 * h, total = b * l * h3;
  const uint32_t start = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
  const bool vec = d % VEC == 0 && aligned16(qkv) && aligned16(bias) && aligned16(out);
  const uint32_t width = vec ? VEC : 1;
  for (uint32_t chunk = start; chunk < total / width; chunk += stride) {
    const uint32_t i = chunk * width;
    const uint32_t token = i / h3, c = i - token * h3;
    const uint32_t which = c / h, r = c - which * h;
    const uint32_t head = r / d, dd = r - head * d;
    const uint32_t bi = token / l, li = token - bi * l;
    const uint32_t o = (((which * b + bi) * heads + head) * l + li) * d + dd;
    if (vec) {
      uint4 xv = *reinterpret_cast<const uint4 *>(qkv + i);
      const uint4 bv = *reinterpret_cast<const uint4 *>(bias + c);
      T *xe = reinterpret_cast<T *>(&xv);
      const T *be = reinterpret_cast<const T *>(&bv);
#pragma unroll
      for (uint32_t j = 0; j < VEC; ++j) xe[j] = from_f<T>(to_f(xe[j]) + to_f(be[j]));
      *reinterpret_cast<uint4 *>(out + o) = xv;
    } else {
      out[o] = from_f<T>(to_f(qkv[i]) + to_f(bias[c]));
    }
  }
}

// Softmax over the last dimension of scores [b, heads, l, len] in place, in
// f32, with key j of sequence s masked out (probability 0) when j >=
// lengths[s]. One warp per row; rows_per_seq = heads * l. A length of 0 (no
// real token) softmaxes the whole row, as the additive mask of the CPU path
// does.
template <typename T>
__device__ void masked_softmax(T *__restrict__ scores, const uint32_t *__restrict__ lengths, uint32_t rows,
                               uint32_t rows_per_seq, uint32_t len) {
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= rows) return;  // the whole warp leaves together
  T *r = scores + (size_t)row * len;
  uint32_t valid = lengths[row / rows_per_seq];
  if (valid == 0 || valid > len) valid = len;
  float m = -INFINITY;
  for (uint32_t j = lane; j < valid; j += 32) m = fmaxf(m, to_f(r[j]));
  m = warp_max(m);
  float sum = 0.0f;
  for (uint32_t j = lane; j < valid; j += 32) sum += expf(to_f(r[j]) - m);
  const float inv = 1.0f / warp_sum(sum);
  for (uint32_t j = lane; j < len; j += 32) r[j] = from_f<T>(j < valid ? expf(to_f(r[j]) - m) * inv : 0.0f);
}

// The attention context [b, heads, l, d] merged back to out [b, l, heads * d].
template <typename T>
__device__ void merge_heads(const T *__restrict__ ctx, T *__restrict__ out, uint32_t b, uint32_t l, uint32_t heads,
                            uint32_t d) {
  constexpr uint32_t VEC = 16 / sizeof(T);
  const uint32_t h = heads * d, total = b * l * h;
  const uint32_t start = blockIdx.x * blockDim.x + threadIdx.x, stride = gridDim.x * blockDim.x;
  const bool vec = d % VEC == 0 && aligned16(ctx) && aligned16(out);
  const uint32_t width = vec ? VEC : 1;
  for (uint32_t chunk = start; chunk < total / width; chunk += stride) {
    const uint32_t o = chunk * width;
    const uint32_t token = o / h, c = o - token * h;
    const uint32_t head = c / d, dd = c - head * d;
    const uint32_t bi = token / l, li = token - bi * l;
    const uint32_t i = ((bi * heads + head) * l + li) * d + dd;
    if (vec) {
      *reinterpret_cast<uint4 *>(out + o) = *reinterpret_cast<const uint4 *>(ctx + i);
    } else {
      out[o] = ctx[i];
    }
  }
}

#define DF_KERNELS(T, S)                                                                                        \
  extern "C" __global__ void df_bias_act_##S(T *y, const T *bias, uint32_t total, uint32_t n, int act) {       \
    bias_act<T>(y, bias, total, n, act);                                                                        \
  }                                                                                                             \
  extern "C" __global__ void df_bias_residual_layer_norm_##S(T *y, const T *residual, const T *params,         \
                                                             uint32_t n, float eps) {                           \
    bias_residual_layer_norm<T>(y, residual, params, n, eps);                                                   \
  }                                                                                                             \
  extern "C" __global__ void df_qkv_split_##S(const T *qkv, const T *bias, T *out, uint32_t b, uint32_t l,     \
                                              uint32_t heads, uint32_t d) {                                     \
    qkv_split<T>(qkv, bias, out, b, l, heads, d);                                                               \
  }                                                                                                             \
  extern "C" __global__ void df_masked_softmax_##S(T *scores, const uint32_t *lengths, uint32_t rows,          \
                                                   uint32_t rows_per_seq, uint32_t len) {                       \
    masked_softmax<T>(scores, lengths, rows, rows_per_seq, len);                                                \
  }                                                                                                             \
  extern "C" __global__ void df_merge_heads_##S(const T *ctx, T *out, uint32_t b, uint32_t l, uint32_t heads,  \
                                                uint32_t d) {                                                   \
    merge_heads<T>(ctx, out, b, l, heads, d);                                                                   \
  }

DF_KERNELS(float, f32)
DF_KERNELS(__half, f16)
DF_KERNELS(__nv_bfloat16, bf16)
