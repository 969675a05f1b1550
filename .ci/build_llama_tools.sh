#!/usr/bin/env bash
# Builds llama.cpp's own llama-quantize, llama-imatrix and llama-perplexity from the llama.cpp source that the
# installed llama-cpp-python's sdist vendors, so the tools and the libllama ramp loads are one llama.cpp.
# Installs them where ramp.llama_tools looks ($RAMP_DATA/llama.cpp-<version>/bin); does nothing when they are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TOOLS="llama-quantize llama-imatrix llama-perplexity"
VERSION=$("$PYTHON" -c 'from importlib.metadata import version; print(version("llama_cpp_python"))')
BIN=$("$PYTHON" -c 'from ramp.llama_tools import tools_dir; print(tools_dir())')
missing=0
for tool in $TOOLS; do [ -x "$BIN/$tool" ] || missing=1; done
if [ "$missing" = 0 ]; then
    echo "llama.cpp tools already built in $BIN"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SDIST=${LLAMA_CPP_SDIST:-}  # an already downloaded sdist of the same version saves the download
if [ -z "$SDIST" ]; then
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
    SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
fi
tar -xzf "$SDIST" -C "$WORK"
ROOT="$WORK/llama_cpp_python-$VERSION"
# The sdist has no git history, so llama.cpp's build would report commit "unknown" (and a build number from
# whatever git finds); the changelog names the vendored commit for each release, which `--version` then
# reports, with build number 0, llama.cpp's "unknown".
COMMIT=$(sed -n "/^## \[$VERSION\]/,/^## \[/s/.*llama\.cpp@\([0-9a-f]*\).*/\1/p" "$ROOT/CHANGELOG.md" | head -n 1)
# Static, so the tools never pick up another libllama/libggml; the same portable x86-64 flags as the
# llama-cpp-python build in .ci/install; no HTTPS (LLAMA_OPENSSL replaced LLAMA_CURL), tests, examples or server.
cmake -S "$ROOT/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_COMMIT="${COMMIT:-unknown}" -DLLAMA_BUILD_NUMBER=0 >"$WORK/cmake.log" || { cat "$WORK/cmake.log"; exit 1; }
# shellcheck disable=SC2086  # TOOLS is a word list
cmake --build "$WORK/build" --config Release --target $TOOLS -j"$(nproc)"
mkdir -p "$BIN"
for tool in $TOOLS; do
    # copy beside, then rename: an interrupted install never leaves a half-written tool that looks built
    install -m 755 "$WORK/build/bin/$tool" "$BIN/.$tool.tmp"
    mv -f "$BIN/.$tool.tmp" "$BIN/$tool"
done
echo "built $TOOLS (llama.cpp ${COMMIT:-unknown}) into $BIN"
