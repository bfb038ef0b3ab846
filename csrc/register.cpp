// The one registration point of fastgan's compiled ops: schemas, and kernels per dispatch key (CPU, CUDA,
// Meta for fake tensors and torch.compile, Autograd), so torch.ops.fastgan.* is complete and differentiable
// whoever loads the library (Python's fastgan._C, torch.ops.load_library, a C++ program) and in any order.
#include <torch/library.h>

#include "reflect_pad_conv2d/reflect_pad_conv2d.h"

TORCH_LIBRARY(fastgan, m) {
  m.def("reflect_pad_conv2d(Tensor x, Tensor weight, Tensor? bias, int padding, int stride) -> Tensor");
  m.def(
      "reflect_pad_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, int padding, int stride, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("reflect_pad_conv2d", &fastgan::reflect_pad_conv2d);
  m.impl("reflect_pad_conv2d_backward", &fastgan::reflect_pad_conv2d_backward);
}

#if defined(FASTGAN_WITH_CUDA)
TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("reflect_pad_conv2d", &fastgan::reflect_pad_conv2d);
  m.impl("reflect_pad_conv2d_backward", &fastgan::reflect_pad_conv2d_backward);
}
#endif

TORCH_LIBRARY_IMPL(fastgan, Meta, m) {
  m.impl("reflect_pad_conv2d", &fastgan::reflect_pad_conv2d_meta);
  m.impl("reflect_pad_conv2d_backward", &fastgan::reflect_pad_conv2d_backward_meta);
}

// Backward (and double backward) for every device: reflect_pad_conv2d_autograd.cpp.
TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("reflect_pad_conv2d", &fastgan::reflect_pad_conv2d_autograd);
  m.impl("reflect_pad_conv2d_backward", &fastgan::reflect_pad_conv2d_backward_autograd);
}
