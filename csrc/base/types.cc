// Sizes and names of dtypes, ops and collectives, and which ops apply to which dtypes.
#include "base/types.h"

namespace plexus {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kInt8:
    case DType::kUInt8:
    case DType::kBool:
      return 1;
    default:
      return 0;
  }
}

const char* dtype_name(DType t) {
  static const char* names[] = {"float16", "bfloat16", "float32", "float64", "int8",
                                "uint8",   "int32",    "int64",   "bool"};
  auto i = static_cast<size_t>(t);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "invalid-dtype";
}

const char* op_name(RedOp op) {
  static const char* names[] = {"sum",  "product", "min", "max",         "avg",
                                "band", "bor",     "bxor", "premul_sum", "none"};
  auto i = static_cast<size_t>(op);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "invalid-op";
}

const char* coll_name(CollKind k) {
  static const char* names[] = {"all_reduce", "all_gather", "reduce_scatter", "broadcast",
                                "reduce",     "barrier",    "gather",         "scatter",
                                "all_to_all"};
  auto i = static_cast<size_t>(k);
  return i < sizeof(names) / sizeof(names[0]) ? names[i] : "invalid-collective";
}

bool is_floating(DType t) {
  return t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat32 ||
         t == DType::kFloat64;
}

std::string op_dtype_problem(RedOp op, DType dtype) {
  if (static_cast<size_t>(dtype) >= static_cast<size_t>(DType::kCount)) return "unknown dtype";
  switch (op) {
    case RedOp::kSum:
    case RedOp::kProduct:
    case RedOp::kMin:
    case RedOp::kMax:
      return "";
    case RedOp::kAvg:
    case RedOp::kPremulSum:
      if (!is_floating(dtype))
        return std::string(op_name(op)) + " needs a floating-point dtype, got " + dtype_name(dtype);
      return "";
    case RedOp::kBand:
    case RedOp::kBor:
    case RedOp::kBxor:
      if (is_floating(dtype))
        return std::string(op_name(op)) + " needs an integer or bool dtype, got " +
               dtype_name(dtype);
      return "";
    default:
      return "unknown reduction op";
  }
}

}  // namespace plexus
