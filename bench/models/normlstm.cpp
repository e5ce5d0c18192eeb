// The normalized cells' time loops (bn_lstm, ln_lstm; bn_rnn, ln_rnn) as one native kernel per
// direction; also the plain tanh / ReLU RNN's and the GRU's (at the end of this file).
//
// Built on first use by bench/models/native.py (torch.utils.cpp_extension), run by
// bench/models/normseq.py in place of the TorchScript / Python loops on the CPU for float32. Same
// buffers, same algebra as normseq's `_lstm_forward_loop` / `_lstm_backward_loop`: per time
// step one matrix product (BLAS's sgemm, as at::mm calls it, see `gemm_rows`) and the rest -- the recurrent norm, the
// gates, the cell update, the cell norm and their backward -- fused into a few passes over a
// (B, 4H) block in L1/L2, instead of ~28 separate ATen calls per step. The backward also sums
// W_hh's gradient step by step (dv_t^T h_{t-1}, one small product per step on a block still in
// cache) rather than one (T*B, G)^T (T*B, H) product afterwards over a (T, B, G) buffer kept for
// it: that product ran at a fraction of MKL's speed (a long, thin reduction) and the buffer had to
// be written and read back from memory. The numbers agree with
// the TorchScript loops to rounding (the order of the sums differs; tested), and are the same
// run to run, bit for bit (no threads, no atomics).
//
// sigmoid uses exp computed here (Cephes' single-precision polynomial, < 2 ulp; branch-free
// so that the compiler vectorises the loops) rather than the C library's scalar expf.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using at::Tensor;
using c10::optional;

inline float exp_c(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &bits, sizeof s);
  return y * s;
}

inline float sigmoid_c(float x) { return 1.0f / (1.0f + exp_c(-x)); }

// sum of f(d) for d < D in 8 interleaved partial sums (one AVX register: the compiler may not
// reorder a float sum itself), then a fixed tree -- the same order every call.
template <class F>
inline float sum8(int64_t D, F f) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; ++j) acc[j] += f(d + j);
  float tail = 0.f;
  for (; d < D; ++d) tail += f(d);
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail;
}

// Statistics of one normalization over a (B, D) block x.
// ln: per row (mean, rstd of length B). bn: per column (length D) -- batch statistics when
// training (running statistics rm/rv updated if given), the running statistics otherwise.
void norm_stats(bool ln, const float* x, int64_t B, int64_t D, bool training, double momentum, double eps,
                float* rm, float* rv, float* mean, float* rstd) {
  if (ln) {
    for (int64_t b = 0; b < B; ++b) {
      const float* r = x + b * D;
      const float m = sum8(D, [&](int64_t d) { return r[d]; }) / D;
      const float q = sum8(D, [&](int64_t d) { return (r[d] - m) * (r[d] - m); });
      mean[b] = m;
      rstd[b] = 1.0f / std::sqrt(q / D + static_cast<float>(eps));
    }
    return;
  }
  if (!training) {
    for (int64_t d = 0; d < D; ++d) {
      mean[d] = rm[d];
      rstd[d] = 1.0f / std::sqrt(rv[d] + static_cast<float>(eps));
    }
    return;
  }
  std::fill(mean, mean + D, 0.f);
  std::fill(rstd, rstd + D, 0.f);
  for (int64_t b = 0; b < B; ++b) {
    const float* r = x + b * D;
    for (int64_t d = 0; d < D; ++d) mean[d] += r[d];
  }
  for (int64_t d = 0; d < D; ++d) mean[d] /= B;
  for (int64_t b = 0; b < B; ++b) {
    const float* r = x + b * D;
    for (int64_t d = 0; d < D; ++d) rstd[d] += (r[d] - mean[d]) * (r[d] - mean[d]);  // sum of squares
  }
  for (int64_t d = 0; d < D; ++d) {
    const float ss = rstd[d];
    if (rm != nullptr) {
      rm[d] = static_cast<float>(momentum * mean[d] + (1 - momentum) * rm[d]);
      rv[d] = static_cast<float>(momentum * ss / (B - 1) + (1 - momentum) * rv[d]);
    }
    rstd[d] = 1.0f / std::sqrt(ss / B + static_cast<float>(eps));
  }
}

// A folded input norm's forward for one step: the statistics of the raw input term x (B, D) into
// mean / rstd (running statistics rm / rv updated as norm_stats does), and out = norm(x) * g + b.
void norm_input(bool ln, const float* x, int64_t B, int64_t D, bool training, double momentum, double eps,
                float* rm, float* rv, float* mean, float* rstd, const float* g, const float* bias, float* out) {
  norm_stats(ln, x, B, D, training, momentum, eps, rm, rv, mean, rstd);
  for (int64_t b = 0; b < B; ++b) {
    const float* __restrict xr = x + b * D;
    float* __restrict o = out + b * D;
    if (ln) {
      const float m = mean[b], s = rstd[b];
      for (int64_t d = 0; d < D; ++d) o[d] = (xr[d] - m) * s * g[d] + bias[d];
    } else {
      for (int64_t d = 0; d < D; ++d) o[d] = (xr[d] - mean[d]) * rstd[d] * g[d] + bias[d];
    }
  }
}

// dx of a normalization y = xhat * w (+ b), given gw = dy * w, the input x and its statistics;
// also adds sum(dy * xhat) to dw and sum(dy) to db (db may be null).
void norm_backward(bool ln, bool training, const float* dy, const float* x, const float* w, const float* mean,
                   const float* rstd, int64_t B, int64_t D, float* dx, float* dw, float* db, float* tmp_a,
                   float* tmp_b) {
  if (ln) {
    for (int64_t b = 0; b < B; ++b) {
      const float* g = dy + b * D;
      const float* r = x + b * D;
      float* o = dx + b * D;
      const float m = mean[b], s = rstd[b];
      for (int64_t d = 0; d < D; ++d) dw[d] += g[d] * ((r[d] - m) * s);
      const float sg = sum8(D, [&](int64_t d) { return g[d] * w[d]; });
      const float sgx = sum8(D, [&](int64_t d) { return g[d] * w[d] * ((r[d] - m) * s); });
      if (db != nullptr)
        for (int64_t d = 0; d < D; ++d) db[d] += g[d];
      const float a = sg / D, c = sgx / D;
      for (int64_t d = 0; d < D; ++d) o[d] = s * (g[d] * w[d] - a - (r[d] - m) * s * c);
    }
    return;
  }
  // batch norm: column reductions over the batch
  std::fill(tmp_a, tmp_a + D, 0.f);  // sum dy
  std::fill(tmp_b, tmp_b + D, 0.f);  // sum dy * xhat
  for (int64_t b = 0; b < B; ++b) {
    const float* g = dy + b * D;
    const float* r = x + b * D;
    for (int64_t d = 0; d < D; ++d) {
      tmp_a[d] += g[d];
      tmp_b[d] += g[d] * (r[d] - mean[d]) * rstd[d];
    }
  }
  for (int64_t d = 0; d < D; ++d) {
    dw[d] += tmp_b[d];
    if (db != nullptr) db[d] += tmp_a[d];
  }
  if (!training) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d) dx[b * D + d] = dy[b * D + d] * w[d] * rstd[d];
    return;
  }
  for (int64_t d = 0; d < D; ++d) {
    tmp_a[d] = tmp_a[d] * w[d] / B;  // mean of dy * w
    tmp_b[d] = tmp_b[d] * w[d] / B;  // mean of dy * w * xhat
  }
  for (int64_t b = 0; b < B; ++b) {
    const float* g = dy + b * D;
    const float* r = x + b * D;
    float* o = dx + b * D;
    for (int64_t d = 0; d < D; ++d) {
      const float xh = (r[d] - mean[d]) * rstd[d];
      o[d] = rstd[d] * (g[d] * w[d] - tmp_a[d] - xh * tmp_b[d]);
    }
  }
}

// One row of the LSTM backward's gate step: d i, d f, d tanh(g) and d c_{t-1} from the cell
// gradient dl (after the cell norm) plus dc (of c_t, from step t+1, updated in place), each gate
// through its sigmoid (x4 on the g block: tanh g = 2 sigmoid(2g) - 1). The blocks are separate
// restrict parameters so that the compiler knows they do not overlap and vectorises the loop
// (as offsets of one row pointer it cannot, H being a run-time value).
inline void gate_grads(int64_t H, const float* __restrict dl, const float* __restrict tg, const float* __restrict cp,
                       const float* __restrict ai, const float* __restrict af, const float* __restrict ag,
                       float* __restrict dc, float* __restrict di, float* __restrict df, float* __restrict dg) {
  for (int64_t d = 0; d < H; ++d) {
    const float c = dl[d] + dc[d];
    di[d] = c * tg[d] * ai[d] * (1.f - ai[d]);
    df[d] = c * cp[d] * af[d] * (1.f - af[d]);
    dg[d] = c * ai[d] * ag[d] * (1.f - ag[d]) * 4.f;
    dc[d] = c * af[d];
  }
}

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "normlstm: ", name,
              " must be a contiguous float32 CPU tensor");
}

// The per-step matrix products call BLAS's sgemm -- the routine at::mm itself calls on the CPU
// (MKL in PyTorch's x86 builds), exported by libtorch_cpu -- on raw pointers: no Tensor view and
// no ATen dispatch per step, ~3 us of a ~10 us product at hidden 64 and batch 64 (measured, one
// process: 1000 products h64 x (64, 64) 13.3 -> 10.4 ms), the same bits. Declared weak, so that
// a build without the symbol loads and the loops use at::mm_out / addmm_ (`blas_direct`).
#if defined(__linux__)
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
bool use_blas = sgemm_ != nullptr;
#else
bool use_blas = false;
#endif

// A weight operand W (k, n) of the products below: a float32 CPU matrix stored with unit stride
// along its rows or along its columns (W_hh or its transposed view), resolved once per call.
struct Mat {
  Tensor w;
  const float* p;
  int64_t k, n, ld;
  bool stored_t;  // memory holds W^T row by row
};

Mat mat(const Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.device().is_cpu() && w.scalar_type() == at::kFloat,
              "normlstm: a weight matrix must be a 2-D float32 CPU tensor");
  const int64_t k = w.size(0), n = w.size(1);
  if (w.stride(1) == 1 || n == 1) return {w, w.data_ptr<float>(), k, n, std::max<int64_t>(w.stride(0), std::max<int64_t>(n, 1)), false};
  if (w.stride(0) == 1 || k == 1) return {w, w.data_ptr<float>(), k, n, std::max<int64_t>(w.stride(1), std::max<int64_t>(k, 1)), true};
  return mat(w.contiguous());
}

// C = beta C + A W: A (m, k) and C (m, n) row-major with contiguous rows (a time step's block of a
// (T, B, .) buffer), beta 0 or 1.
void gemm_rows(int64_t m, const float* A, const Mat& W, float beta, float* C) {
#if defined(__linux__)
  if (use_blas) {
    // column-major view: C^T (n, m) = W^T (n, k) A^T (k, m)
    const int M = static_cast<int>(W.n), N = static_cast<int>(m), K = static_cast<int>(W.k);
    const int lda = static_cast<int>(W.ld), ldb = K, ldc = M;
    const float one = 1.f;
    sgemm_(W.stored_t ? "T" : "N", "N", &M, &N, &K, &one, W.p, &lda, A, &ldb, &beta, C, &ldc);
    return;
  }
#endif
  const auto f = W.w.options();
  Tensor a = at::from_blob(const_cast<float*>(A), {m, W.k}, f), c = at::from_blob(C, {m, W.n}, f);
  if (beta == 0.f)
    at::mm_out(c, a, W.w);
  else
    c.addmm_(a, W.w);
}

float* rows_of(const optional<Tensor>& t, int64_t i) {
  return t.has_value() && t->defined() ? t->data_ptr<float>() + i * t->size(1) : nullptr;
}

// Row (b, t) of the gradient of a sequence of hidden states -- dy (T, B, H), or (B, T, H) when
// batch_major (the transpose a batch-first readout hands back, read as it lies).
inline const float* dy_row(const float* dy, bool batch_major, int64_t b, int64_t t, int64_t B, int64_t T, int64_t H) {
  return dy + (batch_major ? b * T + t : t * B + b) * H;
}

// C (n, p) += A^T P: A (m, n) and P (m, p) row-major with contiguous rows, C row-major -- a weight
// gradient summed over one time step's block (m = the batch).
void gemm_acc_tn(int64_t m, int64_t n, int64_t p, const float* A, const float* P, float* C) {
#if defined(__linux__)
  if (use_blas) {
    // column-major view: C^T (p, n) += P^T (p, m) A (m, n)
    const int M = static_cast<int>(p), N = static_cast<int>(n), K = static_cast<int>(m);
    const float one = 1.f;
    sgemm_("N", "T", &M, &N, &K, &one, P, &M, A, &N, &one, C, &M);
    return;
  }
#endif
  const auto f = at::TensorOptions().dtype(at::kFloat);
  Tensor a = at::from_blob(const_cast<float*>(A), {m, n}, f), q = at::from_blob(const_cast<float*>(P), {m, p}, f);
  at::from_blob(C, {n, p}, f).addmm_(a.t(), q);
}

}  // namespace

// Fills hbuf[1:], vin, act, tg, cbuf[1:], tcn (as normseq's forward loop) and returns the
// statistics (mean_h, rstd_h, mean_c, rstd_c): (T, B) for layer norm, (T, D) for batch norm, and
// (mean_x, rstd_x) of the folded input norm ((T, B) / (T, G) likewise, or empty without it).
std::vector<Tensor> forward(Tensor xs, Tensor hbuf, Tensor vin, Tensor act, Tensor tg, Tensor cbuf, Tensor tcn,
                            Tensor Wt, bool ln, Tensor wh, Tensor wc, Tensor bc, double eps, bool training,
                            double momentum, optional<Tensor> rm_h, optional<Tensor> rv_h, optional<Tensor> rm_c,
                            optional<Tensor> rv_c, int64_t t0, int64_t last, optional<Tensor> gx,
                            optional<Tensor> bx, optional<Tensor> rm_x, optional<Tensor> rv_x) {
  const int64_t T = xs.size(0), B = xs.size(1), G = xs.size(2), H = tg.size(2);
  for (auto* p : {&xs, &hbuf, &vin, &act, &tg, &cbuf, &tcn, &wh, &wc, &bc}) check(*p, "a buffer");
  const int64_t nh = ln ? B : G, nc = ln ? B : H;
  Tensor mh = xs.new_empty({T, nh}), sh = xs.new_empty({T, nh});
  Tensor mc = xs.new_empty({T, nc}), sc = xs.new_empty({T, nc});
  // xs may be the raw input projection W_x x, normalized here per step by the cell's norm (gain gx,
  // bias bx; bn_lstm: running statistics rm_x / rv_x) -- one pass instead of a (B, T*G) batch norm
  // or a (T, B, G) layer norm outside, forward and backward
  const bool fold = gx.has_value() && gx->defined();
  const int64_t nx = ln ? B : G;
  Tensor mx = xs.new_empty({fold ? T : 0, nx}), sx = xs.new_empty({fold ? T : 0, nx});
  std::vector<float> xn(fold ? B * G : 0);
  const float *w_h = wh.data_ptr<float>(), *w_c = wc.data_ptr<float>(), *b_c = bc.data_ptr<float>();
  float *H_ = hbuf.data_ptr<float>(), *V = vin.data_ptr<float>(), *A = act.data_ptr<float>();
  float *TG = tg.data_ptr<float>(), *C = cbuf.data_ptr<float>(), *TC = tcn.data_ptr<float>();
  const float* X = xs.data_ptr<float>();
  const Mat Wm = mat(Wt);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t i = std::min(t0 + t, last);
    float* vt = V + t * B * G;
    gemm_rows(B, H_ + t * B * H, Wm, 0.f, vt);
    float *m1 = mh.data_ptr<float>() + t * nh, *s1 = sh.data_ptr<float>() + t * nh;
    norm_stats(ln, vt, B, G, training, momentum, eps, rows_of(rm_h, i), rows_of(rv_h, i), m1, s1);
    const float* xt = X + t * B * G;
    if (fold) {
      norm_input(ln, xt, B, G, training, momentum, eps, rows_of(rm_x, i), rows_of(rv_x, i),
                 mx.data_ptr<float>() + t * nx, sx.data_ptr<float>() + t * nx, gx->data_ptr<float>(),
                 bx->data_ptr<float>(), xn.data());
      xt = xn.data();
    }
    float* at_ = A + t * B * G;
    for (int64_t b = 0; b < B; ++b) {
      const float* vr = vt + b * G;
      const float* xr = xt + b * G;
      float* ar = at_ + b * G;
      if (ln) {
        const float m = m1[b], s = s1[b];
        for (int64_t d = 0; d < G; ++d) ar[d] = sigmoid_c((vr[d] - m) * s * w_h[d] + xr[d]);
      } else {
        for (int64_t d = 0; d < G; ++d) ar[d] = sigmoid_c((vr[d] - m1[d]) * s1[d] * w_h[d] + xr[d]);
      }
    }
    const float* cp = C + t * B * H;
    float* cn = C + (t + 1) * B * H;
    float* tgt = TG + t * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const float* ar = at_ + b * G;
      for (int64_t d = 0; d < H; ++d) {
        const float g = ar[2 * H + d] * 2.f - 1.f;
        tgt[b * H + d] = g;
        cn[b * H + d] = ar[H + d] * cp[b * H + d] + ar[d] * g;
      }
    }
    float *m2 = mc.data_ptr<float>() + t * nc, *s2 = sc.data_ptr<float>() + t * nc;
    norm_stats(ln, cn, B, H, training, momentum, eps, rows_of(rm_c, i), rows_of(rv_c, i), m2, s2);
    float* tct = TC + t * B * H;
    float* hn = H_ + (t + 1) * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const float* ao = at_ + b * G + 3 * H;
      const float* cr = cn + b * H;
      float* tr = tct + b * H;
      float* hr = hn + b * H;
      if (ln) {
        const float m = m2[b], s = s2[b];
        for (int64_t d = 0; d < H; ++d) tr[d] = sigmoid_c((cr[d] - m) * s * w_c[d] + b_c[d]) * 2.f - 1.f;
      } else {
        for (int64_t d = 0; d < H; ++d) tr[d] = sigmoid_c((cr[d] - m2[d]) * s2[d] * w_c[d] + b_c[d]) * 2.f - 1.f;
      }
      for (int64_t d = 0; d < H; ++d) hr[d] = ao[d] * tr[d];
    }
  }
  return {mh, sh, mc, sc, mx, sx};
}

// Fills dxs (gradient of the gate pre-activations = of xs; with the folded input norm, of the raw
// W_x x), dv (of the recurrent norm's input: (T, B, G), or (1, B, G) for one step at a time) and dW
// (G, H: of W_hh, summed step by step as dv_t^T h_{t-1}); returns dh (of h0), dc (of c0), dgain_h,
// dgain_c, dbias_c -- as normseq's backward loop -- and the folded input norm's dgain_x, dbias
// (empty without it). xs / gx: the raw input projection and gain_x when folded, else None. dhs:
// (T, B, H), or (B, T, H) when batch_major.
std::vector<Tensor> backward(Tensor dhs, bool batch_major, Tensor dxs, Tensor dv, Tensor dW, Tensor hbuf, Tensor vin, Tensor W, Tensor act,
                             Tensor tg, Tensor cbuf, Tensor tcn, bool ln, Tensor wh, Tensor wc, bool training,
                             Tensor mh, Tensor sh, Tensor mc, Tensor sc, Tensor mx, Tensor sx, optional<Tensor> xs,
                             optional<Tensor> gx) {
  const int64_t T = dxs.size(0), B = dxs.size(1), G = dxs.size(2), H = tg.size(2);
  for (auto* p : {&dhs, &dxs, &dv, &dW, &hbuf, &vin, &act, &tg, &cbuf, &tcn, &wh, &wc, &mh, &sh, &mc, &sc}) check(*p, "a buffer");
  const int64_t dv_step = dv.size(0) == 1 ? 0 : B * G;
  float* DW = dW.data_ptr<float>();
  const float* Hb = hbuf.data_ptr<float>();
  std::fill(DW, DW + G * H, 0.f);
  const int64_t nh = mh.size(1), nc = mc.size(1);
  Tensor dgain_h = at::zeros_like(wh), dgain_c = at::zeros_like(wc), dbias_c = at::zeros_like(wc);
  Tensor dc = dhs.new_zeros({B, H}), dh = dhs.new_zeros({B, H});
  const bool fold = gx.has_value() && gx->defined();
  Tensor dgx = fold ? at::zeros_like(*gx) : wh.new_empty({0}), dbx = fold ? at::zeros_like(*gx) : wh.new_empty({0});
  std::vector<float> dcn(B * H), dcl(B * H), ta(G), tb(G);
  const float *w_h = wh.data_ptr<float>(), *w_c = wc.data_ptr<float>();
  float *DX = dxs.data_ptr<float>(), *DV = dv.data_ptr<float>(), *DC = dc.data_ptr<float>(), *DH = dh.data_ptr<float>();
  const float *DHS = dhs.data_ptr<float>(), *V = vin.data_ptr<float>(), *A = act.data_ptr<float>();
  const float *TG = tg.data_ptr<float>(), *C = cbuf.data_ptr<float>(), *TC = tcn.data_ptr<float>();
  float *dgh = dgain_h.data_ptr<float>(), *dgc = dgain_c.data_ptr<float>(), *dbc = dbias_c.data_ptr<float>();
  const Mat Wm = mat(W);
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* at_ = A + t * B * G;
    const float* tct = TC + t * B * H;
    float* dxt = DX + t * B * G;
    for (int64_t b = 0; b < B; ++b) {
      const float* __restrict dhr = dy_row(DHS, batch_major, b, t, B, T, H);
      const float* __restrict dnext = DH + b * H;  // zeros at t = T - 1
      const float* __restrict tcr = tct + b * H;
      const float* __restrict ao = at_ + b * G + 3 * H;
      float* __restrict dor = dxt + b * G + 3 * H;
      float* __restrict dnr = dcn.data() + b * H;
      for (int64_t d = 0; d < H; ++d) {
        const float g = dhr[d] + dnext[d];
        dor[d] = g * tcr[d] * ao[d] * (1.f - ao[d]);         // d o, through its sigmoid
        dnr[d] = g * ao[d] * (1.f - tcr[d] * tcr[d]);        // d of the cell norm's output
      }
    }
    const float* ct = C + (t + 1) * B * H;
    norm_backward(ln, training, dcn.data(), ct, w_c, mc.data_ptr<float>() + t * nc, sc.data_ptr<float>() + t * nc, B,
                  H, dcl.data(), dgc, dbc, ta.data(), tb.data());
    const float* cp = C + t * B * H;
    const float* tgt = TG + t * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const float* ar = at_ + b * G;
      float* dr = dxt + b * G;
      gate_grads(H, dcl.data() + b * H, tgt + b * H, cp + b * H, ar, ar + H, ar + 2 * H, DC + b * H, dr, dr + H,
                 dr + 2 * H);
    }
    norm_backward(ln, training, dxt, V + t * B * G, w_h, mh.data_ptr<float>() + t * nh, sh.data_ptr<float>() + t * nh,
                  B, G, DV + t * dv_step, dgh, nullptr, ta.data(), tb.data());
    if (fold)  // the input term's norm, in place: dxs becomes the gradient of W_x x
      norm_backward(ln, training, dxt, xs->data_ptr<float>() + t * B * G, gx->data_ptr<float>(),
                    mx.data_ptr<float>() + t * mx.size(1), sx.data_ptr<float>() + t * mx.size(1), B, G, dxt,
                    dgx.data_ptr<float>(),
                    dbx.data_ptr<float>(), ta.data(), tb.data());
    gemm_acc_tn(B, G, H, DV + t * dv_step, Hb + t * B * H, DW);  // dW += dv_t^T h_{t-1}
    gemm_rows(B, DV + t * dv_step, Wm, 0.f, DH);
  }
  return {dh, dc, dgain_h, dgain_c, dbias_c, dgx, dbx};
}

// The normalized tanh RNNs (as normseq's RNN loops): ln (ln_rnn): h = tanh(LN(x_t + W h) + b), xs
// the raw input term; bn (bn_rnn): h = tanh(BN(W h) + x_t), xs the normalized input term. tanh is
// 2 sigmoid(2 .) - 1: the caller passes the norm's weights doubled (and, for bn, xs doubled).
// Fills hbuf[1:], vin (the norm's input), sig (sigmoid(2 pre)); returns (mean, rstd).
std::vector<Tensor> rnn_forward(Tensor xs, Tensor hbuf, Tensor vin, Tensor sig, Tensor Wt, bool ln, Tensor w2,
                                optional<Tensor> b2, double eps, bool training, double momentum,
                                optional<Tensor> rm, optional<Tensor> rv, int64_t t0, int64_t last,
                                optional<Tensor> gx2, optional<Tensor> bx2, optional<Tensor> rm_x,
                                optional<Tensor> rv_x) {
  const int64_t T = xs.size(0), B = xs.size(1), H = xs.size(2);
  for (auto* p : {&xs, &hbuf, &vin, &sig, &w2}) check(*p, "a buffer");
  const int64_t n = ln ? B : H;
  Tensor mean = xs.new_empty({T, n}), rstd = xs.new_empty({T, n});
  // bn_rnn with its input norm folded: xs is the raw W_x x, batch-normalized here per step (gain
  // and bias doubled like w2; running statistics rm_x / rv_x) instead of a (B, T*H) batch norm
  // and a doubling pass outside
  const bool fold = gx2.has_value() && gx2->defined();
  TORCH_CHECK(!(fold && ln), "normlstm: ln_rnn has no input norm to fold");
  Tensor mx = xs.new_empty({fold ? T : 0, H}), sx = xs.new_empty({fold ? T : 0, H});
  std::vector<float> xn(fold ? B * H : 0);
  const float* w = w2.data_ptr<float>();
  const float* b = b2.has_value() && b2->defined() ? b2->data_ptr<float>() : nullptr;
  const float* X = xs.data_ptr<float>();
  float *Hb = hbuf.data_ptr<float>(), *V = vin.data_ptr<float>(), *S = sig.data_ptr<float>();
  const Mat Wm = mat(Wt);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t i = std::min(t0 + t, last);
    float* vt = V + t * B * H;
    if (ln) std::memcpy(vt, X + t * B * H, sizeof(float) * B * H);  // x_t + W h
    gemm_rows(B, Hb + t * B * H, Wm, ln ? 1.f : 0.f, vt);
    float *m = mean.data_ptr<float>() + t * n, *r = rstd.data_ptr<float>() + t * n;
    norm_stats(ln, vt, B, H, training, momentum, eps, rows_of(rm, i), rows_of(rv, i), m, r);
    const float* xt = X + t * B * H;
    if (fold) {
      norm_input(false, xt, B, H, training, momentum, eps, rows_of(rm_x, i), rows_of(rv_x, i),
                 mx.data_ptr<float>() + t * H, sx.data_ptr<float>() + t * H, gx2->data_ptr<float>(),
                 bx2->data_ptr<float>(), xn.data());
      xt = xn.data();
    }
    for (int64_t k = 0; k < B; ++k) {
      const float* __restrict vr = vt + k * H;
      const float* __restrict xr = xt + k * H;
      float* __restrict sr = S + (t * B + k) * H;
      float* __restrict hr = Hb + ((t + 1) * B + k) * H;
      if (ln) {
        const float mk = m[k], rk = r[k];
        for (int64_t d = 0; d < H; ++d) sr[d] = sigmoid_c((vr[d] - mk) * rk * w[d] + b[d]);
      } else {
        for (int64_t d = 0; d < H; ++d) sr[d] = sigmoid_c((vr[d] - m[d]) * r[d] * w[d] + xr[d]);
      }
      for (int64_t d = 0; d < H; ++d) hr[d] = sr[d] * 2.f - 1.f;
    }
  }
  return {mean, rstd, mx, sx};
}

// Fills dv (of the norm's input; for ln it is dxs itself; for bn (T, B, H) or (1, B, H), one step at
// a time), dW (H, H: of W_hh, summed step by step as dv_t^T h_{t-1}) and, for bn, dxs; returns dh (of h0),
// dgain and dbias (ln; empty for bn), and the folded input norm's dgain_x, dbias (empty without
// it). w: the norm's own (undoubled) gain; xs / gx: the raw input term and the undoubled gain_x
// when folded (dxs then becomes the gradient of the raw W_x x), else None. dhs: (T, B, H), or
// (B, T, H) when batch_major.
std::vector<Tensor> rnn_backward(Tensor dhs, bool batch_major, Tensor dxs, Tensor dv, Tensor dW, Tensor hbuf, Tensor vin, Tensor W, Tensor sig, bool ln,
                                 Tensor w, bool training, Tensor mean, Tensor rstd, Tensor mx, Tensor sx,
                                 optional<Tensor> xs, optional<Tensor> gx) {
  const int64_t T = dxs.size(0), B = dxs.size(1), H = dxs.size(2);
  for (auto* p : {&dhs, &dxs, &dv, &dW, &hbuf, &vin, &sig, &w, &mean, &rstd}) check(*p, "a buffer");
  const int64_t dv_step = dv.size(0) == 1 ? 0 : B * H;
  float* DW = dW.data_ptr<float>();
  const float* Hb = hbuf.data_ptr<float>();
  std::fill(DW, DW + H * H, 0.f);
  const int64_t n = mean.size(1);
  const bool fold = gx.has_value() && gx->defined();
  Tensor dgx = fold ? at::zeros_like(*gx) : w.new_empty({0}), dbx = fold ? at::zeros_like(*gx) : w.new_empty({0});
  Tensor dgain = at::zeros_like(w), dbias = ln ? at::zeros_like(w) : w.new_empty({0});
  Tensor dh = dhs.new_zeros({B, H});
  std::vector<float> gn(B * H), ta(H), tb(H);
  const float *DHS = dhs.data_ptr<float>(), *V = vin.data_ptr<float>(), *S = sig.data_ptr<float>();
  float *DX = dxs.data_ptr<float>(), *DV = dv.data_ptr<float>(), *DH = dh.data_ptr<float>();
  const Mat Wm = mat(W);
  for (int64_t t = T - 1; t >= 0; --t) {
    // h = 2 sigmoid(2 pre) - 1: dh/dpre = 4 s (1 - s); bn: pre's gradient is also x_t's
    float* g = ln ? gn.data() : DX + t * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const float* __restrict dy = dy_row(DHS, batch_major, b, t, B, T, H);
      const float* __restrict s = S + (t * B + b) * H;
      const float* __restrict dn = DH + b * H;
      float* __restrict gr = g + b * H;
      for (int64_t d = 0; d < H; ++d) gr[d] = (dy[d] + dn[d]) * s[d] * (1.f - s[d]) * 4.f;
    }
    norm_backward(ln, training, g, V + t * B * H, w.data_ptr<float>(), mean.data_ptr<float>() + t * n,
                  rstd.data_ptr<float>() + t * n, B, H, DV + t * dv_step, dgain.data_ptr<float>(),
                  ln ? dbias.data_ptr<float>() : nullptr, ta.data(), tb.data());
    if (fold)  // the input term's batch norm, in place: dxs becomes the gradient of W_x x
      norm_backward(false, training, g, xs->data_ptr<float>() + t * B * H, gx->data_ptr<float>(),
                    mx.data_ptr<float>() + t * H, sx.data_ptr<float>() + t * H, B, H, g, dgx.data_ptr<float>(),
                    dbx.data_ptr<float>(), ta.data(), tb.data());
    gemm_acc_tn(B, H, H, DV + t * dv_step, Hb + t * B * H, DW);  // dW += dv_t^T h_{t-1}
    gemm_rows(B, DV + t * dv_step, Wm, 0.f, DH);
  }
  return {dh, dgain, dbias, dgx, dbx};
}

// The plain recurrences that nn.RNN / nn.GRU run on the CPU as one autograd node per operation
// and time step (PyTorch's CPU build fuses only nn.LSTM's training, through oneDNN): the same
// algebra in one kernel per direction, one matrix product per step and one fused pass over the
// (B, G) block. Used by cells.FusedRecurrence for rnn_tanh, rnn_relu and gru on the CPU.

// One row of the GRU's forward (PyTorch's convention): r = s(x_r + g_r), z = s(x_z + g_z),
// n = tanh(x_n + r * g_n), h' = n + z (h - n); g = W_hh h + b_hh; tanh n = 2 s(2 .) - 1.
inline void gru_row(int64_t H, const float* __restrict xr, const float* __restrict xz, const float* __restrict xn,
                    const float* __restrict gr, const float* __restrict gz, const float* __restrict gn,
                    const float* __restrict hp, float* __restrict ar, float* __restrict az, float* __restrict an,
                    float* __restrict ho) {
  for (int64_t d = 0; d < H; ++d) {
    const float r = sigmoid_c(xr[d] + gr[d]);
    const float z = sigmoid_c(xz[d] + gz[d]);
    const float n = sigmoid_c(2.f * (xn[d] + r * gn[d])) * 2.f - 1.f;
    ar[d] = r;
    az[d] = z;
    an[d] = n;
    ho[d] = n + z * (hp[d] - n);
  }
}

// One row of the GRU's backward: from dh' (dy: of the output, dh: from step t+1; dh becomes
// the direct part z * dh' of d h_{t-1}) the gradients of the input terms (dx) and of W_hh h +
// b_hh (dg).
inline void gru_grad_row(int64_t H, const float* __restrict dy, float* __restrict dh, const float* __restrict hp,
                         const float* __restrict ar, const float* __restrict az, const float* __restrict an,
                         const float* __restrict gn, float* __restrict dxr, float* __restrict dxz,
                         float* __restrict dxn, float* __restrict dgr, float* __restrict dgz, float* __restrict dgn) {
  for (int64_t d = 0; d < H; ++d) {
    const float g = dy[d] + dh[d];
    const float r = ar[d], z = az[d], n = an[d];
    const float dn = g * (1.f - z) * (1.f - n * n);
    const float dz = g * (hp[d] - n) * z * (1.f - z);
    const float dr = dn * gn[d] * r * (1.f - r);
    dxr[d] = dr;
    dxz[d] = dz;
    dxn[d] = dn;
    dgr[d] = dr;
    dgz[d] = dz;
    dgn[d] = dn * r;
    dh[d] = g * z;
  }
}

// xs (T, B, 3H): W_ih x_t + b_ih. Fills hbuf[1:], gn (T, B, H: the n part of W_hh h + b_hh, which the
// backward needs; the r and z parts live in a one-step block only) and act (r, z, n).
void gru_forward(Tensor xs, Tensor hbuf, Tensor gn, Tensor act, Tensor Wt, Tensor bhh) {
  const int64_t T = xs.size(0), B = xs.size(1), G = xs.size(2), H = G / 3;
  for (auto* p : {&xs, &hbuf, &gn, &act, &bhh}) check(*p, "a buffer");
  const float *X = xs.data_ptr<float>(), *bias = bhh.data_ptr<float>();
  float *Hb = hbuf.data_ptr<float>(), *GN = gn.data_ptr<float>(), *A = act.data_ptr<float>();
  std::vector<float> step(B * G);  // W_hh h + b_hh of one step: b_hh, then += h W_hh^T
  const Mat Wm = mat(Wt);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b = 0; b < B; ++b) std::memcpy(step.data() + b * G, bias, G * sizeof(float));
    gemm_rows(B, Hb + t * B * H, Wm, 1.f, step.data());
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = (t * B + b) * G;
      const float *xr = X + row, *gr = step.data() + b * G;
      float* ar = A + row;
      gru_row(H, xr, xr + H, xr + 2 * H, gr, gr + H, gr + 2 * H, Hb + (t * B + b) * H, ar, ar + H, ar + 2 * H,
              Hb + ((t + 1) * B + b) * H);
      std::memcpy(GN + (t * B + b) * H, gr + 2 * H, H * sizeof(float));
    }
  }
}

// Fills dxs (of xs), dW (G, H: of W_hh) and db (G: of b_hh) -- both summed step by step from a
// one-step block of the gradient of W_hh h + b_hh, which is never stored whole -- and returns dh
// (of h0). dhs (of the outputs h_0 .. h_{T-1}): (T, B, H), or (B, T, H) when batch_major.
Tensor gru_backward(Tensor dhs, bool batch_major, Tensor dxs, Tensor dW, Tensor db, Tensor hbuf, Tensor gn,
                    Tensor act, Tensor W) {
  const int64_t T = dxs.size(0), B = dxs.size(1), G = dxs.size(2), H = G / 3;
  for (auto* p : {&dhs, &dxs, &dW, &db, &hbuf, &gn, &act, &W}) check(*p, "a buffer");
  Tensor dh = dhs.new_zeros({B, H});
  const float *DY = dhs.data_ptr<float>(), *Hb = hbuf.data_ptr<float>(), *GN = gn.data_ptr<float>();
  const float* A = act.data_ptr<float>();
  float *DX = dxs.data_ptr<float>(), *DW = dW.data_ptr<float>(), *DB = db.data_ptr<float>(), *DH = dh.data_ptr<float>();
  std::fill(DW, DW + G * H, 0.f);
  std::fill(DB, DB + G, 0.f);
  std::vector<float> step(B * G), sum(G);  // one step's gradient of W_hh h + b_hh; its column sums
  const Mat Wm = mat(W);
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = (t * B + b) * G;
      const float* ar = A + row;
      float *dx = DX + row, *dg = step.data() + b * G;
      const float* dy = dy_row(DY, batch_major, b, t, B, T, H);
      gru_grad_row(H, dy, DH + b * H, Hb + (t * B + b) * H, ar, ar + H, ar + 2 * H, GN + (t * B + b) * H, dx,
                   dx + H, dx + 2 * H, dg, dg + H, dg + 2 * H);
    }
    // db: the step's column sums (rows in order), then added to the total (steps in order)
    std::memcpy(sum.data(), step.data(), G * sizeof(float));
    for (int64_t b = 1; b < B; ++b) {
      const float* __restrict dg = step.data() + b * G;
      float* __restrict s = sum.data();
      for (int64_t d = 0; d < G; ++d) s[d] += dg[d];
    }
    for (int64_t d = 0; d < G; ++d) DB[d] += sum[d];
    gemm_acc_tn(B, G, H, step.data(), Hb + t * B * H, DW);  // dW += dg^T h_{t-1}
    gemm_rows(B, step.data(), Wm, 1.f, DH);                 // + d h_{t-1} through W_hh h
  }
  return dh;
}

// The plain RNN: h' = tanh(x_t + W_hh h) or relu(...); xs (T, B, H) holds W_ih x_t + b_ih + b_hh.
void plain_forward(Tensor xs, Tensor hbuf, Tensor Wt, bool relu) {
  const int64_t T = xs.size(0), B = xs.size(1), H = xs.size(2);
  for (auto* p : {&xs, &hbuf}) check(*p, "a buffer");
  float* Hb = hbuf.data_ptr<float>();
  hbuf.narrow(0, 1, T).copy_(xs);  // the input terms once, then += h W_hh^T per step
  const Mat Wm = mat(Wt);
  for (int64_t t = 0; t < T; ++t) {
    gemm_rows(B, Hb + t * B * H, Wm, 1.f, Hb + (t + 1) * B * H);
    float* __restrict h = Hb + (t + 1) * B * H;
    if (relu)
      for (int64_t k = 0; k < B * H; ++k) h[k] = std::max(h[k], 0.f);
    else
      for (int64_t k = 0; k < B * H; ++k) h[k] = sigmoid_c(2.f * h[k]) * 2.f - 1.f;
  }
}

// Fills dxs (of the pre-activations = of xs) and dW (H, H: of W_hh, summed step by step as
// dx_t^T h_{t-1}); returns dh (of h0). dhs: (T, B, H), or (B, T, H) when batch_major.
Tensor plain_backward(Tensor dhs, bool batch_major, Tensor dxs, Tensor dW, Tensor hbuf, Tensor W, bool relu) {
  const int64_t T = dxs.size(0), B = dxs.size(1), H = dxs.size(2);
  for (auto* p : {&dhs, &dxs, &dW, &hbuf, &W}) check(*p, "a buffer");
  float* DW = dW.data_ptr<float>();
  std::fill(DW, DW + H * H, 0.f);
  Tensor dh = dhs.new_zeros({B, H});
  const float *DY = dhs.data_ptr<float>(), *Hb = hbuf.data_ptr<float>();
  float *DX = dxs.data_ptr<float>(), *DH = dh.data_ptr<float>();
  const Mat Wm = mat(W);
  for (int64_t t = T - 1; t >= 0; --t) {
    for (int64_t b = 0; b < B; ++b) {
      const float* __restrict y = Hb + ((t + 1) * B + b) * H;
      const float* __restrict dy = dy_row(DY, batch_major, b, t, B, T, H);
      const float* __restrict dn = DH + b * H;  // from step t+1 (zeros at t = T - 1)
      float* __restrict dx = DX + (t * B + b) * H;
      if (relu)
        for (int64_t d = 0; d < H; ++d) dx[d] = y[d] > 0.f ? dy[d] + dn[d] : 0.f;
      else
        for (int64_t d = 0; d < H; ++d) dx[d] = (dy[d] + dn[d]) * (1.f - y[d] * y[d]);
    }
    gemm_acc_tn(B, H, H, DX + t * B * H, Hb + t * B * H, DW);  // dW += dx_t^T h_{t-1}
    gemm_rows(B, DX + t * B * H, Wm, 0.f, DH);
  }
  return dh;
}

// The input projection of the native paths when the input has few features (the tasks' n_in is
// 2-10): out (R, G) = x (R, K) W^T (+ b), Wt = W^T (K, G). ATen's matrix product with K = 2 runs far
// below memory speed here (R = 64000, G = 256: 15 ms for a 65 MB result that one pass writes in
// about 3), and the bias was a second pass. One pass per output row: b, then K multiply-adds.
void proj_forward(Tensor x, Tensor Wt, optional<Tensor> b, Tensor out) {
  for (auto* p : {&x, &Wt, &out}) check(*p, "a buffer");
  const int64_t R = x.size(0), K = x.size(1), G = Wt.size(1);
  const float *X = x.data_ptr<float>(), *W = Wt.data_ptr<float>();
  const float* bias = b ? b->data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    float* __restrict o = O + r * G;
    if (bias)
      for (int64_t d = 0; d < G; ++d) o[d] = bias[d];
    else
      for (int64_t d = 0; d < G; ++d) o[d] = 0.f;
    for (int64_t k = 0; k < K; ++k) {
      const float xk = X[r * K + k];
      const float* __restrict w = W + k * G;
      for (int64_t d = 0; d < G; ++d) o[d] += xk * w[d];
    }
  }
}

// Its weight and bias gradients from g (R, G): dWt (K, G) = x^T g and db (G) = sum of g's rows, in
// one pass over g. Rows are summed in blocks of 64 (partial sums in L1, then added to the total in
// block order: the rounding of a sum over 64 rows plus one over R / 64 blocks, the same every call).
void proj_backward(Tensor g, Tensor x, Tensor dWt, optional<Tensor> db) {
  for (auto* p : {&g, &x, &dWt}) check(*p, "a buffer");
  const int64_t R = x.size(0), K = x.size(1), G = g.size(1);
  const float *Gr = g.data_ptr<float>(), *X = x.data_ptr<float>();
  float* DW = dWt.data_ptr<float>();
  float* DB = db ? db->data_ptr<float>() : nullptr;
  const int64_t rows = K + (DB ? 1 : 0);
  std::vector<float> acc(rows * G);
  std::fill(DW, DW + K * G, 0.f);
  if (DB) std::fill(DB, DB + G, 0.f);
  for (int64_t r0 = 0; r0 < R; r0 += 64) {
    std::fill(acc.begin(), acc.end(), 0.f);
    const int64_t r1 = std::min(R, r0 + 64);
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict gr = Gr + r * G;
      for (int64_t k = 0; k < K; ++k) {
        const float xk = X[r * K + k];
        float* __restrict a = acc.data() + k * G;
        for (int64_t d = 0; d < G; ++d) a[d] += xk * gr[d];
      }
      if (DB) {
        float* __restrict a = acc.data() + K * G;
        for (int64_t d = 0; d < G; ++d) a[d] += gr[d];
      }
    }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t d = 0; d < G; ++d) DW[k * G + d] += acc[k * G + d];
    if (DB)
      for (int64_t d = 0; d < G; ++d) DB[d] += acc[K * G + d];
  }
}

// Whether the per-step products call sgemm directly; `on` (tests) switches to at::mm_out and back.
bool blas_direct(optional<bool> on) {
#if defined(__linux__)
  if (on.has_value()) use_blas = *on && sgemm_ != nullptr;
#endif
  return use_blas;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("blas_direct", &blas_direct, "per-step products through sgemm directly (on: switch; tests)",
        pybind11::arg("on") = pybind11::none());
  m.def("forward", &forward, "normalized LSTM: forward time loop");
  m.def("backward", &backward, "normalized LSTM: backward time loop");
  m.def("rnn_forward", &rnn_forward, "normalized tanh RNN: forward time loop");
  m.def("rnn_backward", &rnn_backward, "normalized tanh RNN: backward time loop");
  m.def("gru_forward", &gru_forward, "GRU: forward time loop");
  m.def("gru_backward", &gru_backward, "GRU: backward time loop");
  m.def("plain_forward", &plain_forward, "tanh / ReLU RNN: forward time loop");
  m.def("plain_backward", &plain_backward, "tanh / ReLU RNN: backward time loop");
  m.def("proj_forward", &proj_forward, "input projection with few input features: forward");
  m.def("proj_backward", &proj_backward, "input projection with few input features: weight and bias gradients");
}
