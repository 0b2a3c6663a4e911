// Owned<T, Destroy>: the one way bpf/ owns a libbpf object (a generated
// skeleton, a ring buffer): a unique_ptr whose deleter is the object's own
// destroy function, so there is no hand-written destructor to keep in step
// with the members. Use it where T is complete (the .cpp that includes the
// skeleton header); a class whose header only forward-declares T keeps its
// owners in a struct defined in its .cpp.
//
// Members are destroyed in reverse order of declaration: declare what uses a
// skeleton's maps (a ring buffer, an attachment) after the skeleton.
#pragma once

#include <memory>

namespace shunt::bpf {

template <auto Destroy>
struct Destroyer {
  template <class T>
  void operator()(T* p) const {
    Destroy(p);
  }
};

template <class T, auto Destroy>
using Owned = std::unique_ptr<T, Destroyer<Destroy>>;

}  // namespace shunt::bpf
