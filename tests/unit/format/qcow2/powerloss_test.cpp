// Power loss over the qcow2 write engine (the model is in kvmfs/backend.h,
// "Power-loss model"): the fault backend records every write and flush of
// the image file (and of an external data file); at every flush the test
// builds crash states in which any subset of the writes since the last
// completed flush reached the disk (some of them torn), and checks each one:
// `qemu-img check` exits 0 or 3 (leaks only); the image opens (header,
// snapshot table) through kvmfs and qemu-img; every sector reads, through
// kvmfs's qcow2 driver and `qemu-img convert`, as a value it had since the
// last acknowledged flush (so every acknowledged byte survives, and a grown
// tail reads as zeros); every snapshot reads as it was made.
#include <algorithm>
#include <cinttypes>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <sstream>
#include <string_view>
#include <unordered_set>

#include "write_helpers.h"

namespace kvmfs::test {
namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KVMFS_PL_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define KVMFS_PL_SANITIZED 1
#endif
#endif
#ifdef KVMFS_PL_SANITIZED
constexpr int kScale = 4;  // sanitizer builds check a quarter of the states
#else
constexpr int kScale = 1;
#endif

constexpr uint64_t kSector = 512;

// KVMFS_POWERLOSS_DEEP=N: N times the rounds, and many more states per crash
// point (a search run, not for CI).
int Deep() {
  const char* v = std::getenv("KVMFS_POWERLOSS_DEEP");
  return v != nullptr && std::atoi(v) > 0 ? std::atoi(v) : 0;
}
// `n` rounds of a workload, scaled for sanitizers and deep runs.
int Rounds(int n) { return std::max(1, n * std::max(1, Deep()) / kScale); }
CrashPlan DefaultPlan() {
  if (Deep() > 0) return CrashPlan{8, 400, 100, 24};
  return CrashPlan{kScale == 1 ? 5u : 3u, 24 / kScale, 6 / kScale, 2};
}

// A whole host file (ReadHostFile reads a byte at a time).
std::vector<uint8_t> Slurp(const std::string& path) {
  std::vector<uint8_t> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return out;
  std::fseek(f, 0, SEEK_END);
  out.resize(static_cast<size_t>(std::ftell(f)));
  std::fseek(f, 0, SEEK_SET);
  if (std::fread(out.data(), 1, out.size(), f) != out.size()) out.clear();
  std::fclose(f);
  return out;
}

uint64_t Hash(const uint8_t* p, size_t n) {
  return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(p), n));
}

// Counts over the whole binary, printed at the end (the README quotes them).
struct Totals {
  uint64_t points = 0;    // crash points (flushes) replayed
  uint64_t planned = 0;   // crash states built
  uint64_t distinct = 0;  // of which distinct, each checked
  std::map<std::string, uint64_t> by_kind;
};
Totals g_totals;

class PrintTotals : public ::testing::Environment {
 public:
  void TearDown() override {
    std::printf("power-loss: %" PRIu64 " crash points, %" PRIu64 " crash states (%" PRIu64
                " distinct, each checked)",
                g_totals.points, g_totals.planned, g_totals.distinct);
    for (const auto& [kind, n] : g_totals.by_kind) std::printf(", %s %" PRIu64, kind.c_str(), n);
    std::printf("\n");
  }
};
const auto* const g_print_totals = ::testing::AddGlobalTestEnvironment(new PrintTotals);

class PowerLoss : public WriteTest {
 protected:
  // Opens `name` (made by qemu-img) for writing through a recording fault
  // backend (an external data file is recorded too).
  void Open(const std::string& name, WriteCompression compress = WriteCompression::kNone) {
    name_ = name;
    crash_ = P("crash");
    fs::create_directories(crash_);
    names_.clear();
    snaps_.clear();
    seen_.clear();
    queue_.clear();
    model_ = QemuRaw(name);
    for (const std::string& snap : QemuSnapshotNames()) {
      snaps_[snap] = QemuRaw(name, snap);
      names_.push_back(snap);
    }
    std::sort(names_.begin(), names_.end());
    allowed_.clear();
    Ack();
    faults_ = std::make_shared<FaultInjector>();
    faults_->SetRecording(true);
    faults_->SetCrashPointHook([this](CrashPoint p) { queue_.push_back(std::move(p)); });
    auto file = OpenLocalFile(P(name), true);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    auto wrapped = std::shared_ptr<Backend>(
        NewFaultBackend(std::shared_ptr<Backend>(std::move(file).value()), faults_));
    OpenContext ctx;
    ctx.name = P(name);
    ctx.writable = true;
    ctx.compress = compress;
    const std::string dir = dir_;
    auto faults = faults_;
    ctx.open_related = [dir, faults](const std::string& n) -> Result<std::shared_ptr<Backend>> {
      KVMFS_ASSIGN_OR_RETURN(std::unique_ptr<Backend> b, OpenLocalFile(dir + "/" + n, true));
      return std::shared_ptr<Backend>(
          NewFaultBackend(std::shared_ptr<Backend>(std::move(b)), faults));
    };
    auto image = OpenQcow2(wrapped, ctx, {});
    ASSERT_TRUE(image.ok()) << image.status().ToString();
    image_ = std::move(image).value();
    const std::string backing = image_->Info().backing_filename;
    if (!backing.empty()) {
      ChainPolicy policy;
      policy.allowed_roots = {dir_};
      auto chain = OpenChain(P(backing), policy, image_->Info().backing_format);
      ASSERT_TRUE(chain.ok()) << chain.status().ToString();
      backing_ = std::move(chain).value();
      image_->SetBacking(backing_.top());
      // Crash states sit next to a (never written) copy of the backing file.
      fs::create_hard_link(P(backing), crash_ + "/" + backing);
    }
    Status st = image_->BeginWrites();
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  // ---- The workload: each call runs one operation, then checks the crash
  // states of every flush it issued. ----

  void Write(uint64_t off, uint64_t len) {
    std::vector<uint8_t> buf(len);
    for (size_t i = 0; i < len; i += 8) {
      // text_: few distinct words, which compress (compressed writes).
      const uint64_t r = text_ ? 0x2020202020202000ull | (rng_() % 4) : rng_();
      std::memcpy(buf.data() + i, &r, std::min<size_t>(8, len - i));
    }
    Run(
        "write " + std::to_string(len) + " at " + std::to_string(off),
        [&] { return image_->Write(off, buf.data(), len); },
        [&] {
          std::copy(buf.begin(), buf.end(), model_.begin() + off);
          Touch(off, len);
        },
        false);
  }
  void Zero(uint64_t off, uint64_t len, bool unmap) {
    Run(
        std::string(unmap ? "discard " : "zero ") + std::to_string(len) + " at " +
            std::to_string(off),
        [&] { return image_->WriteZeroes(off, len, unmap); },
        [&] {
          std::fill(model_.begin() + off, model_.begin() + off + len, 0);
          Touch(off, len);
        },
        false);
  }
  void Flush() {
    Run(
        "flush", [&] { return image_->Flush(); }, [] {}, true);
  }
  void Resize(uint64_t size) {
    Run(
        "resize to " + std::to_string(size), [&] { return image_->Resize(size); },
        [&] {
          const uint64_t old = model_.size();
          model_.resize(size, 0);
          Touch(old, size - old);
          sizes_.insert(size);
        },
        true);
  }
  void Snap(const std::string& name) {
    Run(
        "snapshot create " + name, [&] { return image_->CreateSnapshot(name).status(); },
        [&] {
          snaps_[name] = model_;
          names_.push_back(name);
          std::sort(names_.begin(), names_.end());
          snap_sets_.insert(names_);
        },
        true);
  }
  void Unsnap(const std::string& name) {
    if (HasFailure()) return;
    std::string id;
    for (const SnapshotInfo& s : image_->Snapshots())
      if (s.name == name) id = s.id;
    ASSERT_FALSE(id.empty()) << name;
    Run(
        "snapshot delete " + name, [&] { return image_->DeleteSnapshot(id); },
        [&] {
          names_.erase(std::find(names_.begin(), names_.end(), name));
          snap_sets_.insert(names_);
        },
        true);
  }
  // The last writer goes (a flush); the end state is clean; the log agreed
  // with the files at every flush.
  void Close() {
    if (HasFailure()) return;
    Run(
        "close", [&] { return image_->EndWrites(); }, [] {}, true);
    image_.reset();
    backing_ = Chain{};
    std::string out;
    EXPECT_EQ(Check(name_, &out), 0) << out;
    EXPECT_EQ(faults_->RecordingError(), "");
    EXPECT_EQ(FirstDiff(QemuRaw(name_), model_), -1);
    RecordProperty("crash_points", static_cast<int>(points_));
    RecordProperty("crash_states_checked", static_cast<int>(distinct_));
    std::printf("[ %s ] %" PRIu64 " crash points, %" PRIu64 " crash states, %" PRIu64
                " distinct checked\n",
                ::testing::UnitTest::GetInstance()->current_test_info()->name(), points_, planned_,
                distinct_);
  }

  // A qcow2 image of `size` random bytes (so that misplaced copies show).
  void MakeRandomBase(const std::string& name, uint64_t size, const std::string& opts) {
    std::vector<uint8_t> raw(size);
    for (size_t i = 0; i < size; i += 8) {
      const uint64_t r = rng_();
      std::memcpy(raw.data() + i, &r, std::min<size_t>(8, size - i));
    }
    WriteHostFile(P("base.raw"), raw);
    Sh("qemu-img convert -f raw -O qcow2 " + opts + " base.raw " + name + " && rm base.raw");
  }

  // A write of 1..max_len bytes at a random place (mostly unaligned).
  void RandomWrite(uint64_t max_len) {
    const uint64_t len = 1 + rng_() % max_len;
    Write(rng_() % (model_.size() - len + 1), len);
  }

  // Crash states taken per crash point (see CrashPlan).
  CrashPlan plan_ = DefaultPlan();
  std::mt19937_64 rng_{42};
  bool text_ = false;  // Write() writes compressible data

 private:
  using Sector = std::vector<uint64_t>;  // hashes of the contents a sector may have

  void Touch(uint64_t off, uint64_t len) {
    if (len == 0) return;
    if (allowed_.size() < model_.size() / kSector) allowed_.resize(model_.size() / kSector);
    for (uint64_t s = off / kSector; s < (off + len + kSector - 1) / kSector; ++s) {
      const uint64_t h = Hash(model_.data() + s * kSector, kSector);
      if (std::find(allowed_[s].begin(), allowed_[s].end(), h) == allowed_[s].end())
        allowed_[s].push_back(h);
    }
  }

  // Everything is durable now (a flush, resize or snapshot returned OK).
  void Ack() {
    allowed_.assign(model_.size() / kSector, Sector{});
    for (uint64_t s = 0; s < allowed_.size(); ++s)
      allowed_[s].push_back(Hash(model_.data() + s * kSector, kSector));
    sizes_ = {model_.size()};
    snap_sets_ = {names_};
    // A deleted snapshot can show in no crash state from now on.
    for (auto it = snaps_.begin(); it != snaps_.end();)
      it = std::count(names_.begin(), names_.end(), it->first) ? std::next(it) : snaps_.erase(it);
  }

  template <typename Op, typename Update>
  void Run(const std::string& what, Op op, Update update, bool ack) {
    if (HasFailure()) return;
    queue_.clear();
    Status st = op();
    ASSERT_TRUE(st.ok()) << what << ": " << st.ToString();
    update();
    for (CrashPoint& p : queue_) {
      Process(p, what);
      if (HasFailure()) return;
    }
    queue_.clear();
    if (ack) {
      // The operation's last state (no flush after its last writes).
      if (!HasFailure()) Process(faults_->CapturePoint("end of " + what), what);
      Ack();
    }
  }

  void Process(const CrashPoint& p, const std::string& what) {
    ++points_;
    ++g_totals.points;
    for (const CrashState& cs : PlanCrashStates(p.pending(), plan_, rng_())) {
      ++planned_;
      ++g_totals.planned;
      ++g_totals.by_kind[cs.kind];
      auto files = MaterializeCrash(p, cs);
      ASSERT_TRUE(files.ok()) << files.status().ToString();
      uint64_t h = 0;
      for (const auto& f : *files) h = h * 1000003 ^ Hash(f.data(), f.size()) ^ f.size();
      if (!seen_.insert(h).second) continue;
      ++distinct_;
      ++g_totals.distinct;
      for (size_t i = 0; i < files->size(); ++i)
        WriteHostFile(crash_ + "/" + fs::path(p.streams[i].name).filename().string(), (*files)[i]);
      std::string fate;
      for (uint8_t f : cs.fate) fate += static_cast<char>('0' + f);
      const std::string where = what + ", " + p.why + " (" + std::to_string(p.pending()) +
                                " pending), " + cs.kind + " state " + fate;
      Verify(where);
      if (HasFailure()) {
        const std::string keep = "/tmp/kvmfs-powerloss-failure";
        RunCmd("rm -rf " + keep + " && cp -r " + crash_ + " " + keep);
        ADD_FAILURE() << "the failing crash state is kept in " << keep;
        return;
      }
    }
  }

  // Checks the crash state in crash_.
  void Verify(const std::string& where) {
    const std::string image = crash_ + "/" + name_;
    std::string out;
    // In the crash directory: QEMU opens a data file relative to the cwd.
    const std::string cd = "cd " + crash_ + " && ";
    const int rc = RunCmd(cd + "qemu-img check " + name_, &out);
    ASSERT_TRUE(rc == 0 || rc == 3) << where << ": qemu-img check exit " << rc << "\n" << out;
    ChainPolicy policy;
    policy.allowed_roots = {dir_};
    auto chain = OpenChain(image, policy, "qcow2");
    ASSERT_TRUE(chain.ok()) << where << ": " << chain.status().ToString();
    Image& img = *chain->top();
    ASSERT_TRUE(sizes_.count(img.size())) << where << ": virtual size " << img.size();
    const std::vector<uint8_t> got = ReadImage(img, 0, img.size());
    for (uint64_t s = 0; s < got.size() / kSector; ++s) {
      const uint64_t h = Hash(got.data() + s * kSector, kSector);
      if (std::find(allowed_[s].begin(), allowed_[s].end(), h) == allowed_[s].end()) {
        uint64_t at = s * kSector;
        while (at + 1 < (s + 1) * kSector && at < model_.size() && got[at] == model_[at]) ++at;
        FAIL() << where << ": sector at " << s * kSector << " reads a value it never had since "
               << "the last acknowledged flush ("
               << (allowed_[s].size() == 1 ? "it was acknowledged" : "it was being written")
               << "; byte " << at << " is " << int(got[at]) << ", now "
               << (at < model_.size() ? int(model_[at]) : -1) << ")";
      }
    }
    // Snapshots: one of the tables that were valid, each reading as made.
    std::vector<std::string> names;
    for (const SnapshotInfo& s : img.Snapshots()) {
      names.push_back(s.name);
      auto view = img.OpenSnapshot(s.id);
      ASSERT_TRUE(view.ok()) << where << ": snapshot " << s.name << ": "
                             << view.status().ToString();
      ASSERT_TRUE(snaps_.count(s.name)) << where << ": unknown snapshot " << s.name;
      ASSERT_EQ(FirstDiff(ReadImage(**view, 0, (*view)->size()), snaps_[s.name]), -1)
          << where << ": snapshot " << s.name;
    }
    std::sort(names.begin(), names.end());
    ASSERT_TRUE(snap_sets_.count(names)) << where << ": unexpected snapshot table";
    // QEMU reads the same bytes.
    RunCmd(cd + "qemu-img convert -O raw " + name_ + " qemu.raw", &out);
    ASSERT_EQ(FirstDiff(Slurp(crash_ + "/qemu.raw"), got), -1)
        << where << ": qemu-img convert differs from kvmfs\n"
        << out;
    for (const std::string& n : names) {
      RunCmd(cd + "qemu-img convert -O raw -l snapshot.name=" + n + " " + name_ + " qemu.raw",
             &out);
      ASSERT_EQ(FirstDiff(Slurp(crash_ + "/qemu.raw"), snaps_[n]), -1)
          << where << ": qemu-img convert of snapshot " << n << "\n"
          << out;
    }
  }

  std::vector<std::string> QemuSnapshotNames() {
    std::vector<std::string> names;
    const std::string out = Sh("qemu-img snapshot -U -l " + name_ + " | tail -n +3");
    std::istringstream in(out);
    std::string id, name;
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream l(line);
      if (l >> id >> name) names.push_back(name);
    }
    return names;
  }

  std::string name_, crash_;
  std::shared_ptr<FaultInjector> faults_;
  std::unique_ptr<Image> image_;
  Chain backing_;
  std::vector<CrashPoint> queue_;
  // What every crash state must show.
  std::vector<uint8_t> model_;                         // the guest disk now
  std::vector<Sector> allowed_;                        // per sector, since the last ack
  std::set<uint64_t> sizes_;                           // virtual sizes since then
  std::map<std::string, std::vector<uint8_t>> snaps_;  // snapshot contents by name
  std::set<std::vector<std::string>> snap_sets_;       // snapshot tables since then
  std::vector<std::string> names_;                     // the snapshots now, sorted
  std::unordered_set<uint64_t> seen_;
  uint64_t points_ = 0, planned_ = 0, distinct_ = 0;
};

// ---- The model itself ------------------------------------------------------------

class PowerLossModel : public WriteTest {
 protected:
  void SetUp() override {
    WriteTest::SetUp();
    if (IsSkipped()) return;
    faults_->SetRecording(true);
    auto file = OpenLocalFile(P("f"), true);
    if (!file.ok()) {  // it does not exist yet
      WriteHostFile(P("f"), {});
      file = OpenLocalFile(P("f"), true);
    }
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    b_ = NewFaultBackend(std::shared_ptr<Backend>(std::move(file).value()), faults_);
  }
  void Put(uint64_t off, uint64_t len, uint8_t v) {
    std::vector<uint8_t> buf(len, v);
    ASSERT_TRUE(b_->WriteAt(off, buf.data(), len).ok());
  }
  std::vector<uint8_t> State(const CrashPoint& p, std::vector<uint8_t> fate, uint64_t seed = 0) {
    auto files = MaterializeCrash(p, CrashState{std::move(fate), seed, "test"});
    EXPECT_TRUE(files.ok()) << files.status().ToString();
    return files.ok() ? (*files)[0] : std::vector<uint8_t>{};
  }
  std::shared_ptr<FaultInjector> faults_ = std::make_shared<FaultInjector>();
  std::unique_ptr<Backend> b_;
};

TEST_F(PowerLossModel, AnySubsetOfTheWritesSinceTheLastFlushReachesTheDisk) {
  Put(0, 1000, 'a');
  ASSERT_TRUE(b_->Flush().ok());
  Put(1024, 1000, 'b');  // past the end: grows the file
  Put(0, 100, 'c');
  const CrashPoint p = faults_->CapturePoint("now");
  ASSERT_EQ(p.pending(), 2u);
  EXPECT_EQ(State(p, {0, 0}), std::vector<uint8_t>(1000, 'a'));
  std::vector<uint8_t> want(1000, 'a');
  std::fill(want.begin(), want.begin() + 100, 'c');
  EXPECT_EQ(State(p, {0, 1}), want);  // the later write alone
  want.resize(2024, 0);
  std::fill(want.begin() + 1024, want.end(), 'b');
  EXPECT_EQ(State(p, {1, 1}), want);
  EXPECT_EQ(State(p, {1, 1}), ReadHostFile(P("f")));
  std::fill(want.begin(), want.begin() + 100, 'a');
  EXPECT_EQ(State(p, {1, 0}), want);
  EXPECT_EQ(faults_->RecordingError(), "");
}

TEST_F(PowerLossModel, WritesAreWholeSectorsAsThePageCacheWritesThem) {
  Put(0, 1024, 'a');
  ASSERT_TRUE(b_->Flush().ok());
  Put(500, 8, 'b');
  Put(100, 8, 'c');  // same sector: it carries the 'b' bytes along
  const CrashPoint p = faults_->CapturePoint("now");
  ASSERT_EQ(p.streams[0].pending[1].off, 0u);
  ASSERT_EQ(p.streams[0].pending[1].len, 512u);
  EXPECT_EQ(p.streams[0].pending[1].old, std::vector<uint8_t>(p.streams[0].pending[0].data));
  const std::vector<uint8_t> s = State(p, {0, 1});
  EXPECT_EQ(s[100], 'c');
  EXPECT_EQ(s[500], 'b');
}

TEST_F(PowerLossModel, TornWritesKeepSomeSectors) {
  Put(0, 8 * 512, 'a');
  ASSERT_TRUE(b_->Flush().ok());
  Put(0, 8 * 512, 'b');
  const CrashPoint p = faults_->CapturePoint("now");
  std::set<std::string> seen;
  for (uint64_t seed = 1; seed < 20; ++seed) {
    const std::vector<uint8_t> s = State(p, {2}, seed);
    std::string sectors;
    for (int i = 0; i < 8; ++i) {
      const uint8_t v = s[i * 512];
      EXPECT_EQ(std::count(s.begin() + i * 512, s.begin() + (i + 1) * 512, v), 512);
      sectors += static_cast<char>(v);
    }
    seen.insert(sectors);
  }
  EXPECT_GT(seen.size(), 10u);  // many different tears, each of whole sectors
}

TEST_F(PowerLossModel, ZeroingKeepsTheSizeAndTruncateIsAtomic) {
  Put(0, 2048, 'a');
  ASSERT_TRUE(b_->Flush().ok());
  Put(2048, 1024, 'b');
  ASSERT_TRUE(b_->WriteZeroes(1024, 4096, true).ok());
  ASSERT_TRUE(b_->Truncate(8192).ok());
  const CrashPoint p = faults_->CapturePoint("now");
  ASSERT_EQ(p.pending(), 3u);
  EXPECT_EQ(State(p, {0, 1, 0}).size(), 2048u);  // the lost write left it short
  EXPECT_EQ(State(p, {1, 1, 0}).size(), 3072u);
  EXPECT_EQ(State(p, {0, 0, 1}).size(), 8192u);
  EXPECT_EQ(State(p, {1, 1, 1}), ReadHostFile(P("f")));
  ASSERT_TRUE(b_->Flush().ok());
  EXPECT_EQ(faults_->RecordingError(), "");
}

TEST_F(PowerLossModel, EveryFlushIsACrashPointAndTheLogChecksItself) {
  std::vector<size_t> pending;
  faults_->SetCrashPointHook([&](CrashPoint p) { pending.push_back(p.pending()); });
  Put(0, 10, 'a');
  Put(20, 10, 'a');
  ASSERT_TRUE(b_->Flush().ok());
  ASSERT_TRUE(b_->Flush().ok());
  EXPECT_EQ(pending, (std::vector<size_t>{2, 0}));
  // A write behind the wrapper's back is found at the next flush.
  WriteHostFile(P("f"), std::vector<uint8_t>(30, 'z'));
  ASSERT_TRUE(b_->Flush().ok());
  EXPECT_NE(faults_->RecordingError(), "");
}

TEST(PowerLossPlan, AllSubsetsWhenFewElseSystematicAndRandom) {
  const CrashPlan plan{3, 48, 5, 2};
  EXPECT_EQ(PlanCrashStates(0, plan, 1).size(), 1u);
  EXPECT_EQ(PlanCrashStates(3, plan, 1).size(), 8u + 2);
  std::map<std::string, int> kinds;
  for (const CrashState& c : PlanCrashStates(10, plan, 1)) ++kinds[c.kind];
  EXPECT_EQ(kinds["prefix"], 11);
  EXPECT_EQ(kinds["one-lost"], 10);
  EXPECT_EQ(kinds["one-kept"], 10);
  EXPECT_EQ(kinds["random"], 5);
  EXPECT_EQ(kinds["torn"], 2);
  const CrashPlan small{3, 8, 0, 0};
  const auto sampled = PlanCrashStates(40, small, 1);
  ASSERT_EQ(sampled.size(), 8u);
  EXPECT_EQ(std::count(sampled[0].fate.begin(), sampled[0].fate.end(), 1), 0);   // nothing
  EXPECT_EQ(std::count(sampled[1].fate.begin(), sampled[1].fate.end(), 1), 40);  // everything
}

// ---- Workloads ----------------------------------------------------------------

// 512-byte clusters and 64-bit refcounts: an L2 table maps 32 KiB, a
// refcount block 32 KiB of the file, a refcount table cluster 2 MiB; a few
// MiB of writes grow L2 tables and the refcount table several times.
TEST_F(PowerLoss, AllocatingWritesGrowL2TablesAndTheRefcountTable) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 work.qcow2 4M");
  Open("work.qcow2");
  const int rounds = Rounds(20);
  for (int i = 0; i < rounds && !HasFailure(); ++i) {
    RandomWrite(40000);                                    // scattered, partial clusters
    Write((i * 5 + 1) * 131072ull % (4ull << 20), 98304);  // a long run
    if (i % 2 == 1) Flush();
  }
  Close();
}

// Partial writes over a backing file copy the rest of each cluster from it
// (also with subclusters, which copy only what the write does not cover).
TEST_F(PowerLoss, CopyOnWriteOverABackingFile) {
  MakeRandomBase("base.qcow2", 4 << 20, "-o cluster_size=64k");
  for (const char* opts : {"-o cluster_size=64k", "-o cluster_size=64k,extended_l2=on"}) {
    SCOPED_TRACE(opts);
    Sh(std::string("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ") + opts +
       " work.qcow2 4M");
    Open("work.qcow2");
    for (int i = 0; i < Rounds(14) && !HasFailure(); ++i) {
      RandomWrite(9000);
      if (i % 3 == 2) Flush();
    }
    Close();
    Sh("rm -rf work.qcow2 crash");
  }
}

// Snapshot create and delete switch the tables atomically; writes after a
// snapshot copy the shared L2 tables and clusters.
TEST_F(PowerLoss, SnapshotCreateAndDelete) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=4k work.qcow2 2M");
  Sh("qemu-io -c 'write -P 0x31 0 512k' -c 'write -P 0x32 1M 300k' work.qcow2 >/dev/null");
  Sh("qemu-img snapshot -c old work.qcow2");
  Open("work.qcow2");
  RandomWrite(20000);
  RandomWrite(20000);
  Flush();
  Snap("s1");
  RandomWrite(30000);
  Write(4096, 8192);
  Flush();
  Unsnap("old");
  RandomWrite(20000);
  Snap("s2");
  RandomWrite(20000);
  Unsnap("s1");
  RandomWrite(20000);
  Close();
}

// Discard and zero: zero flags, clusters released and (after the flush that
// makes their release safe) reused by new allocating writes.
TEST_F(PowerLoss, DiscardAndZero) {
  MakeRandomBase("base.qcow2", 2 << 20, "-o cluster_size=4k");
  // v3 (zero flags) without and with a backing file; v2 (zeros written).
  for (const char* opts : {"", "-b base.qcow2 -F qcow2 ", "-o compat=0.10 "}) {
    SCOPED_TRACE(opts);
    Sh(std::string("qemu-img create -q -f qcow2 -o cluster_size=4k ") + opts + "work.qcow2 2M");
    Sh("qemu-io -c 'write -P 0x41 0 1M' work.qcow2 >/dev/null");
    Open("work.qcow2");
    for (int i = 0; i < Rounds(6) + 1 && !HasFailure(); ++i) {
      const uint64_t off = rng_() % (1 << 20), len = 1 + rng_() % 100000;
      Zero(off, len, i % 2 == 0);
      RandomWrite(30000);
      Flush();
    }
    Close();
    Sh("rm -rf work.qcow2 crash");
  }
}

// Overwriting and discarding compressed clusters releases their sectors.
TEST_F(PowerLoss, OverwritesOfCompressedClusters) {
  MakeRandomBase("work.qcow2", 2 << 20, "-c -o cluster_size=16k");
  Open("work.qcow2");
  for (int i = 0; i < Rounds(8) + 1 && !HasFailure(); ++i) {
    RandomWrite(40000);
    if (i % 3 == 1) Zero(rng_() % (1 << 20), 1 + rng_() % 70000, true);
    if (i % 2 == 1) Flush();
  }
  Close();
}

// Compressed writes (the pool's compress:): whole clusters compressed and
// packed into shared host clusters, their data written before the L2 entry
// and their refcounts before the L2 table; partial writes and overwrites of
// compressed clusters among them; packed host clusters freed by discards.
TEST_F(PowerLoss, CompressedWritesPackedIntoSharedClusters) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=4k work.qcow2 2M");
  text_ = true;
  Open("work.qcow2", WriteCompression::kZlib);
  for (int i = 0; i < Rounds(8) + 1 && !HasFailure(); ++i) {
    Write((rng_() % 480) * 4096, 4096 * (1 + rng_() % 8));  // whole clusters: compressed
    RandomWrite(9000);                                      // partial: normal clusters
    if (i % 3 == 1) Zero((rng_() % 480) * 4096, 4096 * (1 + rng_() % 8), true);
    if (i % 2 == 1) Flush();
  }
  Close();
  // The workload did store compressed clusters (qemu-img 7.2's map shows
  // them as data without a host offset).
  const std::string map = Sh("qemu-img map --output=json work.qcow2");
  EXPECT_NE(map.find("\"data\": true}"), std::string::npos) << map;
}

// Growing reads zeros in the new part: the rest of the old last cluster
// (stale bytes a shrink left there) and what a longer backing file has.
TEST_F(PowerLoss, ResizeZeroesTheGrownTail) {
  Sh("qemu-img create -q -f qcow2 -o cluster_size=64k work.qcow2 1M");
  Sh("qemu-io -c 'write -P 0x77 0 1M' work.qcow2 >/dev/null");
  Sh("qemu-img resize -q --shrink work.qcow2 1045504");  // the last 3 sectors stay stale
  Open("work.qcow2");
  Resize(3 << 20);
  RandomWrite(20000);
  Resize((3 << 20) + 512);
  Close();
  Sh("rm -rf work.qcow2 crash");

  // Over a longer backing file, growing needs a bigger L1 table too.
  MakeRandomBase("base.qcow2", 6 << 20, "-o cluster_size=4k");
  Sh("qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 work.qcow2 1M");
  Open("work.qcow2");
  RandomWrite(20000);
  Resize(4 << 20);
  RandomWrite(20000);
  Resize(6 << 20);
  Close();
}

// An external data file: guest data goes to it (flushed before the tables
// naming it); a raw one is preallocated, and resize grows it.
TEST_F(PowerLoss, ExternalDataFile) {
  for (const char* raw : {"off", "on"}) {
    SCOPED_TRACE(raw);
    Sh(std::string("qemu-img create -q -f qcow2 -o cluster_size=64k,data_file=work.data,"
                   "data_file_raw=") +
       raw + " work.qcow2 2M");
    Open("work.qcow2");
    for (int i = 0; i < Rounds(8) + 1 && !HasFailure(); ++i) {
      RandomWrite(100000);
      if (i % 2 == 1) Flush();
    }
    Zero(65536, 131072, true);
    Resize(3 << 20);
    RandomWrite(100000);
    Close();
    Sh("rm -rf work.qcow2 work.data crash");
  }
}

}  // namespace
}  // namespace kvmfs::test
