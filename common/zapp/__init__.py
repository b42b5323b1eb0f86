"""The ZApp model: descriptions, their validation and expansion, and the ZApp shop.

Pure code: nothing here talks to the network, the database or Docker; only the shop
reads its library folder.
"""

from common.zapp.expand import expand, url_for
from common.zapp.manifest import Parameter
from common.zapp.model import (
    CoresRange,
    Description,
    LoadedDescription,
    MemoryRange,
    Port,
    Resources,
    Service,
    Volume,
)
from common.zapp.shop import ShopEntry, load_shop, render, scan_shop, visible_to
from common.zapp.specs import (
    DEFAULT_CORES,
    DEFAULT_MEMORY,
    InstanceSpec,
    PortSpec,
    VolumeSpec,
)
from common.zapp.validate import load_description

__all__ = [
    "DEFAULT_CORES",
    "DEFAULT_MEMORY",
    "CoresRange",
    "Description",
    "InstanceSpec",
    "LoadedDescription",
    "MemoryRange",
    "Parameter",
    "Port",
    "PortSpec",
    "Resources",
    "Service",
    "ShopEntry",
    "Volume",
    "VolumeSpec",
    "expand",
    "load_description",
    "load_shop",
    "render",
    "scan_shop",
    "url_for",
    "visible_to",
]
