// `specd-client generate`: one streamed request; text to the terminal as it arrives, or the
// `specd generate --json` object.
#include <chrono>
#include <cstdio>

#include "client/commands.h"
#include "client/common.h"
#include "specd/v1/specd.grpc.pb.h"

namespace specd::client {

int RunGenerate(const GenerateArgs& a) {
  v1::GenerateRequest req;
  std::string err;
  const int given = !a.prompt.empty() + !a.prompt_ids.empty() + !a.chat_json.empty();
  if (given != 1) {
    std::fprintf(stderr, "give exactly one of --prompt, --prompt-ids or --chat-json\n");
    return 2;
  }
  if (!a.prompt.empty()) {
    req.set_text(a.prompt);
  } else if (!a.prompt_ids.empty()) {
    auto ids = ParseIdList(a.prompt_ids, &err);
    if (!ids) {
      std::fprintf(stderr, "%s\n", err.c_str());
      return 2;
    }
    req.mutable_token_ids()->mutable_ids()->Add(ids->begin(), ids->end());
  } else if (!LoadChat(a.chat_json, req.mutable_chat(), &err)) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 2;
  }
  if (!ApplySamplingFlags(a.sampling, &req, &err)) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 2;
  }
  req.set_request_id(a.request_id);

  auto stub = v1::Specd::NewStub(MakeChannel(a.address));
  grpc::ClientContext ctx;
  if (a.timeout_ms > 0) ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(a.timeout_ms));
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  std::vector<int32_t> ids;
  std::string text, reasoning;
  std::vector<v1::ToolCall> calls;
  v1::GenerateResponse last;
  bool finished = false;
  while (reader->Read(&msg)) {
    ids.insert(ids.end(), msg.token_ids().begin(), msg.token_ids().end());
    text += msg.text();
    reasoning += msg.reasoning_text();
    calls.insert(calls.end(), msg.tool_calls().begin(), msg.tool_calls().end());
    // A chat's reasoning goes to stderr, so that stdout holds the answer alone.
    if (!a.json && !msg.reasoning_text().empty()) {
      std::fputs(msg.reasoning_text().c_str(), stderr);
      std::fflush(stderr);
    }
    if (!a.json && !msg.text().empty()) {
      std::fputs(msg.text().c_str(), stdout);
      std::fflush(stdout);
    }
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      last = msg;
      finished = true;
    }
  }
  const grpc::Status st = reader->Finish();
  if (!a.json && !text.empty()) std::fputs("\n", stdout);
  if (!st.ok()) {
    PrintStatus(st);
    return 1;
  }
  if (!finished) {  // a server bug, but say so rather than print a partial result as complete
    std::fprintf(stderr, "DATA_LOSS: the stream ended without a final message\n");
    return 1;
  }
  if (a.json) {
    nlohmann::json j = ResultJson(ids, text, last.finish_reason(), last.stats());
    if (req.has_chat()) {
      j["reasoning"] = reasoning;
      j["tool_calls"] = nlohmann::json::array();
      for (const auto& c : calls) j["tool_calls"].push_back({{"name", c.name()}, {"arguments", c.arguments_json()}});
    }
    std::puts(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  for (const auto& c : calls) std::printf("tool_call: %s %s\n", c.name().c_str(), c.arguments_json().c_str());
  if (text.empty()) {  // a server without a tokenizer streams ids only
    std::string s;
    for (int32_t id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
    std::printf("ids: %s\n", s.c_str());
  }
  const v1::SpeculativeStats& stt = last.stats();
  std::fprintf(stderr, "[%s: %zu tokens, finish=%s%s%s, acceptance %.3f, mean accepted length %.2f]\n",
               last.request_id().c_str(), ids.size(), FinishReasonName(last.finish_reason()),
               last.stop_string().empty() ? "" : " at ", last.stop_string().c_str(), stt.acceptance_rate(),
               stt.mean_acceptance_length());
  return 0;
}

}  // namespace specd::client
