# bpf_object(NAME SOURCE): compiles bpf/NAME.bpf.c with clang for the BPF target
# and generates NAME.skel.h with bpftool, exposed through the interface target
# NAME_skel. vmlinux.h comes from the build machine's BTF so programs are
# CO-RE relocatable onto other kernels (the netkit VM runs 6.12).
find_program(BPF_CLANG NAMES clang REQUIRED)
find_program(BPFTOOL NAMES bpftool PATHS /usr/sbin /sbin REQUIRED)

set(BPF_GEN_DIR ${CMAKE_BINARY_DIR}/bpfgen)
file(MAKE_DIRECTORY ${BPF_GEN_DIR})

set(SHUNT_VMLINUX_BTF /sys/kernel/btf/vmlinux CACHE FILEPATH "BTF used to generate vmlinux.h")

# Call once in the directory that calls bpf_object() (custom command outputs
# are visible only within their directory).
macro(bpf_vmlinux_header)
  add_custom_command(
    OUTPUT ${BPF_GEN_DIR}/vmlinux.h
    COMMAND ${BPFTOOL} btf dump file ${SHUNT_VMLINUX_BTF} format c > ${BPF_GEN_DIR}/vmlinux.h
    COMMENT "Generating vmlinux.h from ${SHUNT_VMLINUX_BTF}"
    VERBATIM)
  # One target owns the header so parallel skeleton builds never write it
  # twice at once; bpf objects order after it instead of listing the file.
  add_custom_target(vmlinux_h DEPENDS ${BPF_GEN_DIR}/vmlinux.h)
endmacro()

# bpf_tracing.h and the CO-RE helpers name the target architecture as
# __TARGET_ARCH_<arch>; the programs run on the machine they are built for.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i.86)$")
  set(BPF_TARGET_ARCH x86)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64)$")
  set(BPF_TARGET_ARCH arm64)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(ppc64|ppc64le|powerpc64)")
  set(BPF_TARGET_ARCH powerpc)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^s390")
  set(BPF_TARGET_ARCH s390)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^riscv")
  set(BPF_TARGET_ARCH riscv)
else()
  message(FATAL_ERROR "no BPF __TARGET_ARCH_ for processor ${CMAKE_SYSTEM_PROCESSOR}")
endif()

function(bpf_object name source)
  set(obj ${BPF_GEN_DIR}/${name}.bpf.o)
  set(skel ${BPF_GEN_DIR}/${name}.skel.h)
  file(GLOB bpf_headers ${CMAKE_SOURCE_DIR}/bpf/*.h)
  add_custom_command(
    OUTPUT ${obj}
    COMMAND ${BPF_CLANG} -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_${BPF_TARGET_ARCH}
            -I${BPF_GEN_DIR} -I${CMAKE_SOURCE_DIR}/bpf
            -c ${CMAKE_CURRENT_SOURCE_DIR}/${source} -o ${obj}
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${source} ${bpf_headers}
    COMMENT "BPF ${source}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${skel}
    COMMAND ${BPFTOOL} gen skeleton ${obj} name ${name} > ${skel}
    DEPENDS ${obj}
    COMMENT "Skeleton ${name}.skel.h"
    VERBATIM)
  add_custom_target(${name}_skel_gen DEPENDS ${skel})
  add_dependencies(${name}_skel_gen vmlinux_h)
  add_library(${name}_skel INTERFACE)
  add_dependencies(${name}_skel ${name}_skel_gen)
  target_include_directories(${name}_skel INTERFACE ${BPF_GEN_DIR})
endfunction()
