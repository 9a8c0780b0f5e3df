// VMP_CHECK(cond, parts...): TORCH_CHECK with a message assembled here from strings,
// integers, shapes, devices and dtypes. Integers are formatted with std::to_string,
// never through an ostream: on the H200 host (extension built with g++ 13.3 against
// the torch 2.11 wheel), a TORCH_CHECK message that streamed an integer crashed the
// process instead of raising, while string-only messages raised normally.
#pragma once
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <type_traits>

namespace vmp {

inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const c10::Device& v) { s += v.str(); }
inline void append(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  s += ']';
}
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
inline void append(std::string& s, T v) { s += std::to_string(v); }

template <class... A>
std::string cat(const A&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}

}  // namespace vmp

#define VMP_CHECK(cond, ...)                       \
  do {                                             \
    if (C10_UNLIKELY(!(cond))) {                   \
      TORCH_CHECK(false, ::vmp::cat(__VA_ARGS__)); \
    }                                              \
  } while (0)
