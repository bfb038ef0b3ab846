// reflect_pad_conv2d: reflection pad + convolution with no padding, i.e. nn.Conv2d(padding_mode="reflect").
//
// The pad is written by our own kernel (CUDA: reflect_pad_conv2d_cuda.cu; CPU: the loops below) straight into
// the convolution's input workspace, and the convolution and its weight/bias gradients run through ATen
// (cuDNN / oneDNN). Backward folds the padded input's gradient back onto dx as a gather, with no atomics:
//   dx[h, w] = sum over (hs, ws) in fold_sources(h) x fold_sources(w) of dpadded[hs, ws]
// Layouts: NCHW and channels_last; the output and dx keep x's layout.
#include "reflect_pad_conv2d.h"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/strides.h>

namespace fastgan {
namespace {

bool sym_true(const c10::SymBool& b) { return b.guard_bool(__FILE__, __LINE__); }

// Messages name the argument and the limit, as F.conv2d users would want to see them.
void check_args(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                int64_t padding, int64_t stride) {
  TORCH_CHECK_VALUE(x.dim() == 4, "reflect_pad_conv2d: x must be 4-D [N, C_in, H, W], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(weight.dim() == 4, "reflect_pad_conv2d: weight must be 4-D [C_out, C_in, K, K], got ",
                    weight.dim(), "-D");
  const auto dtype = x.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                    "reflect_pad_conv2d: x has dtype ", dtype, "; expected float32, float64, float16 or bfloat16");
  TORCH_CHECK_VALUE(weight.scalar_type() == dtype, "reflect_pad_conv2d: weight has dtype ", weight.scalar_type(),
                    " but x has ", dtype, "; cast them to one dtype");
  TORCH_CHECK_VALUE(weight.device() == x.device(), "reflect_pad_conv2d: weight is on ", weight.device(),
                    " but x is on ", x.device());
  const c10::SymInt c_in = x.sym_size(1), c_out = weight.sym_size(0), k = weight.sym_size(2);
  TORCH_CHECK_VALUE(sym_true(weight.sym_size(3) == k), "reflect_pad_conv2d: weight's kernel must be square, got ",
                    k, "x", weight.sym_size(3));
  TORCH_CHECK_VALUE(sym_true(k >= 1) && sym_true(k <= 7), "reflect_pad_conv2d: weight's kernel size must be 1..7, got ",
                    k);
  if (!sym_true(weight.sym_size(1) == c_in)) {
    const bool grouped = sym_true(weight.sym_size(1) > 0) && sym_true(c_in % weight.sym_size(1) == 0);
    TORCH_CHECK_VALUE(!grouped, "reflect_pad_conv2d: groups are unsupported (weight has ", weight.sym_size(1),
                      " input channels, x has ", c_in, "); use F.pad + F.conv2d(groups=...)");
    TORCH_CHECK_VALUE(false, "reflect_pad_conv2d: weight has ", weight.sym_size(1), " input channels but x has ", c_in);
  }
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, "reflect_pad_conv2d: stride must be 1 or 2, got ", stride);
  const c10::SymInt h = x.sym_size(2), w = x.sym_size(3);
  TORCH_CHECK_VALUE(padding >= 0, "reflect_pad_conv2d: padding must be >= 0, got ", padding);
  TORCH_CHECK_VALUE(sym_true(h > padding) && sym_true(w > padding), "reflect_pad_conv2d: padding=", padding,
                    " must be smaller than the input height and width (", h, "x", w, ")");
  TORCH_CHECK_VALUE(sym_true(h + 2 * padding >= k) && sym_true(w + 2 * padding >= k),
                    "reflect_pad_conv2d: the padded input (", h + 2 * padding, "x", w + 2 * padding,
                    ") is smaller than the kernel (", k, "x", k, ")");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && sym_true(b.sym_size(0) == c_out), "reflect_pad_conv2d: bias must be [",
                      c_out, "] (weight's C_out), got ", b.sym_sizes());
    TORCH_CHECK_VALUE(b.scalar_type() == dtype, "reflect_pad_conv2d: bias has dtype ", b.scalar_type(),
                      " but x has ", dtype);
    TORCH_CHECK_VALUE(b.device() == x.device(), "reflect_pad_conv2d: bias is on ", b.device(), " but x is on ",
                      x.device());
  }
}

// The backward's grad_out must be the forward's output shape (a wrong one reached oneDNN/cuDNN, whose
// errors name no argument).
void check_grad_out(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t padding,
                    int64_t stride) {
  const c10::SymInt k = weight.sym_size(2);
  const c10::SymInt ho = (x.sym_size(2) + 2 * padding - k) / stride + 1;
  const c10::SymInt wo = (x.sym_size(3) + 2 * padding - k) / stride + 1;
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && sym_true(grad_out.sym_size(0) == x.sym_size(0)) &&
                        sym_true(grad_out.sym_size(1) == weight.sym_size(0)) &&
                        sym_true(grad_out.sym_size(2) == ho) && sym_true(grad_out.sym_size(3) == wo),
                    "reflect_pad_conv2d_backward: grad_out must be the output's shape [", x.sym_size(0), ", ",
                    weight.sym_size(0), ", ", ho, ", ", wo, "], got ", grad_out.sym_sizes());
  TORCH_CHECK_VALUE(grad_out.scalar_type() == x.scalar_type(), "reflect_pad_conv2d_backward: grad_out has dtype ",
                    grad_out.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK_VALUE(grad_out.device() == x.device(), "reflect_pad_conv2d_backward: grad_out is on ",
                    grad_out.device(), " but x is on ", x.device());
}

// Only NCHW and channels_last exist here; anything else is made NCHW-contiguous.
at::MemoryFormat layout_of(const at::Tensor& x) {
  return x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous;
}

// `t` itself when its strides are exactly those of a fresh tensor in `fmt`, else such a copy, so that the
// real kernels and the Meta kernel agree on strides even in size-1 dimensions.
at::Tensor with_layout(const at::Tensor& t, at::MemoryFormat fmt) {
  const bool same = fmt == at::MemoryFormat::ChannelsLast
                        ? t.strides() == at::IntArrayRef(c10::get_channels_last_strides_2d(t.sizes()))
                        : t.strides() == at::IntArrayRef(c10::contiguous_strides(t.sizes()));
  if (same) return t;
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(fmt));
  out.copy_(t);
  return out;
}

ReflectPadParams make_params(const at::Tensor& x, int64_t pad, at::MemoryFormat fmt) {
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  return ReflectPadParams{nhwc ? n : n * c, h, w, h + 2 * pad, w + 2 * pad, nhwc ? c : 1, pad};
}

template <typename scalar_t>
void reflect_pad_cpu(const at::Tensor& x, at::Tensor& padded, const ReflectPadParams& p) {
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = padded.mutable_data_ptr<scalar_t>();
  const int64_t row = p.Wp * p.inner;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / row);
  at::parallel_for(0, p.outer * p.Hp, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r / p.Hp, hp = r % p.Hp;
      const scalar_t* in = src + (o * p.H + reflect_index(hp - p.pad, p.H)) * p.W * p.inner;
      scalar_t* out = dst + r * row;
      std::copy(in, in + p.W * p.inner, out + p.pad * p.inner);
      for (int64_t j = 0; j < p.pad; ++j) {
        const int64_t left = j, right = p.pad + p.W + j;
        std::copy_n(in + reflect_index(left - p.pad, p.W) * p.inner, p.inner, out + left * p.inner);
        std::copy_n(in + reflect_index(right - p.pad, p.W) * p.inner, p.inner, out + right * p.inner);
      }
    }
  });
}

template <typename scalar_t>
void reflect_fold_cpu(const at::Tensor& dpadded, at::Tensor& dx, const ReflectPadParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* src = dpadded.const_data_ptr<scalar_t>();
  scalar_t* dst = dx.mutable_data_ptr<scalar_t>();
  const int64_t row = p.W * p.inner;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / row);
  at::parallel_for(0, p.outer * p.H, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(row);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r / p.H, h = r % p.H;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      int64_t hs[3];
      const int nh = fold_sources(h, p.H, p.pad, hs);
      for (int a = 0; a < nh; ++a) {
        const scalar_t* in = src + (o * p.Hp + hs[a]) * p.Wp * p.inner;
        const scalar_t* interior = in + p.pad * p.inner;  // fold_sources(w)[0] == w + pad for every w
        for (int64_t k = 0; k < row; ++k) acc[k] += static_cast<acc_t>(interior[k]);
        // Only columns within pad of an edge are read again by the left/right reflections.
        for (int64_t w = 0; w < p.W; w = (w == std::min(p.pad, p.W - 1)) ? std::max(w + 1, p.W - 1 - p.pad) : w + 1) {
          int64_t ws[3];
          const int nw = fold_sources(w, p.W, p.pad, ws);
          for (int b = 1; b < nw; ++b) {
            for (int64_t c = 0; c < p.inner; ++c) acc[w * p.inner + c] += static_cast<acc_t>(in[ws[b] * p.inner + c]);
          }
        }
      }
      scalar_t* out = dst + r * row;
      for (int64_t k = 0; k < row; ++k) out[k] = static_cast<scalar_t>(acc[k]);
    }
  });
}

// The convolution's input: x itself without padding, else a fresh workspace holding the reflection pad.
at::Tensor reflect_pad(const at::Tensor& xc, int64_t pad, at::MemoryFormat fmt) {
  if (pad == 0) return xc;
  const ReflectPadParams p = make_params(xc, pad, fmt);
  at::Tensor padded = at::empty({xc.size(0), xc.size(1), p.Hp, p.Wp}, xc.options().memory_format(fmt));
  if (xc.is_cuda()) {
#if defined(FASTGAN_WITH_CUDA)
    reflect_pad_cuda(xc, padded, p);
#else
    TORCH_CHECK(false, "reflect_pad_conv2d: fastgan._C was built without CUDA kernels");
#endif
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "reflect_pad_cpu",
                                    [&] { reflect_pad_cpu<scalar_t>(xc, padded, p); });
  }
  return padded;
}

at::Tensor reflect_fold(const at::Tensor& dpadded, const at::Tensor& xc, int64_t pad, at::MemoryFormat fmt) {
  if (pad == 0) return with_layout(dpadded, fmt);
  const at::Tensor dp = dpadded.contiguous(fmt);
  const ReflectPadParams p = make_params(xc, pad, fmt);
  at::Tensor dx = at::empty(xc.sizes(), xc.options().memory_format(fmt));
  if (dx.is_cuda()) {
#if defined(FASTGAN_WITH_CUDA)
    reflect_fold_cuda(dp, dx, p);
#else
    TORCH_CHECK(false, "reflect_pad_conv2d: fastgan._C was built without CUDA kernels");
#endif
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dx.scalar_type(), "reflect_fold_cpu",
                                    [&] { reflect_fold_cpu<scalar_t>(dp, dx, p); });
  }
  return dx;
}

}  // namespace

at::Tensor reflect_pad_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              int64_t padding, int64_t stride) {
  check_args(x, weight, bias, padding, stride);
  const at::MemoryFormat fmt = layout_of(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor padded = reflect_pad(xc, padding, fmt);
  const at::Tensor y = at::convolution(padded, weight, bias, {stride, stride}, {0, 0}, {1, 1}, false, {0, 0}, 1);
  return with_layout(y, fmt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reflect_pad_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t padding, int64_t stride,
    std::array<bool, 3> output_mask) {
  check_args(x, weight, std::nullopt, padding, stride);
  check_grad_out(grad_out, x, weight, padding, stride);
  const at::MemoryFormat fmt = layout_of(x);
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor padded = reflect_pad(xc, padding, fmt);
  const std::vector<int64_t> bias_sizes{weight.size(0)};
  auto [dpadded, dweight, dbias] = at::convolution_backward(
      grad_out.contiguous(fmt), padded, weight, output_mask[2] ? at::OptionalIntArrayRef(bias_sizes) : std::nullopt,
      {stride, stride}, {0, 0}, {1, 1}, false, {0, 0}, 1, output_mask);
  at::Tensor dx = output_mask[0] ? reflect_fold(dpadded, xc, padding, fmt) : at::Tensor();
  // Some backends compute gradients that were not asked for; the schema promises undefined ones.
  dweight = output_mask[1] ? with_layout(dweight, layout_of(weight)) : at::Tensor();
  return {dx, dweight, output_mask[2] ? dbias : at::Tensor()};
}

at::Tensor reflect_pad_conv2d_meta(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                   int64_t padding, int64_t stride) {
  check_args(x, weight, bias, padding, stride);
  const c10::SymInt k = weight.sym_size(2);
  const c10::SymInt ho = (x.sym_size(2) + 2 * padding - k) / stride + 1;
  const c10::SymInt wo = (x.sym_size(3) + 2 * padding - k) / stride + 1;
  return at::empty_symint({x.sym_size(0), weight.sym_size(0), ho, wo}, x.options(), layout_of(x));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reflect_pad_conv2d_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t padding, int64_t stride,
    std::array<bool, 3> output_mask) {
  check_args(x, weight, std::nullopt, padding, stride);
  check_grad_out(grad_out, x, weight, padding, stride);
  at::Tensor dx = output_mask[0] ? at::empty_symint(x.sym_sizes(), x.options(), layout_of(x)) : at::Tensor();
  at::Tensor dweight =
      output_mask[1] ? at::empty_symint(weight.sym_sizes(), weight.options(), layout_of(weight)) : at::Tensor();
  at::Tensor dbias = output_mask[2] ? at::empty_symint({weight.sym_size(0)}, weight.options()) : at::Tensor();
  return {dx, dweight, dbias};
}

}  // namespace fastgan
