// A GRU layer's recurrence over whole sequences, forward and backward, as two CPU operators
// (torch.ops.qllm.gru_forward, torch.ops.qllm.gru_backward); qllm/rl/kernels/__init__.py builds this
// file, loads it and wraps the pair in an autograd Function.
//
// Why: the learner unrolls the agent's GRU over every step of a batch of episodes, forward and backward,
// at every update. torch's CPU GRU runs a dozen small operators per step, each recorded in the autograd
// graph and replayed backwards, and for 64 sequences of 64 units that bookkeeping costs more than the
// arithmetic. Here the per-step work is one matrix product (MKL, through at::addmm_out into buffers
// allocated once) and plain loops; the two non-linearities stay torch's vectorised kernels.
//
// The maths is torch.nn.GRU's (https://pytorch.org/docs/stable/generated/torch.nn.GRU.html), gates in
// its order (reset r, update z, new n), the input side precomputed for all steps by the caller:
//   gi = x W_ih^T + b_ih,  gh = h W_hh^T + b_hh
//   r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z),  n = tanh(gi_n + r * gh_n)
//   h' = n + z * (h - n)        (= (1 - z) n + z h, in the order torch's own cell computes it)
// The sequence starts from a zero hidden state.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

namespace {

using at::Tensor;

void check_shapes(const Tensor& gates_in, const Tensor& w_hh, const Tensor& b_hh) {
  TORCH_CHECK(gates_in.dim() == 3 && gates_in.size(0) > 0, "gates_in must be [T, B, 3H] with T > 0, got ",
              gates_in.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * w_hh.size(1), "w_hh must be [3H, H], got ",
              w_hh.sizes());
  TORCH_CHECK(gates_in.size(2) == w_hh.size(0), "gates_in's last dimension must be 3H = ", w_hh.size(0));
  TORCH_CHECK(b_hh.dim() == 1 && b_hh.size(0) == w_hh.size(0), "b_hh must be [3H]");
  TORCH_CHECK(gates_in.scalar_type() == w_hh.scalar_type() && w_hh.scalar_type() == b_hh.scalar_type(),
              "gates_in, w_hh and b_hh must have one dtype");
}

// The elementwise parts of one step, one batch row at a time: H units, restrict pointers, so that the
// compiler vectorises the loops.

template <typename T>
void reset_update_pre(int64_t H, const T* __restrict__ gi, const T* __restrict__ gh, T* __restrict__ rz) {
  for (int64_t j = 0; j < 2 * H; ++j) rz[j] = gh[j] + gi[j];
}

template <typename T>
void new_gate_pre(int64_t H, const T* __restrict__ gi, const T* __restrict__ gh, const T* __restrict__ r,
                  T* __restrict__ hn, T* __restrict__ n) {
  for (int64_t j = 0; j < H; ++j) {
    hn[j] = gh[2 * H + j];
    n[j] = gi[2 * H + j] + gh[2 * H + j] * r[j];
  }
}

template <typename T>
void next_hidden(int64_t H, const T* __restrict__ h_prev, const T* __restrict__ z, const T* __restrict__ n,
                 T* __restrict__ h) {
  for (int64_t j = 0; j < H; ++j) h[j] = (h_prev[j] - n[j]) * z[j] + n[j];
}

// d loss / d h_t is dh_out + dh_later; writes the gradients of the input-side gates (dgi) and of the
// hidden-side gates (dgh, whose product with W_hh the caller adds to skip, the direct path through z).
template <typename T>
void gates_backward(int64_t H, const T* __restrict__ dh_out, const T* __restrict__ dh_later,
                    const T* __restrict__ h_prev, const T* __restrict__ rz, const T* __restrict__ n,
                    const T* __restrict__ hn, T* __restrict__ dgi, T* __restrict__ dgh, T* __restrict__ skip) {
  const T* __restrict__ r = rz;
  const T* __restrict__ z = rz + H;
  for (int64_t j = 0; j < H; ++j) {
    const T dh = dh_out[j] + dh_later[j];
    const T d_new_pre = dh * (T(1) - z[j]) * (T(1) - n[j] * n[j]);
    const T d_reset_pre = d_new_pre * hn[j] * r[j] * (T(1) - r[j]);
    const T d_update_pre = dh * (h_prev[j] - n[j]) * z[j] * (T(1) - z[j]);
    dgi[j] = d_reset_pre;
    dgi[H + j] = d_update_pre;
    dgi[2 * H + j] = d_new_pre;
    dgh[j] = d_reset_pre;
    dgh[H + j] = d_update_pre;
    dgh[2 * H + j] = d_new_pre * r[j];
    skip[j] = dh * z[j];
  }
}

// Returns the hidden states [T, B, H] and what the backward pass needs: the reset and update gates
// rz [T, B, 2H], the new gate n [T, B, H] and the hidden side of its pre-activation hn = gh_n [T, B, H].
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& gates_in_, const Tensor& w_hh,
                                                       const Tensor& b_hh) {
  check_shapes(gates_in_, w_hh, b_hh);
  const Tensor gates_in = gates_in_.contiguous();
  const int64_t steps = gates_in.size(0), batch = gates_in.size(1), H = w_hh.size(1);
  const auto options = gates_in.options();
  Tensor hidden = at::empty({steps, batch, H}, options);
  Tensor rz = at::empty({steps, batch, 2 * H}, options);
  Tensor n = at::empty({steps, batch, H}, options);
  Tensor hn = at::empty({steps, batch, H}, options);
  Tensor gh = at::empty({batch, 3 * H}, options);  // this step's h W_hh^T + b_hh
  const Tensor h0 = at::zeros({batch, H}, options);
  const Tensor w_hh_t = w_hh.t();

  AT_DISPATCH_FLOATING_TYPES(gates_in.scalar_type(), "qllm_gru_forward", [&] {
    const scalar_t* const gi_ = gates_in.data_ptr<scalar_t>();
    const scalar_t* const gh_ = gh.data_ptr<scalar_t>();
    scalar_t* const rz_ = rz.data_ptr<scalar_t>();
    scalar_t* const n_ = n.data_ptr<scalar_t>();
    scalar_t* const hn_ = hn.data_ptr<scalar_t>();
    scalar_t* const h_ = hidden.data_ptr<scalar_t>();
    for (int64_t t = 0; t < steps; ++t) {
      const Tensor h_prev = t == 0 ? h0 : hidden[t - 1];
      const scalar_t* const h_prev_ = h_prev.data_ptr<scalar_t>();
      at::addmm_out(gh, b_hh, h_prev, w_hh_t);
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t row = t * batch + b;  // row b of step t in every [T, B, *] buffer
        reset_update_pre(H, gi_ + row * 3 * H, gh_ + b * 3 * H, rz_ + row * 2 * H);
      }
      rz[t].sigmoid_();
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t row = t * batch + b;
        new_gate_pre(H, gi_ + row * 3 * H, gh_ + b * 3 * H, rz_ + row * 2 * H, hn_ + row * H, n_ + row * H);
      }
      n[t].tanh_();
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t row = t * batch + b;
        next_hidden(H, h_prev_ + b * H, rz_ + row * 2 * H + H, n_ + row * H, h_ + row * H);
      }
    }
  });
  return {hidden, rz, n, hn};
}

// Gradients of the gates' input side [T, B, 3H], of w_hh and of b_hh, given the gradient of every
// hidden state [T, B, H] and what gru_forward returned.
std::tuple<Tensor, Tensor, Tensor> gru_backward(const Tensor& grad_hidden_, const Tensor& hidden,
                                                const Tensor& rz, const Tensor& n, const Tensor& hn,
                                                const Tensor& w_hh_) {
  const Tensor grad_hidden = grad_hidden_.contiguous();
  const Tensor w_hh = w_hh_.contiguous();
  const int64_t steps = hidden.size(0), batch = hidden.size(1), H = hidden.size(2);
  TORCH_CHECK(grad_hidden.sizes() == hidden.sizes(), "grad_hidden must be shaped like hidden");
  const auto options = hidden.options();
  Tensor grad_gates_in = at::empty({steps, batch, 3 * H}, options);
  Tensor grad_gates_h = at::empty({steps, batch, 3 * H}, options);
  Tensor carry = at::zeros({batch, H}, options);  // d loss / d h_t through the later steps
  Tensor carry_next = at::empty({batch, H}, options);
  Tensor skip = at::empty({batch, H}, options);  // the part of d loss / d h_{t-1} that skips the gates
  const Tensor h0 = at::zeros({batch, H}, options);

  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "qllm_gru_backward", [&] {
    const scalar_t* const dh_out_ = grad_hidden.data_ptr<scalar_t>();
    const scalar_t* const rz_ = rz.data_ptr<scalar_t>();
    const scalar_t* const n_ = n.data_ptr<scalar_t>();
    const scalar_t* const hn_ = hn.data_ptr<scalar_t>();
    scalar_t* const dgi_ = grad_gates_in.data_ptr<scalar_t>();
    scalar_t* const dgh_ = grad_gates_h.data_ptr<scalar_t>();
    scalar_t* const skip_ = skip.data_ptr<scalar_t>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      const scalar_t* const h_prev_ = (t == 0 ? h0 : hidden[t - 1]).data_ptr<scalar_t>();
      const scalar_t* const carry_ = carry.data_ptr<scalar_t>();
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t row = t * batch + b;
        gates_backward(H, dh_out_ + row * H, carry_ + b * H, h_prev_ + b * H, rz_ + row * 2 * H, n_ + row * H,
                       hn_ + row * H, dgi_ + row * 3 * H, dgh_ + row * 3 * H, skip_ + b * H);
      }
      at::addmm_out(carry_next, skip, grad_gates_h[t], w_hh);
      std::swap(carry, carry_next);
    }
  });
  // Every step's hidden-side product at once: the previous hidden states are the outputs shifted by one.
  const Tensor h_prev_all = at::cat({h0.unsqueeze(0), hidden.narrow(0, 0, steps - 1)});
  const Tensor dgh_flat = grad_gates_h.view({steps * batch, 3 * H});
  Tensor grad_w_hh = dgh_flat.t().mm(h_prev_all.view({steps * batch, H}));
  Tensor grad_b_hh = dgh_flat.sum(0);
  return {grad_gates_in, grad_w_hh, grad_b_hh};
}

}  // namespace

TORCH_LIBRARY(qllm, m) {
  m.def("gru_forward(Tensor gates_in, Tensor w_hh, Tensor b_hh) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_backward(Tensor grad_hidden, Tensor hidden, Tensor rz, Tensor n, Tensor hn, Tensor w_hh)"
      " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qllm, CPU, m) {
  m.impl("gru_forward", gru_forward);
  m.impl("gru_backward", gru_backward);
}
