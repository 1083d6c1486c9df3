// The daemon's optional protections (docs/server.md, "Threat model"): an API key checked on every
// RPC of the specd service, and TLS. Each refusal is UNAUTHENTICATED / a failed handshake, never a
// served request; specd-client reaches a protected server with --api-key-file / --tls-ca.
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "harness.h"

namespace specd::itest {
namespace {

constexpr const char* kKey = "sk-test-0123456789abcdef";

std::string TempDir() {
  char tmpl[] = "/tmp/specd-itest-sec-XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  return d ? d : "/tmp";
}

std::string WriteFile(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

StreamResult GenerateWith(const std::shared_ptr<grpc::Channel>& ch, const std::string& auth) {
  auto stub = v1::Specd::NewStub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (!auth.empty()) ctx.AddMetadata("authorization", auth);
  StreamResult r;
  auto reader = stub->Generate(&ctx, IdsRequest({5, 6, 7}, 4));
  v1::GenerateResponse m;
  while (reader->Read(&m)) r.ids.insert(r.ids.end(), m.token_ids().begin(), m.token_ids().end());
  r.status = reader->Finish();
  return r;
}

TEST(Security, ApiKeyIsRequiredOnEveryRpc) {
  const std::string dir = TempDir();
  const std::string key_file = WriteFile(dir, "key", std::string(kKey) + "\n");
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "ngram", "--api-key-file", key_file});
  ASSERT_TRUE(srv);
  auto ch = grpc::CreateChannel(srv->address(), grpc::InsecureChannelCredentials());
  for (const std::string& auth : {std::string(), std::string("Bearer wrong-key-0123456789"), std::string(kKey),
                                 std::string("Bearer ") + kKey + "x"}) {
    const StreamResult r = GenerateWith(ch, auth);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << "'" << auth << "'";
    EXPECT_TRUE(r.ids.empty());
  }
  {
    auto stub = v1::Specd::NewStub(ch);
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_EQ(stub->GetModelInfo(&ctx, {}, &info).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  const StreamResult ok = GenerateWith(ch, std::string("Bearer ") + kKey);
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 4u);
  // specd-client with the key file; and without it, refused.
  const auto with = RunCommand(ClientBinary(), {"--address", srv->address(), "--api-key-file", key_file, "generate",
                                                "--prompt-ids", "5,6,7", "--max-tokens", "3", "--json"});
  EXPECT_EQ(with.exit_code, 0) << with.err;
  const auto without = RunCommand(ClientBinary(), {"--address", srv->address(), "generate", "--prompt-ids", "5,6,7",
                                                   "--max-tokens", "3", "--json"});
  EXPECT_NE(without.exit_code, 0);
  EXPECT_NE(without.err.find("UNAUTHENTICATED"), std::string::npos) << without.err;
}

TEST(Security, ShortOrMissingKeyFileStopsTheDaemon) {
  const std::string dir = TempDir();
  const auto short_key = RunCommand(SpecdBinary(), {"serve", "--model", FixtureDir("dense/model"), "--port", "0",
                                                    "--metrics-port", "0", "--api-key-file",
                                                    WriteFile(dir, "short", "abc\n")});
  EXPECT_NE(short_key.exit_code, 0);
  EXPECT_NE((short_key.out + short_key.err).find("shorter than 16"), std::string::npos) << short_key.err;
  const auto half_tls = RunCommand(SpecdBinary(), {"serve", "--model", FixtureDir("dense/model"), "--port", "0",
                                                   "--metrics-port", "0", "--tls-cert", dir + "/none.pem"});
  EXPECT_NE(half_tls.exit_code, 0);
  EXPECT_NE((half_tls.out + half_tls.err).find("go together"), std::string::npos) << half_tls.err;
}

TEST(Security, TlsServesTlsClientsOnly) {
  const std::string dir = TempDir();
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
                          "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " + dir + "/key.pem -out " + dir +
                          "/cert.pem >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl (scripts/setup.sh installs it) could not make a certificate";
  auto srv = Server::Start({"--model", FixtureDir("dense/model"), "--drafter", "ngram", "--tls-cert",
                            dir + "/cert.pem", "--tls-key", dir + "/key.pem"});
  ASSERT_TRUE(srv);
  std::ifstream f(dir + "/cert.pem");
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto tls = grpc::CreateCustomChannel(srv->address(), grpc::SslCredentials(ssl), args);
  const StreamResult ok = GenerateWith(tls, "");
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids.size(), 4u);
  // A plaintext client gets no service from a TLS port.
  const StreamResult plain = GenerateWith(grpc::CreateChannel(srv->address(), grpc::InsecureChannelCredentials()), "");
  EXPECT_FALSE(plain.status.ok());
  EXPECT_TRUE(plain.ids.empty());
  // specd-client over TLS with the CA file.
  const auto c = RunCommand(ClientBinary(), {"--address", "localhost:" + std::to_string(srv->port()), "--tls-ca",
                                             dir + "/cert.pem", "generate", "--prompt-ids", "5,6,7", "--max-tokens",
                                             "3", "--json"});
  EXPECT_EQ(c.exit_code, 0) << c.err;
}

}  // namespace
}  // namespace specd::itest
