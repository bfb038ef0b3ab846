// reflect_pad_conv2d: reflection padding fused into a 2-D convolution (see reflect_pad_conv2d.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

#if defined(__CUDACC__)
#define FASTGAN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTGAN_HOST_DEVICE inline
#endif

namespace fastgan {

// One layout-independent view of the pad: a channels_last tensor [N, C, H, W] is [N, H, W, C], an NCHW
// one is [N*C, H, W, 1]; either way a pixel is `inner` contiguous elements and rows follow each other.
struct ReflectPadParams {
  int64_t outer;  // N (channels_last) or N*C (NCHW)
  int64_t H, W;   // input height, width
  int64_t Hp, Wp; // padded height, width: H + 2*pad, W + 2*pad
  int64_t inner;  // C (channels_last) or 1 (NCHW): contiguous elements per pixel
  int64_t pad;    // reflection padding on each side, < H and < W
};

// Input index read by padded index i + pad, for i in [-pad, n + pad) and pad < n (one reflection, edge
// not repeated: PyTorch's "reflect").
FASTGAN_HOST_DEVICE int64_t reflect_index(int64_t i, int64_t n) {
  return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
}

// The padded indices whose value is input index h: the interior copy, and the top/bottom (left/right)
// reflections that read it. Writes up to three into `src` and returns how many. The pad's backward sums
// the padded gradient over exactly these, so it is a gather: no two threads write the same element.
FASTGAN_HOST_DEVICE int fold_sources(int64_t h, int64_t n, int64_t pad, int64_t src[3]) {
  int count = 0;
  src[count++] = h + pad;
  if (h >= 1 && h <= pad) src[count++] = pad - h;
  if (h >= n - 1 - pad && h <= n - 2) src[count++] = 2 * (n - 1) - h + pad;
  return count;
}

#if defined(FASTGAN_WITH_CUDA)
// CUDA launchers (reflect_pad_conv2d_cuda.cu); tensors contiguous in the layout `p` describes, on one device.
void reflect_pad_cuda(const at::Tensor& x, at::Tensor& padded, const ReflectPadParams& p);
void reflect_fold_cuda(const at::Tensor& dpadded, at::Tensor& dx, const ReflectPadParams& p);
#endif

// The op and its backward (registered in csrc/register.cpp; CPU and CUDA share these, Meta has its own).
at::Tensor reflect_pad_conv2d(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              int64_t padding, int64_t stride);
std::tuple<at::Tensor, at::Tensor, at::Tensor> reflect_pad_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t padding, int64_t stride,
    std::array<bool, 3> output_mask);
at::Tensor reflect_pad_conv2d_meta(const at::Tensor& x, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, int64_t padding, int64_t stride);
std::tuple<at::Tensor, at::Tensor, at::Tensor> reflect_pad_conv2d_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t padding, int64_t stride,
    std::array<bool, 3> output_mask);

// Autograd-key kernels (reflect_pad_conv2d_autograd.cpp): the op's backward, and the backward's own backward,
// so double backward (a gradient penalty through the op) works too.
at::Tensor reflect_pad_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t padding, int64_t stride);
std::tuple<at::Tensor, at::Tensor, at::Tensor> reflect_pad_conv2d_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t padding, int64_t stride,
    std::array<bool, 3> output_mask);

}  // namespace fastgan
