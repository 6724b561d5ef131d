# podscope agent image. The BPF objects are compiled in the build stage (CO-RE: one build runs
# on every kernel with BTF); the runtime image has Python, the system libbpf and the package.
#   docker build -t podscope:0.1.0 .
FROM debian:12-slim AS build
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      clang-16 llvm-16 libbpf-dev bpftool make python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# vmlinux.h from the BTF of the build host's kernel: only type layouts used with CO-RE
RUN mkdir -p build && bpftool btf dump file /sys/kernel/btf/vmlinux format c > build/vmlinux.h \
 && arch=$(uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/') \
 && for f in src/podscope/bpf/*.bpf.c; do \
      clang-16 -target bpf -D__TARGET_ARCH_$arch -g -O2 -Wall -Werror -mcpu=v3 \
        -Ibuild -Isrc/podscope/bpf -Isrc/podscope/bpf/include -c "$f" -o "${f%.c}.o" || exit 1; \
    done \
 && python3 -m venv /opt/podscope \
 && /opt/podscope/bin/pip install --no-cache-dir .

FROM debian:12-slim
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 libbpf1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/podscope /opt/podscope
ENV PATH=/opt/podscope/bin:$PATH PYTHONDONTWRITEBYTECODE=1
EXPOSE 9464
ENTRYPOINT ["podscope"]
CMD ["run", "--listen", "0.0.0.0:9464"]
