// BlockAllocator: see block_allocator.h. Errors: std::invalid_argument -> ValueError,
// std::out_of_range -> IndexError, std::runtime_error -> RuntimeError, SequenceNotFound -> KeyError.
// Every mutating method checks everything first and only then changes state, so a failed call
// leaves the allocator exactly as it was.
#include "block_allocator.h"

#include <algorithm>
#include <limits>
#include <sstream>

namespace args_engine {
namespace {

template <typename... Args>
std::string msg(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// splitmix64 finalizer: cheap and well mixed; collisions are still verified by lookup().
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

constexpr uint64_t kFirstBlockSeed = 0x243f6a8885a308d3ULL;

}  // namespace

BlockAllocator::BlockAllocator(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  if (num_blocks < 1) throw std::invalid_argument(msg("BlockAllocator: num_blocks must be >= 1, got ", num_blocks));
  if (block_size < 1) throw std::invalid_argument(msg("BlockAllocator: block_size must be >= 1, got ", block_size));
  // Block ids travel as int32 in block tables.
  if (num_blocks > std::numeric_limits<int32_t>::max())
    throw std::invalid_argument(msg("BlockAllocator: num_blocks ", num_blocks, " does not fit in int32"));
  blocks_.resize(num_blocks);
  for (int64_t b = 0; b < num_blocks; ++b) push_free(static_cast<int32_t>(b));
}

// ---- lookups -------------------------------------------------------------------------------

const BlockAllocator::Sequence& BlockAllocator::seq(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) throw SequenceNotFound(msg("unknown sequence id ", seq_id));
  return it->second;
}

BlockAllocator::Sequence& BlockAllocator::seq(int64_t seq_id) {
  return const_cast<Sequence&>(static_cast<const BlockAllocator*>(this)->seq(seq_id));
}

void BlockAllocator::check_positions(int64_t num_positions) const {
  if (num_positions < 0) throw std::invalid_argument(msg("num_positions must be >= 0, got ", num_positions));
}

int64_t BlockAllocator::blocks_needed(int64_t num_positions) const {
  check_positions(num_positions);
  return num_positions / block_size_ + (num_positions % block_size_ != 0);  // ceil without overflow
}

std::vector<int64_t> BlockAllocator::block_table(int64_t seq_id) const {
  const auto& t = seq(seq_id).table;
  return std::vector<int64_t>(t.begin(), t.end());
}

int64_t BlockAllocator::slot(int64_t seq_id, int64_t position) const {
  const Sequence& s = seq(seq_id);
  if (position < 0 || position >= capacity(s))
    throw std::out_of_range(msg("slot: position ", position, " out of range [0, ", capacity(s),
                                ") covered by sequence ", seq_id, "'s block table"));
  return static_cast<int64_t>(s.table[position / block_size_]) * block_size_ + position % block_size_;
}

int64_t BlockAllocator::ref_count(int64_t block_id) const {
  if (block_id < 0 || block_id >= num_blocks())
    throw std::out_of_range(msg("ref_count: block id ", block_id, " out of range [0, ", num_blocks(), ")"));
  return blocks_[block_id].ref_count;
}

// ---- prefix cache --------------------------------------------------------------------------

uint64_t BlockAllocator::chain_hash(uint64_t prev, const int64_t* tokens) const {
  uint64_t h = mix(prev);
  for (int64_t i = 0; i < block_size_; ++i) h = mix(h ^ static_cast<uint64_t>(tokens[i]));
  return h;
}

// A hit needs the same hash, the same token ids and the same parent block (at the same
// generation), so by induction from the first block the whole prefix is equal, not just the hash.
int32_t BlockAllocator::lookup(uint64_t hash, const int64_t* tokens, int32_t parent) const {
  auto it = hash_to_block_.find(hash);
  if (it == hash_to_block_.end()) return -1;
  const Block& b = blocks_[it->second];
  if (!b.registered || b.hash != hash || b.parent != parent) return -1;
  if (parent >= 0 && b.parent_generation != blocks_[parent].generation) return -1;
  if (!std::equal(b.tokens.begin(), b.tokens.end(), tokens)) return -1;
  return it->second;
}

void BlockAllocator::hash_full_blocks(Sequence& s) const {
  const size_t full = s.tokens.size() / block_size_;
  for (size_t k = s.hashes.size(); k < full; ++k)
    s.hashes.push_back(chain_hash(k ? s.hashes[k - 1] : kFirstBlockSeed, &s.tokens[k * block_size_]));
}

// Registers s's full blocks that lie wholly below s.computed: only blocks whose K/V has been written
// may be hit. A hash already owned by another block keeps its owner: both hold the same prefix, and
// the older one is likelier to be shared. s.cached[k] is the block the cache holds for s's block k (the
// owner when one exists), so a later block chains onto it: chained onto s's own unregistered copy it
// could never be found (lookup walks the cached blocks).
void BlockAllocator::register_computed_blocks(Sequence& s) {
  const size_t n = std::min(s.hashes.size(), static_cast<size_t>(s.computed / block_size_));
  for (size_t k = s.num_registered; k < n; ++k) {
    const int32_t id = s.table[k];
    const int32_t parent = k ? s.cached[k - 1] : -1;
    const int32_t owner = lookup(s.hashes[k], &s.tokens[k * block_size_], parent);
    Block& b = blocks_[id];
    if (owner >= 0 || b.registered || hash_to_block_.count(s.hashes[k])) {
      s.cached.push_back(owner >= 0 ? owner : id);  // no owner for this prefix (a collision): as before
      continue;
    }
    b.registered = true;
    b.hash = s.hashes[k];
    b.parent = parent;
    b.parent_generation = k ? blocks_[parent].generation : 0;
    b.tokens.assign(s.tokens.begin() + k * block_size_, s.tokens.begin() + (k + 1) * block_size_);
    hash_to_block_.emplace(b.hash, id);
    s.cached.push_back(id);
  }
  s.num_registered = std::max(s.num_registered, n);
}

void BlockAllocator::reset_prefix_cache() {
  for (auto& [hash, id] : hash_to_block_) {
    blocks_[id].registered = false;
    blocks_[id].tokens.clear();
  }
  hash_to_block_.clear();
}

// ---- free list -----------------------------------------------------------------------------

void BlockAllocator::push_free(int32_t id) {
  Block& b = blocks_[id];
  b.prev_free = free_tail_;
  b.next_free = -1;
  b.in_free_list = true;
  if (free_tail_ >= 0) blocks_[free_tail_].next_free = id; else free_head_ = id;
  free_tail_ = id;
  ++num_free_;
}

void BlockAllocator::remove_free(int32_t id) {
  Block& b = blocks_[id];
  if (b.prev_free >= 0) blocks_[b.prev_free].next_free = b.next_free; else free_head_ = b.next_free;
  if (b.next_free >= 0) blocks_[b.next_free].prev_free = b.prev_free; else free_tail_ = b.prev_free;
  b.prev_free = b.next_free = -1;
  b.in_free_list = false;
  --num_free_;
}

int32_t BlockAllocator::pop_free() {
  const int32_t id = free_head_;
  if (id < 0) throw std::runtime_error("BlockAllocator internal error: pop from an empty free list");
  remove_free(id);
  Block& b = blocks_[id];
  if (b.registered) {  // its contents are about to be overwritten: the cached prefix is gone
    hash_to_block_.erase(b.hash);
    b.registered = false;
    b.tokens.clear();
  }
  ++b.generation;
  b.ref_count = 1;
  return id;
}

// ---- sequence lifecycle --------------------------------------------------------------------

bool BlockAllocator::can_allocate(int64_t num_positions) const { return blocks_needed(num_positions) <= num_free_; }

int64_t BlockAllocator::allocate(int64_t seq_id, const std::vector<int64_t>& token_ids, int64_t num_positions,
                                 bool reuse_prefix) {
  if (seqs_.count(seq_id)) throw std::invalid_argument(msg("allocate: sequence ", seq_id, " already exists"));
  const int64_t needed = blocks_needed(num_positions);
  const int64_t len = static_cast<int64_t>(token_ids.size());
  if (num_positions < len)
    throw std::invalid_argument(msg("allocate: num_positions ", num_positions, " < number of tokens ", len));
  Sequence s;
  s.tokens = token_ids;
  std::vector<int32_t> hits;
  int64_t free_hits = 0;  // hits on free blocks leave the free list, so they count against it
  if (prefix_caching_) {
    hash_full_blocks(s);
    // Never hit all tokens: the engine must compute at least the last one to get its logits. reuse_prefix
    // false (a prompt whose every position is scored): no hits, but its blocks still serve later prompts.
    const int64_t max_hits = reuse_prefix && len > 0 ? (len - 1) / block_size_ : 0;
    for (int64_t k = 0; k < max_hits; ++k) {
      const int32_t b = lookup(s.hashes[k], &s.tokens[k * block_size_], k ? hits.back() : -1);
      if (b < 0) break;
      hits.push_back(b);
      free_hits += blocks_[b].ref_count == 0;
    }
  }
  const int64_t fresh = needed - static_cast<int64_t>(hits.size());
  if (fresh > num_free_ - free_hits)
    throw std::runtime_error(msg("allocate: out of blocks: sequence ", seq_id, " needs ", fresh, " new blocks, ",
                                 num_free_ - free_hits, " free"));
  for (int32_t b : hits) {
    if (blocks_[b].ref_count == 0) remove_free(b);
    ++blocks_[b].ref_count;
    s.table.push_back(b);
  }
  for (int64_t i = 0; i < fresh; ++i) s.table.push_back(pop_free());
  // The fresh blocks are registered by mark_computed, once the caller has written them: registered
  // now, a prompt admitted before that write (or after this sequence is freed unwritten) would hit
  // blocks that hold nothing.
  s.computed = static_cast<int64_t>(hits.size()) * block_size_;
  s.num_registered = hits.size();
  s.cached = hits;
  seqs_.emplace(seq_id, std::move(s));
  return static_cast<int64_t>(hits.size()) * block_size_;
}

// Blocks of s that hold a position in [num_tokens, num_positions) and are shared (copy-on-write).
int64_t BlockAllocator::cow_blocks(const Sequence& s, int64_t num_positions) const {
  const int64_t first = static_cast<int64_t>(s.tokens.size()) / block_size_;
  const int64_t last = std::min<int64_t>(static_cast<int64_t>(s.table.size()), blocks_needed(num_positions));
  int64_t n = 0;
  for (int64_t i = first; i < last; ++i) n += blocks_[s.table[i]].ref_count > 1;
  return n;
}

bool BlockAllocator::can_ensure(int64_t seq_id, int64_t num_positions) const {
  const Sequence& s = seq(seq_id);
  const int64_t grow = std::max<int64_t>(0, blocks_needed(num_positions) - static_cast<int64_t>(s.table.size()));
  return grow + cow_blocks(s, num_positions) <= num_free_;
}

std::vector<std::pair<int64_t, int64_t>> BlockAllocator::ensure(int64_t seq_id, int64_t num_positions) {
  Sequence& s = seq(seq_id);
  const int64_t needed = blocks_needed(num_positions);
  const int64_t grow = std::max<int64_t>(0, needed - static_cast<int64_t>(s.table.size()));
  const int64_t cow = cow_blocks(s, num_positions);
  if (grow + cow > num_free_)
    throw std::runtime_error(msg("ensure: out of blocks: sequence ", seq_id, " needs ", grow, " new + ", cow,
                                 " copy-on-write blocks, ", num_free_, " free"));
  std::vector<std::pair<int64_t, int64_t>> copies;
  const int64_t first = static_cast<int64_t>(s.tokens.size()) / block_size_;
  const int64_t last = std::min<int64_t>(static_cast<int64_t>(s.table.size()), needed);
  for (int64_t i = first; i < last; ++i) {
    const int32_t old = s.table[i];
    if (blocks_[old].ref_count <= 1) continue;
    --blocks_[old].ref_count;  // still >= 1: another table keeps it
    s.table[i] = pop_free();
    copies.emplace_back(old, s.table[i]);
  }
  for (int64_t i = 0; i < grow; ++i) s.table.push_back(pop_free());
  return copies;
}

void BlockAllocator::append_tokens(int64_t seq_id, const std::vector<int64_t>& token_ids) {
  Sequence& s = seq(seq_id);
  const int64_t total = static_cast<int64_t>(s.tokens.size() + token_ids.size());
  if (total > capacity(s))
    throw std::out_of_range(msg("append_tokens: sequence ", seq_id, " would hold ", total,
                                " tokens but its block table covers ", capacity(s), " positions; call ensure first"));
  s.tokens.insert(s.tokens.end(), token_ids.begin(), token_ids.end());
  if (prefix_caching_) hash_full_blocks(s);
}

void BlockAllocator::mark_computed(int64_t seq_id, int64_t num_computed) {
  Sequence& s = seq(seq_id);
  const int64_t len = static_cast<int64_t>(s.tokens.size());
  if (num_computed < 0 || num_computed > len)
    throw std::invalid_argument(msg("mark_computed: num_computed ", num_computed, " out of range [0, ", len,
                                    "] (sequence ", seq_id, "'s tokens)"));
  if (num_computed <= s.computed) return;
  s.computed = num_computed;
  if (prefix_caching_) register_computed_blocks(s);
}

void BlockAllocator::unmark_computed(int64_t seq_id, int64_t num_computed) {
  Sequence& s = seq(seq_id);
  if (num_computed < 0)
    throw std::invalid_argument(msg("unmark_computed: num_computed must be >= 0, got ", num_computed));
  if (num_computed >= s.computed) return;
  const size_t keep = static_cast<size_t>(num_computed / block_size_);
  for (size_t k = keep; k < s.num_registered; ++k) {
    const int32_t id = s.table[k];
    Block& b = blocks_[id];
    if (s.cached[k] != id || !b.registered) continue;  // another block owns the entry: not ours to take back
    hash_to_block_.erase(b.hash);
    b.registered = false;
    b.tokens.clear();
  }
  if (s.num_registered > keep) {
    s.num_registered = keep;
    s.cached.resize(keep);
  }
  s.computed = num_computed;
}

void BlockAllocator::fork(int64_t parent_id, int64_t child_id) {
  const Sequence& parent = seq(parent_id);
  if (seqs_.count(child_id)) throw std::invalid_argument(msg("fork: child sequence ", child_id, " already exists"));
  Sequence child = parent;
  for (int32_t b : child.table) ++blocks_[b].ref_count;
  seqs_.emplace(child_id, std::move(child));
}

void BlockAllocator::free(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) throw SequenceNotFound(msg("free: unknown sequence id ", seq_id));
  // Last block first: with the FIFO list the tail of a prompt is reused before its head, and the
  // head is what another prompt with the same beginning can still hit.
  const auto& table = it->second.table;
  for (auto b = table.rbegin(); b != table.rend(); ++b)
    if (--blocks_[*b].ref_count == 0) push_free(*b);
  seqs_.erase(it);
}

// ---- batched helpers -----------------------------------------------------------------------

at::Tensor BlockAllocator::block_tables(const std::vector<int64_t>& seq_ids, int64_t width) const {
  if (width < 0) throw std::invalid_argument(msg("block_tables: width must be >= 0, got ", width));
  std::vector<const Sequence*> ss;
  ss.reserve(seq_ids.size());
  for (int64_t id : seq_ids) {
    ss.push_back(&seq(id));
    width = std::max<int64_t>(width, static_cast<int64_t>(ss.back()->table.size()));
  }
  auto out = at::zeros({static_cast<int64_t>(ss.size()), width}, at::kInt);
  int32_t* p = out.data_ptr<int32_t>();
  for (size_t i = 0; i < ss.size(); ++i) std::copy(ss[i]->table.begin(), ss[i]->table.end(), p + i * width);
  return out;
}

at::Tensor BlockAllocator::slots(const std::vector<int64_t>& seq_ids, const std::vector<int64_t>& positions) const {
  if (seq_ids.size() != positions.size())
    throw std::invalid_argument(msg("slots: ", seq_ids.size(), " seq_ids but ", positions.size(), " positions"));
  auto out = at::empty({static_cast<int64_t>(seq_ids.size())}, at::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  for (size_t i = 0; i < seq_ids.size(); ++i) p[i] = slot(seq_ids[i], positions[i]);
  return out;
}

// ---- invariants ----------------------------------------------------------------------------

void BlockAllocator::check() const {
  const int64_t n = num_blocks();
  std::vector<int64_t> holders(n, 0);
  for (const auto& [id, s] : seqs_) {
    if (s.computed < 0 || s.computed > static_cast<int64_t>(s.tokens.size()))
      throw std::runtime_error(msg("check: sequence ", id, " marks ", s.computed, " positions computed but holds ",
                                   s.tokens.size(), " tokens"));
    if (capacity(s) < static_cast<int64_t>(s.tokens.size()))
      throw std::runtime_error(msg("check: sequence ", id, " holds ", s.tokens.size(), " tokens but covers ",
                                   capacity(s), " positions"));
    std::vector<int32_t> sorted(s.table.begin(), s.table.end());
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
      throw std::runtime_error(msg("check: sequence ", id, " holds a block twice"));
    for (int32_t b : s.table) {
      if (b < 0 || b >= n) throw std::runtime_error(msg("check: sequence ", id, " holds invalid block ", b));
      ++holders[b];
    }
  }
  for (int64_t b = 0; b < n; ++b)
    if (blocks_[b].ref_count != holders[b])
      throw std::runtime_error(msg("check: block ", b, " has ref_count ", blocks_[b].ref_count, " but ", holders[b],
                                   " block tables hold it"));
  std::vector<char> seen(n, 0);
  int64_t count = 0;
  int32_t prev = -1;
  for (int32_t b = free_head_; b >= 0; prev = b, b = blocks_[b].next_free) {
    if (b >= n) throw std::runtime_error(msg("check: free list holds invalid block ", b));
    if (seen[b]) throw std::runtime_error(msg("check: block ", b, " appears twice in the free list"));
    seen[b] = 1;
    if (++count > n) throw std::runtime_error("check: free list is longer than num_blocks");
    if (blocks_[b].prev_free != prev) throw std::runtime_error(msg("check: free list link broken at block ", b));
    if (blocks_[b].ref_count != 0)
      throw std::runtime_error(msg("check: block ", b, " is in the free list with ref_count ", blocks_[b].ref_count));
  }
  if (prev != free_tail_) throw std::runtime_error("check: free list tail does not match its last block");
  if (count != num_free_)
    throw std::runtime_error(msg("check: free list holds ", count, " blocks but num_free_blocks is ", num_free_));
  for (int64_t b = 0; b < n; ++b) {
    if ((blocks_[b].ref_count == 0) != static_cast<bool>(seen[b]))
      throw std::runtime_error(msg("check: block ", b, " has ref_count 0 but is not in the free list"));
    if (static_cast<bool>(seen[b]) != blocks_[b].in_free_list)
      throw std::runtime_error(msg("check: block ", b, " in_free_list flag disagrees with the free list"));
  }
  for (const auto& [hash, b] : hash_to_block_)
    if (b < 0 || b >= n || !blocks_[b].registered || blocks_[b].hash != hash)
      throw std::runtime_error(msg("check: prefix-cache entry points to block ", b, " which does not own that hash"));
  for (int64_t b = 0; b < n; ++b) {
    const Block& blk = blocks_[b];
    if (!blk.registered) continue;
    auto it = hash_to_block_.find(blk.hash);
    if (it == hash_to_block_.end() || it->second != b)
      throw std::runtime_error(msg("check: block ", b, " is marked cached but the prefix cache does not map to it"));
    if (static_cast<int64_t>(blk.tokens.size()) != block_size_)
      throw std::runtime_error(msg("check: cached block ", b, " stores ", blk.tokens.size(), " token ids"));
  }
}

}  // namespace args_engine
