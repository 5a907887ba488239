// Element types, reduction operators and collective kinds shared by every layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace plexus {

enum class DType : uint8_t {
  kFloat16 = 0,
  kBFloat16,
  kFloat32,
  kFloat64,
  kInt8,
  kUInt8,
  kInt32,
  kInt64,
  kBool,
  kCount
};

enum class RedOp : uint8_t {
  kSum = 0,
  kProduct,
  kMin,
  kMax,
  kAvg,
  kBand,
  kBor,
  kBxor,
  kPremulSum,
  kNone,  // collectives that do not reduce
  kCount
};

enum class CollKind : uint8_t {
  kAllReduce = 0,
  kAllGather,
  kReduceScatter,
  kBroadcast,
  kReduce,
  kBarrier,
  kGather,
  kScatter,
  kAllToAll,
  kCount
};

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* op_name(RedOp op);
const char* coll_name(CollKind k);

bool is_floating(DType t);

// Empty when `op` can reduce `dtype`; otherwise why not (for a TypeError).
std::string op_dtype_problem(RedOp op, DType dtype);

}  // namespace plexus
