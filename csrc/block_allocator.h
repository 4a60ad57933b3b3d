// Paged KV-cache block allocator: block tables, ref counts, copy-on-write and prefix caching.
// One allocator serves a sequence's LM and RM caches together: a physical block id indexes both.
// It never touches cache tensors; callers copy blocks (copy_blocks) for the (src, dst) pairs it returns.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace args_engine {

// Unknown sequence id; bindings.cpp maps it to a Python KeyError subclass.
struct SequenceNotFound : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class BlockAllocator {
 public:
  BlockAllocator(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching = true);

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }
  int64_t num_free_blocks() const { return num_free_; }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  bool has_sequence(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }

  int64_t blocks_needed(int64_t num_positions) const;
  bool can_allocate(int64_t num_positions) const;
  // Returns how many leading tokens already have K/V in the cache (prefix-cache hits).
  int64_t allocate(int64_t seq_id, const std::vector<int64_t>& token_ids, int64_t num_positions,
                   bool reuse_prefix = true);
  bool can_ensure(int64_t seq_id, int64_t num_positions) const;
  // Returns (src, dst) block pairs the caller must copy (copy-on-write).
  std::vector<std::pair<int64_t, int64_t>> ensure(int64_t seq_id, int64_t num_positions);
  void append_tokens(int64_t seq_id, const std::vector<int64_t>& token_ids);
  // The caller has written K/V (every cache) for positions [0, num_computed) of seq_id, or will have
  // before anything reads them: the full blocks up to there become prefix-cache entries. Only such
  // blocks are ever hit.
  void mark_computed(int64_t seq_id, int64_t num_computed);
  // Takes back marks past num_computed (a step that marked positions and then failed): the entries of
  // seq_id's own blocks wholly or partly at or past num_computed leave the prefix cache; entries owned by
  // other sequences and everything below num_computed stay.
  void unmark_computed(int64_t seq_id, int64_t num_computed);
  // Forgets every prefix-cache entry (after a failed forward, marked blocks may hold nothing). Blocks of
  // live sequences are not offered again: only sequences allocated afterwards fill the cache anew.
  void reset_prefix_cache();
  void fork(int64_t parent_id, int64_t child_id);
  void free(int64_t seq_id);

  int64_t num_tokens(int64_t seq_id) const { return static_cast<int64_t>(seq(seq_id).tokens.size()); }
  int64_t num_computed(int64_t seq_id) const { return seq(seq_id).computed; }
  std::vector<int64_t> block_table(int64_t seq_id) const;
  int64_t slot(int64_t seq_id, int64_t position) const;
  int64_t ref_count(int64_t block_id) const;

  // Batched helpers for the decode hot path.
  at::Tensor block_tables(const std::vector<int64_t>& seq_ids, int64_t width = 0) const;
  at::Tensor slots(const std::vector<int64_t>& seq_ids, const std::vector<int64_t>& positions) const;

  // Throws std::runtime_error naming the first broken invariant.
  void check() const;

 private:
  struct Block {
    int64_t ref_count = 0;
    // Bumped each time the block is handed out fresh: a child block's recorded parent generation
    // then proves the parent still holds the same prefix (the hash alone proves nothing).
    uint64_t generation = 0;
    bool registered = false;  // hash_to_block_[hash] == this block
    uint64_t hash = 0;
    int32_t parent = -1;  // block holding the previous block_size tokens (-1: first block)
    uint64_t parent_generation = 0;
    std::vector<int64_t> tokens;  // the block's token ids, kept while registered
    int32_t prev_free = -1, next_free = -1;  // intrusive free list links
    bool in_free_list = false;
  };
  struct Sequence {
    std::vector<int32_t> table;
    std::vector<int64_t> tokens;
    std::vector<uint64_t> hashes;  // chained hash of each full block of tokens
    int64_t computed = 0;  // leading positions whose K/V the caller has written
    size_t num_registered = 0;  // leading full blocks already offered to the prefix cache
    std::vector<int32_t> cached;  // per offered block: the block the prefix cache holds for it
  };

  const Sequence& seq(int64_t seq_id) const;
  Sequence& seq(int64_t seq_id);
  int64_t capacity(const Sequence& s) const { return static_cast<int64_t>(s.table.size()) * block_size_; }
  uint64_t chain_hash(uint64_t prev, const int64_t* tokens) const;
  int32_t lookup(uint64_t hash, const int64_t* tokens, int32_t parent) const;
  void hash_full_blocks(Sequence& s) const;  // chained hashes of s's not yet hashed full blocks
  void register_computed_blocks(Sequence& s);  // full blocks wholly below s.computed
  int64_t cow_blocks(const Sequence& s, int64_t num_positions) const;
  void check_positions(int64_t num_positions) const;

  // Free list: FIFO. New blocks come from the head; freed blocks go to the tail, so the blocks
  // freed longest ago (least recently used, likeliest stale prefix) are handed out first.
  void push_free(int32_t b);
  void remove_free(int32_t b);
  int32_t pop_free();  // hands out a fresh block (ref 1) and drops its stale prefix-cache entry

  int64_t block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  int32_t free_head_ = -1, free_tail_ = -1;
  int64_t num_free_ = 0;
  std::unordered_map<int64_t, Sequence> seqs_;
  std::unordered_map<uint64_t, int32_t> hash_to_block_;
};

}  // namespace args_engine
