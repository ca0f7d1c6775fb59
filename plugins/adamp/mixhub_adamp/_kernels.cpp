// Fused CPU kernels of one AdamP / SGDP step on one parameter tensor (mixhub-adamp), registered
// as torch operators `mixhub_adamp::adamp_step` and `mixhub_adamp::sgdp_step`.
//
// Each tensor is seen as `rows` contiguous chunks of `cols` elements (the channel view of
// clovaai/AdamP adamp/adamp.py `_channel_view`; the order of elements inside a chunk does not
// matter, so channels_last tensors qualify). Parameter, gradient and state share one layout.
//
// The projection test of AdamP Algorithm 1 (is max |cos(g_i, w_i)| < delta / sqrt(dim) for the
// channel view, else for the layer view?) depends only on the gradient and the weight, so it is
// decided first, from per-row sums g.w, g.g, w.w in double (pass A: reads g and w). Then:
//   * no projection (or a 1-D tensor): one pass, as a fused AdamW;
//   * channel view: one pass over each row, which stays in cache: moments, direction u into a
//     row-sized scratch buffer and w.u; then u' = u - w_hat * sum(w_hat * u) and the update;
//   * layer view, or a cosine within DEFER_BAND of its threshold: nothing is written and the
//     kernel returns 4 ("deferred"); the caller runs the reference step (the official float32 op
//     order) on the tensor. The official code sums the layer view's w_hat * u and its cosine in
//     float32 over up to millions of elements; the kernel's double sums would drift from it by
//     up to ~1e-4 relative over 20 steps, and could take the other side of the threshold.
// Element arithmetic is in the tensor's dtype with the scalars cast as torch casts them, so the
// result equals the reference loop to rounding (the row sums are accumulated in double).
// Parallel over rows (or elements) with at::parallel_for, i.e. torch's intra-op thread pool.
//
// Returned kind: 0 none, 1 channel, 3 not tested (1-D), 4 deferred to the reference step.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kDeferred = 4;

// Relative distance to a threshold below which the official float32 cosine may decide otherwise
// than the double one (measured: 7e-5 relative on a 2.4M-element layer view).
constexpr double DEFER_BAND = 1e-2;

struct Decision {
  int64_t kind;           // 0 none, 1 channel, 4 deferred (layer view, or too close to call)
  std::vector<double> ww; // per-row w.w
};

int64_t grain_rows(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

bool near(double c, double thr) { return std::fabs(c - thr) <= DEFER_BAND * thr; }

template <typename T>
Decision decide(const T* w, const T* g, int64_t rows, int64_t cols, double eps, double delta) {
  std::vector<double> sums(3 * rows);
  at::parallel_for(0, rows, grain_rows(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* wr = w + r * cols;
      const T* gr = g + r * cols;
      double gw = 0, gg = 0, ww = 0;
#pragma omp simd reduction(+ : gw, gg, ww)
      for (int64_t j = 0; j < cols; ++j) {
        double gi = gr[j], wi = wr[j];
        gw += gi * wi;
        gg += gi * gi;
        ww += wi * wi;
      }
      sums[3 * r] = gw;
      sums[3 * r + 1] = gg;
      sums[3 * r + 2] = ww;
    }
  });
  Decision d{0, std::vector<double>(rows)};
  const double thr_c = delta / std::sqrt(static_cast<double>(cols));
  const double thr_l = delta / std::sqrt(static_cast<double>(rows) * static_cast<double>(cols));
  double max_c = 0, GW = 0, GG = 0, WW = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double* s = sums.data() + 3 * r;
    // F.cosine_similarity: x.y / (max(||x||, eps) * max(||y||, eps))
    const double c = std::fabs(s[0]) / (std::max(std::sqrt(s[1]), eps) * std::max(std::sqrt(s[2]), eps));
    max_c = std::max(max_c, c);
    GW += s[0];
    GG += s[1];
    WW += s[2];
    d.ww[r] = s[2];
  }
  if (near(max_c, thr_c)) {
    d.kind = kDeferred;
  } else if (max_c < thr_c) {
    d.kind = 1;
  } else {
    const double c = std::fabs(GW) / (std::max(std::sqrt(GG), eps) * std::max(std::sqrt(WW), eps));
    d.kind = (c < thr_l || near(c, thr_l)) ? kDeferred : 0;  // a layer-view projection: the reference
  }
  return d;
}

// ----------------------------------------------------------------------------------------- AdamP
template <typename T>
struct AdamPScalars {
  T b1, a1, b2, a2, bc2, ep, neg_step;
  bool nesterov;
  // moments in place, returns the direction u = m_hat / (sqrt(v_hat) + eps), official op order
  inline T direction(T gi, T& m, T& v) const {
    T mi = m * b1;
    mi = mi + a1 * gi;
    m = mi;
    T vi = v * b2;
    vi = vi + a2 * gi * gi;
    v = vi;
    const T den = std::sqrt(vi) / bc2 + ep;
    const T nes = b1 * mi + a1 * gi;
    return (nesterov ? nes : mi) / den;
  }
};

template <typename T>
double dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += static_cast<double>(a[j]) * static_cast<double>(b[j]);
  return acc;
}

template <typename T>
void adamp_channel_row(T* __restrict w, const T* __restrict g, T* __restrict m, T* __restrict v, T* __restrict u,
                       int64_t cols, const AdamPScalars<T> k, const T den, const T dec) {
  // three short loops over a row in cache: gcc vectorises each well, not one loop doing all
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) u[j] = k.direction(g[j], m[j], v[j]);
  const double wu = dot(w, u, cols);
  const T s = static_cast<T>(wu / static_cast<double>(den));  // sum(w_hat * u), w_hat = w / den
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) {
    const T wi = w[j];
    const T ui = u[j] - (wi / den) * s;
    w[j] = wi * dec + k.neg_step * ui;
  }
}

template <typename T>
int64_t adamp_kernel(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                     bool project, double beta1, double beta2, double step_size, double bc2_sqrt, double eps,
                     double decay_full, double decay_proj, double delta, bool nesterov) {
  T* w = param.data_ptr<T>();
  const T* g = grad.data_ptr<T>();
  T* m = exp_avg.data_ptr<T>();
  T* v = exp_avg_sq.data_ptr<T>();
  const int64_t n = param.numel();
  const int64_t rows = project ? param.size(0) : 1;
  const int64_t cols = n / rows;
  const AdamPScalars<T> k{static_cast<T>(beta1), static_cast<T>(1.0 - beta1), static_cast<T>(beta2),
                          static_cast<T>(1.0 - beta2), static_cast<T>(bc2_sqrt), static_cast<T>(eps),
                          static_cast<T>(-step_size), nesterov};
  const T ep = static_cast<T>(eps);
  if (!project) {
    const T dec = static_cast<T>(decay_full);
    at::parallel_for(0, n, 32768, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T ui = k.direction(g[i], m[i], v[i]);
        w[i] = w[i] * dec + k.neg_step * ui;
      }
    });
    return 3;
  }
  const Decision d = decide(w, g, rows, cols, eps, delta);
  if (d.kind == 0) {
    const T dec = static_cast<T>(decay_full);
    at::parallel_for(0, n, 32768, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T ui = k.direction(g[i], m[i], v[i]);
        w[i] = w[i] * dec + k.neg_step * ui;
      }
    });
    return 0;
  }
  if (d.kind == kDeferred) return kDeferred;
  // channel view: each row in one sweep; the direction waits in a row-sized scratch buffer
  const T dec = static_cast<T>(decay_proj);
  at::parallel_for(0, rows, grain_rows(cols), [&](int64_t r0, int64_t r1) {
    std::vector<T> scratch(cols);
    for (int64_t r = r0; r < r1; ++r) {
      const T den = static_cast<T>(std::sqrt(d.ww[r])) + ep;  // ||w_i|| + eps
      adamp_channel_row(w + r * cols, g + r * cols, m + r * cols, v + r * cols, scratch.data(), cols, k, den, dec);
    }
  });
  return 1;
}

// ------------------------------------------------------------------------------------------ SGDP
template <typename T>
int64_t sgdp_kernel(at::Tensor& param, const at::Tensor& grad, at::Tensor& buf, bool project, double momentum,
                    double dampening, double lr, double eps, double decay_full, double decay_proj, double delta,
                    bool nesterov, bool alias) {
  T* w = param.data_ptr<T>();
  const T* g = grad.data_ptr<T>();
  T* b = buf.data_ptr<T>();
  const int64_t n = param.numel();
  const int64_t rows = project ? param.size(0) : 1;
  const int64_t cols = n / rows;
  const T mu = static_cast<T>(momentum), a = static_cast<T>(1.0 - dampening);
  const T ep = static_cast<T>(eps), neg_lr = static_cast<T>(-lr);
  // buffer update in place, returns the direction (official op order)
  auto direction = [&](T gi, T& bi) -> T {
    T x = bi * mu;
    x = x + a * gi;
    bi = x;
    const T nes = gi + mu * x;
    return nesterov ? nes : x;
  };
  int64_t kind = 3;
  Decision d{0, {}};
  if (project) {
    d = decide(w, g, rows, cols, eps, delta);
    kind = d.kind;
  }
  if (kind == kDeferred) return kDeferred;
  if (kind == 0 || kind == 3) {
    const T dec = static_cast<T>(decay_full);
    at::parallel_for(0, n, 32768, [&](int64_t i0, int64_t i1) {
#pragma omp simd
      for (int64_t i = i0; i < i1; ++i) {
        const T di = direction(g[i], b[i]);
        w[i] = w[i] * dec + neg_lr * di;
      }
    });
    return kind;
  }
  const T dec = static_cast<T>(decay_proj);
  const bool write_buf = !nesterov && alias;  // the official code projects the buffer itself
  // channel view
  at::parallel_for(0, rows, grain_rows(cols), [&](int64_t r0, int64_t r1) {
    std::vector<T> scratch(cols);
    T* u = scratch.data();
    for (int64_t r = r0; r < r1; ++r) {
      T* wr = w + r * cols;
      T* br = b + r * cols;
      const T* gr = g + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) u[j] = direction(gr[j], br[j]);
      const double wu = dot<T>(wr, u, cols);
      const T den = static_cast<T>(std::sqrt(d.ww[r])) + ep;
      const T s = static_cast<T>(wu / static_cast<double>(den));
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const T wi = wr[j];
        const T di = u[j] - (wi / den) * s;
        if (write_buf) br[j] = di;
        wr[j] = wi * dec + neg_lr * di;
      }
    }
  });
  return 1;
}

void check_layout(const at::Tensor& param, const at::Tensor& other, const char* name) {
  TORCH_CHECK(other.device().is_cpu() && other.scalar_type() == param.scalar_type(),
              "mixhub_adamp: ", name, " must be a CPU tensor of the parameter's dtype");
  TORCH_CHECK(other.sizes() == param.sizes() && other.strides() == param.strides(),
              "mixhub_adamp: ", name, " must share the parameter's shape and strides");
}

void check_param(const at::Tensor& param) {
  TORCH_CHECK(param.device().is_cpu(), "mixhub_adamp: the fused kernels run on CPU tensors only");
  TORCH_CHECK(param.scalar_type() == at::kFloat || param.scalar_type() == at::kDouble,
              "mixhub_adamp: the fused kernels take float32 or float64 tensors");
  TORCH_CHECK(param.is_non_overlapping_and_dense() && param.numel() > 0,
              "mixhub_adamp: the parameter must be dense and non-empty");
}

int64_t adamp_step(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                   bool project, double beta1, double beta2, double step_size, double bc2_sqrt, double eps,
                   double decay_full, double decay_proj, double delta, bool nesterov) {
  check_param(param);
  check_layout(param, grad, "grad");
  check_layout(param, exp_avg, "exp_avg");
  check_layout(param, exp_avg_sq, "exp_avg_sq");
  if (param.scalar_type() == at::kFloat)
    return adamp_kernel<float>(param, grad, exp_avg, exp_avg_sq, project, beta1, beta2, step_size, bc2_sqrt, eps,
                               decay_full, decay_proj, delta, nesterov);
  return adamp_kernel<double>(param, grad, exp_avg, exp_avg_sq, project, beta1, beta2, step_size, bc2_sqrt, eps,
                              decay_full, decay_proj, delta, nesterov);
}

int64_t sgdp_step(at::Tensor& param, const at::Tensor& grad, at::Tensor& buf, bool project, double momentum,
                  double dampening, double lr, double eps, double decay_full, double decay_proj, double delta,
                  bool nesterov, bool alias) {
  check_param(param);
  check_layout(param, grad, "grad");
  check_layout(param, buf, "momentum_buffer");
  if (param.scalar_type() == at::kFloat)
    return sgdp_kernel<float>(param, grad, buf, project, momentum, dampening, lr, eps, decay_full, decay_proj, delta,
                              nesterov, alias);
  return sgdp_kernel<double>(param, grad, buf, project, momentum, dampening, lr, eps, decay_full, decay_proj, delta,
                             nesterov, alias);
}

}  // namespace

TORCH_LIBRARY(mixhub_adamp, m) {
  m.def(
      "adamp_step(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, bool project, "
      "float beta1, float beta2, float step_size, float bc2_sqrt, float eps, float decay_full, float decay_proj, "
      "float delta, bool nesterov) -> int");
  m.def(
      "sgdp_step(Tensor(a!) param, Tensor grad, Tensor(b!) momentum_buffer, bool project, float momentum, "
      "float dampening, float lr, float eps, float decay_full, float decay_proj, float delta, bool nesterov, "
      "bool buffer_alias) -> int");
}

TORCH_LIBRARY_IMPL(mixhub_adamp, CPU, m) {
  m.impl("adamp_step", adamp_step);
  m.impl("sgdp_step", sgdp_step);
}
