// Markdown vector loader: headings name cases, fenced blocks carry the input and the expectations.
#include "vectors.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace fulmen::test {

const std::string* Vector::get(const std::string& key) const {
  for (const auto& kv : expect)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

std::vector<std::string> Vector::all(const std::string& key) const {
  std::vector<std::string> out;
  for (const auto& kv : expect)
    if (kv.first == key) out.push_back(kv.second);
  return out;
}

std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char c = s[++i];
    switch (c) {
      case 'r': out += '\r'; break;
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case '0': out += '\0'; break;
      case 's': out += ' '; break;
      case '\\': out += '\\'; break;
      case 'x': {
        if (i + 2 >= s.size()) throw std::runtime_error("bad \\x escape");
        out += static_cast<char>(std::strtoul(s.substr(i + 1, 2).c_str(), nullptr, 16));
        i += 2;
        break;
      }
      default:
        throw std::runtime_error(std::string("unknown escape \\") + c);
    }
  }
  return out;
}

namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return {};
  size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

void load_file(const std::filesystem::path& path, const std::string& kind, std::vector<Vector>& out) {
  std::ifstream f(path);
  std::string line;
  int lineno = 0;
  std::string heading;
  int heading_line = 0;
  std::string fence;  // language of the open fence; empty when outside
  std::string block;
  Vector cur;
  bool have_input = false;
  while (std::getline(f, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (fence.empty()) {
      if (line.rfind("#", 0) == 0) {
        heading = trim(line.substr(line.find_first_not_of('#')));
        heading_line = lineno;
        have_input = false;
      } else if (line.rfind("```", 0) == 0) {
        fence = trim(line.substr(3));
        if (fence.empty()) fence = "text";
        block.clear();
      }
      continue;
    }
    if (line.rfind("```", 0) != 0) {
      if (fence == "expect") {
        block += line;
        block += '\n';
      } else {
        block += line;  // real newlines are not part of the input
      }
      continue;
    }
    // closing fence
    if (fence == kind) {
      cur = Vector{};
      cur.file = path.filename().string();
      cur.line = heading_line;
      cur.name = heading;
      cur.kind = kind;
      cur.input = unescape(block);
      have_input = true;
    } else if (fence == "expect" && have_input) {
      size_t p = 0;
      while (p < block.size()) {
        size_t e = block.find('\n', p);
        std::string l = trim(block.substr(p, e - p));
        p = e + 1;
        if (l.empty()) continue;
        size_t colon = l.find(':');
        if (colon == std::string::npos) {
          cur.expect.emplace_back(l, "");
        } else {
          cur.expect.emplace_back(trim(l.substr(0, colon)), trim(l.substr(colon + 1)));
        }
      }
      out.push_back(cur);
      have_input = false;
    }
    fence.clear();
  }
}

}  // namespace

std::vector<Vector> load_vectors(const std::string& dir, const std::string& kind) {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".md" && e.path().filename() != "README.md") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<Vector> out;
  for (const auto& p : files) load_file(p, kind, out);
  return out;
}

std::string test_name(const Vector& v, size_t index) {
  std::string raw = v.file.substr(0, v.file.find('.')) + "_" + std::to_string(index) + "_" + v.name;
  std::string n;
  for (char c : raw) n += (std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  return n;
}

}  // namespace fulmen::test
