// A 3x3 or 1x1 'SAME' convolution (+ bias, + optional ReLU) for XLA on the CPU, run by oneDNN.
//
// XLA's CPU backend computes bfloat16 convolutions in float32 and has no path to the bf16
// dot-product (AVX512-BF16) or matrix (AMX) units; oneDNN does. This file is compiled on first
// use by changedet/kernels/__init__.py and registered as the XLA FFI target
// "changedet_onednn_conv". It keeps XLA's layouts: input NHWC, kernel HWIO (flax), bias (O),
// output NHWC. Input and kernel are bf16; output is bf16 or f32 (the output buffer decides);
// accumulation is f32 inside oneDNN.
//
// Primitives are created once per shape and cached (they are immutable, and each call passes
// its own scratchpad, so calls from several threads at once are safe); weights are reordered
// into oneDNN's preferred layout on every call (at most 150k values: negligible beside the
// convolution).
// The spatial dimensions are the parallel ones, each output pixel's sum runs over the same
// taps and channels in the same order wherever it sits, so a tile's pixels equal the same
// pixels of a whole-image pass.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool>;

struct Conv {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward prim;
  dnnl::reorder weight_reorder;
  dnnl::memory::desc user_weights;
};

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

std::mutex cache_mutex;
std::map<Key, std::shared_ptr<Conv>> cache;

std::shared_ptr<Conv> get_conv(const Key& key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  auto [n, h, w, ci, co, k, relu, f32_out] = key;
  const int64_t pad = (k - 1) / 2;
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;
  // oneDNN describes activations as NCHW and weights as OIHW; the format tags say how they
  // sit in memory (NHWC, HWIO).
  dnnl::memory::desc src({n, ci, h, w}, dt::bf16, tag::nhwc);
  dnnl::memory::desc dst({n, co, h, w}, f32_out ? dt::f32 : dt::bf16, tag::nhwc);
  dnnl::memory::desc bias({co}, dt::f32, tag::a);
  dnnl::memory::desc user_weights({co, ci, k, k}, dt::bf16, tag::hwio);
  dnnl::memory::desc any_weights({co, ci, k, k}, dt::bf16, tag::any);
  dnnl::primitive_attr attr;
  // Each call brings its own scratchpad: XLA runs one call per device (thread) at once, and a
  // library-owned scratchpad would be shared between them.
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (relu) {
    dnnl::post_ops ops;
    ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(ops);
  }
  auto pd = dnnl::convolution_forward::primitive_desc(
      engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
      any_weights, bias, dst, {1, 1}, {pad, pad}, {pad, pad}, attr);
  auto conv = std::make_shared<Conv>(Conv{
      pd, dnnl::convolution_forward(pd),
      dnnl::reorder(dnnl::reorder::primitive_desc(engine(), user_weights, engine(),
                                                  pd.weights_desc())),
      user_weights});
  cache.emplace(key, conv);
  return conv;
}

ffi::Error ConvImpl(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Buffer<ffi::F32> bias,
                    ffi::Result<ffi::AnyBuffer> y, bool relu) {
  auto xd = x.dimensions();
  auto kd = kernel.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || (kd[0] != 3 && kd[0] != 1) || kd[1] != kd[0] ||
      kd[2] != xd[3] ||
      yd.size() != 4 || yd[3] != kd[3] || yd[1] != xd[1] || yd[2] != xd[2]) {
    return ffi::Error::InvalidArgument("changedet_onednn_conv: expected NHWC input, 3x3 or 1x1 "
                                       "HWIO kernel and a same-size NHWC output");
  }
  if (x.element_type() != ffi::BF16 || kernel.element_type() != ffi::BF16 ||
      (y->element_type() != ffi::BF16 && y->element_type() != ffi::F32)) {
    return ffi::Error::InvalidArgument("changedet_onednn_conv: bf16 input and kernel, bf16 or "
                                       "f32 output");
  }
  try {
    auto conv = get_conv(Key{xd[0], xd[1], xd[2], xd[3], kd[3], kd[0], relu,
                             y->element_type() == ffi::F32});
    dnnl::stream stream(engine());
    dnnl::memory user_w(conv->user_weights, engine(), kernel.untyped_data());
    dnnl::memory w(conv->pd.weights_desc(), engine());
    conv->weight_reorder.execute(stream, user_w, w);
    dnnl::memory src(conv->pd.src_desc(), engine(), x.untyped_data());
    dnnl::memory b(conv->pd.bias_desc(), engine(), bias.typed_data());
    dnnl::memory dst(conv->pd.dst_desc(), engine(), y->untyped_data());
    dnnl::memory scratch(conv->pd.scratchpad_desc(), engine());
    conv->prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w},
                                {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, dst},
                                {DNNL_ARG_SCRATCHPAD, scratch}});
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("changedet_onednn_conv: oneDNN: ") + err.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ChangedetOnednnConv, ConvImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<bool>("relu"));

// The oneDNN CPU ISA in use ("avx512_core_amx", ...), for logs and benchmarks.
extern "C" const char* changedet_onednn_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2: return "avx2";
    default: return "other";
  }
}
