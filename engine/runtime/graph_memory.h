// What bounds the memory of captured graphs, written without CUDA so the CPU tests check it:
//
// - GraphArena: the one activation workspace that every captured graph allocates from. Graphs
//   replay one at a time on one stream, so they can share their scratch; within one capture the
//   stream orders every kernel after the ones before it, so a block freed during the capture is
//   reused by later allocations of the same capture. The arena grows by whole chunks when a
//   capture needs more (never while a graph could be reading a chunk it drops), so its size is
//   set by the largest forward ever captured, not by how many graphs exist.
// - GraphKeeper: which forwards get a graph. A shape is captured once it has been seen
//   `capture_after` times (one-off shapes run op by op and pay no capture), and at most `limit`
//   graphs are kept, the least recently replayed dropped first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace specd {

class GraphArena {
 public:
  // chunk_alloc returns nullptr when the device has no room; chunk_free gives a chunk back.
  using ChunkAlloc = std::function<void*(size_t)>;
  using ChunkFree = std::function<void(void*)>;
  static constexpr size_t kAlign = 256;

  GraphArena(ChunkAlloc alloc, ChunkFree free, size_t min_chunk);
  ~GraphArena();
  GraphArena(const GraphArena&) = delete;
  GraphArena& operator=(const GraphArena&) = delete;

  // A block of at least `bytes` (first fit over the chunks; a new chunk of max(bytes, the arena's
  // size so far, min_chunk) when none has room). nullptr when no chunk can be added.
  void* Get(size_t bytes);
  void Put(void* p);
  // Frees the chunks that hold no live block (after an allocation failure elsewhere, with every
  // graph dropped).
  void ReleaseUnused();

  size_t reserved_bytes() const { return reserved_; }
  size_t live_bytes() const { return live_; }
  size_t peak_live_bytes() const { return peak_live_; }
  size_t chunks() const { return chunks_.size(); }

 private:
  struct Chunk {
    char* base = nullptr;
    size_t size = 0;
    std::map<size_t, size_t> free;  // offset -> length, adjacent ranges merged
    size_t live = 0;
  };
  static void* TakeFrom(Chunk& c, size_t bytes);
  ChunkAlloc alloc_;
  ChunkFree free_;
  size_t min_chunk_;
  std::vector<Chunk> chunks_;
  std::unordered_map<void*, std::pair<size_t, size_t>> used_;  // block -> (chunk, length)
  size_t reserved_ = 0, live_ = 0, peak_live_ = 0;
};

class GraphKeeper {
 public:
  GraphKeeper(int limit, int capture_after) : limit_(limit), capture_after_(capture_after) {}

  void set_limit(int limit) { limit_ = limit; }
  void set_capture_after(int n) { capture_after_ = n; }
  int limit() const { return limit_; }
  int capture_after() const { return capture_after_; }

  // A forward of this key is about to run and no graph exists for it: true when it should be
  // captured now.
  bool ShouldCapture(const std::string& key);
  // A graph of `key` was kept: it becomes the most recent. Returns the keys to drop (the least
  // recently used) so that at most limit graphs stay.
  std::vector<std::string> Added(const std::string& key);
  // A graph of `key` replayed.
  void Used(const std::string& key);
  void Removed(const std::string& key);
  size_t size() const { return order_.size(); }

 private:
  int limit_;
  int capture_after_;
  std::list<std::string> order_;  // most recently used first
  std::unordered_map<std::string, std::list<std::string>::iterator> where_;
  // Sightings of shapes without a graph. Cleared when it grows past a bound: a key that truly
  // recurs is seen again soon.
  std::unordered_map<std::string, int> seen_;
};

}  // namespace specd
