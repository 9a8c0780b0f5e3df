// The Machete GEMM template: CUTLASS's sm90 TMA warp-specialized register-sourced
// mixed-input collective, instantiated on the transposed problem
//   D[N, M] = W^T[N, K] (4-bit, prepacked layout) x X^T[K, M] (16-bit)
// with our prepacked layout as the weight's gmem layout. Included only by the tile
// units (kernels/machete/tiles/<act>_<wtype>_<group>.cu).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/gemm/kernel/tile_scheduler.hpp>

#include "../launch.h"
#include "machete_layout.cuh"
#include "machete_tile.h"

namespace vmp::machete {

template <class ElemAct, class ElemW, bool kZeros, int kTileN, int kTileM, int kClusterN = 1>
struct Gemm {
  using TileShape = cute::Shape<cute::Int<kTileN>, cute::Int<kTileM>, cute::Int<kPrepackAlignK>>;
  using ClusterShape = cute::Shape<cute::Int<kClusterN>, cute::_1, cute::_1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;

  // Weight tuple: (codes, scale[, zero]); scales and zeros share the act dtype.
  using ElemWTuple = cute::conditional_t<kZeros, cute::tuple<ElemW, ElemAct, ElemAct>, cute::tuple<ElemW, ElemAct>>;
  using LayoutX = cutlass::layout::ColumnMajor;  // X^T [K, M] column-major == X [M, K] row-major
  using LayoutD = cutlass::layout::ColumnMajor;  // D [N, M] column-major == Y [M, N] row-major
  static constexpr int kAlignW = 128 / cutlass::sizeof_bits<ElemW>::value;
  static constexpr int kAlignAct = 128 / cutlass::sizeof_bits<ElemAct>::value;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD, kAlignAct, ElemAct, LayoutD,
      kAlignAct, EpilogueSchedule>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElemWTuple, PrepackedLayout, kAlignW, ElemAct, LayoutX,
      kAlignAct, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue,
                                                      cutlass::gemm::StreamKScheduler>;
  using Adapter = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Adapter::Arguments arguments(const MMArgs& a) {
    using StrideX = typename Mainloop::StrideB;
    using StrideD = typename Epilogue::StrideD;
    const int groups = a.k / a.group_size;
    typename Mainloop::Arguments ml{};
    ml.ptr_A = static_cast<const ElemW*>(a.w);
    ml.dA = make_prepacked_layout(a.n, a.k, 1);
    ml.ptr_B = static_cast<const ElemAct*>(a.x);
    ml.dB = StrideX{a.ldx, cute::_1{}, a.ldx * a.m};
    ml.ptr_S = static_cast<const ElemAct*>(a.scales);
    ml.dS = typename Mainloop::NonVoidStrideScale{cute::_1{}, int64_t(a.n), int64_t(a.n) * groups};
    ml.group_size = a.group_size;
    if constexpr (kZeros) ml.ptr_Z = static_cast<const ElemAct*>(a.zeros);
    typename Epilogue::Arguments epi{};
    epi.thread.alpha = 1.0f;
    epi.thread.beta = 0.0f;
    epi.dC = StrideD{cute::_1{}, int64_t(a.n), int64_t(a.n) * a.m};
    epi.ptr_D = static_cast<ElemAct*>(a.y);
    epi.dD = epi.dC;
    cutlass::KernelHardwareInfo hw{a.device, a.sm_count};
    typename Adapter::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm, {a.n, a.m, a.k, 1}, ml, epi, hw};
    using Mode = typename Kernel::TileScheduler::DecompositionMode;
    args.scheduler.decomposition_mode = a.decomposition == kDataParallel ? Mode::DataParallel
                                        : a.decomposition == kStreamK    ? Mode::StreamK
                                        : a.decomposition == kSplitK     ? Mode::SplitK
                                                                         : Mode::Heuristic;
    args.scheduler.splits = a.decomposition == kSplitK ? a.splits : 1;
    using Raster = typename Kernel::TileScheduler::RasterOrderOptions;
    args.scheduler.raster_order = a.raster == kRasterFeatures ? Raster::AlongM
                                  : a.raster == kRasterTokens ? Raster::AlongN
                                                              : Raster::Heuristic;
    args.scheduler.max_swizzle_size = a.swizzle;
    return args;
  }

  static const char* run(const MMArgs& a, void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
    auto args = arguments(a);
    if (workspace_bytes != nullptr) {
      *workspace_bytes = Adapter::get_workspace_size(args);
      return nullptr;
    }
    if (Adapter::can_implement(args) != cutlass::Status::kSuccess)
      return "CUTLASS can_implement rejected the problem (alignment or group size)";
    Adapter op;
    if (op.initialize(args, workspace, stream) != cutlass::Status::kSuccess)
      return "CUTLASS initialize failed (workspace or smem attribute)";
    // PDL (launch.h): compiled with CUTLASS_GDC_ENABLED (setup.py), the producer warps wait
    // for the previous kernel before their first global load, and every consumer access
    // to global memory (Stream-K fix-up, epilogue) follows data from them.
    if (op.run(stream, nullptr, pdl_enabled_by_env()) != cutlass::Status::kSuccess)
      return "CUTLASS kernel launch failed";
    return nullptr;
  }
};

// One tile of machete.h's tables for one type configuration.
template <ActType kAct, bool kZeros, int kTile>
const char* mm_tile(const MMArgs& a, void* ws, size_t* ws_bytes, cudaStream_t stream) {
  using ElemAct = cute::conditional_t<kAct == kF16, cutlass::half_t, cutlass::bfloat16_t>;
  using ElemW = cute::conditional_t<kZeros, cutlass::uint4b_t, cutlass::int4b_t>;
  return Gemm<ElemAct, ElemW, kZeros, kTileN[kTile], kTileTokens[kTile], kClusterN[kTile]>::run(a, ws, ws_bytes,
                                                                                                stream);
}

}  // namespace vmp::machete

// A line of a tile unit: VMP_MACHETE_TILE(f16, u4b8, 128x16) instantiates mm_tile for that
// type configuration (tile_types) and that tile, found by name in kScheduleNames. A unit
// holds the tiles of one type configuration and tile group: one tile alone peaks at
// 4.3-4.7 GiB in cicc's front end, and every unit repeats ~45 s of template instantiation
// that its tiles share, so smaller units slow a 2-core build more than they save (README).
#define VMP_MACHETE_TILE(ACT, WTYPE, TILE)                                                                  \
  static_assert(vmp::machete::tile_index(#TILE) < vmp::machete::kNumCutlassTiles,                         \
                #TILE " is not a CUTLASS tile of kScheduleNames (machete.h)");                             \
  template const char* vmp::machete::mm_tile<vmp::machete::tile_types::ACT, vmp::machete::tile_types::WTYPE, \
                                             vmp::machete::tile_index(#TILE)>(                             \
      const vmp::machete::MMArgs&, void*, size_t*, cudaStream_t);
