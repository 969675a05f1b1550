# Included into llama-cpp-python's own CMake project right after its project() call
# (-DCMAKE_PROJECT_llama_cpp_INCLUDE=<this file>, set by .ci/build_llama_tools.sh --wheel), so that its one
# build of llama.cpp also makes llama.cpp's own llama-quantize, llama-imatrix and llama-perplexity, and its
# wheel carries them: the tools in llama_cpp/bin, linked to the wheel's own libllama/libggml in llama_cpp/lib
# and finding them relative to themselves ($ORIGIN), wherever the wheel is installed. Only these three of
# llama.cpp's tools are added: LLAMA_BUILD_TOOLS would compile all of them, mtmd and its CLIs included.

# The tools' CMakeLists name llama.cpp's targets (llama, llama-common), which do not exist yet here; CMake
# resolves the names when it generates the build. Their -impl libraries are static (BUILD_SHARED_LIBS is
# still unset: llama-cpp-python turns it on after this file), so each tool needs only shared libraries the
# wheel has, plus libllama-common installed beside them.
find_package(Threads REQUIRED)  # the tools' CMakeLists link ${CMAKE_THREAD_LIBS_INIT}
set(BUILD_SHARED_LIBS OFF)
foreach(ramp_tool quantize imatrix perplexity)
    add_subdirectory("${CMAKE_CURRENT_SOURCE_DIR}/vendor/llama.cpp/tools/${ramp_tool}" "ramp-llama-tools/${ramp_tool}")
endforeach()
unset(BUILD_SHARED_LIBS)
set_target_properties(llama-quantize llama-imatrix llama-perplexity PROPERTIES INSTALL_RPATH "$ORIGIN/../lib")
install(TARGETS llama-quantize llama-imatrix llama-perplexity RUNTIME DESTINATION "${SKBUILD_PLATLIB_DIR}/llama_cpp/bin")
# llama-common exists once llama-cpp-python has added llama.cpp: installed at the end of its CMakeLists.
# Its libllama is beside it ($ORIGIN): a tool's RUNPATH does not serve its libraries' own dependencies.
cmake_language(DEFER CALL set_target_properties llama-common PROPERTIES INSTALL_RPATH "$ORIGIN")
cmake_language(DEFER CALL install TARGETS llama-common LIBRARY DESTINATION "${SKBUILD_PLATLIB_DIR}/llama_cpp/lib" NAMELINK_SKIP)
