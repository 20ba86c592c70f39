// The table of format drivers, and probing by content.
#include "kvmfs/format.h"

namespace kvmfs {

std::vector<const FormatDriver*> AllFormats() { return {&Qcow2Format(), &RawFormat()}; }

const FormatDriver* FindFormat(const std::string& name) {
  for (const FormatDriver* f : AllFormats())
    if (name == f->name()) return f;
  return nullptr;
}

const FormatDriver* ProbeFormat(const uint8_t* head, size_t len) {
  const FormatDriver* best = &RawFormat();
  int best_score = 0;
  for (const FormatDriver* f : AllFormats()) {
    int score = f->Probe(head, len);
    if (score > best_score) {
      best_score = score;
      best = f;
    }
  }
  return best;
}

}  // namespace kvmfs
