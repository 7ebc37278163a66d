// Attention with dropout on the CPU, fused: no (M x N) matrix is ever stored. For each row of
// queries the scores are computed into a row buffer, soft-maxed and dropped out there, and the
// output accumulated; the backward pass recomputes them. The dropout mask is a hash of (seed,
// row, column), so the backward pass regenerates exactly the forward's mask without storing it.
// PyTorch's own CPU kernels either store the (M x N) probabilities and a mask drawn with
// bernoulli_ (with dropout), or are fused without dropout; at small head sizes (8) the stored
// matrices, not the arithmetic, were most of a training step.
//
// Loops over a row's columns are written to vectorise (keys and values are transposed once per
// batch entry, so a row's scores are FMAs over contiguous columns; the hash is 32-bit); loops
// over the head size are fixed-length for the usual sizes.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// e^x to about 2e-7 relative (Cephes' expf), in arithmetic the compiler vectorises (std::exp is a
// library call per element); x below -87 gives e^-87 (about 1.6e-38: nothing next to the row's 1)
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.f), 88.f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.f;
  return y * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}

inline uint64_t mix64(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

inline uint32_t mix32(uint32_t x) {  // lowbias32: a 32-bit hash that vectorises
  x ^= x >> 16;
  x *= 0x7FEB352DU;
  x ^= x >> 15;
  x *= 0x846CA68BU;
  return x ^ (x >> 16);
}

// A row's dropout multipliers: 0 for a dropped column, 1 / (1 - p) for a kept one; column j's
// draw is a hash of (the row's key, j), the row's key a hash of (seed, batch entry, row).
inline void keep_row(float* z, int64_t n, uint64_t seed, int64_t b, int64_t i, uint32_t threshold, float keep) {
  const uint32_t key = static_cast<uint32_t>(mix64(seed ^ mix64(static_cast<uint64_t>(b) << 32 | static_cast<uint64_t>(i))));
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) z[j] = mix32(key ^ static_cast<uint32_t>(j) * 0x9E3779B9U) >= threshold ? keep : 0.f;
}

// a row's scores: s[j] = scale * q . k_j, from the keys transposed (D, N): each column's sum in a
// register, columns side by side in vector lanes
template <int D>
inline void scores(float* s, const float* q, const float* kt, int64_t n, int64_t stride, int d_runtime, float scale) {
  const int d_max = D > 0 ? D : d_runtime;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float acc = 0.f;
    for (int d = 0; d < d_max; ++d) acc += q[d] * kt[d * stride + j];
    s[j] = acc * scale;
  }
}

// A (B, H, T, D) tensor whose last dimension is contiguous: row (bh, t) of it, bh = b * H + h.
struct Rows {
  const float* data;
  int64_t H, sB, sH, sT;
  explicit Rows(const torch::Tensor& x)
      : data(x.data_ptr<float>()), H(x.size(1)), sB(x.stride(0)), sH(x.stride(1)), sT(x.stride(2)) {
    TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1 && x.scalar_type() == torch::kFloat32,
                "attention: (B, H, T, D) float32 tensors with contiguous D expected");
  }
  const float* operator()(int64_t bh, int64_t t) const { return data + (bh / H) * sB + (bh % H) * sH + t * sT; }
};

template <int D>
void forward_rows(const Rows& Q, const float* KT, const Rows& V, float* O, float* L, int64_t BH, int64_t M, int64_t N,
                  int d_runtime, bool causal, uint32_t threshold, float keep, uint64_t seed, float scale) {
  const int dd = D > 0 ? D : d_runtime;
  const int64_t H = Q.H;
  at::parallel_for(0, BH * M, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(N), z(N);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bh = r / M, i = r % M;
      const int64_t n = causal ? std::min(N, i + (N - M) + 1) : N;
      scores<D>(s.data(), Q(bh, i), KT + bh * dd * N, n, N, d_runtime, scale);
      float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, s[j]);
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < n; ++j) {
        s[j] = exp_approx(s[j] - mx);
        sum += s[j];
      }
      if (threshold) {
        keep_row(z.data(), n, seed, bh, i, threshold, keep);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) s[j] *= z[j];
      }
      const float norm = 1.f / sum;
      float* o = O + (((bh / H) * M + i) * H + bh % H) * dd;  // output laid out (B, M, H, D)
      for (int64_t j = 0; j < n; ++j) {
        const float w = s[j] * norm;
        const float* v = V(bh, j);
#pragma omp simd
        for (int d = 0; d < dd; ++d) o[d] += w * v[d];
      }
      L[r] = mx + std::log(sum);
    }
  });
}

template <int D>
void backward_rows(const Rows& dO, const Rows& Q, const float* KT, const float* VT, const Rows& O, const float* L,
                   float* dQ, float* dKT, float* dVT, int64_t BH, int64_t M, int64_t N, int d_runtime, bool causal,
                   uint32_t threshold, float keep, uint64_t seed, float scale) {
  const int dd = D > 0 ? D : d_runtime;
  const int64_t H = Q.H;
  // one (batch entry, head) per thread at a time: its rows all add into its dk and dv (kept
  // transposed, (D, N), so that every update runs over contiguous columns)
  at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(N), z(N), da(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const float *kt = KT + bh * dd * N, *vt = VT + bh * dd * N;
      float *dkt = dKT + bh * dd * N, *dvt = dVT + bh * dd * N;
      for (int64_t i = 0; i < M; ++i) {
        const int64_t n = causal ? std::min(N, i + (N - M) + 1) : N;
        const float *q = Q(bh, i), *dout = dO(bh, i), *o = O(bh, i);
        float di = 0.f;  // the sum over j of P_ij dP_ij: dO_i . O_i
        for (int d = 0; d < dd; ++d) di += dout[d] * o[d];
        scores<D>(p.data(), q, kt, n, N, d_runtime, scale);
        const float lse = L[bh * M + i];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) p[j] = exp_approx(p[j] - lse);
        scores<D>(da.data(), dout, vt, n, N, d_runtime, 1.f);  // dO_i . v_j
        if (threshold) {
          keep_row(z.data(), n, seed, bh, i, threshold, keep);
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            da[j] = p[j] * (da[j] * z[j] - di) * scale;  // now dS_ij
            p[j] *= z[j];  // now the weight of v_j in O_i
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) da[j] = p[j] * (da[j] - di) * scale;
        }
        float* dq = dQ + (((bh / H) * M + i) * H + bh % H) * dd;  // laid out (B, M, H, D)
        for (int d = 0; d < dd; ++d) {
          const float qd = q[d], gd = dout[d];
          const float* ktd = kt + d * N;
          float *dktd = dkt + d * N, *dvtd = dvt + d * N;
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < n; ++j) {
            dvtd[j] += p[j] * gd;
            dktd[j] += da[j] * qd;
            acc += da[j] * ktd[j];
          }
          dq[d] += acc;
        }
      }
    }
  });
}

template <typename F>
void by_head_size(int64_t d, F f) {
  switch (d) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    default: f(std::integral_constant<int, 0>{});
  }
}

uint32_t drop_threshold(double p) { return static_cast<uint32_t>(p * 4294967296.0); }  // p < 1
float keep_scale(double p) { return p > 0 ? static_cast<float>(1.0 / (1.0 - p)) : 1.f; }

}  // namespace

// q (B, H, M, D), k and v (B, H, N, D): float32, any strides but a contiguous last dimension;
// dropout p in [0, 1). Returns the output (B, H, M, D) (a view of a (B, M, H, D) tensor, so that
// merging the heads is free) and each row's log-sum-exp of the scaled scores (B * H, M), which
// backward needs. causal: row i sees the columns j <= i + (N - M).
std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, bool causal, double p,
                                   int64_t seed, double scale) {
  const int64_t B = q.size(0), H = q.size(1), M = q.size(2), D = q.size(3), N = k.size(2);
  auto out = torch::zeros({B, M, H, D}, q.options());
  auto lse = torch::empty({B * H, M}, q.options());
  auto kt = k.transpose(2, 3).contiguous();  // (B, H, D, N)
  const Rows Q(q), V(v);
  const float* KT = kt.data_ptr<float>();
  float *O = out.data_ptr<float>(), *L = lse.data_ptr<float>();
  by_head_size(D, [&](auto d) {
    forward_rows<decltype(d)::value>(Q, KT, V, O, L, B * H, M, N, static_cast<int>(D), causal, drop_threshold(p),
                                     keep_scale(p), static_cast<uint64_t>(seed), static_cast<float>(scale));
  });
  return {out.permute({0, 2, 1, 3}), lse};
}

// Gradients for q, k and v (views: (B, H, T, D) shapes, their own strides) of forward's output,
// given its gradient dout, the output and the log-sum-exps.
std::vector<torch::Tensor> backward(torch::Tensor dout, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                    torch::Tensor out, torch::Tensor lse, bool causal, double p, int64_t seed,
                                    double scale) {
  const int64_t B = q.size(0), H = q.size(1), M = q.size(2), D = q.size(3), N = k.size(2);
  auto kt = k.transpose(2, 3).contiguous(), vt = v.transpose(2, 3).contiguous();  // (B, H, D, N)
  auto dq = torch::zeros({B, M, H, D}, q.options());
  auto dkt = torch::zeros_like(kt), dvt = torch::zeros_like(vt);
  const Rows dO(dout), Q(q), O(out);
  by_head_size(D, [&](auto d) {
    backward_rows<decltype(d)::value>(dO, Q, kt.data_ptr<float>(), vt.data_ptr<float>(), O, lse.data_ptr<float>(),
                                      dq.data_ptr<float>(), dkt.data_ptr<float>(), dvt.data_ptr<float>(), B * H, M,
                                      N, static_cast<int>(D), causal, drop_threshold(p), keep_scale(p),
                                      static_cast<uint64_t>(seed), static_cast<float>(scale));
  });
  return {dq.permute({0, 2, 1, 3}), dkt.transpose(2, 3), dvt.transpose(2, 3)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused attention with dropout, forward");
  m.def("backward", &backward, "fused attention with dropout, backward");
}
