// tandem data tokenize [--input FILE ...] --out-prefix PREFIX [--val-fraction F]
//   Byte-level tokens (runtime/byte_tokenizer.h) in llm.c's token file format
//   (runtime/token_file.h): PREFIX_train.bin and PREFIX_val.bin, the val part
//   being the last F of the text. Without --input, the fortunes collection of
//   Debian's "fortunes" package is the corpus.
// tandem data inspect FILE.bin: the header and the first tokens as text.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include "runtime/byte_tokenizer.h"
#include "runtime/core/error.h"
#include "runtime/token_file.h"
#include "tools/commands.h"

namespace tandem::tools {

namespace {

namespace fs = std::filesystem;

constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

struct TokenizeArgs {
  std::vector<std::string> inputs;
  std::string out_prefix;
  double val_fraction = 0.1;
  std::string fortunes_dir = kFortunesDir;
};

// The text to tokenize and where its documents start; with no starts the
// train/val split may fall on any byte.
struct Corpus {
  std::string text;
  std::vector<size_t> doc_starts;
  int files = 0;
};

std::string read_bytes(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw UserError(fmt::format("input file {} not found", path.string()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(fmt::format("cannot open input file {}", path.string()));
  std::string bytes(std::istreambuf_iterator<char>(in), {});
  if (in.bad()) throw UserError(fmt::format("error reading input file {}", path.string()));
  return bytes;
}

// Note [Fortunes as plain text]
// A fortune file is a list of fortunes, each ended by a line holding only
// "%" (the last one may end at the end of the file instead). The corpus is
// every fortune's lines, unchanged, with one blank line between fortunes
// and none of the "%" lines: plain text a byte-level model can learn from
// without learning the file format. Empty fortunes are dropped.
void append_fortunes(Corpus& corpus, const std::string& file_text) {
  std::string fortune;
  auto finish = [&] {
    if (fortune.empty()) return;
    if (!corpus.text.empty()) corpus.text += '\n';
    corpus.doc_starts.push_back(corpus.text.size());
    corpus.text += fortune;
    fortune.clear();
  };
  size_t begin = 0;
  while (begin < file_text.size()) {
    size_t end = std::min(file_text.find('\n', begin), file_text.size());
    std::string_view line(file_text.data() + begin, end - begin);
    if (line == "%") {
      finish();
    } else {
      fortune.append(line);
      fortune += '\n';
    }
    begin = end + 1;
  }
  finish();
}

// The fortune files of `dir`: regular files directly in it, sorted, without
// the strfile indexes (*.dat), the *.u8 links to the same files, and the
// "off" subdirectory (offensive fortunes).
std::vector<fs::path> fortune_files(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw UserError(fmt::format("the fortunes corpus {} is missing: install the Debian package \"fortunes\" "
                                "(tools/setup.sh does), or give --input FILE",
                                dir));
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string ext = entry.path().extension().string();
    if (entry.symlink_status().type() == fs::file_type::regular && ext != ".dat" && ext != ".u8")
      files.push_back(entry.path());
  }
  if (ec) throw UserError(fmt::format("cannot list the fortunes corpus {}: {}", dir, ec.message()));
  if (files.empty()) throw UserError(fmt::format("no fortune files in {}", dir));
  std::sort(files.begin(), files.end());
  return files;
}

Corpus read_fortunes(const std::string& dir) {
  Corpus corpus;
  for (const fs::path& file : fortune_files(dir)) {
    append_fortunes(corpus, read_bytes(file));
    corpus.files++;
  }
  return corpus;
}

// --input files are raw bytes, concatenated as they are.
Corpus read_inputs(const std::vector<std::string>& paths) {
  Corpus corpus;
  for (const std::string& path : paths) {
    corpus.text += read_bytes(path);
    corpus.files++;
  }
  return corpus;
}

// Where val starts: the last `val_fraction` of the bytes, moved forward to
// the next document start when the corpus has documents.
size_t split_point(const Corpus& corpus, double val_fraction) {
  size_t total = corpus.text.size();
  size_t at = total - static_cast<size_t>(std::llround(val_fraction * static_cast<double>(total)));
  if (corpus.doc_starts.empty()) return at;
  auto it = std::lower_bound(corpus.doc_starts.begin(), corpus.doc_starts.end(), at);
  return it == corpus.doc_starts.end() ? total : *it;
}

void create_parent(const std::string& prefix) {
  fs::path parent = fs::path(prefix).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw UserError(fmt::format("cannot create directory {}: {}", parent.string(), ec.message()));
}

void tokenize(const TokenizeArgs& args) {
  // Written so that NaN fails too.
  if (!(args.val_fraction >= 0 && args.val_fraction < 1))
    throw UserError(fmt::format("--val-fraction must be in [0, 1), got {}", args.val_fraction));
  Corpus corpus = args.inputs.empty() ? read_fortunes(args.fortunes_dir) : read_inputs(args.inputs);
  if (corpus.text.empty()) throw UserError(fmt::format("the {} input files hold no text to tokenize", corpus.files));
  std::vector<uint16_t> tokens = byte_encode(corpus.text);
  size_t split = split_point(corpus, args.val_fraction);
  std::span<const uint16_t> all(tokens);
  std::string train_path = args.out_prefix + "_train.bin", val_path = args.out_prefix + "_val.bin";
  create_parent(args.out_prefix);
  write_token_file(train_path, all.first(split));
  write_token_file(val_path, all.subspan(split));
  fmt::print("tokenized {} files, {} bytes: {} train tokens -> {}, {} val tokens -> {}\n", corpus.files,
             corpus.text.size(), split, train_path, tokens.size() - split, val_path);
}

void inspect(const std::string& path, int64_t show) {
  TokenFileHeader h = read_token_header(path);
  std::vector<uint16_t> tokens = read_token_file(path);
  fmt::print("{}: llm.c token file, magic {}, version {}, {} tokens\n", path, h.magic, h.version, h.count);
  std::span<const uint16_t> head(tokens.data(), static_cast<size_t>(std::min<int64_t>(show, h.count)));
  fmt::print("first {} tokens: {}\n", head.size(), fmt::join(head, " "));
  auto not_byte = std::find_if(head.begin(), head.end(), [](uint16_t t) { return !is_byte_token(t); });
  if (not_byte != head.end())
    fmt::print("as text: (not byte-level: token {} >= {})\n", *not_byte, kByteVocabSize);
  else
    fmt::print("as text: {:?}\n", byte_decode(head));
}

}  // namespace

void add_data_command(CLI::App& app) {
  CLI::App* data = app.add_subcommand("data", "Make and inspect token files for the language models");
  data->require_subcommand(1);

  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* tok = data->add_subcommand("tokenize", "Byte-level tokens in llm.c's format: PREFIX_train.bin, PREFIX_val.bin");
  tok->add_option("--input", args->inputs, "A text file, read as raw bytes (repeatable; default: the fortunes corpus)");
  tok->add_option("--out-prefix", args->out_prefix, "Output prefix, e.g. data/fortunes")->required();
  tok->add_option("--val-fraction", args->val_fraction, "The last fraction of the text that becomes val, in [0, 1)")
      ->capture_default_str();
  tok->add_option("--fortunes-dir", args->fortunes_dir, "Where the fortunes corpus is")->capture_default_str();
  tok->callback([args] { tokenize(*args); });

  auto file = std::make_shared<std::string>();
  auto show = std::make_shared<int64_t>(64);
  CLI::App* ins = data->add_subcommand("inspect", "Print a token file's header and its first tokens as text");
  ins->add_option("FILE", *file, "A token file (.bin)")->required();
  ins->add_option("--tokens", *show, "How many tokens to show")->capture_default_str()->check(CLI::NonNegativeNumber);
  ins->callback([file, show] { inspect(*file, *show); });
}

}  // namespace tandem::tools
