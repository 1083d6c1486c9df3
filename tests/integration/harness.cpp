#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

namespace specd::itest {
namespace fs = std::filesystem;

std::string SpecdBinary() { return SPECD_BIN; }
std::string ClientBinary() { return SPECD_CLIENT_BIN; }
std::string FixtureDir(const std::string& rel) { return std::string(SPECD_FIXTURES) + "/qwen35-tiny/" + rel; }

std::string MtpCheckpointDir(const std::string& base) {
  namespace fs = std::filesystem;
  std::string tmpl = (fs::temp_directory_path() / "specd_itest_mtp_XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
  const fs::path dir = tmpl, model = FixtureDir(base + "/model"), mtp = FixtureDir(base + "_mtp");
  nlohmann::json cfg = nlohmann::json::parse(std::ifstream(model / "config.json"));
  (cfg.contains("text_config") ? cfg["text_config"] : cfg)["mtp_num_hidden_layers"] = 1;
  std::ofstream(dir / "config.json") << cfg.dump(1);
  nlohmann::json map = nlohmann::json::object();
  for (const auto& [from, file] : {std::pair{model / "model.safetensors", "backbone.safetensors"},
                                  std::pair{mtp / "mtp.safetensors", "mtp.safetensors"}}) {
    fs::copy_file(from, dir / file);
    // The tensor names from the safetensors header (u64 length, then JSON).
    std::ifstream f(from, std::ios::binary);
    uint64_t n = 0;
    f.read(reinterpret_cast<char*>(&n), 8);
    std::string header(n, '\0');
    f.read(header.data(), static_cast<std::streamsize>(n));
    const nlohmann::json names = nlohmann::json::parse(header);  // kept: items() refers to it
    for (const auto& [name, v] : names.items()) {
      if (name != "__metadata__") map[name] = file;
    }
  }
  std::ofstream(dir / "model.safetensors.index.json") << nlohmann::json{{"metadata", nlohmann::json::object()},
                                                                          {"weight_map", map}}.dump();
  return dir.string();
}

std::vector<int32_t> FixtureIds(const std::string& refs_rel, const std::string& tensor) {
  std::ifstream f(FixtureDir(refs_rel), std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  f.read(header.data(), static_cast<std::streamsize>(n));
  const auto j = nlohmann::json::parse(header);
  const auto& t = j.at(tensor);
  EXPECT_EQ(t.at("dtype"), "I64");
  const auto off = t.at("data_offsets");
  const uint64_t a = off[0], b = off[1];
  std::vector<int64_t> v((b - a) / 8);
  f.seekg(static_cast<std::streamoff>(8 + n + a));
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(b - a));
  return {v.begin(), v.end()};
}

namespace {

int FreePort() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  int port = 0;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(s);
  return port;
}

std::string ReadFile(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

std::unique_ptr<Server> Server::Start(std::vector<std::string> args) {
  // The metrics port comes from a probe bind, so another process may take it first: retry then.
  for (int attempt = 0;; ++attempt) {
    bool port_taken = false;
    auto s = TryStart(args, &port_taken);
    if (s || !port_taken || attempt == 2) return s;
  }
}

std::unique_ptr<Server> Server::TryStart(std::vector<std::string> args, bool* port_taken) {
  std::unique_ptr<Server> s(new Server());
  char tmpl[] = "/tmp/specd-itest-XXXXXX";
  s->dir_ = ::mkdtemp(tmpl);
  const std::string port_file = s->dir_ + "/ports.json", log = s->dir_ + "/server.log";
  // The gRPC port is chosen by the server itself (--port 0).
  const int mport = FreePort();
  args.insert(args.begin(), {SpecdBinary(), "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port",
                             std::to_string(mport), "--port-file", port_file});
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    ::setenv("OPENBLAS_NUM_THREADS", "1", 1);
    ::setenv("XDG_CACHE_HOME", (s->dir_ + "/cache").c_str(), 1);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  s->pid_ = pid;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < end) {
    if (fs::exists(port_file)) {
      const auto j = nlohmann::json::parse(ReadFile(port_file));
      s->port_ = j.at("port");
      s->metrics_port_ = j.at("metrics_port");
      return s;
    }
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) {
      s->exited_ = true;
      const std::string l = s->Log();
      *port_taken = l.find("cannot listen for /metrics") != std::string::npos;
      if (!*port_taken) ADD_FAILURE() << "specd serve exited early:\n" << l;
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "specd serve did not come up within 30 s:\n" << s->Log();
  return nullptr;
}

Server::~Server() {
  if (pid_ > 0 && !exited_) {
    ::kill(pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
  }
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

std::unique_ptr<v1::Specd::Stub> Server::Stub() const {
  return v1::Specd::NewStub(grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
}

v1::ModelInfo Server::Info() const {
  v1::ModelInfo info;
  grpc::ClientContext ctx;
  EXPECT_TRUE(Stub()->GetModelInfo(&ctx, {}, &info).ok());
  return info;
}

std::string Server::Metrics() const {
  httplib::Client c("127.0.0.1", metrics_port_);
  c.set_connection_timeout(2);
  auto r = c.Get("/metrics");
  return r && r->status == 200 ? r->body : std::string();
}

double Server::Metric(const std::string& series) const {
  const std::string text = Metrics();
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return -1;
}

double Server::WaitMetric(const std::string& series, double value, std::chrono::milliseconds timeout) const {
  const auto end = std::chrono::steady_clock::now() + timeout;
  double v = Metric(series);
  while (v != value && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    v = Metric(series);
  }
  return v;
}

void Server::Signal(int sig) const { ::kill(pid_, sig); }

int Server::Wait(std::chrono::milliseconds timeout) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      exited_ = true;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

std::string Server::Log() const { return ReadFile(dir_ + "/server.log"); }

StreamResult Generate(v1::Specd::Stub& stub, const v1::GenerateRequest& req, int64_t timeout_ms) {
  StreamResult r;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  auto reader = stub.Generate(&ctx, req);
  v1::GenerateResponse m;
  while (reader->Read(&m)) {
    ++r.messages;
    r.ids.insert(r.ids.end(), m.token_ids().begin(), m.token_ids().end());
    r.text += m.text();
    if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      r.has_final = true;
      r.final_msg = m;
    }
  }
  r.status = reader->Finish();
  return r;
}

v1::GenerateRequest IdsRequest(const std::vector<int32_t>& prompt, uint32_t max_tokens, bool ignore_eos) {
  v1::GenerateRequest r;
  r.mutable_token_ids()->mutable_ids()->Add(prompt.begin(), prompt.end());
  r.mutable_sampling()->set_max_tokens(max_tokens);
  if (ignore_eos) r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

CommandResult RunCommand(const std::string& binary, const std::vector<std::string>& args) {
  CommandResult res;
  char tmpl[] = "/tmp/specd-itest-cmd-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  const std::string out = dir + "/out", err = dir + "/err";
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::setenv("OMP_NUM_THREADS", "1", 1);
    ::setenv("OPENBLAS_NUM_THREADS", "1", 1);
    std::vector<std::string> all{binary};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  // A command that should have failed fast but serves instead must not hang the suite.
  int st = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (::waitpid(pid, &st, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > end) {
      ADD_FAILURE() << binary << " did not exit within 60 s";
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  res.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  res.out = ReadFile(out);
  res.err = ReadFile(err);
  std::error_code ec;
  fs::remove_all(dir, ec);
  return res;
}

}  // namespace specd::itest
