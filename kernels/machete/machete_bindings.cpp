// Torch binding of the Machete W4A16 GEMM (sm_90a): checks every tensor, turns them
// into pointers and calls the torch-free entry points of machete.h on the current
// CUDA stream. Built as vllm_machete_plugin._machete_C; its ops join the `vmp`
// namespace that kernels/torch_bindings.cpp defines. Fakes: backends/machete.py.
#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../check.h"
#include "../device_limits.h"
#include "machete.h"
#include "machete_tile.h"

namespace vmp {
namespace {

namespace mc = vmp::machete;
constexpr int64_t kAlignN = 128;  // smallest schedule tile along N
constexpr int64_t kAlignK = 64;   // one K tile / prepack atom depth
constexpr int64_t kMaxDim = int64_t(1) << 30;
// Lock slots a caller keeps per layer for our own kernels (small-M and mid-M: >= 8 warps
// x a grid of up to 2 blocks per SM: enough for 256 SMs).
constexpr int64_t kSmallMLocks = 4096;

void check_launch(cudaError_t err, const char* op) {
  VMP_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

int sm_count(int device, const char* op) {
  DeviceLimits lim;  // queried once per device
  check_launch(device_limits(device, &lim), op);
  return lim.sms;
}

std::string tile_list() {
  std::string all;
  for (int i = 0; i < mc::kNumSchedules; ++i) all += std::string(i ? ", " : "") + mc::kScheduleNames[i];
  return all;
}

// "f<S>" / "t<S>" (S in 1, 2, 4, 8) -> (Raster, swizzle); (-1, 0) if it is neither.
std::pair<int, int> parse_raster(const std::string& r) {
  const int order = r.size() != 2 ? -1 : r[0] == 'f' ? mc::kRasterFeatures : r[0] == 't' ? mc::kRasterTokens : -1;
  const int swizzle = r.size() == 2 ? r[1] - '0' : 0;
  const bool ok = order >= 0 && (swizzle == 1 || swizzle == 2 || swizzle == 4 || swizzle == 8);
  return ok ? std::make_pair(order, swizzle) : std::make_pair(-1, 0);
}

// "<tile>[_dp|_sk|_split<S>][+f<S>|+t<S>]" -> Schedule (grammar in machete.h).
mc::Schedule parse_schedule(const std::string& full) {
  const size_t plus = full.find('+');
  const std::string name = full.substr(0, plus);
  const size_t cut = name.find('_');
  const std::string tile = name.substr(0, cut), suffix = cut == std::string::npos ? "" : name.substr(cut + 1);
  mc::Schedule s;
  s.tile = mc::tile_index(tile.c_str());
  bool ok = s.tile < mc::kNumSchedules;
  if (plus != std::string::npos) {  // a raster order: CUTLASS tiles only
    std::tie(s.raster, s.swizzle) = parse_raster(full.substr(plus + 1));
    ok = ok && s.raster >= 0 && !mc::is_small_m(s.tile) && !mc::is_mid_m(s.tile);
  }
  if (ok && (mc::is_small_m(s.tile) || mc::is_mid_m(s.tile))) {
    ok = suffix.empty();  // our own kernels balance K themselves: no decomposition suffix
  } else if (suffix == "dp") {
    s.decomposition = mc::kDataParallel;
  } else if (suffix == "sk") {
    s.decomposition = mc::kStreamK;
  } else if (suffix.rfind("split", 0) == 0 && suffix.size() > 5 && suffix.size() <= 7 &&
             suffix.find_first_not_of("0123456789", 5) == std::string::npos) {
    s.decomposition = mc::kSplitK;
    s.splits = std::stoi(suffix.substr(5));
    ok = ok && s.splits >= 2 && s.splits <= 16;
  } else {
    ok = ok && suffix.empty();
  }
  VMP_CHECK(ok, "vmp::machete_mm: unknown schedule '", full, "'; a schedule is a tile from [", tile_list(),
              "] (vmp::machete_schedules()), the CUTLASS tiles (the first eight) optionally with _dp, _sk or _split<2..16> "
              "and then +f<S> or +t<S> (raster order along features / tokens, swizzle S in 1, 2, 4, 8); or "
              "pass None for the built-in heuristic");
  return s;
}

std::string schedule_name(const mc::Schedule& s) {
  std::string name = mc::kScheduleNames[s.tile];
  if (s.decomposition == mc::kDataParallel) name += "_dp";
  if (s.decomposition == mc::kStreamK) name += "_sk";
  if (s.decomposition == mc::kSplitK) name += "_split" + std::to_string(s.splits);
  if (s.raster != mc::kRasterAuto) name += (s.raster == mc::kRasterFeatures ? "+f" : "+t") + std::to_string(s.swizzle);
  return name;
}

// VMP_MACHETE_SUBST="<a>=<b>,...": wherever the heuristic picks tile a and tile b can run the
// call (N % b's alignment == 0, M within a small-M tile's tokens), b runs instead, so a new
// schedule can be timed end to end without a rebuild (A/B runs; unset in production). Read
// once per process. A decomposition suffix of the pick is kept only when b is a CUTLASS
// tile too.
const std::map<int, int>& substitutions() {
  static const std::map<int, int> subst = [] {
    std::map<int, int> out;
    const char* env = std::getenv("VMP_MACHETE_SUBST");
    std::string spec = env ? env : "", item;
    std::stringstream items(spec);
    auto index = [&](const std::string& name) {
      const int i = mc::tile_index(name.c_str());
      VMP_CHECK(i < mc::kNumSchedules, "VMP_MACHETE_SUBST=", spec, ": unknown tile '", name, "'; tiles: ", tile_list());
      return i;
    };
    while (std::getline(items, item, ',')) {
      if (item.empty()) continue;
      const size_t eq = item.find('=');
      VMP_CHECK(eq != std::string::npos, "VMP_MACHETE_SUBST=", spec, ": '", item,
                "' is not <tile>=<tile>; fix: e.g. VMP_MACHETE_SUBST=256x64w=128x64w");
      out[index(item.substr(0, eq))] = index(item.substr(eq + 1));
    }
    return out;
  }();
  return subst;
}

// VMP_MACHETE_RASTER="f<S>" | "t<S>" | "auto": the raster order (machete.h, Raster) of the
// CUTLASS tiles the heuristic picks, in place of its own (machete_heuristic.cpp); "auto" is
// CUTLASS's. For A/B runs end to end without a rebuild (the order moves DRAM traffic,
// benchmarks/l2_model.py); a forced schedule states its own ("+f4"). Read once per process;
// nullopt when unset.
std::optional<std::pair<int, int>> raster_override() {
  static const std::optional<std::pair<int, int>> raster = []() -> std::optional<std::pair<int, int>> {
    const char* env = std::getenv("VMP_MACHETE_RASTER");
    if (env == nullptr) return std::nullopt;
    const std::string spec = env;
    const std::pair<int, int> r = spec == "auto" ? std::make_pair(int(mc::kRasterAuto), 1) : parse_raster(spec);
    VMP_CHECK(r.first >= 0, "VMP_MACHETE_RASTER=", spec,
              ": cannot parse; fix: f<S> (along features), t<S> (along tokens) or auto, S in 1, 2, 4, 8");
    return r;
  }();
  return raster;
}

// The built-in heuristic's schedule, after VMP_MACHETE_SUBST and VMP_MACHETE_RASTER.
mc::Schedule heuristic(int m, int n, int k, int sms) {
  mc::Schedule s = mc::choose_schedule(m, n, k, sms);
  const auto it = substitutions().find(s.tile);
  if (it != substitutions().end() && n % mc::align_n(it->second) == 0 &&
      (!mc::is_small_m(it->second) || m <= mc::small_m_tokens(it->second))) {
    // Our own kernels take none of a CUTLASS pick's decomposition or raster.
    if (mc::is_small_m(it->second) || mc::is_mid_m(it->second)) s = mc::Schedule{};
    s.tile = it->second;
  }
  if (const auto r = raster_override(); r && s.tile < mc::kNumCutlassTiles) std::tie(s.raster, s.swizzle) = *r;
  return s;
}

// The prepacked weight's dtype records the kind it was packed for, so machete_mm refuses
// the other kind without reading the GPU: uint32 holds u4 codes q (used with zero points),
// int32 holds u4b8 codes q-8 (the fakes in backends/machete.py follow the same rule).
at::ScalarType prepacked_dtype(bool has_zeros) { return has_zeros ? at::kUInt32 : at::kInt; }

at::Tensor machete_prepack(const at::Tensor& codes, bool has_zeros) {
  const char* op = "vmp::machete_prepack";
  VMP_CHECK(codes.is_cuda(), op, ": codes must be a CUDA tensor, got device ", codes.device(),
              "; fix: move it to the GPU (.cuda())");
  VMP_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte, op,
              ": codes must be uint8 [K, N] (one 4-bit code per byte), got ", codes.scalar_type(), " of shape ",
              codes.sizes(), "; fix: CanonicalW4.codes");
  VMP_CHECK(codes.is_contiguous(), op, ": codes must be contiguous [K, N], got strides ", codes.strides(),
              "; fix: codes.contiguous()");
  const int64_t k = codes.size(0), n = codes.size(1);
  VMP_CHECK(k % kAlignK == 0 && k > 0 && k <= kMaxDim, op, ": K=", k, " must be a positive multiple of ", kAlignK,
              "; fix: use Marlin or pad K");
  VMP_CHECK(n % kAlignN == 0 && n > 0 && n <= kMaxDim, op, ": N=", n, " must be a positive multiple of ", kAlignN,
              "; fix: use Marlin or pad N");
  const c10::cuda::CUDAGuard guard(codes.device());
  at::Tensor out = at::empty({k / 8, n}, codes.options().dtype(prepacked_dtype(has_zeros)));
  check_launch(mc::prepack(codes.data_ptr<uint8_t>(), int(k), int(n), /*to_signed=*/!has_zeros,
                           static_cast<uint32_t*>(out.data_ptr()), at::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

// Locks of our own kernels (small-M, mid-M): the caller's persistent zeroed int32 buffer
// when given, else zeroed here; the kernels leave them zero.
at::Tensor lock_buffer(const at::Tensor& x, const std::optional<at::Tensor>& locks, int needed) {
  if (!locks) return at::zeros({needed}, x.options().dtype(at::kInt));
  VMP_CHECK(locks->is_cuda() && locks->device() == x.device() && locks->scalar_type() == at::kInt &&
                locks->is_contiguous() && locks->numel() >= needed, "vmp::machete_mm",
            ": locks must be a contiguous int32 CUDA tensor on ", x.device(), " with at least ", needed,
            " zeroed elements, got ", locks->scalar_type(), " ", locks->sizes(), " on ", locks->device(),
            "; fix: torch.zeros(", int64_t(kSmallMLocks), ", dtype=torch.int32, device=x.device) once per layer");
  return *locks;
}

// Our own kernels (small-M mma.sync, mid-M wgmma): plan, fp32 partials from the caching
// allocator (no init needed), locks, launch on the current stream.
template <class Plan, auto kPlan, auto kRun>
void run_own(const mc::Schedule& sched, mc::ActType act, const mc::MMArgs& a, const at::Tensor& x,
             const std::optional<at::Tensor>& locks) {
  const char* op = "vmp::machete_mm";
  Plan plan;
  const char* err = kPlan(sched.tile, a, &plan);
  VMP_CHECK(err == nullptr, op, " (schedule ", schedule_name(sched), ", M=", a.m, " N=", a.n, " K=", a.k, "): ",
            err, "; fix: pass None for the built-in heuristic");
  at::Tensor partials = at::empty({int64_t(plan.partial_floats)}, x.options().dtype(at::kFloat));
  at::Tensor lk = lock_buffer(x, locks, plan.locks);
  err = kRun(act, plan, a, partials.data_ptr<float>(), lk.data_ptr<int32_t>(), at::cuda::getCurrentCUDAStream());
  VMP_CHECK(err == nullptr, op, " (schedule ", schedule_name(sched), ", M=", a.m, " N=", a.n, " K=", a.k, "): ",
            err);
  check_launch(cudaGetLastError(), op);
}

at::Tensor machete_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales,
                      const std::optional<at::Tensor>& zeros, int64_t group_size,
                      const std::optional<std::string>& schedule, const std::optional<at::Tensor>& locks) {
  const char* op = "vmp::machete_mm";
  VMP_CHECK(x.is_cuda() && x.dim() == 2, op, ": x must be a 2-D CUDA tensor [M, K], got ", x.sizes(), " on ",
              x.device());
  VMP_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": x must be float16 or bfloat16, got ", x.scalar_type());
  VMP_CHECK(w.dim() == 2 && (w.scalar_type() == at::kInt || w.scalar_type() == at::kUInt32) && w.is_contiguous(),
              op, ": w must be the int32 or uint32 [K/8, N] tensor from vmp::machete_prepack, got ", w.scalar_type(),
              " ", w.sizes());
  VMP_CHECK(w.scalar_type() == prepacked_dtype(zeros.has_value()), op, ": w (", w.scalar_type(), ") was prepacked for ",
              zeros ? "u4b8 (has_zeros=False: int32 codes q-8)"
                    : "u4 with zero points (has_zeros=True: uint32 codes q)",
              ", but the call ", zeros ? "passes" : "passes no", " zeros; fix: prepack the codes with has_zeros=",
              zeros ? "True" : "False", ", or ", zeros ? "drop" : "pass", " the zeros");
  const int64_t m = x.size(0), k = w.size(0) * 8, n = w.size(1);
  VMP_CHECK(x.size(1) == k, op, ": x has K=", x.size(1), " but w was prepacked for K=", k,
              "; fix: pass activations [M, ", k, "]");
  VMP_CHECK(x.stride(1) == 1 && x.stride(0) % 8 == 0 && x.stride(0) >= k &&
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, op,
              ": x must be row-major with unit column stride, a row stride that is a multiple of 8 elements and a "
              "16-byte aligned start (TMA), got strides ", x.strides(), "; fix: x.contiguous()");
  for (const at::Tensor* t : {&w, &scales}) {
    VMP_CHECK(t->device() == x.device(), op, ": all inputs must be on ", x.device(), ", got ", t->device());
  }
  const int64_t g = group_size == -1 ? k : group_size;
  VMP_CHECK(g == k || (g > 0 && g % kAlignK == 0 && k % g == 0), op, ": group_size=", group_size,
              " unsupported for K=", k, "; expected -1 (channelwise) or a multiple of 64 dividing K");
  const int64_t groups = k / g;
  VMP_CHECK(scales.dim() == 2 && scales.size(0) == groups && scales.size(1) == n && scales.is_contiguous(), op,
              ": scales must be contiguous [K/group_size, N] = [", groups, ", ", n, "], got ", scales.sizes(),
              " strides ", scales.strides(), "; fix: scales.contiguous() in the layout of CanonicalW4.scales");
  VMP_CHECK(scales.scalar_type() == x.scalar_type(), op, ": scales dtype ", scales.scalar_type(),
              " must equal x dtype ", x.scalar_type(), "; fix: scales.to(x.dtype)");
  if (zeros) {
    VMP_CHECK(zeros->device() == x.device(), op, ": zeros must be on ", x.device(), ", got ", zeros->device());
    VMP_CHECK(zeros->sizes() == scales.sizes() && zeros->is_contiguous() &&
                    zeros->scalar_type() == x.scalar_type(), op,
                ": zeros must be contiguous ", x.scalar_type(), " ", scales.sizes(),
                " holding -scale*zero_point (pre-multiplied), got ", zeros->scalar_type(), " ", zeros->sizes(),
                "; fix: zeros = (-scales.float() * zp.float()).to(x.dtype).contiguous()");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0) return y;
  VMP_CHECK(m <= kMaxDim, op, ": M=", m, " too large");

  const int sms = sm_count(x.get_device(), op);
  const mc::Schedule sched = schedule ? parse_schedule(*schedule) : heuristic(int(m), int(n), int(k), sms);
  VMP_CHECK(n % mc::align_n(sched.tile) == 0, op, ": schedule ", schedule_name(sched), " needs N % ",
              mc::align_n(sched.tile), " == 0, got N=", n, "; fix: a schedule that needs N % 128 only (128x16 ... 128x128), or None");
  VMP_CHECK(!mc::is_small_m(sched.tile) || m <= mc::small_m_tokens(sched.tile), op, ": schedule ",
              schedule_name(sched), " handles at most ", mc::small_m_tokens(sched.tile), " tokens, got M=", m,
              "; fix: a wider tile or None");
  mc::MMArgs a;
  a.x = x.data_ptr();
  a.ldx = x.stride(0);
  a.w = w.data_ptr();
  a.scales = scales.data_ptr();
  a.zeros = zeros ? zeros->data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.m = int(m);
  a.n = int(n);
  a.k = int(k);
  a.group_size = int(g);
  a.device = x.get_device();
  a.sm_count = sms;
  a.decomposition = sched.decomposition;
  a.splits = sched.splits;
  a.raster = sched.raster;
  a.swizzle = sched.swizzle;
  const mc::ActType act = x.scalar_type() == at::kHalf ? mc::kF16 : mc::kBF16;
  if (mc::is_small_m(sched.tile)) {
    run_own<mc::SmallMPlan, &mc::plan_small_m, &mc::run_small_m>(sched, act, a, x, locks);
    return y;
  }
  if (mc::is_mid_m(sched.tile)) {
    run_own<mc::MidMPlan, &mc::plan_mid_m, &mc::run_mid_m>(sched, act, a, x, locks);
    return y;
  }
  const mc::MMFn fn = mc::mm_fn(act, zeros.has_value());
  size_t ws_bytes = 0;
  const char* err = fn(sched.tile, a, nullptr, &ws_bytes, nullptr);
  VMP_CHECK(err == nullptr, op, ": ", err);
  // Stream-K partials/locks: a fresh allocation from the caching allocator on this
  // stream; the kernel's init zeroes what it needs, so capture/replay is safe.
  at::Tensor ws = at::empty({int64_t(ws_bytes)}, x.options().dtype(at::kByte));
  err = fn(sched.tile, a, ws_bytes ? ws.data_ptr() : nullptr, nullptr, at::cuda::getCurrentCUDAStream());
  VMP_CHECK(err == nullptr, op, " (schedule ", schedule_name(sched), ", M=", m, " N=", n, " K=", k,
              "): ", err);
  check_launch(cudaGetLastError(), op);
  return y;
}

std::vector<std::string> machete_schedules() {
  return std::vector<std::string>(mc::kScheduleNames, mc::kScheduleNames + mc::kNumSchedules);
}

int64_t machete_small_m_locks() { return kSmallMLocks; }

// The heuristic's pick (after VMP_MACHETE_SUBST) for a GPU with `sms` SMs; sms <= 0: the
// current CUDA device's.
// With sms given no CUDA call is made, so the table can be checked without a GPU.
std::string machete_heuristic(int64_t m, int64_t n, int64_t k, int64_t sms) {
  const char* op = "vmp::machete_heuristic";
  VMP_CHECK(m >= 1 && n >= 1 && k >= 1 && m <= kMaxDim && n <= kMaxDim && k <= kMaxDim, op,
            ": m, n, k must be in [1, 2^30], got m=", m, " n=", n, " k=", k);
  VMP_CHECK(sms <= 65536, op, ": sm_count=", sms, " is not an SM count (0: the current device's)");
  if (sms <= 0) {
    int device = 0;
    check_launch(cudaGetDevice(&device), op);
    sms = sm_count(device, op);
  }
  return schedule_name(heuristic(int(m), int(n), int(k), int(sms)));
}

// Milliseconds of one probe launch on the current device (wgmma_probe.cu; not a GEMM).
double wgmma_probe(int64_t n, bool rs, int64_t warpgroups, int64_t in_flight, int64_t iters, int64_t dq, bool mma,
                   int64_t split) {
  const char* op = "vmp::wgmma_probe";
  VMP_CHECK(split >= 0 && split <= 2 && (!split || (warpgroups == 4 && dq > 0 && in_flight == 2 && !rs)), op,
            ": split (1: transform warpgroups store to shared memory, 2: they fold into a register) runs 2 wgmma "
            "warpgroups (A from shared memory) beside 2 transform warpgroups: it needs warpgroups=4, dq 1..2, "
            "in_flight=2 and rs=false; got split=", split, " warpgroups=", warpgroups, " dq=", dq,
            " in_flight=", in_flight, " rs=", rs ? "true" : "false");
  VMP_CHECK((n == 64 || n == 128 || n == 256) && (warpgroups == 1 || warpgroups == 2 || split) &&
                in_flight >= 1 && in_flight <= 3 && iters >= 16 && iters % 2 == 0 && iters <= (int64_t(1) << 24),
            op, ": n must be 64/128/256, warpgroups 1 or 2 (4 with split), in_flight 1..3, iters even in [16, 2^24]; ",
            "got n=", n, " warpgroups=", warpgroups, " in_flight=", in_flight, " iters=", iters);
  const bool dq_ok = dq == 0 || (n <= 128 && (in_flight == 2 || (rs && in_flight == 3)));
  VMP_CHECK(dq >= 0 && dq <= 2 && dq_ok && (mma || dq > 0), op,
            ": dq (0..2 upconversion rounds) needs n 64/128 and in_flight 2 (rs or ss) or 3 (rs), and mma=false "
            "needs dq > 0; got dq=", dq, " rs=", rs ? "true" : "false", " in_flight=", in_flight, " n=", n,
            " mma=", mma ? "true" : "false");
  int device = 0;
  check_launch(cudaGetDevice(&device), op);
  int major = 0, minor = 0;
  check_launch(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), op);
  check_launch(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), op);
  VMP_CHECK(major == 9 && minor == 0, op, ": wgmma needs an sm_90 GPU (Hopper); this one is sm_", major, minor);
  const int sms = sm_count(device, op);
  at::Tensor sink = at::empty({sms}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device));
  float ms = 0.f;
  check_launch(mc::wgmma_probe(int(n), rs, int(warpgroups), int(in_flight), int(dq), mma, int(iters), sms,
                               sink.data_ptr<float>(), at::cuda::getCurrentCUDAStream(device), &ms, int(split)),
               op);
  return ms;
}

}  // namespace
}  // namespace vmp

TORCH_LIBRARY_FRAGMENT(vmp, m) {
  m.def("machete_prepack(Tensor codes, bool has_zeros) -> Tensor");
  m.def(
      "machete_mm(Tensor x, Tensor w, Tensor scales, Tensor? zeros, int group_size, str? schedule=None, "
      "Tensor? locks=None) -> Tensor");
  m.def("machete_small_m_locks() -> int", &vmp::machete_small_m_locks);
  m.def("machete_schedules() -> str[]", &vmp::machete_schedules);
  m.def("machete_heuristic(int m, int n, int k, int sm_count=0) -> str", &vmp::machete_heuristic);
  m.def("wgmma_probe(int n, bool rs, int warpgroups, int in_flight, int iters, int dq=0, bool mma=True, "
        "int split=0) -> float",
        &vmp::wgmma_probe);
}

TORCH_LIBRARY_IMPL(vmp, CUDA, m) {
  m.impl("machete_prepack", &vmp::machete_prepack);
  m.impl("machete_mm", &vmp::machete_mm);
}

// Importable as vllm_machete_plugin._machete_C; importing it registers the ops above.
static struct PyModuleDef vmp_machete_module = {PyModuleDef_HEAD_INIT, "_machete_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__machete_C(void) { return PyModule_Create(&vmp_machete_module); }
