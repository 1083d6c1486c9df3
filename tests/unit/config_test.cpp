// ModelConfig parsing (docs/DESIGN-NOTES.md, the forward): both layouts of the fixture configs, rope_parameters
// precedence, derived layer_types, tied embeddings at the top level of the nested layout, eos as
// int or list, MoE keys, defaults, and one clear InvalidArgument per unsupported input.
#include "checkpoint/config.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace specd {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kFixtures = std::string(SPECD_FIXTURES) + "/qwen35-tiny";

::testing::AssertionResult Contains(const std::string& message, const std::string& part) {
  if (message.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << message << "\" does not contain \"" << part << "\"";
}

// A complete, small text-only config; tests edit a copy.
json SmallText() {
  return json{
      {"model_type", "qwen3_5_text"},
      {"vocab_size", 1000},
      {"hidden_size", 64},
      {"intermediate_size", 96},
      {"num_hidden_layers", 4},
      {"layer_types", {"linear_attention", "linear_attention", "linear_attention", "full_attention"}},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"head_dim", 32},
      {"linear_num_key_heads", 2},
      {"linear_num_value_heads", 4},
      {"linear_key_head_dim", 16},
      {"linear_value_head_dim", 8},
      {"linear_conv_kernel_dim", 4},
      {"hidden_act", "silu"},
      {"rms_norm_eps", 1e-6},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e7}, {"partial_rotary_factor", 0.25}}},
      {"tie_word_embeddings", false},
      {"eos_token_id", 2},
  };
}

// The same text config in the nested multimodal layout.
json Nested(json text, const std::string& outer = "qwen3_5") {
  return json{{"model_type", outer}, {"text_config", std::move(text)}, {"image_token_id", 248056}};
}

ModelConfig MustParse(const json& doc) {
  auto c = ParseModelConfig(doc);
  EXPECT_TRUE(c.ok()) << c.status().ToString() << "\n" << doc.dump();
  return c.ok() ? *c : ModelConfig{};
}

// Expects InvalidArgument whose message contains every one of `parts`.
void ExpectInvalid(const json& doc, const std::vector<std::string>& parts) {
  auto c = ParseModelConfig(doc);
  ASSERT_FALSE(c.ok()) << doc.dump();
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << c.status().ToString();
  for (const auto& p : parts) EXPECT_TRUE(Contains(c.status().message(), p));
}

std::vector<LayerType> Layers(std::initializer_list<int> full, int n) {
  std::vector<LayerType> v(static_cast<size_t>(n), LayerType::kLinearAttention);
  for (int i : full) v[static_cast<size_t>(i)] = LayerType::kFullAttention;
  return v;
}

// Every text field of two configs (not outer_model_type, which names the layout).
void ExpectSameTextFields(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.is_moe, b.is_moe);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.layer_types, b.layer_types);
  EXPECT_EQ(a.full_attention_interval, b.full_attention_interval);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.linear_num_key_heads, b.linear_num_key_heads);
  EXPECT_EQ(a.linear_num_value_heads, b.linear_num_value_heads);
  EXPECT_EQ(a.linear_key_head_dim, b.linear_key_head_dim);
  EXPECT_EQ(a.linear_value_head_dim, b.linear_value_head_dim);
  EXPECT_EQ(a.linear_conv_kernel_dim, b.linear_conv_kernel_dim);
  EXPECT_EQ(a.hidden_act, b.hidden_act);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_type, b.rope_type);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.partial_rotary_factor, b.partial_rotary_factor);
  EXPECT_EQ(a.mrope_section, b.mrope_section);
  EXPECT_EQ(a.mrope_interleaved, b.mrope_interleaved);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size);
  EXPECT_EQ(a.shared_expert_intermediate_size, b.shared_expert_intermediate_size);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
}

TEST(ConfigFixtures, TextOnlyFixtureValues) {
  auto c = LoadModelConfig(kFixtures + "/dense/model");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // Values read off tests/fixtures/qwen35-tiny/dense/model/config.json.
  EXPECT_EQ(c->model_type, "qwen3_5_text");
  EXPECT_EQ(c->outer_model_type, "qwen3_5_text");
  EXPECT_FALSE(c->is_moe);
  EXPECT_EQ(c->vocab_size, 512);
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->intermediate_size, 256);
  EXPECT_EQ(c->num_hidden_layers, 4);
  EXPECT_EQ(c->layer_types, Layers({3}, 4));
  EXPECT_EQ(c->num_gdn_layers(), 3);
  EXPECT_EQ(c->num_attn_layers(), 1);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->linear_num_key_heads, 2);
  EXPECT_EQ(c->linear_num_value_heads, 4);
  EXPECT_EQ(c->linear_key_head_dim, 32);
  EXPECT_EQ(c->linear_value_head_dim, 32);
  EXPECT_EQ(c->linear_conv_kernel_dim, 4);
  EXPECT_EQ(c->conv_dim(), 2 * 2 * 32 + 4 * 32);
  EXPECT_EQ(c->rope_theta, 1e7);
  EXPECT_EQ(c->partial_rotary_factor, 0.25);
  EXPECT_EQ(c->rotary_dim(), 16);
  EXPECT_EQ(c->mrope_section, (std::vector<int>{3, 3, 2}));
  EXPECT_TRUE(c->mrope_interleaved);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_EQ(c->eos_token_ids, std::vector<int>{2});
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->pad_token_id, 0);
}

TEST(ConfigFixtures, NestedMultimodalLayoutGivesTheSameFields) {
  auto text = LoadModelConfig(kFixtures + "/dense/model/config.json");
  auto nested = LoadModelConfig(kFixtures + "/dense_multimodal_layout/model");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  ASSERT_TRUE(nested.ok()) << nested.status().ToString();
  EXPECT_EQ(nested->outer_model_type, "qwen3_5");
  ExpectSameTextFields(*text, *nested);
}

TEST(ConfigFixtures, MoeFixture) {
  auto c = LoadModelConfig(kFixtures + "/moe/model");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->model_type, "qwen3_5_moe_text");
  EXPECT_TRUE(c->is_moe);
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->num_experts_per_tok, 2);
  EXPECT_EQ(c->moe_intermediate_size, 64);
  EXPECT_EQ(c->shared_expert_intermediate_size, 96);
}

TEST(ConfigParse, SmallTextAndNestedAgree) {
  auto a = MustParse(SmallText());
  auto b = MustParse(Nested(SmallText()));
  ExpectSameTextFields(a, b);
  EXPECT_EQ(b.outer_model_type, "qwen3_5");
  // A nested text_config without its own model_type takes the outer one + "_text".
  json inner = SmallText();
  inner.erase("model_type");
  auto c = MustParse(Nested(inner));
  EXPECT_EQ(c.model_type, "qwen3_5_text");
  ExpectSameTextFields(a, c);
}

TEST(ConfigRope, RopeParametersWinOverTopLevel) {
  json t = SmallText();
  t["rope_theta"] = 5e5;
  t["partial_rotary_factor"] = 0.5;
  t["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e7}, {"partial_rotary_factor", 0.25}};
  auto c = MustParse(t);
  EXPECT_EQ(c.rope_theta, 1e7);
  EXPECT_EQ(c.partial_rotary_factor, 0.25);
  EXPECT_EQ(c.rotary_dim(), 8);  // head_dim 32 * 0.25
  auto n = MustParse(Nested(t));
  EXPECT_EQ(n.rope_theta, 1e7);
  EXPECT_EQ(n.partial_rotary_factor, 0.25);
}

TEST(ConfigRope, TopLevelKeysUsedWhereRopeParametersLackThem) {
  json t = SmallText();
  t["rope_theta"] = 5e5;
  t["partial_rotary_factor"] = 0.5;
  t["rope_parameters"] = {{"rope_type", "default"}};
  auto c = MustParse(t);
  EXPECT_EQ(c.rope_theta, 5e5);
  EXPECT_EQ(c.partial_rotary_factor, 0.5);
  EXPECT_EQ(c.rotary_dim(), 16);
  t.erase("rope_parameters");
  auto d = MustParse(t);
  EXPECT_EQ(d.rope_theta, 5e5);
  EXPECT_EQ(d.partial_rotary_factor, 0.5);
}

TEST(ConfigRope, DefaultsWhenAbsent) {
  json t = SmallText();
  t.erase("rope_parameters");
  auto c = MustParse(t);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.partial_rotary_factor, 0.25);
  EXPECT_EQ(c.rope_type, "default");
  t["rope_parameters"] = {{"rope_type", "default"}, {"mrope_section", {11, 11, 10}}};
  auto d = MustParse(t);
  EXPECT_EQ(d.rope_theta, 10000.0);
  EXPECT_EQ(d.mrope_section, (std::vector<int>{11, 11, 10}));
}

TEST(ConfigLayers, DerivedFromFullAttentionInterval) {
  json t = SmallText();
  t.erase("layer_types");
  t["num_hidden_layers"] = 8;
  t["full_attention_interval"] = 4;
  auto c = MustParse(t);
  EXPECT_EQ(c.layer_types, Layers({3, 7}, 8));
  EXPECT_EQ(c.num_attn_layers(), 2);
  EXPECT_EQ(c.num_gdn_layers(), 6);

  t["full_attention_interval"] = 3;
  EXPECT_EQ(MustParse(t).layer_types, Layers({2, 5}, 8));

  // Default interval 4.
  t.erase("full_attention_interval");
  t["num_hidden_layers"] = 10;
  EXPECT_EQ(MustParse(t).layer_types, Layers({3, 7}, 10));
  // Same in the nested layout.
  EXPECT_EQ(MustParse(Nested(t)).layer_types, Layers({3, 7}, 10));
}

TEST(ConfigLayers, ExplicitLayerTypesWinOverInterval) {
  json t = SmallText();
  t["layer_types"] = {"full_attention", "linear_attention", "full_attention", "linear_attention"};
  t["full_attention_interval"] = 4;
  EXPECT_EQ(MustParse(t).layer_types, Layers({0, 2}, 4));
}

TEST(ConfigTie, TopLevelOfNestedLayout) {
  json t = SmallText();
  t.erase("tie_word_embeddings");
  json n = Nested(t);
  EXPECT_FALSE(MustParse(n).tie_word_embeddings);
  n["tie_word_embeddings"] = true;
  EXPECT_TRUE(MustParse(n).tie_word_embeddings);
  // The top-level value is the one used even where text_config says otherwise.
  n["text_config"]["tie_word_embeddings"] = false;
  EXPECT_TRUE(MustParse(n).tie_word_embeddings);
  // Only text_config has it: that value.
  json m = Nested(SmallText());
  m["text_config"]["tie_word_embeddings"] = true;
  EXPECT_TRUE(MustParse(m).tie_word_embeddings);
  // Text-only layout: its own key.
  t["tie_word_embeddings"] = true;
  EXPECT_TRUE(MustParse(t).tie_word_embeddings);
}

TEST(ConfigEos, IntOrList) {
  json t = SmallText();
  t["eos_token_id"] = 248046;
  EXPECT_EQ(MustParse(t).eos_token_ids, std::vector<int>{248046});
  t["eos_token_id"] = {248046, 248044};
  EXPECT_EQ(MustParse(t).eos_token_ids, (std::vector<int>{248046, 248044}));
  t.erase("eos_token_id");
  EXPECT_TRUE(MustParse(t).eos_token_ids.empty());
  // Nested: only at the top level.
  json n = Nested(t);
  n["eos_token_id"] = {7, 9};
  EXPECT_EQ(MustParse(n).eos_token_ids, (std::vector<int>{7, 9}));
  // Nested with text_config's own value: that one.
  n["text_config"]["eos_token_id"] = 248044;
  EXPECT_EQ(MustParse(n).eos_token_ids, std::vector<int>{248044});
}

TEST(ConfigEos, WrongTypeIsAnError) {
  json t = SmallText();
  t["eos_token_id"] = "</s>";
  ExpectInvalid(t, {"eos_token_id"});
  t["eos_token_id"] = {1, "x"};
  ExpectInvalid(t, {"eos_token_id"});
}

json MoeText() {
  json t = SmallText();
  t["model_type"] = "qwen3_5_moe_text";
  t.erase("intermediate_size");
  t["num_experts"] = 16;
  t["num_experts_per_tok"] = 4;
  t["moe_intermediate_size"] = 24;
  t["shared_expert_intermediate_size"] = 40;
  t["norm_topk_prob"] = true;        // ignored by transformers
  t["decoder_sparse_step"] = 1;      // ignored
  t["mlp_only_layers"] = json::array();  // ignored
  return t;
}

TEST(ConfigMoe, TextOnlyAndNested) {
  for (const json& doc : {MoeText(), Nested(MoeText(), "qwen3_5_moe")}) {
    auto c = MustParse(doc);
    EXPECT_EQ(c.model_type, "qwen3_5_moe_text");
    EXPECT_TRUE(c.is_moe);
    EXPECT_EQ(c.num_experts, 16);
    EXPECT_EQ(c.num_experts_per_tok, 4);
    EXPECT_EQ(c.moe_intermediate_size, 24);
    EXPECT_EQ(c.shared_expert_intermediate_size, 40);
  }
  json inner = MoeText();
  inner.erase("model_type");
  auto c = MustParse(Nested(inner, "qwen3_5_moe"));
  EXPECT_EQ(c.model_type, "qwen3_5_moe_text");
  EXPECT_EQ(c.outer_model_type, "qwen3_5_moe");
  EXPECT_TRUE(c.is_moe);
}

TEST(ConfigMoe, MissingExpertCountIsAnError) {
  json t = MoeText();
  t.erase("num_experts");
  ExpectInvalid(t, {"num_experts"});
  t = MoeText();
  t["num_experts_per_tok"] = 17;
  ExpectInvalid(t, {"num_experts_per_tok"});
}

TEST(ConfigErrors, UnsupportedModelType) {
  json t = SmallText();
  t["model_type"] = "llama";
  ExpectInvalid(t, {"llama"});
  t.erase("model_type");
  ExpectInvalid(t, {"model_type"});
  json n = Nested(SmallText());
  n["text_config"]["model_type"] = "qwen3_text";
  ExpectInvalid(n, {"qwen3_text"});
}

TEST(ConfigErrors, NestedWithoutTextConfig) {
  json n = Nested(SmallText());
  n.erase("text_config");
  ExpectInvalid(n, {"text_config"});
  n["text_config"] = "not an object";
  ExpectInvalid(n, {"text_config"});
}

TEST(ConfigErrors, UnsupportedHiddenAct) {
  json t = SmallText();
  t["hidden_act"] = "gelu";
  ExpectInvalid(t, {"hidden_act", "gelu"});
}

TEST(ConfigErrors, UnsupportedRopeType) {
  json t = SmallText();
  t["rope_parameters"]["rope_type"] = "yarn";
  ExpectInvalid(t, {"rope_type", "yarn"});
  ExpectInvalid(Nested(t), {"yarn"});
}

TEST(ConfigErrors, LayerTypesLengthMismatch) {
  json t = SmallText();
  t["num_hidden_layers"] = 5;
  ExpectInvalid(t, {"layer_types"});
}

TEST(ConfigErrors, UnknownLayerType) {
  json t = SmallText();
  t["layer_types"][1] = "sliding_attention";
  ExpectInvalid(t, {"sliding_attention"});
  t["layer_types"][1] = 3;
  ExpectInvalid(t, {"layer_types"});
}

TEST(ConfigErrors, ValueHeadsNotAMultipleOfKeyHeads) {
  json t = SmallText();
  t["linear_num_key_heads"] = 3;
  t["linear_num_value_heads"] = 4;
  ExpectInvalid(t, {"linear_num_value_heads", "linear_num_key_heads"});
}

TEST(ConfigErrors, WrongJsonTypeForKey) {
  json t = SmallText();
  t["hidden_size"] = "128";
  ExpectInvalid(t, {"hidden_size"});
  t = SmallText();
  t["layer_types"] = "linear_attention";
  ExpectInvalid(t, {"layer_types"});
  t = SmallText();
  t["rope_parameters"]["rope_theta"] = "big";
  ExpectInvalid(t, {"rope_theta"});
  t = SmallText();
  t["rope_parameters"] = 10000;
  ExpectInvalid(t, {"rope_parameters"});
  t = SmallText();
  t["tie_word_embeddings"] = {true};
  ExpectInvalid(t, {"tie_word_embeddings"});
}

TEST(ConfigErrors, NotAnObject) {
  auto c = ParseModelConfig(json::array({1, 2}));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
}

class ConfigFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "specd_cfg_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr) << tmpl;
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& content) {
    const std::string p = (fs::path(dir_) / name).string();
    std::ofstream out(p, std::ios::trunc);
    out << content;
    return p;
  }
  std::string dir_;
};

TEST_F(ConfigFile, NotValidJson) {
  const std::string p = Write("config.json", "{\"model_type\": \"qwen3_5_text\", \"vocab_size\": ");
  for (const std::string& arg : {dir_, p}) {
    auto c = LoadModelConfig(arg);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << c.status().ToString();
    EXPECT_TRUE(Contains(c.status().message(), "config.json"));
    EXPECT_TRUE(Contains(c.status().message(), "JSON"));
  }
}

TEST_F(ConfigFile, ErrorsNameTheFile) {
  json t = SmallText();
  t["hidden_act"] = "gelu";
  const std::string p = Write("config.json", t.dump());
  auto c = LoadModelConfig(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(c.status().message(), p));
  EXPECT_TRUE(Contains(c.status().message(), "gelu"));
}

TEST_F(ConfigFile, MissingFile) {
  auto c = LoadModelConfig(dir_);
  ASSERT_FALSE(c.ok());
  EXPECT_TRUE(Contains(c.status().message(), "config.json"));
}

TEST_F(ConfigFile, ValidFileRoundTrip) {
  Write("config.json", Nested(SmallText()).dump(2));
  auto c = LoadModelConfig(dir_);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ExpectSameTextFields(*c, MustParse(SmallText()));
}

}  // namespace
}  // namespace specd
