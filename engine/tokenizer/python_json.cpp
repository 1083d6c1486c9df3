#include "tokenizer/python_json.h"

#include <charconv>
#include <cmath>
#include <unordered_map>

#include <nlohmann/json.hpp>

namespace specd::python_json {
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr size_t kMaxDepth = 1000;

// Builds a Value from nlohmann's SAX events. SAX rather than an ordered_json tree because the
// tree loses what Python keeps: the digits of an integer beyond 64 bits (nlohmann turns it
// into a double, Python keeps an int) and dict semantics for a repeated key.
class Builder {
 public:
  bool null() { return Put(Value{}) != nullptr; }
  bool boolean(bool b) {
    Value v;
    v.kind = Value::Kind::kBool;
    v.boolean = b;
    return Put(std::move(v)) != nullptr;
  }
  bool number_integer(ordered_json::number_integer_t i) { return Int(std::to_string(i)); }
  bool number_unsigned(ordered_json::number_unsigned_t u) { return Int(std::to_string(u)); }
  bool number_float(ordered_json::number_float_t d, const ordered_json::string_t& literal) {
    // An integer literal arrives here when it does not fit 64 bits: Python reads it as an int.
    if (literal.find_first_of(".eE") == std::string::npos) return Int(literal);
    Value v;
    v.kind = Value::Kind::kFloat;
    v.number = d;
    return Put(std::move(v)) != nullptr;
  }
  bool string(ordered_json::string_t& s) {
    Value v;
    v.kind = Value::Kind::kString;
    v.text = std::move(s);
    return Put(std::move(v)) != nullptr;
  }
  bool binary(ordered_json::binary_t&) { return false; }  // not produced by the JSON reader
  bool start_object(size_t) { return Open(Value::Kind::kObject); }
  bool key(ordered_json::string_t& k) {
    Frame& f = stack_.back();
    auto [it, added] = f.index.try_emplace(k, f.value->members.size());
    if (added) f.value->members.push_back(Member{std::move(k), Value{}});
    f.slot = it->second;  // a repeated key: the dict keeps its first position, takes the new value
    return true;
  }
  bool end_object() { return Close(); }
  bool start_array(size_t) { return Open(Value::Kind::kArray); }
  bool end_array() { return Close(); }
  bool parse_error(size_t, const std::string&, const nlohmann::detail::exception& e) {
    error_ = e.what();
    return false;
  }

  Value& root() { return root_; }
  const std::string& error() const { return error_; }

 private:
  struct Frame {
    Value* value;
    std::unordered_map<std::string, size_t> index;  // objects: key -> member
    size_t slot = 0;                                // objects: member the next value goes to
  };

  bool Int(std::string digits) {
    Value v;
    v.kind = Value::Kind::kInt;
    v.text = std::move(digits);
    return Put(std::move(v)) != nullptr;
  }
  // Places `v` in the innermost open container (or as the root). Pointers into a container
  // stay valid while it is open: only the innermost one grows.
  Value* Put(Value v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    Frame& f = stack_.back();
    if (f.value->kind == Value::Kind::kArray) {
      f.value->items.push_back(std::move(v));
      return &f.value->items.back();
    }
    Value& slot = f.value->members[f.slot].value;
    slot = std::move(v);
    return &slot;
  }
  bool Open(Value::Kind kind) {
    if (stack_.size() >= kMaxDepth) {
      error_ = "nested deeper than 1000 levels";
      return false;
    }
    Value v;
    v.kind = kind;
    stack_.push_back(Frame{Put(std::move(v)), {}, 0});
    return true;
  }
  bool Close() {
    stack_.pop_back();
    return true;
  }

  Value root_;
  std::vector<Frame> stack_;
  std::string error_;
};

}  // namespace

StatusOr<Value> Parse(std::string_view json) {
  Builder b;
  if (!ordered_json::sax_parse(json.begin(), json.end(), &b)) return InvalidArgument("{}", b.error());
  return std::move(b.root());
}

void AppendQuoted(std::string_view utf8, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (char ch : utf8) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) {
          *out += "\\u00";
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 15]);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

std::string FloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // to_chars picks the shortest digits that read back to d (nearest to d among those), which is
  // what Python's repr picks (David Gay's dtoa, mode 0); only the layout differs.
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  const std::string_view sci(buf, res.ptr - buf);  // [-]d[.ddd]e(+|-)dd
  const size_t e = sci.find('e');
  std::string out;
  std::string digits;
  for (char c : sci.substr(0, e)) {
    if (c == '-') out.push_back('-');
    else if (c != '.') digits.push_back(c);
  }
  int exp10 = 0;
  std::from_chars(sci.data() + e + (sci[e + 1] == '+' ? 2 : 1), sci.data() + sci.size(), exp10);
  const int n = static_cast<int>(digits.size());
  const int decpt = exp10 + 1;  // value = 0.DIGITS * 10^decpt
  // Python's float_repr_style "short": exponent form when decpt <= -4 or decpt > 16.
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (n > 1) out += "." + digits.substr(1);
    const int x = decpt - 1;
    out += x < 0 ? "e-" : "e+";
    const std::string xs = std::to_string(x < 0 ? -x : x);
    if (xs.size() < 2) out += '0';
    out += xs;
  } else if (decpt <= 0) {
    out += "0." + std::string(-decpt, '0') + digits;
  } else if (decpt >= n) {
    out += digits + std::string(decpt - n, '0') + ".0";
  } else {
    out += digits.substr(0, decpt) + "." + digits.substr(decpt);
  }
  return out;
}

void AppendDumps(const Value& v, std::string* out) {
  switch (v.kind) {
    case Value::Kind::kNull: *out += "null"; return;
    case Value::Kind::kBool: *out += v.boolean ? "true" : "false"; return;
    case Value::Kind::kInt: *out += v.text; return;
    case Value::Kind::kFloat:
      // json.dumps writes float.__repr__ for finite values and these names otherwise.
      if (std::isnan(v.number)) *out += "NaN";
      else if (std::isinf(v.number)) *out += v.number < 0 ? "-Infinity" : "Infinity";
      else *out += FloatRepr(v.number);
      return;
    case Value::Kind::kString: AppendQuoted(v.text, out); return;
    case Value::Kind::kArray:
      out->push_back('[');
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i > 0) *out += ", ";
        AppendDumps(v.items[i], out);
      }
      out->push_back(']');
      return;
    case Value::Kind::kObject:
      out->push_back('{');
      for (size_t i = 0; i < v.members.size(); ++i) {
        if (i > 0) *out += ", ";
        AppendQuoted(v.members[i].key, out);
        *out += ": ";
        AppendDumps(v.members[i].value, out);
      }
      out->push_back('}');
      return;
  }
}

std::string Dumps(const Value& v) {
  std::string out;
  AppendDumps(v, &out);
  return out;
}

std::string Str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kNull: return "None";
    case Value::Kind::kBool: return v.boolean ? "True" : "False";
    case Value::Kind::kInt:
    case Value::Kind::kString: return v.text;
    case Value::Kind::kFloat: return FloatRepr(v.number);
    case Value::Kind::kArray:
    case Value::Kind::kObject: break;
  }
  return Dumps(v);
}

}  // namespace specd::python_json
