#include "runtime/backend.h"

namespace specd {

#ifdef SPECD_HAVE_CUDA
StatusOr<std::unique_ptr<Backend>> MakeCudaBackend();
int CudaDeviceCountImpl();
#endif

int CudaDeviceCount() {
#ifdef SPECD_HAVE_CUDA
  return CudaDeviceCountImpl();
#else
  return 0;
#endif
}

StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device) {
  if (device == "cpu") return MakeCpuBackend();
  if (device == "cuda") {
#ifdef SPECD_HAVE_CUDA
    return MakeCudaBackend();
#else
    return Unimplemented("this build of specd has no CUDA backend (configure with -DSPECD_CUDA=ON)");
#endif
  }
  return InvalidArgument("unknown device '{}' (expected cpu or cuda)", device);
}

}  // namespace specd
