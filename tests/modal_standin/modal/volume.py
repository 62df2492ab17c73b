"""The stand-in's `modal.Volume`: a volume is the directory `$ROOT/volumes/<name>/`.
Handles are lazy like the real ones (`from_name` touches nothing; the first use or
`hydrate()` finds or creates the volume). Errors follow modal 1.6.4: a missing volume is
NotFoundError, `read_file`/`remove_file` of a missing path FileNotFoundError, an upload
over an existing file without `force` FileExistsError."""

import json
import os
import shutil

from . import _local
from .exception import InvalidError, NotFoundError
from .types import FileEntry, FileEntryType

_UPLOAD_PREFIX = ".standin-upload-"
CHUNK = 64 * 1024


def _relative(path):
    rel = (path or "").strip().strip("/")
    if any(part == ".." for part in rel.split("/")):
        raise InvalidError(f"path {path!r} leaves the volume")
    return rel


class Volume:
    def __init__(self, name, create_if_missing=False, version=None):
        self._name, self._create, self._version = name, create_if_missing, version
        self._dir, self.object_id = None, None

    @staticmethod
    def from_name(name, *, environment_name=None, create_if_missing=False, version=None, create_options=None,
                  client=None):
        if not name or "/" in name:
            raise InvalidError(f"Invalid Volume name: {name!r}")
        return Volume(name, create_if_missing, version)

    @property
    def name(self):
        return self._name

    def hydrate(self, client=None):
        root = _local.client()
        directory = os.path.join(root, "volumes", self._name)
        meta_file = os.path.join(root, "volume-meta", f"{self._name}.json")
        with _local.locked():
            meta = _local.read_json(meta_file)
            if meta is None or not os.path.isdir(directory):
                if not self._create:
                    raise NotFoundError(f"Volume '{self._name}' not found in environment 'main'")
                _local.makedirs_public(directory)
                os.chmod(directory, 0o755)
                meta = {"volume_id": _local.new_id("vo"), "version": self._version or 2}
                _local.write_json(meta_file, meta)
        if self._version is not None and self._version != meta["version"]:
            raise InvalidError(f"Volume '{self._name}' is version {meta['version']}, not {self._version}")
        self._dir, self.object_id = directory, meta["volume_id"]
        return self

    def storage_dir(self):
        """Where the files are (stand-in only)."""
        if self._dir is None:
            self.hydrate()
        return self._dir

    def _local_path(self, path):
        rel = _relative(path)
        return rel, os.path.join(self.storage_dir(), rel) if rel else self.storage_dir()

    def _entry(self, rel, full):
        st = os.lstat(full)
        if os.path.isdir(full):
            kind, size = FileEntryType.DIRECTORY, 0
        elif os.path.islink(full):
            kind, size = FileEntryType.SYMLINK, st.st_size
        else:
            kind, size = FileEntryType.FILE, st.st_size
        return FileEntry(path=rel, type=kind, mtime=int(st.st_mtime), size=size)

    def iterdir(self, path, *, recursive=True):
        if path.endswith("*"):
            raise InvalidError("Glob patterns in `volume get` and `Volume.listdir()` are deprecated.")
        rel, full = self._local_path(path)
        if not os.path.lexists(full):
            raise NotFoundError(f"No such file or directory: {path}")
        if not os.path.isdir(full):
            yield self._entry(rel, full)
            return
        for current, dirs, files in os.walk(full):
            dirs.sort()
            names = sorted(dirs + [f for f in files if not f.startswith(_UPLOAD_PREFIX)])
            for name in names:
                child = os.path.join(current, name)
                yield self._entry(os.path.relpath(child, self.storage_dir()), child)
            if not recursive:
                break

    def listdir(self, path, *, recursive=False):
        return list(self.iterdir(path, recursive=recursive))

    def read_file(self, path):
        """A generator of chunks, like the real one (errors come with the first chunk)."""
        rel, full = self._local_path(path)
        if not os.path.isfile(full):
            if os.path.isdir(full):
                raise InvalidError(f"{path} is a directory")
            raise FileNotFoundError(f"No such file: {path}")
        with open(full, "rb") as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    return
                yield chunk

    def remove_file(self, path, recursive=False):
        rel, full = self._local_path(path)
        if not rel:
            raise InvalidError("cannot remove the root of a volume")
        if not os.path.lexists(full):
            raise FileNotFoundError(f"No such file or directory: {path}")
        if os.path.isdir(full) and not os.path.islink(full):
            if recursive:
                shutil.rmtree(full)
            elif os.listdir(full):
                raise InvalidError(f"{path} is a non-empty directory: remove it with recursive=True")
            else:
                os.rmdir(full)
        else:
            os.unlink(full)

    def batch_upload(self, force=False):
        self.storage_dir()
        return _BatchUpload(self, force)

    def commit(self):
        pass

    def reload(self):
        pass


class _BatchUpload:
    """All files of a batch land together when the `with` block ends without an error."""

    def __init__(self, volume, force):
        self._volume, self._force, self._items = volume, force, []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._commit()
        return False

    def put_file(self, local_file, remote_path, mode=None):
        remote_path = str(remote_path)
        if remote_path.endswith("/"):
            raise ValueError(f"remote_path ({remote_path}) must refer to a file - cannot end with /")
        self._items.append((local_file, remote_path, mode))

    def put_directory(self, local_path, remote_path, recursive=True):
        local_path = str(local_path)
        assert os.path.isdir(local_path)
        for current, dirs, files in os.walk(local_path):
            for name in files:
                child = os.path.join(current, name)
                rel = os.path.relpath(child, local_path)
                self._items.append((child, f"{str(remote_path).rstrip('/')}/{rel}", None))
            if not recursive:
                break

    def _record(self, files):
        """Stand-in only: each committed batch, one JSON line in `$ROOT/volume-uploads.jsonl`
        ({"volume", "files": [[path, size], ...]}), for tests that count what was uploaded."""
        line = json.dumps({"volume": self._volume.name, "files": files})
        with _local.locked():
            with open(_local.path("volume-uploads.jsonl"), "a") as out:
                out.write(line + "\n")

    def _commit(self):
        staged = []
        try:
            for local_file, remote_path, mode in self._items:
                rel, full = self._volume._local_path(remote_path)
                if os.path.isdir(full):
                    raise InvalidError(f"{remote_path} is a directory: a file cannot replace it")
                if os.path.lexists(full) and not self._force:
                    raise FileExistsError(f"{remote_path} already exists")
                _local.makedirs_public(os.path.dirname(full))
                tmp = os.path.join(os.path.dirname(full), _UPLOAD_PREFIX + _local.new_id("up"))
                if isinstance(local_file, (str, os.PathLike)):
                    shutil.copyfile(local_file, tmp)
                else:
                    with open(tmp, "wb") as out:
                        shutil.copyfileobj(local_file, out)
                os.chmod(tmp, mode if mode is not None else 0o644)
                staged.append((tmp, full))
            for tmp, full in staged:
                os.replace(tmp, full)
            self._record([(os.path.relpath(full, self._volume.storage_dir()), os.path.getsize(full))
                          for _, full in staged])
        finally:
            for tmp, _ in staged:
                if os.path.exists(tmp):
                    os.unlink(tmp)
