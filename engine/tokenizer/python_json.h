// JSON values as Python sees them, for chat templates rendered by transformers: parsed like
// json.loads, written back like json.dumps(x, ensure_ascii=False) (transformers' `tojson`
// filter) or like str(x) (Jinja's `|string` filter). A template that prints a request's JSON
// must print exactly these bytes, or the model sees a prompt it was not trained on.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "util/status.h"

namespace specd::python_json {

struct Member;

// What json.loads returns. Integers keep their decimal digits (Python's int is unbounded, so
// 123456789012345678901234567890 stays an int); objects keep their key order, and a repeated
// key keeps its first position and its last value, as a Python dict built from the pairs does.
struct Value {
  enum class Kind { kNull, kBool, kInt, kFloat, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;         // kBool
  double number = 0;            // kFloat
  std::string text;             // kInt: optional '-' then digits, as str(int) writes them; kString: UTF-8
  std::vector<Value> items;     // kArray
  std::vector<Member> members;  // kObject
};

struct Member {
  std::string key;
  Value value;
};

// kInvalidArgument for text that is not one JSON value. Stricter than json.loads in three
// places, all refused rather than approximated: NaN / Infinity literals, \u escapes of lone
// surrogates, numbers beyond double range (json.loads gives inf, or an int of 310+ digits).
// Nesting deeper than 1000 levels is refused too (Dumps recurses).
StatusOr<Value> Parse(std::string_view json);

// json.dumps(v, ensure_ascii=False): separators ", " and ": ", keys in order, non-ASCII as is.
std::string Dumps(const Value& v);
void AppendDumps(const Value& v, std::string* out);

// json.dumps of a str: quotes, and escapes \" \\ \n \r \t \b \f, other code points below 0x20
// as \u00xx (lowercase hex); everything else (DEL, U+2028, non-ASCII) raw.
void AppendQuoted(std::string_view utf8, std::string* out);

// Python's repr(float) (= str(float)): the shortest digits that read back to `d`, in exponent
// form (1e+16, 1.5e-07) when the decimal exponent is < -4 or >= 16, else positional with at
// least one fractional digit (1.0, 0.0001, 1e+16 but 1000000000000000.0). inf / nan as Python.
std::string FloatRepr(double d);

// Python's str(v) for a scalar, which is Jinja's `|string`: a string as is, True / False,
// None, an int's digits, FloatRepr. Arrays and objects are given as Dumps (str() of a list
// or dict would be its repr; the Qwen templates never ask for it).
std::string Str(const Value& v);

}  // namespace specd::python_json
