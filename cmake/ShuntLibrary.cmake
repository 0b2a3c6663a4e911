# shunt_library(NAME [SOURCES extra...] [LINK deps...]): the static library of
# one source folder (docs/architecture.md, "Code map"): every *.cpp directly in
# the calling directory, the repository root as include base (so includes read
# "proxy/inspect/http_parser.h"), the project warnings. A subfolder is its own
# library; LINK names only libraries below this one.
function(shunt_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LINK" ${ARGN})
  file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  add_library(${name} STATIC ${sources} ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${CMAKE_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_LINK})
  target_compile_options(${name} PRIVATE ${SHUNT_WARNINGS})
endfunction()
