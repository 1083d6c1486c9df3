// python_json against Python 3.11: every expected string below was printed by python3 with
// json.dumps(x, ensure_ascii=False), repr(float) or str(x) on the same input.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "tokenizer/python_json.h"

namespace specd::python_json {
namespace {

std::string Roundtrip(std::string_view json) {
  auto v = Parse(json);
  EXPECT_TRUE(v.ok()) << json << ": " << v.status().ToString();
  return v.ok() ? Dumps(*v) : "";
}

TEST(PythonJson, FloatReprMatchesPython) {
  // {C++ double literal, repr(float(literal)) from Python}.
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "0.0"},
      {-0.0, "-0.0"},
      {1.0, "1.0"},
      {0.1, "0.1"},
      {0.2, "0.2"},
      {0.30000000000000004, "0.30000000000000004"},
      {1e16, "1e+16"},
      {1e15, "1000000000000000.0"},
      {9999999999999998.0, "9999999999999998.0"},
      {1e-05, "1e-05"},
      {0.0001, "0.0001"},
      {0.00012345, "0.00012345"},
      {1.5e-07, "1.5e-07"},
      {1e+20, "1e+20"},
      {1e22, "1e+22"},
      {1e100, "1e+100"},
      {1e-100, "1e-100"},
      {5e-324, "5e-324"},
      {1.7976931348623157e308, "1.7976931348623157e+308"},
      {2.2250738585072014e-308, "2.2250738585072014e-308"},
      {123456789.123, "123456789.123"},
      {3.141592653589793, "3.141592653589793"},
      {-2.5, "-2.5"},
      {100.0, "100.0"},
      {12345678901234567.0, "1.2345678901234568e+16"},
      {1234567890123456.7, "1234567890123456.8"},
      {0.001, "0.001"},
      {2e-05, "2e-05"},
      {4.35, "4.35"},
      {1.0 / 3, "0.3333333333333333"},
  };
  for (const auto& [d, want] : cases) EXPECT_EQ(FloatRepr(d), want) << want;
}

TEST(PythonJson, StringEscapesMatchPython) {
  // json.dumps("q\"b\\n\nr\rt\tb\bf\f\x01\x1f\x7f é 😀 \u2028 </x>", ensure_ascii=False)
  std::string out;
  AppendQuoted("q\"b\\n\nr\rt\tb\bf\f\x01\x1f\x7f \xC3\xA9 \xF0\x9F\x98\x80 \xE2\x80\xA8 </x>", &out);
  EXPECT_EQ(out, "\"q\\\"b\\\\n\\nr\\rt\\tb\\bf\\f\\u0001\\u001f\x7f \xC3\xA9 \xF0\x9F\x98\x80 \xE2\x80\xA8 </x>\"");
  out.clear();
  AppendQuoted(std::string("\0", 1), &out);
  EXPECT_EQ(out, "\"\\u0000\"");
}

TEST(PythonJson, DumpsKeepsKeyOrderAndDictSemantics) {
  // json.dumps(json.loads(TEXT), ensure_ascii=False): a repeated key keeps its first position and
  // its last value; integers stay integers however long; escapes decode to raw characters.
  EXPECT_EQ(Roundtrip(R"({"b":1,"a":[1,2.50,{"c":null,"d":true}],"b":3, "e": {}, "f": [], "g": 1E2, "h": -0,)"
                      R"( "i": 123456789012345678901234567890, "j": "\u00e9\ud83d\ude00\/\u0000"})"),
            "{\"b\": 3, \"a\": [1, 2.5, {\"c\": null, \"d\": true}], \"e\": {}, \"f\": [], \"g\": 100.0, \"h\": 0, "
            "\"i\": 123456789012345678901234567890, \"j\": \"\xC3\xA9\xF0\x9F\x98\x80/\\u0000\"}");
  EXPECT_EQ(Roundtrip("  [ ]  "), "[]");
  EXPECT_EQ(Roundtrip("-98765432109876543210"), "-98765432109876543210");
  EXPECT_EQ(Roundtrip("18446744073709551615"), "18446744073709551615");
  EXPECT_EQ(Roundtrip("-9223372036854775808"), "-9223372036854775808");
  EXPECT_EQ(Roundtrip("\"\xE5\x90\x8D\""), "\"\xE5\x90\x8D\"");
  const std::string digits300 = "1" + std::string(299, '7');
  EXPECT_EQ(Roundtrip(digits300), digits300);
  EXPECT_EQ(Roundtrip(R"({"a": {"b": {"a": 1, "a": {"z": 0.1}}}})"), R"({"a": {"b": {"a": {"z": 0.1}}}})");
}

TEST(PythonJson, StrMatchesPython) {
  // [str(x) for x in [True, False, None, 42, -7, 1.0, 1e20, 0.0001, 1e-05, "s"]]
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"true", "True"},
      {"false", "False"},
      {"null", "None"},
      {"42", "42"},
      {"-7", "-7"},
      {"1.0", "1.0"},
      {"1e20", "1e+20"},
      {"0.0001", "0.0001"},
      {"1e-5", "1e-05"},
      {"\"s\"", "s"},
      {"\"\"", ""},
      {"\"a\\nb\"", "a\nb"},
      {"[1, {\"a\": 2}]", "[1, {\"a\": 2}]"},
  };
  for (const auto& [json, want] : cases) {
    auto v = Parse(json);
    ASSERT_TRUE(v.ok()) << json;
    EXPECT_EQ(Str(*v), want) << json;
  }
}

TEST(PythonJson, RefusesWhatPythonWouldReadDifferentlyOrNotAtAll) {
  for (std::string_view bad : {"", "{", "{\"a\":}", "[1,]", "NaN", "Infinity", "-Infinity", "1e400", "\"\\ud800\"",
                               "\"\xFF\"", "{} x", "'a'", "01"}) {
    auto v = Parse(bad);
    EXPECT_EQ(v.status().code(), StatusCode::kInvalidArgument) << bad;
  }
  // An integer too long for a double: Python keeps it, nlohmann cannot read it.
  EXPECT_EQ(Parse("1" + std::string(400, '0')).status().code(), StatusCode::kInvalidArgument);
  // Nesting is bounded so that Dumps (recursive) cannot exhaust the stack.
  EXPECT_TRUE(Parse(std::string(1000, '[') + std::string(1000, ']')).ok());
  auto deep = Parse(std::string(1001, '[') + std::string(1001, ']'));
  ASSERT_FALSE(deep.ok());
  EXPECT_NE(deep.status().message().find("1000"), std::string::npos);
}

}  // namespace
}  // namespace specd::python_json
