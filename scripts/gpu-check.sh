#!/usr/bin/env bash
# The one prepared GPU check (issue 12).
#   scripts/gpu-check.sh prepare   here: publishes the bench self-contained into .gpu/ (ignored by git) with a copy of
#                                  the PyTorch peer; the device call carries .gpu.
#   scripts/gpu-check.sh device    on the GPU machine: gpu-agree on CUDA, the torch peer, gpu-compare on the 110m F32
#                                  and 1.1B-shape F16 synthetic models (made there). Logs and JSON under $OUT; every
#                                  part runs even when an earlier one fails; a summary is printed last.
# Without a CUDA device, `device` stops with a message (KILN_GPU_CHECK_CPU=1 runs its gpu-agree on ILGPU's CPU
# accelerator instead, to try the script itself anywhere).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

prepare() {
    set -e
    local exclude
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")" .gpu
    grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
    local publish=/tmp/kiln-gpu-publish
    rm -rf "$publish"
    # KilnGpuCheck leaves llama.cpp's native libraries out: the gpu-* commands never call them.
    dotnet publish samples/Bench/Bench.csproj -c Release -r linux-x64 --self-contained -p:KilnGpuCheck=true -o "$publish/bench" -nologo -v quiet
    tar cJf .gpu/bench.tar.xz -C "$publish" bench
    local shared=${KILN_SHARED:-$root/../shared}
    [ -f "$shared/gpu/torch_llama.py" ] || shared=/work/shared
    cp "$shared/gpu/torch_llama.py" .gpu/torch_llama.py
    ls -l .gpu
    du -sh .gpu
}

device() {
    local out=${OUT:-$root/.gpu/out}
    mkdir -p "$out"
    exec > >(tee "$out/gpu-check.log") 2>&1
    local cpu_only=${KILN_GPU_CHECK_CPU:-0}
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        if [ "$cpu_only" != 1 ]; then
            echo "gpu-check: no CUDA device here (nvidia-smi finds none): run 'scripts/gpu-check.sh device' on the GPU machine."
            exit 3
        fi
        echo "gpu-check: no CUDA device; KILN_GPU_CHECK_CPU=1, so gpu-agree runs on ILGPU's CPU accelerator only."
    else
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    fi
    [ -f .gpu/bench.tar.xz ] || { echo "gpu-check: .gpu/bench.tar.xz is missing: run 'scripts/gpu-check.sh prepare' first and carry .gpu."; exit 4; }
    local app=/tmp/kiln-gpu
    rm -rf "$app" && mkdir -p "$app/cuda"
    tar xJf .gpu/bench.tar.xz -C "$app"
    [ -e /usr/local/nvidia/lib64/libcuda.so.1 ] && ln -sf /usr/local/nvidia/lib64/libcuda.so.1 "$app/cuda/libcuda.so"
    export LD_LIBRARY_PATH="$app/cuda:${LD_LIBRARY_PATH:-}" DOTNET_gcServer=0 PYTHONUNBUFFERED=1
    local bench="$app/bench/Bench" status=()
    step() { # name, timeout, command...
        local name=$1 limit=$2
        shift 2
        local start=$SECONDS
        echo "== $name (limit ${limit}s)"
        timeout "$limit" "$@"
        local rc=$?
        echo "== $name: exit $rc after $((SECONDS - start))s"
        status+=("$name=$rc")
    }

    if [ "$cpu_only" = 1 ]; then
        step agree-stories260K-cpu 120 "$bench" gpu-agree --accelerator cpu --model models/stories260K.gguf --json "$out/agree-stories260K.json"
    else
        step agree-stories260K 90 "$bench" gpu-agree --accelerator cuda --model models/stories260K.gguf --json "$out/agree-stories260K.json"
        # The synthetic models are made on the CPU while the peer runs on the GPU.
        ( timeout 100 "$bench" make-model --shape 110m --format f32 --logit-scale 1 --out /tmp/kiln-110m-f32.gguf >"$out/make-models.log" 2>&1 &&
          timeout 150 "$bench" make-model --shape 1.1b --format f16 --logit-scale 1 --out /tmp/kiln-1.1b-f16.gguf >>"$out/make-models.log" 2>&1 ) &
        local makers=$!
        cp .gpu/torch_llama.py /tmp/torch_llama.py
        step torch-peer 170 env OUT="$out" python3 /tmp/torch_llama.py
        wait "$makers"
        echo "== make-models: exit $?"; cat "$out/make-models.log"
        step agree-110m 90 "$bench" gpu-agree --accelerator cuda --model /tmp/kiln-110m-f32.gguf --json "$out/agree-110m-f32.json"
        step compare-110m 120 "$bench" gpu-compare --model /tmp/kiln-110m-f32.gguf --torch "$out/torch_llama.json" --json "$out/compare-110m-f32.json"
        step compare-1.1b 150 "$bench" gpu-compare --model /tmp/kiln-1.1b-f16.gguf --torch "$out/torch_llama.json" --runs 3 --json "$out/compare-1.1b-f16.json"
    fi

    echo
    echo "== summary: ${status[*]}"
    for f in "$out"/agree-*.json "$out"/compare-*.json; do
        [ -f "$f" ] || continue
        echo "-- $(basename "$f")"
        tr -d '\n' <"$f" | tr -s ' '
        echo
    done
}

case "${1:-}" in
    prepare) prepare ;;
    device) device ;;
    *) echo "usage: scripts/gpu-check.sh prepare|device" >&2; exit 2 ;;
esac
