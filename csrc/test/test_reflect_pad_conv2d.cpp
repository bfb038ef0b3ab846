// C++ check of fastgan::reflect_pad_conv2d through the dispatcher (as C++ users call it), against
// at::reflection_pad2d + at::conv2d and their autograd, in float64 on the CPU: the forward, the backward op
// called directly, backward through libtorch's autograd (the library's Autograd kernel), and double
// backward (a gradient penalty). Exit code 0 on success.
#include <cstdio>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  const bool ok = got.sizes() == want.sizes() && at::allclose(got, want, 1e-10, 1e-10);
  if (!ok) {
    ++failures;
    std::fprintf(stderr, "FAIL %s\n", what.c_str());
  }
}

void check_case(int64_t k, int64_t padding, int64_t stride, bool channels_last) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({2, 3, 9, 7}, opts);
  if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor weight = at::randn({4, 3, k, k}, opts);
  const at::Tensor bias = at::randn({4}, opts);

  static auto forward = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("fastgan::reflect_pad_conv2d", "")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                              int64_t, int64_t)>();
  static auto backward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastgan::reflect_pad_conv2d_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, int64_t, int64_t,
                                                                std::array<bool, 3>)>();

  const at::Tensor y = forward.call(x, weight, bias, padding, stride);
  const at::Tensor xr = x.clone().requires_grad_(true), wr = weight.clone().requires_grad_(true),
                   br = bias.clone().requires_grad_(true);
  const at::Tensor y_ref = at::conv2d(at::reflection_pad2d(xr, {padding, padding, padding, padding}), wr, br, stride);
  const std::string name = "k=" + std::to_string(k) + " padding=" + std::to_string(padding) +
                           " stride=" + std::to_string(stride) + (channels_last ? " channels_last" : " nchw");
  expect_close(y, y_ref.detach(), name + ": y");

  const at::Tensor grad_out = at::randn_like(y_ref);
  y_ref.backward(grad_out);
  const auto [dx, dweight, dbias] = backward.call(grad_out, x, weight, padding, stride, {true, true, true});
  expect_close(dx, xr.grad(), name + ": dx");
  expect_close(dweight, wr.grad(), name + ": dweight");
  expect_close(dbias, br.grad(), name + ": dbias");

  // The same through autograd, as a libtorch program trains with the op: y.backward() fills .grad().
  const at::Tensor xa = x.clone().requires_grad_(true), wa = weight.clone().requires_grad_(true),
                   ba = bias.clone().requires_grad_(true);
  const at::Tensor ya = forward.call(xa, wa, ba, padding, stride);
  if (!ya.requires_grad()) {
    ++failures;
    std::fprintf(stderr, "FAIL %s: the op's output does not require grad (no Autograd kernel)\n", name.c_str());
    return;
  }
  ya.backward(grad_out);
  expect_close(xa.grad(), xr.grad(), name + ": autograd x.grad");
  expect_close(wa.grad(), wr.grad(), name + ": autograd weight.grad");
  expect_close(ba.grad(), br.grad(), name + ": autograd bias.grad");

  // Double backward, as a gradient penalty does it: |dL/dx|^2 + |dL/dw|^2 + |dL/db|^2 with L = <y^2, g>, so
  // the backward's own backward is reached for each of its inputs (grad_out depends on y) and outputs.
  const auto penalty = [&](const at::Tensor& y, const at::Tensor& xin, const at::Tensor& win, const at::Tensor& bin) {
    const auto g = torch::autograd::grad({(y.square() * grad_out).sum()}, {xin, win, bin}, {},
                                         /*retain_graph=*/true, /*create_graph=*/true);
    return g[0].square().sum() + g[1].square().sum() + g[2].square().sum();
  };
  for (const auto& t : {xa, wa, ba, xr, wr, br}) t.mutable_grad() = at::Tensor();
  penalty(forward.call(xa, wa, ba, padding, stride), xa, wa, ba).backward();
  const at::Tensor yr = at::conv2d(at::reflection_pad2d(xr, {padding, padding, padding, padding}), wr, br, stride);
  penalty(yr, xr, wr, br).backward();
  expect_close(xa.grad(), xr.grad(), name + ": double backward x.grad");
  expect_close(wa.grad(), wr.grad(), name + ": double backward weight.grad");
  expect_close(ba.grad(), br.grad(), name + ": double backward bias.grad");
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (const int64_t k : {1, 3, 4, 7}) {
    for (const int64_t padding : {0, 1, 3}) {
      for (const int64_t stride : {1, 2}) {
        for (const bool channels_last : {false, true}) check_case(k, padding, stride, channels_last);
      }
    }
  }
  bool raised = false;  // padding >= input size is refused, naming the argument
  try {
    check_case(3, 7, 1, false);
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what()).find("padding=7 must be smaller") != std::string::npos;
  }
  if (!raised) {
    ++failures;
    std::fprintf(stderr, "FAIL padding >= input size did not raise a ValueError naming padding\n");
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
