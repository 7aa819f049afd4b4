#!/usr/bin/env bash
# Coverage-guided fuzzing of one of Kiln's parsers with afl++ and SharpFuzz.
#
#   scripts/fuzz.sh TARGET [EXECS]       fuzz TARGET (gguf, llama2c, safetensors, config, tokenizer) for EXECS
#                                        executions (default 1000000), then print afl's counts
#   scripts/fuzz.sh save TARGET          minimize the last campaign's queue (afl-cmin) into tests/Kiln.Fuzz/Corpus/TARGET
#   scripts/fuzz.sh crashes TARGET       replay the last campaign's crashes and hangs through the harness, with the findings
#
# Everything goes under artifacts/fuzz/ (ignored by git): the Release build with Kiln.Runtime (and the tokenizer
# library) instrumented by SharpFuzz, and one afl output folder per target. A finding is any input the harness
# counts as a bug (tests/Kiln.Fuzz/FuzzTarget.cs): an exception other than ModelLoadException, a rejection without file,
# field and byte offset, a run allocating far beyond its input, or one taking seconds. Out-of-memory is made visible
# by a 1 GiB GC heap limit (an OutOfMemoryException is a finding); a run past afl's 5 s timeout is a hang.
# The campaign runs at the lowest CPU priority, on one core: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."

root=$PWD/artifacts/fuzz
bin=$root/bin
tools=$root/tools

usage() { sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage

ensure_tools() {
    if ! command -v afl-fuzz >/dev/null; then
        if [ "$(id -u)" = 0 ]; then apt-get install -y afl++ >/dev/null; else echo "fuzz.sh: afl-fuzz is missing (apt-get install afl++)" >&2; exit 1; fi
    fi
    if [ ! -x "$tools/sharpfuzz" ]; then
        dotnet tool install SharpFuzz.CommandLine --version 2.3.0 --tool-path "$tools" >/dev/null
    fi
}

build() {
    # Rebuilt every time so that the instrumented copy is never stale; instrumenting twice would fail.
    rm -rf "$bin"
    nice -n 19 dotnet build tests/Kiln.Fuzz/Kiln.Fuzz.csproj -c Release -o "$bin" -v quiet -nologo >/dev/null
    for assembly in Kiln.Runtime.dll Microsoft.ML.Tokenizers.dll; do
        "$tools/sharpfuzz" "$bin/$assembly" >/dev/null
    done
}

export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export DOTNET_GCHeapHardLimit=0x40000000 DOTNET_TieredPGO=0

case "$1" in
    save)
        [ $# -eq 2 ] || usage
        target=$2
        out=tests/Kiln.Fuzz/Corpus/$target
        rm -rf "$out" "$root/$target/cmin"
        # afl-cmin wants the program by its path.
        nice -n 19 afl-cmin -i "$root/$target/findings/default/queue" -o "$root/$target/cmin" -t 5000 -m none -- "$(command -v dotnet)" "$bin/Kiln.Fuzz.dll" afl "$target"
        mkdir -p "$out"
        n=0
        for file in "$root/$target/cmin"/*; do cp "$file" "$out/$(printf '%04d' $n)"; n=$((n + 1)); done
        echo "fuzz.sh: saved $n inputs ($(du -sk "$out" | cut -f1) KB) to $out"
        ;;
    crashes)
        [ $# -eq 2 ] || usage
        target=$2
        found=("$root/$target/findings/default/crashes" "$root/$target/findings/default/hangs")
        dotnet "$bin/Kiln.Fuzz.dll" replay "$target" "${found[@]}"
        ;;
    *)
        target=$1
        execs=${2:-1000000}
        ensure_tools
        build
        dotnet "$bin/Kiln.Fuzz.dll" targets | grep -qx "$target" || { echo "fuzz.sh: no target '$target'" >&2; exit 2; }
        work=$root/$target
        rm -rf "$work"
        mkdir -p "$work/in"
        dotnet "$bin/Kiln.Fuzz.dll" seeds "$target" "$work/in"
        if [ -d "tests/Kiln.Fuzz/Corpus/$target" ]; then cp "tests/Kiln.Fuzz/Corpus/$target"/* "$work/in/" 2>/dev/null || true; fi
        echo "fuzz.sh: $target: $(ls "$work/in" | wc -l) seeds, $execs executions, afl output in $work/findings"
        nice -n 19 afl-fuzz -i "$work/in" -o "$work/findings" -t 5000 -m none -E "$execs" -- dotnet "$bin/Kiln.Fuzz.dll" afl "$target" \
            > "$work/afl.log" 2>&1 || { tail -30 "$work/afl.log" >&2; exit 1; }
        stats=$work/findings/default/fuzzer_stats
        grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg|stability)' "$stats"
        ;;
esac
