// `tandem data tokenize` and `tandem data inspect` as a user runs them:
// token files whose tokens are the input's bytes, the train/val split, the
// fortunes corpus (Note [Fortunes as plain text] in tools/data.cpp), and one
// clear line (exit 2) for bad input.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "runtime/token_file.h"
#include "support/process.h"
#include "support/testing.h"

using namespace tandem;
using namespace tandem::testing;
namespace fs = std::filesystem;

namespace {

// The text of byte-level tokens.
std::string as_bytes(const std::vector<uint16_t>& tokens) {
  REQUIRE(std::all_of(tokens.begin(), tokens.end(), [](uint16_t t) { return t < 256; }));
  return std::string(tokens.begin(), tokens.end());
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

const char* kFortunes = "/usr/share/games/fortunes";

}  // namespace

TEST_CASE("tandem data tokenize writes train and val token files of the input bytes", "[e2e][data]") {
  fs::path dir = temp_dir("tokenize");
  std::string a = "The first file.\nIt has two lines.\n", b;
  for (int i = 0; i < 256; i++) b += static_cast<char>(i);  // every byte value, NUL and 0xff included
  write_bytes(dir / "a.txt", a);
  write_bytes(dir / "b.bin", b);
  std::string prefix = (dir / "out" / "sub" / "text").string();  // parents are created
  ShellResult r = run_tandem(fmt::format("data tokenize --input {} --input {} --out-prefix {} --val-fraction 0.25",
                                  (dir / "a.txt").string(), (dir / "b.bin").string(), prefix));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);

  size_t total = a.size() + b.size(), val = static_cast<size_t>(std::llround(0.25 * static_cast<double>(total)));
  for (const char* part : {"_train.bin", "_val.bin"}) {
    TokenFileHeader h = read_token_header(prefix + part);
    REQUIRE(h.magic == 20240520);
    REQUIRE(h.version == 1);
  }
  REQUIRE(read_token_header(prefix + "_val.bin").count == static_cast<int64_t>(val));
  std::string train = as_bytes(read_token_file(prefix + "_train.bin"));
  std::string valid = as_bytes(read_token_file(prefix + "_val.bin"));
  REQUIRE(train + valid == a + b);
  REQUIRE(contains(r.output, fmt::format("tokenized 2 files, {} bytes: {} train tokens -> {}_train.bin, {} val tokens "
                                         "-> {}_val.bin",
                                         total, total - val, prefix, val, prefix)));

  ShellResult ins = run_tandem("data inspect " + prefix + "_train.bin --tokens 9");
  INFO(ins.output);
  REQUIRE(ins.exit_code == 0);
  REQUIRE(contains(ins.output, fmt::format("magic 20240520, version 1, {} tokens", total - val)));
  REQUIRE(contains(ins.output, "first 9 tokens: 84 104 101 32 102 105 114 115 116"));
  REQUIRE(contains(ins.output, "as text: \"The first\""));
  fs::remove_all(dir);
}

TEST_CASE("tandem data: bad arguments and files get one clear line and exit code 2", "[e2e][data]") {
  fs::path dir = temp_dir("tokbad");
  write_bytes(dir / "in.txt", "some text\n");
  write_bytes(dir / "empty.txt", "");
  write_bytes(dir / "junk.bin", "not a token file");
  std::string in = (dir / "in.txt").string(), out = (dir / "x").string();
  struct Case {
    std::string args, needle;
  };
  std::vector<Case> cases = {
      {"data tokenize --input " + in + " --out-prefix " + out + " --val-fraction 1.5",
       "--val-fraction must be in [0, 1), got 1.5"},
      {"data tokenize --input " + in + " --out-prefix " + out + " --val-fraction 1", "--val-fraction must be in [0, 1)"},
      {"data tokenize --input " + in + " --out-prefix " + out + " --val-fraction -0.1", "--val-fraction"},
      {"data tokenize --input " + (dir / "nope.txt").string() + " --out-prefix " + out, "nope.txt not found"},
      {"data tokenize --input " + (dir / "empty.txt").string() + " --out-prefix " + out, "no text"},
      {"data tokenize --fortunes-dir " + (dir / "no-fortunes").string() + " --out-prefix " + out,
       "install the Debian package \"fortunes\""},
      {"data inspect " + (dir / "junk.bin").string(), "junk.bin"},
      {"data inspect " + (dir / "missing.bin").string(), "missing.bin not found"},
  };
  for (const Case& c : cases) {
    ShellResult r = run_tandem(c.args);
    INFO(c.args << "\n" << r.output);
    REQUIRE(r.exit_code == 2);
    REQUIRE(contains(r.output, "tandem: error:"));
    REQUIRE(contains(r.output, c.needle));
  }
  REQUIRE(!fs::exists(out + "_train.bin"));
  fs::remove_all(dir);
}

TEST_CASE("fortune files become plain text split at a fortune boundary", "[e2e][data]") {
  fs::path dir = temp_dir("fortunes");
  fs::path corpus = dir / "fortunes";
  fs::create_directories(corpus / "off");
  write_bytes(corpus / "b", "three\n");  // no trailing "%"
  write_bytes(corpus / "a", "one\n%\ntwo\nlines\n%\n%\n");
  write_bytes(corpus / "a.dat", std::string("\x00\x00\x00\x02", 4));  // strfile's index: skipped
  fs::create_symlink("a", corpus / "a.u8");                           // the same file again: skipped
  write_bytes(corpus / "off" / "c", "offensive\n%\n");                  // skipped
  std::string prefix = (dir / "out").string();
  // 22 bytes; val 30% rounds to 7, so the split at byte 15 moves on to the start of "three".
  ShellResult r = run_tandem("data tokenize --fortunes-dir " + corpus.string() + " --out-prefix " + prefix +
                      " --val-fraction 0.3");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  REQUIRE(contains(r.output, "tokenized 2 files, 22 bytes: 16 train tokens"));
  REQUIRE(as_bytes(read_token_file(prefix + "_train.bin")) == "one\n\ntwo\nlines\n\n");
  REQUIRE(as_bytes(read_token_file(prefix + "_val.bin")) == "three\n");
  fs::remove_all(dir);
}

TEST_CASE("tandem data tokenize reads Debian's fortunes by default", "[e2e][data]") {
  if (!fs::is_directory(kFortunes)) {
    WARN("SKIPPED: " << kFortunes << " is missing (install the Debian package fortunes: tools/setup.sh)");
    return;
  }
  fs::path dir = temp_dir("fortunes_default");
  std::string prefix = (dir / "fortunes").string();
  ShellResult r = run_tandem("data tokenize --out-prefix " + prefix);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  int64_t train = read_token_header(prefix + "_train.bin").count, val = read_token_header(prefix + "_val.bin").count;
  REQUIRE(train + val > 1000000);  // about 2.6 MB of text
  double fraction = static_cast<double>(val) / static_cast<double>(train + val);
  REQUIRE(fraction >= 0.095);  // the default 0.1, moved on to the next fortune start
  REQUIRE(fraction <= 0.1001);
  std::string text = as_bytes(read_token_file(prefix + "_val.bin"));
  REQUIRE(!contains(text, "\n%\n"));
  REQUIRE(text.back() == '\n');
  fs::remove_all(dir);
}
