#!/usr/bin/env bash
# llama.cpp's own llama-quantize, llama-imatrix and llama-perplexity, from the same llama.cpp as the libllama
# ramp loads through llama-cpp-python, where ramp.llama_tools looks for them.
#
#   build_llama_tools.sh --wheel DIR   builds the pinned llama-cpp-python's wheel into DIR, the tools made by
#                                      its one CMake build (llama.cpp compiled once) and carried in the wheel
#                                      (.ci/llama_tools.cmake); builds nothing when that version is installed
#   build_llama_tools.sh               for a llama-cpp-python installed some other way: the tools alone,
#                                      static, from the llama.cpp its sdist vendors, into
#                                      $RAMP_DATA/llama.cpp-<version>/bin; nothing when its tools are there
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TOOLS="llama-quantize llama-imatrix llama-perplexity"
INSTALLED=$("$PYTHON" -c 'from importlib.metadata import version; print(version("llama_cpp_python"))' 2>/dev/null || true)
if [ "${1:-}" = --wheel ]; then
    OUT=${2:?usage: build_llama_tools.sh [--wheel DIR]}
    VERSION=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)
    if [ "$INSTALLED" = "$VERSION" ]; then
        echo "llama-cpp-python $VERSION is installed"
        exit 0
    fi
else
    [ -n "$INSTALLED" ] || { echo "llama-cpp-python is not installed; run bash .ci/install" >&2; exit 1; }
    VERSION=$INSTALLED
    # the tools ramp.llama_tools would run, and that they load their libraries: llama-perplexity answers
    # --version (llama-quantize has no such option), and the three share their libraries and RUNPATH
    BIN=$("$PYTHON" -c 'from ramp.llama_tools import built_tools_dir; print(built_tools_dir() or "")')
    if [ -n "$BIN" ]; then
        output=$("$BIN/llama-perplexity" --version 2>&1) || {
            echo "$BIN/llama-perplexity does not run ($(tail -n 1 <<<"$output")); delete $BIN and rerun bash .ci/install" >&2
            exit 1
        }
        echo "llama.cpp tools already built in $BIN"
        exit 0
    fi
    BIN=$("$PYTHON" -c 'from ramp.llama_tools import tools_dir; print(tools_dir())')
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SDIST=${LLAMA_CPP_SDIST:-}  # an already downloaded sdist of the same version saves the download
if [ -z "$SDIST" ]; then
    # only llama-cpp-python itself as source: its build requirements (scikit-build-core) come as wheels
    "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$WORK" "llama-cpp-python==$VERSION"
    SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
fi
# The sdist has no git history, so llama.cpp's build would report commit "unknown" (and a build number from
# whatever git finds); the changelog names the vendored commit for each release, which `--version` then
# reports, with build number 0, llama.cpp's "unknown".
COMMIT=$(tar -xzOf "$SDIST" "llama_cpp_python-$VERSION/CHANGELOG.md" |
    sed -n "/^## \[$VERSION\]/,/^## \[/s/.*llama\.cpp@\([0-9a-f]*\).*/\1/p" | head -n 1)
# Portable x86-64 (any AVX2 machine), no HTTPS (LLAMA_OPENSSL replaced LLAMA_CURL), tests, examples or server.
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMIT=${COMMIT:-unknown} -DLLAMA_BUILD_NUMBER=0"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

if [ "${1:-}" = --wheel ]; then
    # llama-cpp-python's libraries without llava/mtmd, which ramp does not load; a CMAKE_ARGS of the caller's
    # comes last, so its options win
    CMAKE_ARGS="-DLLAVA_BUILD=OFF $FLAGS -DCMAKE_PROJECT_llama_cpp_INCLUDE=$PWD/.ci/llama_tools.cmake ${CMAKE_ARGS:-}" \
        "$PYTHON" -m pip wheel -q --no-deps -w "$OUT" "$SDIST"
    echo "built llama-cpp-python $VERSION with $TOOLS (llama.cpp ${COMMIT:-unknown}) into $OUT"
    exit 0
fi
tar -xzf "$SDIST" -C "$WORK"
# Static, so the tools never pick up another libllama/libggml.
# shellcheck disable=SC2086  # FLAGS is a word list
cmake -S "$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF $FLAGS >"$WORK/cmake.log" || { cat "$WORK/cmake.log"; exit 1; }
# shellcheck disable=SC2086  # TOOLS is a word list
cmake --build "$WORK/build" --config Release --target $TOOLS
mkdir -p "$BIN"
for tool in $TOOLS; do
    # copy beside, then rename: an interrupted install never leaves a half-written tool that looks built
    install -m 755 "$WORK/build/bin/$tool" "$BIN/.$tool.tmp"
    mv -f "$BIN/.$tool.tmp" "$BIN/$tool"
done
echo "built $TOOLS (llama.cpp ${COMMIT:-unknown}) into $BIN"
