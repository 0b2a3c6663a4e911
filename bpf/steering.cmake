# Pod steering programs (included by bpf/CMakeLists.txt). Both objects
# declare the same maps (steer_common.h); the loader shares them.
bpf_object(steer_tcx steer_tcx.bpf.c)
bpf_object(steer_netkit steer_netkit.bpf.c)
list(APPEND BPF_SKELETONS steer_tcx_skel steer_netkit_skel)

# The steering loader installs policy routing and reads link kinds through
# shunt_pods' netlink helpers; shunt_bpf is created after this file is
# included, so the link is deferred to the end of the directory. (The
# static libraries reference each other; CMake repeats them at link time.)
cmake_language(DEFER CALL target_link_libraries shunt_bpf PUBLIC shunt_pods)
