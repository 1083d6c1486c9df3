# specd: multi-stage image. Build stage: the CUDA devel image with the same packages and the same
# steps as scripts/setup.sh + scripts/build.sh; runtime stage: the binaries, their shared
# libraries and the embedded default model (inside the binary), as a non-root user.
#
#   docker build -t specd .
#   docker run --gpus all -p 50051:50051 -p 9400:9400 specd            # embedded default pair
#   docker run --gpus all -v /models:/models:ro specd serve --model /models/target --draft /models/draft --device cuda
ARG CUDA_VERSION=13.0.0
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# The same build the README's commands run (CUDA on: nvcc is in this image), then install.
RUN bash scripts/build.sh -DCMAKE_BUILD_TYPE=Release -DSPECD_TESTS=OFF -DSPECD_BENCH=OFF \
 && mkdir -p /out/bin /out/lib \
 && cp build/server/specd build/client/specd-client /out/bin/ \
 && ldd /out/bin/specd /out/bin/specd-client | awk '/=> \//{print $3}' | sort -u \
      | grep -v -E 'libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libcuda\.so' \
      | xargs -r -I{} cp -L {} /out/lib/

FROM nvidia/cuda:${CUDA_VERSION}-base-${UBUNTU} AS runtime
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/lib/ /usr/local/lib/specd/
ENV LD_LIBRARY_PATH=/usr/local/lib/specd \
    XDG_CACHE_HOME=/var/cache/specd
RUN useradd --system --uid 10001 --home-dir /var/cache/specd --create-home specd
USER specd
EXPOSE 50051 9400
# gRPC health (grpc.health.v1) through the client: exit 0 iff SERVING.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["specd-client", "--address", "127.0.0.1:50051", "health"]
ENTRYPOINT ["specd"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9400"]
