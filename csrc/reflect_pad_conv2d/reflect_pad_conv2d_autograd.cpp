// Autograd for fastgan::reflect_pad_conv2d and its backward, registered for the Autograd key in
// csrc/register.cpp, so the op is differentiable however the library is reached: `import fastgan._C`,
// torch.ops.load_library of the CMake library, or a C++ program linking fastgan_ops.
//
// Forward:  y = conv(pad(x), w) + b                     (pad: reflection by `padding`, conv: stride `stride`)
// Backward: dx, dw, db = reflect_pad_conv2d_backward(dy, x, w)
//           dx = fold(conv_transpose(dy, w)),  dw = corr(dy, pad(x)),  db = sum(dy)
// The backward is linear in dy and, separately, in x and in w, so its own backward (double backward, e.g.
// a gradient penalty) is the op and its backward again, with the incoming gradients ggx, ggw, ggb:
//   d(dy) = reflect_pad_conv2d(ggx, w) + reflect_pad_conv2d(x, ggw) + ggb   (broadcast over N, H, W)
//   d(x)  = reflect_pad_conv2d_backward(dy, x, ggw)[dx]                       (<ggw, dw> is linear in x)
//   d(w)  = reflect_pad_conv2d_backward(dy, ggx, w)[dw]                       (<ggx, dx> is linear in w)
// Both are called through the dispatcher, so with create_graph they are differentiable in turn (any order).
#include "reflect_pad_conv2d.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <string>
#include <utility>

namespace fastgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// Through the dispatcher, not the C++ functions: below the Autograd key in forward (the device kernels,
// Meta, fake tensors), and through it again in backward so create_graph records the graph.
at::Tensor call_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t padding, int64_t stride) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::reflect_pad_conv2d", "")
                       .typed<decltype(reflect_pad_conv2d)>();
  return op.call(x, weight, bias, padding, stride);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                             const at::Tensor& weight, int64_t padding,
                                                             int64_t stride, std::array<bool, 3> output_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastgan::reflect_pad_conv2d_backward", "")
                       .typed<decltype(reflect_pad_conv2d_backward)>();
  return op.call(grad_out, x, weight, padding, stride, output_mask);
}

// a + b where either may be undefined (a gradient that is not there).
at::Tensor add_defined(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

class ReflectPadConv2dFunction : public torch::autograd::Function<ReflectPadConv2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x, const Variable& weight,
                               const std::optional<Variable>& bias, int64_t padding, int64_t stride) {
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->save_for_backward({x, weight});  // the pad is recomputed in backward, not saved
    at::AutoDispatchBelowADInplaceOrView guard;
    return {call_forward(x, weight, bias, padding, stride)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // Edges exist for the tensor inputs only: x 0, weight 1, bias 2 when given.
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_bias && ctx->needs_input_grad(2)};
    auto [dx, dweight, dbias] = call_backward(grads[0], saved[0], saved[1], ctx->saved_data["padding"].toInt(),
                                              ctx->saved_data["stride"].toInt(), mask);
    return {dx, dweight, dbias, Variable(), Variable()};
  }
};

// Returns only the gradients output_mask asks for (autograd cannot attach history to an undefined tensor);
// reflect_pad_conv2d_backward_autograd puts them back in their places.
class ReflectPadConv2dBackwardFunction : public torch::autograd::Function<ReflectPadConv2dBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& grad_out, const Variable& x,
                               const Variable& weight, int64_t padding, int64_t stride,
                               std::array<bool, 3> output_mask) {
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["stride"] = stride;
    for (int i = 0; i < 3; ++i) ctx->saved_data["mask" + std::to_string(i)] = output_mask[i];
    ctx->save_for_backward({grad_out, x, weight});
    // Gradients of outputs that are not used downstream stay undefined instead of zeros.
    ctx->set_materialize_grads(false);
    at::AutoDispatchBelowADInplaceOrView guard;
    const auto [dx, dweight, dbias] = call_backward(grad_out, x, weight, padding, stride, output_mask);
    variable_list out;
    for (const auto& [wanted, grad] : {std::pair{output_mask[0], dx}, {output_mask[1], dweight}, {output_mask[2], dbias}}) {
      if (wanted) out.push_back(grad);
    }
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &grad_out = saved[0], &x = saved[1], &weight = saved[2];
    at::Tensor gg[3];  // the incoming gradients of dx, dweight, dbias; undefined where not computed or unused
    for (size_t i = 0, next = 0; i < 3; ++i) {
      if (ctx->saved_data["mask" + std::to_string(i)].toBool()) gg[i] = grads[next++];
    }
    const at::Tensor &ggx = gg[0], &ggw = gg[1], &ggb = gg[2];
    const int64_t padding = ctx->saved_data["padding"].toInt(), stride = ctx->saved_data["stride"].toInt();

    at::Tensor d_grad_out, d_x, d_weight;
    if (ctx->needs_input_grad(0)) {
      if (ggx.defined()) d_grad_out = call_forward(ggx, weight, std::nullopt, padding, stride);
      if (ggw.defined()) d_grad_out = add_defined(d_grad_out, call_forward(x, ggw, std::nullopt, padding, stride));
      if (ggb.defined()) {
        const at::Tensor bias_term = ggb.view({1, -1, 1, 1});
        d_grad_out = d_grad_out.defined() ? d_grad_out + bias_term : bias_term.expand(grad_out.sizes()).contiguous();
      }
    }
    if (ctx->needs_input_grad(1) && ggw.defined()) {
      d_x = std::get<0>(call_backward(grad_out, x, ggw, padding, stride, {true, false, false}));
    }
    if (ctx->needs_input_grad(2) && ggx.defined()) {
      d_weight = std::get<1>(call_backward(grad_out, ggx, weight, padding, stride, {false, true, false}));
    }
    return {d_grad_out, d_x, d_weight, Variable(), Variable(), Variable()};
  }
};

}  // namespace

at::Tensor reflect_pad_conv2d_autograd(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t padding, int64_t stride) {
  return ReflectPadConv2dFunction::apply(x, weight, bias, padding, stride)[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reflect_pad_conv2d_backward_autograd(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, int64_t padding, int64_t stride,
    std::array<bool, 3> output_mask) {
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) {
    at::AutoDispatchBelowADInplaceOrView guard;  // nothing asked for: no graph node to make
    return call_backward(grad_out, x, weight, padding, stride, output_mask);
  }
  const auto grads = ReflectPadConv2dBackwardFunction::apply(grad_out, x, weight, padding, stride, output_mask);
  at::Tensor out[3];
  for (size_t i = 0, next = 0; i < 3; ++i) {
    if (output_mask[i]) out[i] = grads[next++];
  }
  return {out[0], out[1], out[2]};
}

}  // namespace fastgan
