# Sourced by the GPU scripts that run the daemon from the bundle (scripts/make_gpu_bundle.sh packs
# it; carry `.bundle`): sets $specd and $client. SPECD (and SPECD_CLIENT) name binaries directly
# instead (a dry run on the build tree); otherwise the bundle is unpacked once into BUNDLE_DIR
# (/tmp/specd-bundle) and its libraries, then CUDA's, go on LD_LIBRARY_PATH.
if [ -n "${SPECD:-}" ]; then
  specd=$SPECD
  client=${SPECD_CLIENT:?SPECD_CLIENT too}
else
  _bundle_dir=${BUNDLE_DIR:-/tmp/specd-bundle}
  if [ ! -x "$_bundle_dir/bin/specd" ]; then
    rm -rf "$_bundle_dir" && mkdir -p "$_bundle_dir" && tar -C "$_bundle_dir" -xJf "${BUNDLE:-.bundle/specd-gpu.tar.xz}" ||
      { echo "cannot unpack ${BUNDLE:-.bundle/specd-gpu.tar.xz} (run scripts/make_gpu_bundle.sh, carry .bundle)" >&2; exit 1; }
  fi
  export LD_LIBRARY_PATH=$_bundle_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  for _d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$_d" ] && LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$_d
  done
  specd=$_bundle_dir/bin/specd
  client=$_bundle_dir/bin/specd-client
fi
