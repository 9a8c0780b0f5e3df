// Torch binding of the Marlin-style W4A16 ops: checks every tensor, turns them into
// pointers and calls the torch-free launchers of marlin.h on the current CUDA stream
// (c10::cuda::getCurrentCUDAStream, which at::cuda re-exports; its header needs no cuSPARSE).
// Fake (meta) implementations: vllm_machete_plugin/backends/marlin.py.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "../check.h"
#include "../registration.h"
#include "marlin.h"
#include "marlin_layout.cuh"

namespace vmp {
namespace {

namespace mk = vmp::marlin;
constexpr int64_t kTileK = mk::kTileK, kTileN = mk::kTileN;
constexpr int64_t kMaxDim = int64_t(1) << 30;

void check_cuda_2d(const at::Tensor& t, const char* op, const char* name) {
  VMP_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device(),
              "; fix: move it to the GPU (.cuda())");
  VMP_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D, got shape ", t.sizes());
  VMP_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (row-major), got strides ", t.strides(),
              " for shape ", t.sizes(), "; fix: pass ", name, ".contiguous()");
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  VMP_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but x is on ", ref.device(),
              "; fix: keep all inputs on one GPU");
}

// "blocks=1,stages=6,mb=2,swap=0,order=1,smem=102400,drain=1" (any subset) -> caps on the launch plan, for
// benchmarking plans, never needed for correctness; `what` names the setting in errors. The
// depth used is the deepest compiled one (marlin_gemm.cu, stages_compiled) within the cap.
constexpr int kMinSmemPerSm = 102400;  // the least of any sm_80+ GPU (sm_86/89)

mk::PlanHints parse_plan(const char* spec, const char* what) {
  mk::PlanHints h;
  for (std::string item; spec != nullptr && *spec != '\0'; spec += *spec == ',') {
    item.clear();
    while (*spec != '\0' && *spec != ',') item += *spec++;
    const size_t eq = item.find('=');
    const std::string key = item.substr(0, eq);
    const int value = eq == std::string::npos ? -1 : std::atoi(item.c_str() + eq + 1);
    int* slot = key == "blocks"   ? &h.blocks_per_sm
                : key == "stages" ? &h.max_stages
                : key == "mb"     ? &h.max_m_blocks
                : key == "swap"   ? &h.swap_small_m
                : key == "order"  ? &h.chunk_major
                : key == "smem"   ? &h.smem_per_sm
                : key == "drain"  ? &h.drain
                                  : nullptr;
    const bool flag = key == "swap" || key == "order" || key == "drain";
    VMP_CHECK(slot != nullptr && (value > 0 || (value == 0 && flag)) && (key != "stages" || value >= 3) &&
                  (key != "smem" || value >= kMinSmemPerSm) && (!flag || value <= 1),
              what, ": cannot parse '", item,
              "'; fix: a comma-separated subset of blocks=1|2, stages=3..8, mb=1..4, swap=0|1, order=0|1 "
              "(1: chunk-major stripes), smem=BYTES (shared memory per SM to plan with, >= ", kMinSmemPerSm,
              ", the 100 KB of sm_86/89), drain=0|1 (1: tiles whose reduction tile overlays the stages)");
    *slot = value;
  }
  return h;
}

// VMP_MARLIN_PLAN (parse_plan's form), read once per process; a call's own `plan` replaces it.
const mk::PlanHints& plan_hints() {
  static const mk::PlanHints hints = parse_plan(std::getenv("VMP_MARLIN_PLAN"), "VMP_MARLIN_PLAN");
  return hints;
}

void check_launch(cudaError_t err, const char* op) {
  VMP_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor marlin_repack(const at::Tensor& codes, int64_t k_pad, int64_t n_pad) {
  const char* op = "vmp::marlin_repack";
  check_cuda_2d(codes, op, "codes");
  VMP_CHECK(codes.scalar_type() == at::kByte, op, ": codes must be uint8 [K, N] with one 4-bit code per byte, got ",
              codes.scalar_type(), "; fix: codes.to(torch.uint8)");
  const int64_t k = codes.size(0), n = codes.size(1);
  VMP_CHECK(k_pad >= k && k_pad % kTileK == 0 && k_pad <= kMaxDim, op, ": k_pad must be a multiple of ", kTileK,
              " and >= K=", k, ", got ", k_pad, "; fix: k_pad = ceil(K / ", kTileK, ") * ", kTileK);
  VMP_CHECK(n_pad >= n && n_pad % kTileN == 0 && n_pad <= kMaxDim, op, ": n_pad must be a multiple of ", kTileN,
              " and >= N=", n, ", got ", n_pad, "; fix: n_pad = ceil(N / ", kTileN, ") * ", kTileN);
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = at::empty({k_pad / 16, 2 * n_pad}, codes.options().dtype(at::kInt));
  check_launch(mk::repack(codes.data_ptr<uint8_t>(), static_cast<int>(k), static_cast<int>(n),
                          static_cast<int>(k_pad), static_cast<int>(n_pad),
                          reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()), c10::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

at::Tensor marlin_permute_groups(const at::Tensor& src, int64_t g_pad, int64_t n_pad) {
  const char* op = "vmp::marlin_permute_groups";
  check_cuda_2d(src, op, "src");
  VMP_CHECK(src.scalar_type() == at::kHalf || src.scalar_type() == at::kBFloat16, op,
              ": src must be float16 or bfloat16 [G, N] (scales or zero points in the activation dtype), got ",
              src.scalar_type());
  const int64_t g = src.size(0), n = src.size(1);
  VMP_CHECK(g_pad >= g && g_pad <= kMaxDim, op, ": g_pad must be >= G=", g, ", got ", g_pad);
  VMP_CHECK(n_pad >= n && n_pad % kTileN == 0 && n_pad <= kMaxDim, op, ": n_pad must be a multiple of ", kTileN,
              " and >= N=", n, ", got ", n_pad, "; fix: n_pad = ceil(N / ", kTileN, ") * ", kTileN);
  const c10::cuda::CUDAGuard guard(src.device());
  at::Tensor out = at::empty({g_pad, n_pad}, src.options());
  check_launch(mk::permute_groups(reinterpret_cast<const uint16_t*>(src.data_ptr()), static_cast<int>(g),
                                  static_cast<int>(n), static_cast<int>(g_pad), static_cast<int>(n_pad),
                                  reinterpret_cast<uint16_t*>(out.data_ptr()), c10::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

at::Tensor marlin_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales,
                       const std::optional<at::Tensor>& zeros, const at::Tensor& workspace, int64_t size_n,
                       int64_t group_size, const std::optional<std::string>& plan_spec) {
  const char* op = "vmp::marlin_gemm";
  check_cuda_2d(x, op, "x");
  VMP_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": x must be float16 or bfloat16, got ", x.scalar_type());
  check_cuda_2d(w, op, "w");
  check_same_device(w, x, op, "w");
  VMP_CHECK(w.scalar_type() == at::kInt, op, ": w must be the int32 output of vmp::marlin_repack, got ",
              w.scalar_type());
  VMP_CHECK(w.size(0) % (kTileK / 16) == 0 && w.size(1) % (2 * kTileN) == 0 && w.numel() > 0, op,
              ": w must be [K_pad/16, 2*N_pad] with K_pad a multiple of ", kTileK, " and N_pad of ", kTileN,
              ", got shape ", w.sizes(),
              "; fix: build it with vmp::marlin_repack");
  const int64_t k_pad = w.size(0) * 16, n_pad = w.size(1) / 2;
  VMP_CHECK(k_pad <= kMaxDim && n_pad <= kMaxDim, op, ": w shape ", w.sizes(), " is too large");
  VMP_CHECK(x.size(1) == k_pad, op, ": x must be [M, K_pad] = [M, ", k_pad, "] to match w, got shape ", x.sizes(),
              "; fix: zero-pad x's columns to K_pad (torch.nn.functional.pad(x, (0, K_pad - K)))");
  VMP_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, op,
              ": x's data must be 16-byte aligned; fix: pass x.clone() instead of an offset view");
  VMP_CHECK(size_n >= 1 && size_n <= n_pad, op, ": size_n must be in [1, N_pad=", n_pad, "], got ", size_n);
  const bool channelwise = group_size == -1;
  VMP_CHECK(channelwise || ((group_size == 32 || group_size == 64 || group_size == 128) && k_pad % group_size == 0),
              op, ": group_size must be -1 (channelwise), 32, 64 or 128 dividing K_pad=", k_pad, ", got ",
              group_size);
  const int64_t groups = channelwise ? 1 : k_pad / group_size;
  check_cuda_2d(scales, op, "scales");
  check_same_device(scales, x, op, "scales");
  VMP_CHECK(scales.scalar_type() == x.scalar_type(), op, ": scales dtype ", scales.scalar_type(),
              " must equal x dtype ", x.scalar_type(), "; fix: convert scales before vmp::marlin_permute_groups");
  VMP_CHECK(scales.size(0) == groups && scales.size(1) == n_pad, op, ": scales must be [groups, N_pad] = [", groups,
              ", ", n_pad, "], got ", scales.sizes(), "; fix: build them with vmp::marlin_permute_groups(s, ", groups,
              ", ", n_pad, ")");
  if (zeros.has_value()) {
    const at::Tensor& z = *zeros;
    check_cuda_2d(z, op, "zeros");
    check_same_device(z, x, op, "zeros");
    VMP_CHECK(z.scalar_type() == x.scalar_type(), op, ": zeros dtype ", z.scalar_type(), " must equal x dtype ",
                x.scalar_type(), " (zero points stored as values)");
    VMP_CHECK(z.sizes() == scales.sizes(), op, ": zeros must have the shape of scales ", scales.sizes(), ", got ",
                z.sizes());
  }
  VMP_CHECK(workspace.is_cuda() && workspace.scalar_type() == at::kInt && workspace.is_contiguous(), op,
              ": workspace must be a contiguous int32 CUDA tensor, got ", workspace.scalar_type(), " on ",
              workspace.device());
  check_same_device(workspace, x, op, "workspace");

  const int64_t m = x.size(0);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({m, size_n}, x.options());
  if (m == 0) return out;
  VMP_CHECK(m <= kMaxDim, op, ": M=", m, " is too large");

  const mk::DType dtype = x.scalar_type() == at::kHalf ? mk::DType::kFloat16 : mk::DType::kBFloat16;
  const mk::PlanHints hints = plan_spec ? parse_plan(plan_spec->c_str(), "vmp::marlin_gemm plan") : plan_hints();
  mk::GemmPlan plan;
  check_launch(mk::plan_gemm(static_cast<int>(m), static_cast<int>(n_pad), static_cast<int>(k_pad), dtype,
                             x.get_device(), hints, &plan),
               op);
  VMP_CHECK(workspace.numel() >= plan.stripes.grid(), op, ": workspace has ", workspace.numel(),
              " ints, this call needs ", plan.stripes.grid(), "; fix: allocate torch.zeros(4 * multiprocessor count, dtype=torch.int32) once per layer");
  at::Tensor reduce = at::empty({static_cast<int64_t>(plan.reduce_floats)}, x.options().dtype(at::kFloat));

  mk::GemmArgs args;
  args.dtype = dtype;
  args.x = x.data_ptr();
  args.w = reinterpret_cast<const uint32_t*>(w.data_ptr<int32_t>());
  args.scales = scales.data_ptr();
  args.zeros = zeros.has_value() ? zeros->data_ptr() : nullptr;
  args.out = out.data_ptr();
  args.reduce = reduce.data_ptr<float>();
  args.locks = workspace.data_ptr<int32_t>();
  args.m = static_cast<int>(m);
  args.n = static_cast<int>(size_n);
  args.n_pad = static_cast<int>(n_pad);
  args.k_pad = static_cast<int>(k_pad);
  args.group_size = static_cast<int>(group_size);
  check_launch(mk::gemm(args, plan, c10::cuda::getCurrentCUDAStream()), op);
  return out;
}

// Host only, for tests without a GPU: the stripes the planner would give `slots` resident
// blocks in `order` (-1: the planner's default rule, 0: n-major, 1: chunk-major where it can
// be; StripeMap::plan), flattened as whether the map is chunk-major, every
// block's [begin, end) units, then every slice's first and last block (slices in the map's
// own numbering). marlin_stripes.h defines them.
std::vector<int64_t> marlin_stripe_map(int64_t chunks, int64_t n_tiles, int64_t k_tiles, int64_t slots,
                                       int64_t order) {
  VMP_CHECK(chunks >= 1 && n_tiles >= 1 && k_tiles >= 1 && slots >= 1 && chunks * n_tiles * k_tiles <= (1 << 24) &&
                order >= -1 && order <= 1,
            "vmp::marlin_stripe_map: needs chunks, n_tiles, k_tiles, slots >= 1, at most 2^24 units and "
            "order -1, 0 or 1; got ", chunks, ", ", n_tiles, ", ", k_tiles, ", ", slots, ", ", order);
  const mk::StripeMap s = mk::StripeMap::plan(static_cast<int>(chunks), static_cast<int>(n_tiles),
                                              static_cast<int>(k_tiles), static_cast<int>(slots), static_cast<int>(order));
  std::vector<int64_t> out{s.chunk_major};
  for (int b = 0; b < s.grid(); ++b) out.insert(out.end(), {s.begin(b), s.end(b)});
  for (int slice = 0; slice < chunks * n_tiles; ++slice) out.insert(out.end(), {s.first_block(slice), s.last_block(slice)});
  return out;
}

// Host only, for tests without a GPU: the tile choose_tile picks for M = m on a GPU with these
// limits (cudaDeviceGetAttribute's SM count, shared memory per SM, per block opt-in and
// reserved per block) under `plan` (parse_plan's form), as [m_blocks, chunks, stages,
// blocks_per_sm, drain, smem_bytes]; [] when no tile fits.
std::vector<int64_t> marlin_tile_plan(int64_t m, int64_t n_pad, int64_t k_pad, int64_t sms, int64_t smem_per_sm,
                                      int64_t smem_optin, int64_t smem_reserved, const std::optional<std::string>& plan) {
  VMP_CHECK(m >= 1 && m <= kMaxDim && n_pad >= kTileN && n_pad % kTileN == 0 && n_pad <= kMaxDim && k_pad >= kTileK &&
                k_pad % kTileK == 0 && k_pad <= kMaxDim && sms >= 1 && smem_per_sm >= 1 && smem_optin >= 1 &&
                smem_reserved >= 0 && smem_per_sm <= (1 << 24) && smem_optin <= smem_per_sm,
            "vmp::marlin_tile_plan: needs 1 <= m, n_pad a multiple of ", kTileN, ", k_pad of ", kTileK,
            ", positive limits with smem_optin <= smem_per_sm; got m=", m, ", n_pad=", n_pad, ", k_pad=", k_pad,
            ", limits ", sms, ", ", smem_per_sm, ", ", smem_optin, ", ", smem_reserved);
  DeviceLimits lim;
  lim.sms = static_cast<int>(sms);
  lim.smem_per_sm = static_cast<int>(smem_per_sm);
  lim.smem_optin = static_cast<int>(smem_optin);
  lim.smem_reserved = static_cast<int>(smem_reserved);
  const mk::PlanHints hints = plan ? parse_plan(plan->c_str(), "vmp::marlin_tile_plan plan") : mk::PlanHints{};
  mk::TileChoice t;
  if (!mk::choose_tile(static_cast<int>(m), static_cast<int>(n_pad), static_cast<int>(k_pad), lim, hints, &t)) return {};
  return {t.m_blocks, t.chunks, t.stages, t.blocks_per_sm, t.drain, t.smem_bytes};
}

}  // namespace

void register_marlin_ops(torch::Library& m) {
  m.def("marlin_repack(Tensor codes, SymInt k_pad, SymInt n_pad) -> Tensor");
  m.def("marlin_stripe_map(int chunks, int n_tiles, int k_tiles, int slots, int order=-1) -> int[]",
        &marlin_stripe_map);
  m.def("marlin_tile_plan(int m, int n_pad, int k_pad, int sms, int smem_per_sm, int smem_optin, int smem_reserved, "
        "str? plan=None) -> int[]",
        &marlin_tile_plan);
  m.def("marlin_permute_groups(Tensor src, SymInt g_pad, SymInt n_pad) -> Tensor");
  m.def(
      "marlin_gemm(Tensor x, Tensor w, Tensor scales, Tensor? zeros, Tensor workspace, SymInt size_n, "
      "int group_size, str? plan=None) -> Tensor");
  m.impl("marlin_repack", torch::dispatch(c10::DispatchKey::CUDA, TORCH_FN(marlin_repack)));
  m.impl("marlin_permute_groups", torch::dispatch(c10::DispatchKey::CUDA, TORCH_FN(marlin_permute_groups)));
  m.impl("marlin_gemm", torch::dispatch(c10::DispatchKey::CUDA, TORCH_FN(marlin_gemm)));
}

}  // namespace vmp
