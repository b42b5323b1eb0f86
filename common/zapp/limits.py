"""Limits that keep a hostile or broken ZApp from exhausting memory or the database.

Each is reported as a validation error naming the limit, never enforced silently.
"""

from __future__ import annotations

FORMAT_VERSION = 3
MANIFEST_VERSION = 1

MAX_SERVICES = 100
MAX_TOTAL_COUNT = 1024  # instances of one service
MAX_INSTANCES = 10_000  # instances of one ZApp
MAX_PORTS = 100  # per service
MAX_VOLUMES = 100  # per service
MAX_ENVIRONMENT = 1000  # variables per service
MAX_LABELS = 100  # per service
MAX_STRING = 4096  # names, images, paths, URL templates
MAX_TEXT = 65_536  # one environment value or command
MAX_LABEL = 128

# What expansion creates, as bytes of the JSON encoding of the instances' specs (see
# `common.zapp.sizes`): one spec is stored per instance and sent in its start command,
# which must stay far below RabbitMQ's default message size limit (16 MiB); all of them
# are written by one insert. A Spark worker's spec is about 0.8 KiB (2 KiB as counted).
MAX_INSTANCE_BYTES = 256 * 1024  # one instance
MAX_EXPANDED_BYTES = 8 * 1024 * 1024  # all instances of one execution
# The longest names an execution's templates are filled with, for the validator's count
# to hold for any execution (see `sizes.LONGEST`); `expand` counts the real ones again.
MAX_EXECUTION_NAME = 128  # characters; the API refuses longer execution names
MAX_USER_NAME = 64
MAX_DEPLOYMENT = 64

MAX_MEMORY = 64 * 1024**4  # bytes per instance (64 TiB): 10,000 of them still fit in int64
MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses a memory limit below 6 MiB
MAX_CORES = 1024.0
MIN_CORES = 0.01  # Docker's smallest CPU limit (NanoCpus = cores x 1e9 >= 10,000,000)
MAX_SIZE = 2**31 - 1
MIN_STARTUP_ORDER = -(2**31)
MAX_STARTUP_ORDER = 2**31 - 1

MAX_ERRORS = 200  # listed in one InvalidZApp; the rest are summarised in one line

MAX_SHOP_ZAPPS = 100  # per manifest
MAX_PARAMETERS = 100  # per shop ZApp
MAX_ROLES = 100  # names in enabled_for / disabled_for
MAX_FILE_BYTES = 4 * 1024 * 1024  # description, README or logo read by the shop
MAX_PARAMETER_INT = 2**63 - 1
