"""A STAND-IN for the `modal` SDK (version 1.6.4), for tests only.

Put `tests/modal_standin` first on PYTHONPATH and set PARHELIA_MODAL_STANDIN_ROOT to a
directory, and `images/modal/parhelia_bridge.py` runs unchanged against the local machine:
apps and secrets are files, volumes are directories mounted by symlink, sandboxes are
local process trees (see sandbox.py), tunnels are loopback ports. Credentials are checked
like the SDK does (MODAL_TOKEN_ID + MODAL_TOKEN_SECRET, or MODAL_CONFIG_PATH /
~/.modal.toml, read once at import as the SDK does); a token id `rejected` plays a token
Modal refuses, and `$PARHELIA_MODAL_STANDIN_ROOT/faults.json` makes Modal misbehave on purpose
(no capacity, a slow GPU, a crash: see `_local.fault`).

Only what the bridge and images/modal/app.py call is here, with the real signatures, so a
call the real SDK would reject fails here too.
"""

__version__ = "1.6.4"

from . import exception  # noqa: E402
from .app import App  # noqa: E402
from .exception import Error  # noqa: E402
from .image import Image  # noqa: E402
from .sandbox import Sandbox, Tunnel  # noqa: E402
from .secret import Secret  # noqa: E402
from .volume import Volume  # noqa: E402

__all__ = ["App", "Error", "Image", "Sandbox", "Secret", "Tunnel", "Volume", "exception"]
