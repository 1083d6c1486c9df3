// ChatOutputParser: hand-written expected splits of Qwen3.5 completions, the same result for every
// chunking, the hold-back bound, and tool JSON validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "tokenizer/chat_output_parser.h"
#include "tokenizer/utf8.h"

namespace specd {
namespace {

const char* const kWeatherTool = R"({"type": "function", "function": {"name": "get_weather", "parameters": {
  "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}})";

const char* const kTypedTool = R"({"type": "function", "function": {"name": "typed", "parameters": {
  "type": "object", "properties": {
    "s": {"type": "string"}, "s_null": {"type": "string"},
    "i": {"type": "integer"}, "i_bad": {"type": "integer"}, "i_big": {"type": "integer"},
    "n_int": {"type": "number"}, "n": {"type": "number"}, "n_bad": {"type": "number"}, "n_space": {"type": "number"},
    "b": {"type": "boolean"}, "b_bad": {"type": "boolean"},
    "o": {"type": "object"}, "o_bad": {"type": "object"}, "a": {"type": "array"},
    "opt": {"type": ["null", "integer"]}, "any": {"anyOf": [{"type": "null"}, {"type": "number"}]},
    "u": {"description": "no type"}}}}})";

// What a whole run produced. `events` is the order of kinds: 'R' reasoning, 'C' content (adjacent
// pieces of one kind merged), 'T' one per tool call.
struct Result {
  std::string reasoning;
  std::string content;
  std::vector<ParsedToolCall> calls;
  std::string events;
  bool operator==(const Result&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Result& r) {
  os << "{reasoning=" << testing::PrintToString(r.reasoning) << " content=" << testing::PrintToString(r.content)
     << " events=" << r.events << " calls=[";
  for (const auto& c : r.calls) os << c.name << " " << c.arguments_json << "; ";
  return os << "]}";
}

void AddEvent(Result& r, char kind) {
  if (kind != 'T' && !r.events.empty() && r.events.back() == kind) return;
  r.events += kind;
}

void Append(Result& r, const ChatOutputDelta& d) {
  ASSERT_EQ(d.tool_calls.size(), d.tool_call_content_offsets.size());
  if (!d.reasoning.empty()) {
    AddEvent(r, 'R');
    r.reasoning += d.reasoning;
  }
  size_t done = 0;
  for (size_t i = 0; i < d.tool_calls.size(); ++i) {
    const size_t at = d.tool_call_content_offsets[i];
    ASSERT_GE(at, done);
    ASSERT_LE(at, d.content.size());
    if (at > done) AddEvent(r, 'C');
    AddEvent(r, 'T');
    done = at;
  }
  if (d.content.size() > done) AddEvent(r, 'C');
  r.content += d.content;
  r.calls.insert(r.calls.end(), d.tool_calls.begin(), d.tool_calls.end());
  EXPECT_EQ(d.empty(), d.reasoning.empty() && d.content.empty() && d.tool_calls.empty());
}

ChatOutputOptions Options(bool in_reasoning, bool tools) {
  ChatOutputOptions o;
  o.starts_in_reasoning = in_reasoning;
  o.parse_tool_calls = tools;
  if (tools) o.tools_json = {kWeatherTool, kTypedTool};
  return o;
}

// Feeds `text` cut at `cuts` (sorted positions). With valid UTF-8 input, no delta may cut a character.
Result Parse(const ChatOutputOptions& opt, std::string_view text, const std::vector<size_t>& cuts) {
  auto p = ChatOutputParser::Create(opt);
  EXPECT_TRUE(p.ok()) << p.status().message();
  if (!p.ok()) return {};
  const bool valid = !utf8::FirstInvalidByte(text).has_value();
  Result r;
  auto take = [&](const ChatOutputDelta& d) {
    if (valid) {
      EXPECT_FALSE(utf8::FirstInvalidByte(d.reasoning).has_value()) << testing::PrintToString(d.reasoning);
      EXPECT_FALSE(utf8::FirstInvalidByte(d.content).has_value()) << testing::PrintToString(d.content);
    }
    Append(r, d);
  };
  size_t prev = 0;
  for (size_t cut : cuts) {
    take(p->Feed(text.substr(prev, cut - prev)));
    prev = cut;
  }
  take(p->Feed(text.substr(prev)));
  take(p->Finish());
  return r;
}

struct Case {
  const char* name;
  bool in_reasoning;  // thinking on: the prompt ended with "<think>\n"
  bool tools;         // parse_tool_calls with the weather and typed tools
  std::string text;
  Result want;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

ParsedToolCall Call(const char* name, const char* args) { return {name, args}; }

std::vector<Case> Cases() {
  const std::string paris_block =
      "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>";
  return {
      {"ReasoningThenContent",
       true,
       false,
       "Let me think.\nOK.\n</think>\n\nThe answer is 4.",
       {"Let me think.\nOK.", "The answer is 4.", {}, "RC"}},
      {"ReasoningOnly", true, false, "Still thinking\n\n", {"Still thinking\n\n", "", {}, "R"}},
      {"ReasoningEndsInTagPrefix", true, false, "thinking... </thi", {"thinking... </thi", "", {}, "R"}},
      {"EmptyReasoning", true, false, "\n</think>\n\nHi", {"", "Hi", {}, "C"}},
      {"AtMostThreeNewlinesDropped", true, false, "r\n\n\n\n\n</think>c", {"r\n\n", "c", {}, "RC"}},
      {"ThinkTagPrefixThenNot",
       true,
       false,
       "x </thi then not\n</think>\nc </thin <think>",
       {"x </thi then not", "c </thin <think>", {}, "RC"}},
      {"SecondThinkCloseIsContent", true, false, "a</think>b</think>c", {"a", "b</think>c", {}, "RC"}},
      {"ThinkingOffContent", false, false, "Hello, world!\n\nBye.", {"", "Hello, world!\n\nBye.", {}, "C"}},
      {"ThinkingOffKeepsWhitespace", false, false, "\n\n  indented\n", {"", "\n\n  indented\n", {}, "C"}},
      {"LeadingThinkTag", false, false, "<think>\nhmm\n</think>\n\nHi", {"hmm", "Hi", {}, "RC"}},
      {"LeadingThinkTagUnclosed", false, false, "<think>\nhmm", {"hmm", "", {}, "R"}},
      {"ThinkTagNotAtStart", false, false, " <think>x</think>y", {"", " <think>x</think>y", {}, "C"}},
      {"ThinkTagPrefixOnly", false, false, "<thin", {"", "<thin", {}, "C"}},
      {"MultiByteUtf8",
       true,
       false,
       "思考中…🤔\n</think>\n\nRéponse: ça va 👍",
       {"思考中…🤔", "Réponse: ça va 👍", {}, "RC"}},
      {"OneToolCall",
       true,
       true,
       "I should check the weather.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
       "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
       {"I should check the weather.", "", {Call("get_weather", R"({"city":"Paris","days":3})")}, "RT"}},
      {"ContentThenTwoCalls",
       false,
       true,
       "Let me check both.\n\n" + paris_block +
           "\n<tool_call>\n<function=get_weather>\n<parameter=days>\n-2\n</parameter>\n<parameter=city>\n"
           "Tōkyō 東京 \"quoted\" C:\\dir\ttab 😀\n</parameter>\n</function>\n</tool_call>",
       {"",
        "Let me check both.\n\n\n",
        {Call("get_weather", R"({"city":"Paris"})"),
         Call("get_weather", R"({"days":-2,"city":"Tōkyō 東京 \"quoted\" C:\\dir\ttab 😀"})")},
        "CTCT"}},
      {"ContentAfterCall",
       false,
       true,
       paris_block + "\nDone.",
       {"", "\nDone.", {Call("get_weather", R"({"city":"Paris"})")}, "TC"}},
      {"EveryScalarType",
       false,
       true,
       "<tool_call>\n<function=typed>\n<parameter=s>\n  two\nlines  \n</parameter>\n<parameter=i>\n42\n</parameter>\n"
       "<parameter=i_bad>\nforty-two\n</parameter>\n<parameter=n_int>\n7\n</parameter>\n<parameter=n>\n-1.5e3\n"
       "</parameter>\n<parameter=n_bad>\n1,5\n</parameter>\n<parameter=b>\nTrue\n</parameter>\n<parameter=b_bad>\n"
       "yes\n</parameter>\n</function>\n</tool_call>",
       {"",
        "",
        {Call("typed",
              R"({"s":"  two\nlines  ","i":42,"i_bad":"forty-two","n_int":7,"n":-1500.0,"n_bad":"1,5","b":true,)"
              R"("b_bad":"yes"})")},
        "T"}},
      {"JsonAndLooseTypes",
       false,
       true,
       "<tool_call>\n<function=typed>\n<parameter=o>\n{\"k\": \"v \\\"q\\\"\", \"n\": [1, {\"z\": null}], \"a\": 1}\n"
       "</parameter>\n<parameter=o_bad>\n[1, 2]\n</parameter>\n<parameter=a>\n[1, \"two\", {\"b\": false}]\n"
       "</parameter>\n<parameter=opt>\n5\n</parameter>\n<parameter=any>\n2.5\n</parameter>\n<parameter=u>\n12\n"
       "</parameter>\n<parameter=s_null>\nnull\n</parameter>\n<parameter=extra>\n12\n</parameter>\n"
       "<parameter=extra_null>\nnull\n</parameter>\n<parameter=i_big>\n99999999999999999999\n</parameter>\n"
       "<parameter=n_space>\n 3.25 \n</parameter>\n</function>\n</tool_call>",
       {"",
        "",
        {Call("typed",
              R"({"o":{"k":"v \"q\"","n":[1,{"z":null}],"a":1},"o_bad":"[1, 2]","a":[1,"two",{"b":false}],"opt":5,)"
              R"("any":2.5,"u":"12","s_null":null,"extra":"12","extra_null":"null","i_big":"99999999999999999999",)"
              R"("n_space":3.25})")},
        "T"}},
      {"UnknownFunctionKeepsStrings",
       false,
       true,
       "<tool_call>\n<function=unknown_fn>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>",
       {"", "", {Call("unknown_fn", R"({"x":"1"})")}, "T"}},
      {"NoParameters",
       false,
       true,
       "<tool_call><function=get_time></function></tool_call>",
       {"", "", {Call("get_time", "{}")}, "T"}},
      {"ValueNewlinesAndTagsInside",
       false,
       true,
       "<tool_call>\n<function=run>\n<parameter=code>\nif a < b: print('</function>')\n\n</parameter>\n"
       "<parameter=city>Rome</parameter>\n</function>\n</tool_call>",
       {"", "", {Call("run", R"({"code":"if a < b: print('</function>')\n","city":"Rome"})")}, "T"}},
      {"RepeatedParameterLastWins",
       false,
       true,
       "<tool_call>\n<function=get_weather>\n<parameter=city>\nA\n</parameter>\n<parameter=days>\n1\n</parameter>\n"
       "<parameter=city>\nB\n</parameter>\n</function>\n</tool_call>",
       {"", "", {Call("get_weather", R"({"city":"B","days":1})")}, "T"}},
      {"ToolCallsOffIsContent", false, false, "Sure.\n" + paris_block, {"", "Sure.\n" + paris_block, {}, "C"}},
      {"ToolCallInReasoningIsReasoning", true, true, paris_block + "\n</think>\n\nok", {paris_block, "ok", {}, "RC"}},
      {"MalformedNoFunction",
       false,
       true,
       "<tool_call>\nget_weather(city=Paris)\n</tool_call>\nafter",
       {"", "<tool_call>\nget_weather(city=Paris)\n</tool_call>\nafter", {}, "C"}},
      {"MalformedFunctionNotClosed",
       false,
       true,
       "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>tail",
       {"", "<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n</tool_call>tail", {}, "C"}},
      {"MalformedParameterNotClosed",
       false,
       true,
       "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>\n" + paris_block,
       {"",
        "<tool_call>\n<function=f>\n<parameter=a>\n1\n</function>\n</tool_call>\n",
        {Call("get_weather", R"({"city":"Paris"})")},
        "CT"}},
      {"MalformedTextAfterFunction",
       false,
       true,
       "<tool_call>\n<function=f>\n</function>\nextra\n</tool_call>",
       {"", "<tool_call>\n<function=f>\n</function>\nextra\n</tool_call>", {}, "C"}},
      {"MalformedParameterName",
       false,
       true,
       "<tool_call>\n<function=f>\n<parameter=a b>\nx\n</parameter>\n</function>\n</tool_call>",
       {"", "<tool_call>\n<function=f>\n<parameter=a b>\nx\n</parameter>\n</function>\n</tool_call>", {}, "C"}},
      {"UnclosedBlockAtEnd",
       false,
       true,
       "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
       {"", "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", {}, "C"}},
      {"CallTagSplitAtEnd", false, true, "text <tool_call", {"", "text <tool_call", {}, "C"}},
      {"ProseTagThenRealCall",
       false,
       true,
       "Use <tool_call> tags: <tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
       "</function>\n</tool_call>",
       {"", "Use <tool_call> tags: ", {Call("get_weather", R"({"city":"Rome"})")}, "CT"}},
      // Not UTF-8: passed through as generated; a cut-off character at the end comes out at Finish, and
      // arguments JSON gets U+FFFD.
      {"InvalidUtf8",
       false,
       true,
       "a\xFF b <tool_call>\n<function=get_weather>\n<parameter=city>\nPa\xFFris\n</parameter>\n</function>\n"
       "</tool_call>\xE6\x9D",
       {"", "a\xFF b \xE6\x9D", {Call("get_weather", "{\"city\":\"Pa\xEF\xBF\xBDris\"}")}, "CTC"}},
      {"AngleBracketsInContent",
       false,
       true,
       "1 < 2, <br>, <tool, <tool_call x </tool_call> <",
       {"", "1 < 2, <br>, <tool, <tool_call x </tool_call> <", {}, "C"}},
  };
}

// Cut positions for the chunkings a case is checked with: none, every single split, 1-byte chunks,
// and 200 random ones (fixed seed; half with small chunks, half with few cuts).
std::vector<std::vector<size_t>> Chunkings(size_t n, std::mt19937& rng) {
  std::vector<std::vector<size_t>> all = {{}};
  for (size_t i = 0; i <= n; ++i) all.push_back({i});
  std::vector<size_t> bytes;
  for (size_t i = 1; i < n; ++i) bytes.push_back(i);
  all.push_back(bytes);
  for (int k = 0; k < 200; ++k) {
    const unsigned one_in = k % 2 == 0 ? 2 + rng() % 4 : 8 + rng() % 32;
    std::vector<size_t> cuts;
    for (size_t i = 1; i < n; ++i) {
      if (rng() % one_in == 0) cuts.push_back(i);
    }
    all.push_back(std::move(cuts));
  }
  return all;
}

class ChatOutputParserCases : public testing::TestWithParam<Case> {};

TEST_P(ChatOutputParserCases, Whole) {
  const Case& c = GetParam();
  EXPECT_EQ(Parse(Options(c.in_reasoning, c.tools), c.text, {}), c.want);
}

TEST_P(ChatOutputParserCases, AnyChunkingGivesTheSameResult) {
  const Case& c = GetParam();
  const ChatOutputOptions opt = Options(c.in_reasoning, c.tools);
  std::mt19937 rng(20240611);
  for (const auto& cuts : Chunkings(c.text.size(), rng)) {
    const Result r = Parse(opt, c.text, cuts);
    ASSERT_EQ(r, c.want) << "cuts: " << testing::PrintToString(cuts);
  }
}

INSTANTIATE_TEST_SUITE_P(ChatOutputParser, ChatOutputParserCases, testing::ValuesIn(Cases()),
                         [](const testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// Content with no complete tag: after every feed, all but the longest proper tag prefix (10 bytes
// of "<tool_call>") has been emitted; in reasoning, all but a "</think>" prefix and 3 newlines.
TEST(ChatOutputParser, HoldsBackAtMostATagPrefix) {
  const std::string content = "Plain text, é 東京 😀 a < b <tool_ca <tool_cal> <<<tool_call <tool_call_x\n\n";
  const std::string reasoning = "Hm \n\n\n\n</thin\n\n\n</think x 😀 < </ \n\n\n</think";
  std::mt19937 rng(5);
  for (const auto& [text, in_reasoning] : {std::pair{content, false}, std::pair{reasoning, true}}) {
    for (int k = 0; k < 50; ++k) {
      auto p = ChatOutputParser::Create(Options(in_reasoning, true));
      ASSERT_TRUE(p.ok());
      size_t fed = 0, emitted = 0;
      while (fed < text.size()) {
        const size_t n = std::min<size_t>(text.size() - fed, k == 0 ? 1 : 1 + rng() % 7);
        const ChatOutputDelta d = p->Feed(std::string_view(text).substr(fed, n));
        fed += n;
        emitted += d.reasoning.size() + d.content.size();
        EXPECT_TRUE(d.tool_calls.empty());
        EXPECT_LE(fed - emitted, 10u) << "after " << fed << " bytes";
        EXPECT_EQ(fed - emitted, p->held_bytes());
      }
      const ChatOutputDelta d = p->Finish();
      EXPECT_EQ(emitted + d.reasoning.size() + d.content.size(), text.size());
    }
  }
  // Plain ASCII text without '<' goes out at once.
  auto p = ChatOutputParser::Create(Options(false, true));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->Feed("Hello").content, "Hello");
  EXPECT_EQ(p->Feed(" there <tool").content, " there ");
  EXPECT_EQ(p->held_bytes(), 5u);
  EXPECT_EQ(p->Feed("bar").content, "<toolbar");
  EXPECT_EQ(p->Feed("\xE6\x9D").content, "");  // half of 東
  EXPECT_EQ(p->Feed("\xB1!").content, "東!");
}

TEST(ChatOutputParser, DeeplyNestedJsonStaysText) {
  auto call = [](const std::string& value) {
    auto p = ChatOutputParser::Create(Options(false, true));
    EXPECT_TRUE(p.ok());
    ChatOutputDelta d = p->Feed("<tool_call>\n<function=typed>\n<parameter=a>\n" + value +
                                "\n</parameter>\n</function>\n</tool_call>");
    EXPECT_EQ(d.tool_calls.size(), 1u);
    return d.tool_calls.empty() ? std::string() : d.tool_calls[0].arguments_json;
  };
  const std::string ok = std::string(60, '[') + std::string(60, ']');
  EXPECT_EQ(call(ok), R"({"a":)" + ok + "}");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(call(deep), R"({"a":")" + deep + "\"}");
}

TEST(ChatOutputParser, EmptyFeedsAndFinishAreHarmless) {
  auto p = ChatOutputParser::Create(Options(true, true));
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->Feed("").empty());
  EXPECT_TRUE(p->Finish().empty());
}

TEST(ChatOutputParser, CreateRejectsBadToolJson) {
  const std::vector<std::string> bad = {
      "not json",
      "[]",
      "{}",
      R"({"type": "function", "function": "get_weather"})",
      R"({"type": "function", "function": {"name": ""}})",
      R"({"type": "function", "function": {"name": 5}})",
      R"({"type": "function", "function": {"name": "f", "parameters": []}})",
      R"({"type": "function", "function": {"name": "f", "parameters": {"properties": 5}}})",
  };
  for (const auto& tool : bad) {
    ChatOutputOptions o;
    o.parse_tool_calls = true;
    o.tools_json = {kWeatherTool, tool};
    auto p = ChatOutputParser::Create(o);
    ASSERT_FALSE(p.ok()) << tool;
    EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  }
  ChatOutputOptions o;
  o.tools_json = {R"({"type": "function", "function": {"name": "f"}})",
                  R"({"type": "function", "function": {"name": "g", "parameters": null}})",
                  R"({"function": {"name": "h", "parameters": {"type": "object"}}})"};
  EXPECT_TRUE(ChatOutputParser::Create(o).ok());
}

}  // namespace
}  // namespace specd
