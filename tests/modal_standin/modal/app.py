"""The stand-in's `modal.App`: `App.lookup` records apps in the state root; a local
`App(...)` only collects functions (enough for images/modal/app.py to import)."""

import time

from . import _local
from .exception import InvalidError, NotFoundError


class _Function:
    def __init__(self, fn, options):
        self._fn, self.options = fn, options
        self.__name__ = getattr(fn, "__name__", "function")
        self.__doc__ = getattr(fn, "__doc__", None)

    def local(self, *args, **kwargs):
        return self._fn(*args, **kwargs)

    def remote(self, *args, **kwargs):  # the stand-in runs everything here
        return self._fn(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._fn(*args, **kwargs)


class App:
    def __init__(self, name=None, *, tags=None, image=None, secrets=[], volumes={}, include_source=True):
        self._name, self._app_id = name, None
        self.registered_functions = {}

    @staticmethod
    def lookup(name, *, client=None, environment_name=None, create_if_missing=False):
        _local.client()
        if not name or not isinstance(name, str):
            raise InvalidError(f"Invalid App name: {name!r}")
        with _local.locked():
            apps = _local.read_json(_local.path("apps.json"), {})
            if name not in apps:
                if not create_if_missing:
                    raise NotFoundError(f"App '{name}' not found in environment 'main'")
                apps[name] = {"app_id": _local.new_id("ap"), "created_at": time.time()}
                _local.write_json(_local.path("apps.json"), apps)
        app = App(name)
        app._app_id = apps[name]["app_id"]
        return app

    @property
    def name(self):
        return self._name

    @property
    def app_id(self):
        return self._app_id

    def function(self, _warn_parentheses_missing=None, **options):
        def register(fn):
            wrapped = _Function(fn, options)
            self.registered_functions[wrapped.__name__] = wrapped
            return wrapped

        return register

    def local_entrypoint(self, *args, **kwargs):
        return lambda fn: fn
