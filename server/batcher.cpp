#include "server/batcher.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include <algorithm>

#include <spdlog/spdlog.h>

namespace specd::serve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

Batcher::Batcher(EngineFactory factory, const cli::TextCodec* text, Metrics* metrics, BatcherOptions opt)
    : factory_(std::move(factory)), text_(text), metrics_(metrics), opt_(std::move(opt)) {}

Batcher::~Batcher() { Stop(); }

Status Batcher::Start() {
  SPECD_ASSIGN_OR_RETURN(engine_, factory_());
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

std::string Batcher::NewRequestId() {
  // std::random_device reads the kernel's CSPRNG (getrandom / /dev/urandom) on Linux.
  std::string id = "specd-";
  for (int i = 0; i < 4; ++i) id += fmt::format("{:08x}", static_cast<uint32_t>(random_()));
  return id;
}

Status Batcher::Submit(PreparedRequest req, std::unique_ptr<RequestSink>& sink) {
  auto e = std::make_unique<Entry>();
  {
    std::lock_guard lk(mu_);
    if (draining_ || stop_) return Unavailable("server is shutting down");
    if (req.request_id.empty()) {
      // Unguessable (128 random bits): a server-assigned id is what Abort takes, so another
      // client must not be able to name it. Sequential ids let anyone abort anyone's request.
      do {
        req.request_id = NewRequestId();
      } while (live_ids_.count(req.request_id));
    } else if (live_ids_.count(req.request_id)) {
      return AlreadyExists("request_id '{}' is in flight", req.request_id);
    }
    const size_t capacity = static_cast<size_t>(opt_.max_batch) + static_cast<size_t>(opt_.max_queue);
    if (queue_.size() + static_cast<size_t>(running_) >= capacity) {
      return ResourceExhausted("server is full: {} running, {} queued (--max-batch {}, --max-queue {})", running_,
                               queue_.size(), opt_.max_batch, opt_.max_queue);
    }
    live_ids_.insert(req.request_id);
    e->prompt_tokens = req.gen.prompt.size();
    e->req = std::move(req);
    e->sink = std::move(sink);
    queue_.push_back(std::move(e));
  }
  cv_.notify_one();
  return Status::Ok();
}

bool Batcher::Abort(const std::string& request_id) {
  {
    std::lock_guard lk(mu_);
    if (!live_ids_.count(request_id)) return false;
    aborts_.insert(request_id);
  }
  cv_.notify_one();
  return true;
}

void Batcher::Wake() {
  {
    std::lock_guard lk(mu_);
    wake_ = true;
  }
  cv_.notify_one();
}

void Batcher::BeginDrain() {
  std::lock_guard lk(mu_);
  draining_ = true;
}

void Batcher::CancelAll(const Status& status) {
  {
    std::lock_guard lk(mu_);
    cancel_all_ = true;
    cancel_status_ = status;
  }
  cv_.notify_one();
}

bool Batcher::Idle() const {
  std::lock_guard lk(mu_);
  return queue_.empty() && running_ == 0;
}

void Batcher::Stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    draining_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  // The loop ends what it holds before it exits; a batcher that never started (Start failed or
  // was not called) still answers what was queued.
  std::deque<std::unique_ptr<Entry>> left;
  {
    std::lock_guard lk(mu_);
    left.swap(queue_);
  }
  for (auto& e : left) EndWithStatus(*e, Unavailable("server is shutting down"));
}

void Batcher::Forget(const Entry& e) {
  std::lock_guard lk(mu_);
  live_ids_.erase(e.req.request_id);
  aborts_.erase(e.req.request_id);
  if (e.admitted) --running_;
}

void Batcher::Loop() {
  for (;;) {
    std::unordered_set<std::string> aborts;
    bool cancel_all = false, stopping = false;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] {
        return stop_ || wake_ || cancel_all_ || !queue_.empty() || !aborts_.empty() || !active_.empty();
      });
      wake_ = false;
      aborts = aborts_;
      cancel_all = cancel_all_;
      stopping = stop_;
    }
    // Stopping with work left (Stop without CancelAll) cancels it: never leave a stream open.
    if (stopping) {
      {
        std::lock_guard lk(mu_);
        if (!cancel_all_) cancel_status_ = Unavailable("server is shutting down");
      }
      cancel_all = true;
    }
    DropQueued(aborts, cancel_all);
    DropActive(aborts, cancel_all);
    if (cancel_all) {
      std::lock_guard lk(mu_);
      cancel_all_ = false;
    }
    if (stopping) {
      PublishGauges();
      break;
    }
    Admit();
    RunStep();
    Emit();
    PublishGauges();
  }
}

// Queued requests that were cancelled, aborted or swept by CancelAll leave the queue now, so
// their streams close without waiting for a slot.
void Batcher::DropQueued(const std::unordered_set<std::string>& aborts, bool cancel_all) {
  std::vector<std::unique_ptr<Entry>> gone;
  Status cancel_status;
  {
    std::lock_guard lk(mu_);
    cancel_status = cancel_status_;
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (cancel_all || (*it)->sink->Cancelled() || aborts.count((*it)->req.request_id)) {
        gone.push_back(std::move(*it));
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& e : gone) {
    if (cancel_all) {
      EndWithStatus(*e, cancel_status);
    } else if (auto c = e->sink->Cancelled()) {
      EndWithStatus(*e, *c);
    } else {
      EndWithOutcome(*e, FinishReason::kAborted, "", {}, {});
    }
  }
}

void Batcher::DropActive(const std::unordered_set<std::string>& aborts, bool cancel_all) {
  Status cancel_status;
  {
    std::lock_guard lk(mu_);
    cancel_status = cancel_status_;
  }
  for (size_t i = 0; i < active_.size();) {
    Entry& e = *active_[i];
    if (cancel_all) {
      EndWithStatus(e, cancel_status);
    } else if (auto c = e.sink->Cancelled()) {
      EndWithStatus(e, *c);
    } else if (aborts.count(e.req.request_id)) {
      EndWithOutcome(e, FinishReason::kAborted, "", {}, {});
    } else {
      ++i;
      continue;
    }
    active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

void Batcher::Admit() {
  while (static_cast<int>(active_.size()) < opt_.max_batch) {
    std::unique_ptr<Entry> e;
    {
      std::lock_guard lk(mu_);
      if (queue_.empty()) break;
      e = std::move(queue_.front());
      queue_.pop_front();
      ++running_;  // counted as running from here on, so Submit's capacity check stays exact
    }
    e->admitted = true;
    if (auto c = e->sink->Cancelled()) {
      EndWithStatus(*e, *c);
      continue;
    }
    if (!engine_) {  // a failed step could not rebuild the engine: try again now
      auto ne = factory_();
      if (!ne.ok()) {
        spdlog::error("engine unavailable: {}", ne.status().ToString());
        EndWithStatus(*e, Unavailable("engine unavailable: {}", ne.status().message()));
        continue;
      }
      engine_ = std::move(*ne);
    ++engine_generation_;
      ++engine_generation_;
    }
    auto id = engine_->Add(e->req.gen);
    if (!id.ok() && id.status().code() == StatusCode::kUnavailable) {
      // The KV cache cannot hold this request beside the running ones yet: it waits at the head
      // of the queue (first come, first served) until finished requests return their blocks.
      e->admitted = false;
      std::lock_guard lk(mu_);
      --running_;
      queue_.push_front(std::move(e));
      break;
    }
    if (!id.ok()) {
      EndWithStatus(*e, id.status());
      continue;
    }
    e->engine_id = *id;
    // The drafter its speculation metrics count under ("" asks for the engine's default).
    const std::string& asked = e->req.gen.drafter;
    e->drafter = !asked.empty() ? asked : engine_->drafter() ? engine_->drafter()->name() : "none";
    e->text = text_->NewStream(e->req.text);
    e->last_chunk = Clock::now();
    metrics_->AddPromptTokens(static_cast<int64_t>(e->prompt_tokens));
    active_.push_back(std::move(e));
  }
}

void Batcher::RunStep() {
  if (!engine_ || !engine_->HasWork()) return;
  const auto t0 = Clock::now();
  ++steps_;
  Status st = Status::Ok();
  if (steps_ == opt_.debug_fail_step) {
    st = Internal("injected failure (--debug-fail-step {})", steps_);
  } else {
    // The engine promises no exception; this is the last line, so a broken promise fails one
    // step instead of ending the daemon.
    try {
      st = engine_->Step();
    } catch (const std::exception& ex) {
      st = Internal("exception in the engine step: {}", ex.what());
    }
  }
  if (st.ok()) {
    spdlog::debug("step: {} sequences, {} slots in use, {:.2f} ms", active_.size(), engine_->slots_in_use(),
                  Seconds(Clock::now() - t0) * 1e3);
    return;
  }
  // The engine's state after a failed step is unknown: fail what it was running, build a new
  // engine, keep serving. Queued requests are untouched. A full device is RESOURCE_EXHAUSTED
  // (the client may retry), anything else INTERNAL.
  spdlog::error("engine step failed: {}; failing {} in-flight requests and resetting the engine", st.ToString(),
                active_.size());
  metrics_->StepFailed();
  const bool oom = st.code() == StatusCode::kResourceExhausted;
  const Status failed(oom ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                      "engine step failed: " + st.message());
  for (auto& e : active_) {
    e->engine_id = -1;  // not released: the engine is discarded whole
    EndWithStatus(*e, failed);
  }
  active_.clear();
  engine_.reset();
  auto ne = factory_();
  if (ne.ok()) {
    engine_ = std::move(*ne);
  } else {
    spdlog::error("engine rebuild failed: {} (will retry on the next request)", ne.status().ToString());
  }
}

void Batcher::RecordSpecDelta(Entry& e) {
  const SpeculativeStats& cur = engine_->Stats(e.engine_id);
  const SpeculativeStats& last = e.last_stats;
  if (cur.verify_steps == last.verify_steps) return;
  auto at = [](const std::vector<int64_t>& v, size_t i) { return i < v.size() ? v[i] : 0; };
  std::vector<int64_t> per_pos(cur.accepted_at.size());
  for (size_t i = 0; i < per_pos.size(); ++i) per_pos[i] = cur.accepted_at[i] - at(last.accepted_at, i);
  metrics_->AddSpecDelta(e.drafter, at(cur.drafted_at, 0) - at(last.drafted_at, 0), cur.draft_tokens - last.draft_tokens,
                         cur.accepted_tokens - last.accepted_tokens, per_pos);
  e.last_stats = cur;
}

void Batcher::Emit() {
  if (!engine_) return;
  const auto now = Clock::now();
  for (size_t i = 0; i < active_.size();) {
    Entry& e = *active_[i];
    const std::vector<int32_t>& gen = engine_->Generated(e.engine_id);
    std::vector<int32_t> ids;
    bool stopped = false;
    std::string text;
    for (size_t j = e.sent; j < gen.size() && !stopped; ++j) {
      ids.push_back(gen[j]);
      text += e.text->Feed(gen[j]);
      stopped = e.text->stopped();
    }
    const size_t n = ids.size();
    e.sent += n;
    RecordSpecDelta(e);
    if (n > 0) {
      metrics_->AddGenerationTokens(static_cast<int64_t>(n));
      if (!e.first_token_sent) {
        metrics_->ObserveTtft(Seconds(now - e.sink->arrival()));
        e.first_token_sent = true;
      } else {
        metrics_->ObserveItl(Seconds(now - e.last_chunk), static_cast<int64_t>(n));
      }
      e.last_chunk = now;
    }
    if (stopped) {
      const size_t idx = e.text->stop_index().value_or(0);
      EndWithOutcome(e, FinishReason::kStop, e.req.text.stop_strings.at(idx), std::move(ids), std::move(text));
    } else if (engine_->Finished(e.engine_id)) {
      text += e.text->Finish();
      EndWithOutcome(e, engine_->Reason(e.engine_id), "", std::move(ids), std::move(text));
    } else {
      if (n > 0) e.sink->OnTokens(e.req.request_id, ids, std::move(text));
      ++i;
      continue;
    }
    active_.erase(active_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

void Batcher::EndWithOutcome(Entry& e, FinishReason reason, const std::string& stop_string,
                             std::vector<int32_t> ids, std::string text) {
  RequestOutcome out;
  out.request_id = e.req.request_id;
  out.reason = reason;
  out.stop_string = stop_string;
  out.prompt_tokens = e.prompt_tokens;
  out.completion_tokens = e.sent;
  if (e.engine_id >= 0 && engine_) {
    RecordSpecDelta(e);
    out.stats = engine_->Stats(e.engine_id);
    out.cached_prompt_tokens = static_cast<size_t>(engine_->CachedTokens(e.engine_id));
    engine_->Release(e.engine_id);
    e.engine_id = -1;
  }
  // Counted before the client can see the end, so that a scrape after it includes this request.
  const double e2e = Seconds(Clock::now() - e.sink->arrival());
  metrics_->RequestFinished(FinishReasonName(reason), e2e);
  e.sink->OnFinished(ids, std::move(text), out);
  spdlog::info("request {} finished: reason={} prompt_tokens={} completion_tokens={} acceptance={:.3f} "
               "mean_acceptance_length={:.2f} latency_ms={:.1f}",
               e.req.request_id, FinishReasonName(reason), e.prompt_tokens, e.sent, out.stats.acceptance_rate(),
               out.stats.mean_acceptance_length(), e2e * 1e3);
  Forget(e);
  e.sink.reset();
}

void Batcher::EndWithStatus(Entry& e, const Status& st) {
  if (e.engine_id >= 0 && engine_) {
    RecordSpecDelta(e);
    engine_->Release(e.engine_id);
    e.engine_id = -1;
  }
  metrics_->RequestFailed(StatusCodeName(st.code()));
  e.sink->OnFailed(st);
  spdlog::info("request {} failed: {} ({}) prompt_tokens={} completion_tokens={} latency_ms={:.1f}",
               e.req.request_id, StatusCodeName(st.code()), st.message(), e.prompt_tokens, e.sent,
               Seconds(Clock::now() - e.sink->arrival()) * 1e3);
  Forget(e);
  e.sink.reset();
}

void Batcher::PublishGauges() {
  const int64_t running = static_cast<int64_t>(active_.size());
  const int64_t slots = engine_ ? engine_->slots_in_use() : 0;
  int64_t waiting;
  {
    std::lock_guard lk(mu_);
    waiting = static_cast<int64_t>(queue_.size());
  }
  const double kv = engine_ && engine_->kv_blocks_total() > 0
                        ? static_cast<double>(engine_->kv_blocks_reserved()) / static_cast<double>(engine_->kv_blocks_total())
                        : 0.0;
  metrics_->SetGauges(waiting, running, slots, kv);
  if (PrefixStore* ps = engine_ ? engine_->prefix_store() : nullptr) {
    // The counters go on across engine rebuilds (a rebuilt engine's store starts at zero).
    if (prefix_generation_ != engine_generation_) prefix_seen_ = {};
    const PrefixStoreStats now = ps->stats();
    metrics_->AddPrefixCache(now.lookup_tokens - prefix_seen_.lookup_tokens, now.hit_tokens - prefix_seen_.hit_tokens,
                             now.evictions - prefix_seen_.evictions,
                             now.blocks_held * engine_->target_cache().kv_block_bytes() +
                                 static_cast<int64_t>(now.entries) * ps->snapshot_bytes());
    prefix_seen_ = now;
    prefix_generation_ = engine_generation_;
  }
  // Going idle: hand the heap's free pages back to the system. Graph captures and evictions and
  // varied request sizes leave the allocator's arenas fragmented; without this the resident size
  // creeps up under varied traffic although nothing leaks.
  if (active_.empty() && waiting == 0 && !idle_) {
#ifdef __GLIBC__
    malloc_trim(0);
#endif
  }
  idle_ = active_.empty() && waiting == 0;
  // Memory a few times a second while busy (cudaMemGetInfo is cheap, but not free at every
  // step), and always once the engine goes idle, so a scrape after a burst sees its end.
  const auto now = Clock::now();
  if (engine_ && (active_.empty() || now - last_memory_ > std::chrono::milliseconds(200))) {
    last_memory_ = now;
    const Backend& be = *engine_->backend();
    const Backend::GraphStats g = be.graph_stats();
    Metrics::MemoryGauges m;
    m.device_used_bytes = be.device_memory_used();
    m.graphs = g.graphs;
    m.graph_limit = g.limit;
    m.graph_workspace_bytes = g.workspace_bytes;
    m.graph_exec_bytes = g.exec_bytes;
    m.pool_cached_bytes = g.pool_cached_bytes;
    m.graph_captures = g.captures;
    m.graph_replays = g.replays;
    m.graph_evictions = g.evictions;
    m.graph_capture_failures = g.capture_failures;
    m.alloc_failures = be.alloc_failures();
    metrics_->SetMemory(m);
  }
}

}  // namespace specd::serve
