// How the engine reports what a user should see (warnings, errors). The engine formats the
// message; the embedder (the Python bridge) decides where it goes.
#pragma once

#include <string_view>

namespace fulmen::base {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

class Logger {
 public:
  virtual ~Logger() = default;
  virtual void log(LogLevel level, std::string_view message) noexcept = 0;
};

}  // namespace fulmen::base
