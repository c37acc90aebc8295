// Copies to memory with non-temporal (streaming) stores, for outputs too large to stay in
// cache: the lines are written whole, so no read-for-ownership of the destination (which
// would double the write traffic) and no eviction of the inputs still being read.
#ifndef TFVERSKY_CSRC_KERNELS_STREAMING_STORE_H_
#define TFVERSKY_CSRC_KERNELS_STREAMING_STORE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace tfversky {

// Outputs from this size on are streamed (smaller ones are read back from cache by the
// next op, so they go through it).
constexpr size_t kStreamingBytes = size_t(16) << 20;

inline void stream_copy(void* dst, const void* src, size_t bytes) {
#if defined(__AVX512F__)
  constexpr size_t kVector = 64;
#elif defined(__AVX__)
  constexpr size_t kVector = 32;
#elif defined(__SSE2__)
  constexpr size_t kVector = 16;
#else
  constexpr size_t kVector = 0;
#endif
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
  if (kVector == 0) {
    std::memcpy(d, s, bytes);
    return;
  }
  const size_t head = std::min(bytes, (kVector - reinterpret_cast<uintptr_t>(d) % kVector) % kVector);
  std::memcpy(d, s, head);
  d += head;
  s += head;
  bytes -= head;
  for (; bytes >= kVector; bytes -= kVector, d += kVector, s += kVector) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
#elif defined(__AVX__)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
#elif defined(__SSE2__)
    _mm_stream_si128(reinterpret_cast<__m128i*>(d),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
#endif
  }
  std::memcpy(d, s, bytes);
}

// Orders the streaming stores before what follows (they are weakly ordered on x86).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace tfversky

#endif  // TFVERSKY_CSRC_KERNELS_STREAMING_STORE_H_
