"""The stand-in's `modal.Secret`: a named secret is `$ROOT/secrets/<name>.json` (a JSON
object of environment variables), looked up when used, as the real one is hydrated lazily."""

from . import _local
from .exception import InvalidError, NotFoundError


class Secret:
    def __init__(self, name=None, values=None, required_keys=()):
        self._name, self._values, self._required = name, values, list(required_keys)

    @staticmethod
    def from_name(name, *, environment_name=None, required_keys=[], client=None):
        return Secret(name=name, required_keys=required_keys)

    @staticmethod
    def from_dict(env_dict={}):
        return Secret(values={k: v for k, v in env_dict.items() if v is not None})

    def hydrate(self, client=None):
        self.values()
        return self

    def values(self):
        """The environment variables (stand-in only)."""
        if self._values is None:
            _local.client()
            values = _local.read_json(_local.path("secrets", f"{self._name}.json"))
            if values is None:
                raise NotFoundError(f"Secret '{self._name}' not found in environment 'main'")
            if not isinstance(values, dict):
                raise InvalidError(f"stand-in secret {self._name}: not a JSON object")
            missing = [k for k in self._required if k not in values]
            if missing:
                raise NotFoundError(f"Secret '{self._name}' is missing key(s): {', '.join(missing)}")
            self._values = {str(k): str(v) for k, v in values.items()}
        return dict(self._values)
