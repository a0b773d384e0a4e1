// Gloo's rendezvous runs over any tandem Store (memory, TCP, prefixed), so a
// job needs one store for everything: rendezvous, NCCL ids, health records.
#pragma once

#include <gloo/rendezvous/store.h>

#include <memory>

#include "collectives/store.h"

namespace tandem::collectives {

// Gloo's get() takes no timeout but must wait for the key (a rank may read
// a peer's address before the peer published it), so the adapter waits up
// to `timeout`, as does Gloo's wait() without a timeout; StoreTimeout names
// the missing keys.
std::shared_ptr<gloo::rendezvous::Store> make_gloo_store(std::shared_ptr<Store> store,
                                                         Millis timeout = std::chrono::seconds(300));

}  // namespace tandem::collectives
