// CUDA kernels of reflect_pad_conv2d: the reflection pad written into the convolution's input workspace,
// and its backward as a gather (each input element sums the padded-gradient elements that read it), so no
// atomics and a bitwise reproducible dx. The convolution itself runs through ATen (cuDNN).
#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "reflect_pad_conv2d.h"

namespace fastgan {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // grid-stride beyond this

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// padded[o, hp, wp, c] = x[o, reflect(hp - pad), reflect(wp - pad), c], VEC channels per thread.
template <typename scalar_t, int VEC>
__global__ void reflect_pad_kernel(const scalar_t* __restrict__ x,  // input, [outer, H, W, inner]
                                   scalar_t* __restrict__ padded,   // workspace, [outer, Hp, Wp, inner]
                                   ReflectPadParams p) {
  using P = Pack<scalar_t, VEC>;
  const int64_t inner_packs = p.inner / VEC;
  const int64_t total = p.outer * p.Hp * p.Wp * inner_packs;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = i % inner_packs;
    int64_t t = i / inner_packs;
    const int64_t wp = t % p.Wp;
    t /= p.Wp;
    const int64_t hp = t % p.Hp;
    const int64_t o = t / p.Hp;
    const int64_t h = reflect_index(hp - p.pad, p.H);
    const int64_t w = reflect_index(wp - p.pad, p.W);
    reinterpret_cast<P*>(padded)[i] = reinterpret_cast<const P*>(x)[((o * p.H + h) * p.W + w) * inner_packs + c];
  }
}

// dx[o, h, w, c] = sum of dpadded[o, hs, ws, c] over the (up to 3 x 3) padded positions that read (h, w),
// accumulated in fp32 (fp64 for double) in a fixed order.
template <typename scalar_t, int VEC>
__global__ void reflect_fold_kernel(const scalar_t* __restrict__ dpadded,  // grad of workspace, [outer, Hp, Wp, inner]
                                    scalar_t* __restrict__ dx,             // grad of input, [outer, H, W, inner]
                                    ReflectPadParams p) {
  using P = Pack<scalar_t, VEC>;
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t inner_packs = p.inner / VEC;
  const int64_t total = p.outer * p.H * p.W * inner_packs;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = i % inner_packs;
    int64_t t = i / inner_packs;
    const int64_t w = t % p.W;
    t /= p.W;
    const int64_t h = t % p.H;
    const int64_t o = t / p.H;
    int64_t hs[3], ws[3];
    const int nh = fold_sources(h, p.H, p.pad, hs);
    const int nw = fold_sources(w, p.W, p.pad, ws);
    acc_t acc[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] = acc_t(0);
    for (int a = 0; a < nh; ++a) {
      for (int b = 0; b < nw; ++b) {
        const P v = reinterpret_cast<const P*>(dpadded)[((o * p.Hp + hs[a]) * p.Wp + ws[b]) * inner_packs + c];
#pragma unroll
        for (int k = 0; k < VEC; ++k) acc[k] += static_cast<acc_t>(v.v[k]);
      }
    }
    P out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) out.v[k] = static_cast<scalar_t>(acc[k]);
    reinterpret_cast<P*>(dx)[i] = out;
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// 16-byte packs along the channels when every pixel starts on a 16-byte boundary (channels_last with C a
// multiple of the pack), single elements otherwise (NCHW, odd C).
template <typename scalar_t, typename Launch>
void with_pack_width(const ReflectPadParams& p, const void* a, const void* b, Launch launch) {
  constexpr int kPack = 16 / sizeof(scalar_t);
  if (p.inner % kPack == 0 && aligned16(a) && aligned16(b)) {
    launch(std::integral_constant<int, kPack>{});
  } else {
    launch(std::integral_constant<int, 1>{});
  }
}

int64_t blocks_for(int64_t work) { return std::max<int64_t>(1, std::min((work + kThreads - 1) / kThreads, kMaxBlocks)); }

}  // namespace

void reflect_pad_cuda(const at::Tensor& x, at::Tensor& padded, const ReflectPadParams& p) {
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reflect_pad_cuda", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = padded.mutable_data_ptr<scalar_t>();
    with_pack_width<scalar_t>(p, src, dst, [&](auto pack) {
      constexpr int VEC = decltype(pack)::value;
      const int64_t work = p.outer * p.Hp * p.Wp * (p.inner / VEC);
      reflect_pad_kernel<scalar_t, VEC><<<blocks_for(work), kThreads, 0, stream>>>(src, dst, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void reflect_fold_cuda(const at::Tensor& dpadded, at::Tensor& dx, const ReflectPadParams& p) {
  const c10::cuda::CUDAGuard guard(dx.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dx.scalar_type(), "reflect_fold_cuda", [&] {
    const scalar_t* src = dpadded.const_data_ptr<scalar_t>();
    scalar_t* dst = dx.mutable_data_ptr<scalar_t>();
    with_pack_width<scalar_t>(p, src, dst, [&](auto pack) {
      constexpr int VEC = decltype(pack)::value;
      const int64_t work = p.outer * p.H * p.W * (p.inner / VEC);
      reflect_fold_kernel<scalar_t, VEC><<<blocks_for(work), kThreads, 0, stream>>>(src, dst, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace fastgan
