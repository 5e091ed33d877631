"""notifguard's pure detection core: decoded events in, verdicts and alerts out.

Nothing in this package imports faust, kafka or prometheus_client, reads a
clock or touches the network: the Kafka worker and the offline replay wrap
the same code, so they cannot disagree.
"""

from detectors import native as _native

# The compiled build of the hot modules, when there is one for these very sources (detectors.native).
NATIVE = _native.activate(__path__)
