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

StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& device, const BackendOptions& options) {
  std::unique_ptr<Backend> be;
  if (device == "cpu") {
    be = MakeCpuBackend();
    be->SetOptions(options);
    return be;
  }
  if (device == "cuda") {
#ifdef SPECD_HAVE_CUDA
    SPECD_ASSIGN_OR_RETURN(be, MakeCudaBackend());
    be->SetOptions(options);
    return be;
#else
    return Unimplemented("this build of specd has no CUDA backend (configure with -DSPECD_CUDA=ON)");
#endif
  }
  return InvalidArgument("unknown device '{}' (expected cpu or cuda)", device);
}

}  // namespace specd
