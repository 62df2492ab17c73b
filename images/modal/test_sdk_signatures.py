"""Checks the bridge's and app.py's SDK calls against the real, pinned `modal` SDK.

Skipped unless `modal==1.6.4` is importable (with PARHELIA_REQUIRE_MODAL_SDK=1, a missing
SDK fails instead, as CI wants). To run it:

    python3 -m venv /tmp/modal-venv
    /tmp/modal-venv/bin/pip install -r images/modal/requirements.txt
    /tmp/modal-venv/bin/python -m unittest discover -s images/modal -p 'test_*.py' -v

Every call is listed in an SDK_CALLS table (parhelia_bridge.py, app.py) as (callable,
bound method?, positional count, keywords); test_bridge.py checks that the bridge makes no
call missing from the tables, and this file binds each entry against the real signature.
Nothing here talks to Modal.
"""

import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import parhelia_bridge  # noqa: E402


def import_real_modal():
    try:
        modal = importlib.import_module("modal")
        importlib.import_module("modal.exception")
    except ImportError:
        return None
    return modal if getattr(modal, "__file__", None) else None  # not a test fake


modal = import_real_modal()
FOUND = getattr(modal, "__version__", None) if modal else None
PINNED = parhelia_bridge.PINNED_SDK_VERSION
SKIP_REASON = (f"needs the real modal=={PINNED} (found {FOUND or 'none'}): "
               f"pip install -r images/modal/requirements.txt in a venv and run the tests with its python")


def load_app_recipe():
    spec = importlib.util.spec_from_file_location("parhelia_modal_app_signatures", os.path.join(HERE, "app.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(path):
    """`Sandbox.create` -> modal.Sandbox.create; `volume.X.y` imports modal.volume first."""
    obj = modal
    for index, part in enumerate(path.split(".")):
        if index == 0 and not hasattr(obj, part):
            obj = importlib.import_module(f"modal.{part}")
        else:
            obj = getattr(obj, part)
    return obj


class SdkPresenceTest(unittest.TestCase):
    @unittest.skipUnless(os.environ.get("PARHELIA_REQUIRE_MODAL_SDK") == "1",
                         "set PARHELIA_REQUIRE_MODAL_SDK=1 to fail instead of skipping without the SDK")
    def test_the_pinned_sdk_is_importable(self):
        self.assertTrue(modal is not None and FOUND == PINNED, SKIP_REASON)


@unittest.skipUnless(modal is not None and FOUND == PINNED, SKIP_REASON)
class SdkSignatureTests(unittest.TestCase):
    def check_table(self, table):
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for path, is_method, positional, keywords in table:
            with self.subTest(call=path):
                signature = inspect.signature(resolve(path))
                params = signature.parameters
                for keyword in keywords:
                    self.assertIn(keyword, params, f"modal.{path} has no parameter `{keyword}`")
                    self.assertIn(params[keyword].kind, named, f"modal.{path}: `{keyword}` is not a keyword")
                if positional == -1:
                    self.assertTrue(any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params.values()),
                                    f"modal.{path} takes no *args")
                    positional = 3
                args = ["x"] * positional
                if is_method:
                    args.insert(0, object())
                signature.bind(*args, **{k: None for k in keywords})

    def test_bridge_calls_bind(self):
        self.check_table(parhelia_bridge.SDK_CALLS)

    def test_app_recipe_calls_bind(self):
        self.check_table(load_app_recipe().SDK_CALLS)

    def test_attributes_exist(self):
        for path in parhelia_bridge.SDK_ATTRIBUTES:
            with self.subTest(attribute=path):
                owner, name = path.rsplit(".", 1)
                self.assertTrue(hasattr(resolve(owner), name), f"modal.{path} does not exist")

    def test_mapped_exceptions_exist_and_none_is_shadowed(self):
        classes = []
        for name, kind in parhelia_bridge.EXCEPTION_KINDS:
            cls = getattr(modal.exception, name, None)
            self.assertTrue(isinstance(cls, type) and issubclass(cls, Exception), f"modal.exception.{name}")
            classes.append((name, cls, kind))
        # The bridge takes the first match: a subclass listed after its base would never be used.
        for i, (name_i, cls_i, kind_i) in enumerate(classes):
            for name_j, cls_j, kind_j in classes[i + 1:]:
                if kind_i != kind_j:
                    self.assertFalse(issubclass(cls_j, cls_i), f"{name_j} is shadowed by {name_i}")

    def test_result_shapes_the_bridge_reads(self):
        entry_fields = {f.name for f in dataclasses.fields(modal.volume.FileEntry)}
        self.assertTrue({"path", "type", "size", "mtime"} <= entry_fields)
        self.assertTrue({"FILE", "DIRECTORY"} <= set(modal.volume.FileEntryType.__members__))
        tunnel = importlib.import_module("modal._tunnel").Tunnel
        self.assertTrue({"host", "port"} <= {f.name for f in dataclasses.fields(tunnel)})
        self.assertIsInstance(inspect.getattr_static(tunnel, "url"), property)
        self.assertTrue(dataclasses.is_dataclass(importlib.import_module("modal.types").SandboxStats))

    def test_credentials_locations_match_the_sdk(self):
        config = importlib.import_module("modal.config")
        source = inspect.getsource(config)
        self.assertIn('os.environ.get("MODAL_CONFIG_PATH") or os.path.expanduser("~/.modal.toml")', source)
        self.assertIn("token_id", config._SETTINGS)
        self.assertIn("token_secret", config._SETTINGS)

    def test_a_missing_token_raises_the_message_the_bridge_recognises(self):
        source = inspect.getsource(importlib.import_module("modal.client"))
        self.assertIn("Token missing.", source)


if __name__ == "__main__":
    unittest.main()
