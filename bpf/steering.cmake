# Pod steering programs (included by bpf/CMakeLists.txt). Both objects
# declare the same maps (steer_common.h); the loader shares them.
bpf_object(steer_tcx steer_tcx.bpf.c)
bpf_object(steer_netkit steer_netkit.bpf.c)
list(APPEND BPF_SKELETONS steer_tcx_skel steer_netkit_skel)

