// Loader for the Markdown test vectors in tests/vectors/ (format: tests/vectors/http1/README.md).
#pragma once

#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace fulmen::test {

struct Vector {
  std::string file;   // file name, for messages
  int line = 0;       // line of the heading, for messages
  std::string name;   // the heading text
  std::string kind;   // fence language of the input block: "http" or "chunked"
  std::string input;  // raw bytes, escapes decoded
  std::vector<std::pair<std::string, std::string>> expect;  // "key: value" lines, in order

  // First value for `key`, or nullptr.
  const std::string* get(const std::string& key) const;
  // All values for `key`, in order.
  std::vector<std::string> all(const std::string& key) const;
};

// gtest prints parameters in test listings; the default would hex-dump the struct.
inline void PrintTo(const Vector& v, std::ostream* os) { *os << v.file << ":" << v.line << " " << v.name; }

// Decodes the escapes of the vector format: \r \n \t \0 \\ \s (space) \xHH.
std::string unescape(const std::string& s);

// Every vector of `kind` in the *.md files of `dir` (README.md excluded), sorted by file.
std::vector<Vector> load_vectors(const std::string& dir, const std::string& kind);

// A gtest-safe unique name for each vector: [A-Za-z0-9_] only.
std::string test_name(const Vector& v, size_t index);

}  // namespace fulmen::test
