"""Image building on the host, and the deployment's own registry (``ZOE_REGISTRY``):
no other registry is ever contacted.

Two kinds of image exist on a Zoe host:

- **Base images**, made from files of the host: `zoe/busybox:1` (the static busybox and
  its applet links) and `zoe/debian:12` (a debootstrap of bookworm with python3-minimal).
  Each is a root file system imported as a single-layer image (`base`).
- **ZApp images**: `zapps/<zapp>/images/<name>/Dockerfile` builds `zoe/<name>:<tag>`,
  the tag read from the `TAG` file beside it. Its `FROM` image (a base or another ZApp
  image) is made first. An optional `CONTEXT` file beside them lists files to stage into
  the build context from the host (a large wheel that lies on the host's disk, say), so
  they need not live in the repository: see `read_context_file` (`refs`).

Every step checks first whether the image is already there, so a repeated call costs one
inspect per image (`build`). A failed build leaves no tag: the engine tags only a
finished build, and an import tags in the same request that creates the image
(`docker_http`). What runs on the host is in `host`; the CLI in `cli`. With a
registry, a missing image is pulled from it (tagged as its plain reference) before
anything is built, and what is built is pushed to it (`registry`).
"""

from services.executor.images.base import BASE_IMAGES, DEFAULT_DEBIAN_MIRROR, BaseOptions
from services.executor.images.build import build_library, build_zapp, ensure_image, ensure_images
from services.executor.images.docker_http import image_present
from services.executor.images.errors import ImageBuildFailed, ImageError, UnknownImage
from services.executor.images.refs import (
    CONTEXT_FILE,
    ZAPP_REPO_PREFIX,
    ContextEntry,
    dockerfile_dependencies,
    find_image_dir,
    library_image_refs,
    read_context_file,
    split_ref,
    zapp_image_refs,
    zapp_used_images,
)
from services.executor.images.registry import RegistryUnavailable, pull, push, registry_ref

__all__ = [
    "BASE_IMAGES",
    "CONTEXT_FILE",
    "DEFAULT_DEBIAN_MIRROR",
    "ZAPP_REPO_PREFIX",
    "BaseOptions",
    "ContextEntry",
    "ImageBuildFailed",
    "ImageError",
    "RegistryUnavailable",
    "UnknownImage",
    "build_library",
    "build_zapp",
    "dockerfile_dependencies",
    "ensure_image",
    "ensure_images",
    "find_image_dir",
    "image_present",
    "library_image_refs",
    "pull",
    "push",
    "read_context_file",
    "registry_ref",
    "split_ref",
    "zapp_image_refs",
    "zapp_used_images",
]
