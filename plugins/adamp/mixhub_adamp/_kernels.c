/* Fused CPU kernels of one AdamP / SGDP step on one parameter tensor (mixhub-adamp).
 *
 * Each tensor is seen as `rows` contiguous chunks of `cols` elements (the channel view of
 * clovaai/AdamP adamp/adamp.py `_channel_view`; the order of elements inside a chunk does not
 * matter, so channels_last tensors qualify). All tensors of one call share one layout.
 *
 * Two passes, parallel over rows with OpenMP:
 *   1. moments (written in place), direction u, and per-row sums g.w, g.g, w.w, w.u in double;
 *   2. after the channel/layer test of AdamP Algorithm 1 (projection, cosine < delta/sqrt(d)),
 *      u' = u - w_hat * sum(w_hat * u) for the chosen view, then w <- w * decay - step * u'.
 * Element arithmetic is in the tensor's dtype with the scalars cast as torch casts them, so the
 * result matches the reference loop to rounding (the row sums are accumulated in double).
 *
 * Returned kind: 0 none, 1 channel, 2 layer, 3 not tested (1-D).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>


static int decide(const double *sums, int64_t rows, int64_t cols, double eps, double delta,
                  double *layer_out) {
  /* sums: [rows][4] = g.w, g.g, w.w, w.u */
  double thr_c = delta / sqrt((double)cols);
  double thr_l = delta / sqrt((double)rows * (double)cols);
  int channel_ok = 1;
  double GW = 0, GG = 0, WW = 0, WU = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double *s = sums + 4 * r;
    double ng = sqrt(s[1]), nw = sqrt(s[2]);
    double c = fabs(s[0]) / ((ng > eps ? ng : eps) * (nw > eps ? nw : eps));
    if (!(c < thr_c)) channel_ok = 0;
    GW += s[0]; GG += s[1]; WW += s[2]; WU += s[3];
  }
  layer_out[0] = WW;
  layer_out[1] = WU;
  if (channel_ok) return 1;
  double ng = sqrt(GG), nw = sqrt(WW);
  double c = fabs(GW) / ((ng > eps ? ng : eps) * (nw > eps ? nw : eps));
  return (c < thr_l) ? 2 : 0;
}

#define DEFINE_KERNELS(T, SUF, SQRT)                                                                \
int adamp_step_##SUF(T *w, const T *g, T *m, T *v, int64_t rows, int64_t cols, int project,        \
                     double beta1, double beta2, double step_size, double bc2_sqrt, double eps,     \
                     double decay_full, double decay_proj, double delta, int nesterov,              \
                     int nthreads, double *sums) {                                                  \
  const T b1 = (T)beta1, a1 = (T)(1.0 - beta1), b2 = (T)beta2, a2 = (T)(1.0 - beta2);              \
  const T bc2 = (T)bc2_sqrt, ep = (T)eps, neg_step = (T)(-step_size);                             \
  int64_t n = rows * cols;                                                                          \
  if (!project) {                                                                                   \
    const T dec = (T)decay_full;                                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(n >= 32768)")              \
    for (int64_t i = 0; i < n; ++i) {                                                               \
      T gi = g[i];                                                                                  \
      T mi = m[i] * b1; mi = mi + a1 * gi; m[i] = mi;                                               \
      T vi = v[i] * b2; vi = vi + a2 * gi * gi; v[i] = vi;                                          \
      T den = SQRT(vi) / bc2 + ep;                                                                  \
      T nes = b1 * mi + a1 * gi, ui = (nesterov ? nes : mi) / den;                                         \
      T wi = w[i] * dec; w[i] = wi + neg_step * ui;                                                 \
    }                                                                                               \
    return 3;                                                                                       \
  }                                                                                                 \
  _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(n >= 32768)")                \
  for (int64_t r = 0; r < rows; ++r) {                                                              \
    double gw = 0, gg = 0, ww = 0, wu = 0;                                                          \
    T *wr = w + r * cols, *mr = m + r * cols, *vr = v + r * cols;                                   \
    const T *gr = g + r * cols;                                                                     \
    _Pragma("omp simd reduction(+ : gw, gg, ww, wu)")                                               \
    for (int64_t j = 0; j < cols; ++j) {                                                            \
      T gi = gr[j], wi = wr[j];                                                                     \
      T mi = mr[j] * b1; mi = mi + a1 * gi; mr[j] = mi;                                             \
      T vi = vr[j] * b2; vi = vi + a2 * gi * gi; vr[j] = vi;                                        \
      T den = SQRT(vi) / bc2 + ep;                                                                  \
      T nes = b1 * mi + a1 * gi, ui = (nesterov ? nes : mi) / den;                                         \
      gw += (double)gi * wi; gg += (double)gi * gi; ww += (double)wi * wi; wu += (double)wi * ui;    \
    }                                                                                               \
    sums[4 * r] = gw; sums[4 * r + 1] = gg; sums[4 * r + 2] = ww; sums[4 * r + 3] = wu;             \
  }                                                                                                 \
  double layer[2];                                                                                  \
  int kind = decide(sums, rows, cols, eps, delta, layer);                                           \
  const T dec = (T)(kind ? decay_proj : decay_full);                                                \
  T lden = (T)sqrt(layer[0]) + ep;                                                                  \
  T ls = (T)(layer[1] / (double)lden);                                                              \
  _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(n >= 32768)")                \
  for (int64_t r = 0; r < rows; ++r) {                                                              \
    T den_r = lden, s_r = ls;                                                                       \
    if (kind == 0) {                                                                                \
      den_r = (T)1; s_r = (T)0;                                                                     \
    } else if (kind == 1) {                                                                         \
      den_r = (T)sqrt(sums[4 * r + 2]) + ep;                                                        \
      s_r = (T)(sums[4 * r + 3] / (double)den_r);                                                   \
    }                                                                                               \
    T *wr = w + r * cols;                                                                           \
    const T *mr = m + r * cols, *vr = v + r * cols, *gr = g + r * cols;                             \
    for (int64_t j = 0; j < cols; ++j) {                                                            \
      T mi = mr[j], wi = wr[j];                                                                     \
      T den = SQRT(vr[j]) / bc2 + ep;                                                               \
      T nes = b1 * mi + a1 * gr[j], ui = (nesterov ? nes : mi) / den;                                    \
      ui = ui - (wi / den_r) * s_r; /* s_r = 0 when not projected: branch-free, vectorisable */     \
      wi = wi * dec; wr[j] = wi + neg_step * ui;                                                    \
    }                                                                                               \
  }                                                                                                 \
  return kind;                                                                                      \
}                                                                                                   \
                                                                                                    \
int sgdp_step_##SUF(T *w, const T *g, T *buf, int64_t rows, int64_t cols, int project,             \
                    double momentum, double dampening, double lr, double eps, double decay_full,    \
                    double decay_proj, double delta, int nesterov, int alias, int nthreads,         \
                    double *sums) {                                                                 \
  const T mu = (T)momentum, a = (T)(1.0 - dampening), ep = (T)eps, neg_lr = (T)(-lr);             \
  int64_t n = rows * cols;                                                                          \
  if (!project) {                                                                                   \
    const T dec = (T)decay_full;                                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(n >= 32768)")              \
    for (int64_t i = 0; i < n; ++i) {                                                               \
      T gi = g[i];                                                                                  \
      T bi = buf[i] * mu; bi = bi + a * gi; buf[i] = bi;                                            \
      T nes = gi + mu * bi, di = nesterov ? nes : bi;                                                          \
      T wi = w[i] * dec; w[i] = wi + neg_lr * di;                                                   \
    }                                                                                               \
    return 3;                                                                                       \
  }                                                                                                 \
  _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(n >= 32768)")                \
  for (int64_t r = 0; r < rows; ++r) {                                                              \
    double gw = 0, gg = 0, ww = 0, wd = 0;                                                          \
    T *br = buf + r * cols;                                                                         \
    const T *gr = g + r * cols, *wr = w + r * cols;                                                 \
    _Pragma("omp simd reduction(+ : gw, gg, ww, wd)")                                               \
    for (int64_t j = 0; j < cols; ++j) {                                                            \
      T gi = gr[j], wi = wr[j];                                                                     \
      T bi = br[j] * mu; bi = bi + a * gi; br[j] = bi;                                              \
      T nes = gi + mu * bi, di = nesterov ? nes : bi;                                                          \
      gw += (double)gi * wi; gg += (double)gi * gi; ww += (double)wi * wi; wd += (double)wi * di;    \
    }                                                                                               \
    sums[4 * r] = gw; sums[4 * r + 1] = gg; sums[4 * r + 2] = ww; sums[4 * r + 3] = wd;             \
  }                                                                                                 \
  double layer[2];                                                                                  \
  int kind = decide(sums, rows, cols, eps, delta, layer);                                           \
  const T dec = (T)(kind ? decay_proj : decay_full);                                                \
  const int write_buf = kind && !nesterov && alias;                                                 \
  T lden = (T)sqrt(layer[0]) + ep;                                                                  \
  T ls = (T)(layer[1] / (double)lden);                                                              \
  _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(n >= 32768)")                \
  for (int64_t r = 0; r < rows; ++r) {                                                              \
    T den_r = lden, s_r = ls;                                                                       \
    if (kind == 0) {                                                                                \
      den_r = (T)1; s_r = (T)0;                                                                     \
    } else if (kind == 1) {                                                                         \
      den_r = (T)sqrt(sums[4 * r + 2]) + ep;                                                        \
      s_r = (T)(sums[4 * r + 3] / (double)den_r);                                                   \
    }                                                                                               \
    T *wr = w + r * cols, *br = buf + r * cols;                                                     \
    const T *gr = g + r * cols;                                                                     \
    for (int64_t j = 0; j < cols; ++j) {                                                            \
      T bi = br[j], wi = wr[j];                                                                     \
      T nes = gr[j] + mu * bi, di = nesterov ? nes : bi;                                                       \
      di = di - (wi / den_r) * s_r;                                                                 \
      if (write_buf) br[j] = di;                                                                    \
      wi = wi * dec; wr[j] = wi + neg_lr * di;                                                      \
    }                                                                                               \
  }                                                                                                 \
  return kind;                                                                                      \
}

DEFINE_KERNELS(float, f32, sqrtf)
DEFINE_KERNELS(double, f64, sqrt)
