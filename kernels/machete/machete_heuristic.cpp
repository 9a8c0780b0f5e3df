// Default schedule (vmp::machete_mm with schedule=None). Table and the measurements
// it came from: docs/machete_heuristic.md.
#include "machete.h"

namespace vmp::machete {

int choose_schedule(int m, int n, int k) {
  (void)k;
  if (m <= 16) return 0;   // 128x16
  if (m <= 32) return 1;   // 128x32
  if (m <= 64) return 2;   // 128x64
  if (m <= 128 || n % 256 != 0) return 3;  // 128x128
  return 4;                // 256x128
}

}  // namespace vmp::machete
