#!/usr/bin/env bash
# llama.cpp's own llama-quantize, llama-imatrix and llama-perplexity, from the same llama.cpp as the libllama
# ramp loads through llama-cpp-python, installed where ramp.llama_tools looks ($RAMP_DATA/llama.cpp-<version>/bin).
# Without llama-cpp-python installed: one CMake build makes both, llama-cpp-python's wheel and the tools
# (llama.cpp compiled once), and the tools link the wheel's own libllama/libggml. With llama-cpp-python already
# installed some other way: the tools alone, static, from the vendored source of its sdist. Does nothing when
# both are there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TOOLS="llama-quantize llama-imatrix llama-perplexity"
# the pinned version, or the installed one (which the tools must match)
VERSION=$("$PYTHON" -c 'from importlib.metadata import version; print(version("llama_cpp_python"))' 2>/dev/null) \
    && INSTALLED=1 || { INSTALLED=0; VERSION=$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml); }
BIN="$("$PYTHON" -c 'from ramp.files import data_dir; print(data_dir())')/llama.cpp-$VERSION/bin"
missing=0
for tool in $TOOLS; do [ -x "$BIN/$tool" ] || missing=1; done
if [ "$missing" = 0 ] && [ "$INSTALLED" = 1 ]; then
    echo "llama-cpp-python $VERSION and llama.cpp tools already built in $BIN"
    exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SDIST=${LLAMA_CPP_SDIST:-}  # an already downloaded sdist of the same version saves the download
if [ -z "$SDIST" ]; then
    "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-python -d "$WORK" "llama-cpp-python==$VERSION"
    SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
fi
tar -xzf "$SDIST" -C "$WORK"
ROOT="$WORK/llama_cpp_python-$VERSION"
# The sdist has no git history, so llama.cpp's build would report commit "unknown" (and a build number from
# whatever git finds); the changelog names the vendored commit for each release, which `--version` then
# reports, with build number 0, llama.cpp's "unknown".
COMMIT=$(sed -n "/^## \[$VERSION\]/,/^## \[/s/.*llama\.cpp@\([0-9a-f]*\).*/\1/p" "$ROOT/CHANGELOG.md" | head -n 1)
# Portable x86-64 (any AVX2 machine), no HTTPS (LLAMA_OPENSSL replaced LLAMA_CURL), tests, examples or server.
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMIT=${COMMIT:-unknown} -DLLAMA_BUILD_NUMBER=0"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
mkdir -p "$BIN"

install_files() {  # from the build's bin folder into $BIN
    for file in "$@"; do
        # copy beside, then rename: an interrupted install never leaves a half-written tool that looks built
        cp -P "$WORK/build/bin/$file" "$BIN/.$file.tmp"
        mv -f "$BIN/.$file.tmp" "$BIN/$file"
    done
}

one_build() {
    # llama-cpp-python's own CMake build with llama.cpp's tools switched on, limited to the wheel's libraries and
    # the three tools (not every tool llama.cpp has), its build folder kept to take the tools from. llama.cpp
    # builds shared there: each tool finds its own helper libraries (llama-common, the tool's -impl) beside it
    # ($ORIGIN) and libllama/libggml in the installed wheel, the very files ramp loads.
    local platlib targets helpers
    platlib=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    # mtmd too: llama.cpp installs it unconditionally once its tools are on, and a target installed but not
    # built fails the install
    targets="llama;ggml;ggml-base;ggml-cpu;mtmd;${TOOLS// /;}"
    # --no-cache-dir: a wheel pip cached from another build would come without the tools
    CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON $FLAGS -DCMAKE_BUILD_RPATH=\$ORIGIN;$platlib/llama_cpp/lib" \
        "$PYTHON" -m pip install -q --no-cache-dir --config-settings=build-dir="$WORK/build" \
        --config-settings=build.targets="$targets" "$SDIST" || return 1
    helpers=$(cd "$WORK/build/bin" && ls lib*.so* | grep -v '^libllama\.so\|^libggml') || return 1
    # the helper libraries first, the tools last: an interrupted copy never leaves a tool without its libraries
    # shellcheck disable=SC2086  # word lists
    install_files $helpers $TOOLS || return 1
    for tool in $TOOLS; do "$BIN/$tool" --version >/dev/null 2>&1 || return 1; done
}

static_tools() {
    # Static, so the tools never pick up another libllama/libggml; the same flags as the wheel's build.
    rm -rf "$WORK/build"
    # shellcheck disable=SC2086  # FLAGS is a word list
    cmake -S "$ROOT/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        $FLAGS >"$WORK/cmake.log" || { cat "$WORK/cmake.log"; exit 1; }
    # shellcheck disable=SC2086  # TOOLS is a word list
    cmake --build "$WORK/build" --config Release --target $TOOLS -j"$CMAKE_BUILD_PARALLEL_LEVEL"
    # shellcheck disable=SC2086  # TOOLS is a word list
    install_files $TOOLS
}

if [ "$INSTALLED" = 0 ] && ! one_build; then
    # a build that cannot make the tools in one go (another llama.cpp layout, an older scikit-build-core) still
    # installs: the wheel on its own, then the tools separately
    echo "llama.cpp's tools did not come out of llama-cpp-python's build; building them separately" >&2
    for tool in $TOOLS; do rm -f "$BIN/$tool"; done
    CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF $FLAGS" "$PYTHON" -m pip install -q --no-cache-dir "$SDIST"
    INSTALLED=1
fi
if [ "$INSTALLED" = 1 ]; then
    static_tools
fi
echo "built $TOOLS (llama.cpp ${COMMIT:-unknown}) into $BIN"
