"""Read a Lightning / ``torch.save`` zip archive without running code from it.

Published Duo / MDLM checkpoints carry, besides tensors, the objects that
``save_hyperparameters()`` stored: an OmegaConf ``DictConfig`` and a Hugging Face
tokenizer. ``torch.load(weights_only=True)`` refuses them and ``weights_only=False``
would import and run whatever the pickle names. Here the pickle is read by an
``Unpickler`` whose ``find_class`` hands out only:

- what PyTorch's ``weights_only`` loader allows (tensor rebuild functions, storages,
  dtypes, ``collections.OrderedDict``, ...) and plain builtin containers and scalars;
- for the classes these files are known to hold (OmegaConf containers and nodes,
  Lightning's ``AttributeDict``, ``transformers`` / ``tokenizers`` tokenizer classes,
  ``typing.Any``), an :class:`InertRecord` subclass that only stores the arguments and
  state the pickle passes to it: the real class is never imported or called.

Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) stops the
load in ``find_class``, before anything could call it. The zip is opened here (not by
``torch.load``, which would hand TorchScript-looking archives to ``torch.jit.load``),
and storages are read from ``<archive>/data/<key>`` as bytes.
"""

from __future__ import annotations

import io
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

__all__ = ["InertRecord", "RefusedGlobal", "load_restricted", "is_torch_zip", "to_plain"]

REFUSAL = ("checkpoint {path!r} would import {name} when loaded; refusing it (only tensors, "
           "plain containers and known config/tokenizer records are allowed)")


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allowlist."""

    def __init__(self, module: str, name: str):
        shown = "os" if module in ("posix", "nt") else module  # os.system pickles as posix.system
        super().__init__(f"{shown}.{name}")
        self.qualified = f"{shown}.{name}"


class InertRecord:
    """Stand-in for an instance of a known class: what the pickle gave it, nothing more.

    ``args`` holds constructor / ``__new__`` arguments, ``state`` what ``__setstate__``
    received, ``items`` / ``elements`` what dict- or list-like classes were filled with.
    """

    module: ClassVar[str] = ""
    qualname: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertRecord":
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        obj.items, obj.elements = {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # the pickle's REDUCE lands here
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Any) -> None:
        self.elements.extend(values)

    @classmethod
    def full_name(cls) -> str:
        return f"{cls.module}.{cls.qualname}"

    def state_dict(self) -> dict:
        """``state`` as a dict (pickle's (dict, slots) pair and None are folded in)."""
        s = self.state
        if isinstance(s, tuple) and len(s) == 2 and all(x is None or isinstance(x, dict) for x in s):
            return {**(s[0] or {}), **(s[1] or {})}
        return dict(s) if isinstance(s, dict) else {}

    def __repr__(self) -> str:
        return f"<inert {self.full_name()}>"


_RECORD_CLASSES: dict[tuple[str, str], type[InertRecord]] = {}


def _record_class(module: str, name: str) -> type[InertRecord]:
    key = (module, name)
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = type(f"Inert_{name}", (InertRecord,), {"module": module, "qualname": name})
    return _RECORD_CLASSES[key]


_ATTRIBUTE_DICTS = {
    ("lightning.fabric.utilities.data", "AttributeDict"),
    ("lightning_fabric.utilities.data", "AttributeDict"),
    ("lightning.pytorch.utilities.parsing", "AttributeDict"),
    ("pytorch_lightning.utilities.parsing", "AttributeDict"),
}


def _is_known_record(module: str, name: str) -> bool:
    top = module.split(".")[0]
    if top == "omegaconf":
        return True
    if top == "tokenizers":  # Rust-backed classes whose pickled state is JSON text
        return True
    if top == "transformers":  # tokenizer classes, AddedToken, their enums
        return name[:1].isupper()
    if (module, name) in _ATTRIBUTE_DICTS:
        return True
    return (module, name) in {("typing", "Any"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                              ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")}


_BUILTINS = {name: getattr(__import__("builtins"), name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes",
    "bytearray", "bool", "object")}
# Protocol 2 (torch.save's) writes Python 2 names: __builtin__.long, commands.Popen, ...
_PY2_NAMES = {"long": "int", "unicode": "str", "basestring": "str"}


def _py3_name(module: str, name: str) -> tuple[str, str]:
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name
# Tensor-subclass and numpy paths of the weights_only allowlist are left out: Lightning
# checkpoints hold plain tensors and parameters.
_SKIPPED_TORCH = {"torch._tensor._rebuild_from_type_v2", "torch._utils._rebuild_wrapper_subclass",
                  "torch._utils._rebuild_device_tensor_from_numpy"}


def _torch_allowed() -> dict[str, Any]:
    from torch import _weights_only_unpickler as wo

    allowed = {k: v for k, v in wo._get_allowed_globals().items() if k not in _SKIPPED_TORCH}
    return allowed


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects), limited to records and containers."""
    if isinstance(cls, type) and issubclass(cls, InertRecord):
        return cls.__new__(cls)
    if cls in _BUILTINS.values() and base is cls:
        return cls() if state is None else cls(state)
    raise RefusedGlobal(getattr(cls, "__module__", "?"), getattr(cls, "__qualname__", repr(cls)))


def _safe_newobj(cls: Any, *args: Any) -> Any:
    if isinstance(cls, type) and (issubclass(cls, InertRecord) or cls in _BUILTINS.values()):
        return cls.__new__(cls, *args)
    raise RefusedGlobal(getattr(cls, "__module__", "?"), getattr(cls, "__qualname__", repr(cls)))


class _StorageKind:
    """What ``find_class('torch', 'FloatStorage')`` gives: only a dtype, for persistent_load."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _may_take_state(obj: Any) -> bool:
    """What BUILD may set state on: records, tensors and plain containers it made. Never a
    class, function or storage the allowlist handed out (those are shared by the whole
    process: setting their attributes would outlive a refused file)."""
    return (isinstance(obj, (InertRecord, torch.Tensor, dict, list, set))
            and not isinstance(obj, type))


class RestrictedUnpickler(pickle._Unpickler):
    """``find_class`` per the module docstring; storages come from ``read_storage``; BUILD
    only on the objects :func:`_may_take_state` accepts. The pure-Python unpickler, as
    the C one cannot have an opcode replaced (the pickles here are small: tensor data
    is read through ``persistent_load``)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_build(self) -> None:
        target = self.stack[-2]
        if not _may_take_state(target):
            raise RefusedGlobal(getattr(target, "__module__", type(target).__module__),
                                f"{getattr(target, '__qualname__', type(target).__qualname__)} (state)")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build

    def __init__(self, file: io.BytesIO, read_storage: Callable[[str, torch.dtype, int], Any]):
        super().__init__(file, encoding="utf-8")
        self._read_storage = read_storage
        self._allowed = _torch_allowed()
        self._storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle's hook
        module, name = _py3_name(module, name)
        if module == "builtins":
            name = _PY2_NAMES.get(name, name)
            if name in _BUILTINS:
                return _BUILTINS[name]
        if module == "torch" and name.endswith("Storage"):
            dtype = _storage_dtype(name)
            if dtype is not None:
                return _StorageKind(dtype)
        if module == "collections" and name in ("OrderedDict", "defaultdict"):
            import collections

            return getattr(collections, name)
        if module == "copyreg" and name == "_reconstructor":
            return _safe_reconstructor
        if module == "copyreg" and name == "__newobj__":
            return _safe_newobj
        full = f"{module}.{name}"
        if full in self._allowed:
            return self._allowed[full]
        if _is_known_record(module, name):
            return _record_class(module, name)
        raise RefusedGlobal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageKind) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if key not in self._storages:
            untyped = self._read_storage(key, kind.dtype, int(numel))
            self._storages[key] = torch.storage.TypedStorage(
                wrap_storage=untyped, dtype=kind.dtype, _internal=True)
        return self._storages[key]


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}


def _storage_dtype(name: str) -> torch.dtype | None:
    return _STORAGE_DTYPES.get(name)


def is_torch_zip(path: str | Path) -> bool:
    """True for a zip archive with a ``*/data.pkl`` (the format of ``torch.save``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_restricted(path: str | Path) -> Any:
    """The object a ``torch.save`` zip holds, with tensors on CPU and known classes as records.

    Raises ``ValueError`` (one line) for a global outside the allowlist or a file that is
    not a readable torch zip archive.
    """
    p = Path(path)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"checkpoint {str(p)!r} is corrupt or not a torch checkpoint ({type(err).__name__})") from None
    with zf:
        names = zf.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl")), "data.pkl" if "data.pkl" in names else None)
        if pkl is None:
            raise ValueError(f"checkpoint {str(p)!r} is a zip file without data.pkl; not a torch checkpoint")
        prefix = pkl[: -len("data.pkl")]
        order = zf.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if order != sys.byteorder:
            raise ValueError(f"checkpoint {str(p)!r} was saved {order}-endian; convert it on a {order}-endian machine")

        def read_storage(key: str, dtype: torch.dtype, numel: int):
            record = f"{prefix}data/{key}"
            if record not in names:
                raise pickle.UnpicklingError(f"storage {key!r} missing from the archive")
            raw = bytearray(zf.read(record))
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key!r} is truncated")
            if not raw:
                return torch.UntypedStorage(0)
            return torch.frombuffer(raw, dtype=torch.uint8).untyped_storage()

        try:
            return RestrictedUnpickler(io.BytesIO(zf.read(pkl)), read_storage).load()
        except RefusedGlobal as err:
            raise ValueError(REFUSAL.format(path=str(p), name=err.qualified)) from None
        except Exception as err:  # noqa: BLE001 - any other unpickling failure: unusable file
            raise ValueError(
                f"checkpoint {str(p)!r} is corrupt or not a torch checkpoint ({type(err).__name__}: {str(err)[:120]})"
            ) from None


# --- turning records into plain data -------------------------------------------------


def _omega_content(record: InertRecord) -> Any:
    state = record.state_dict()
    if "_content" in state:
        return state["_content"]
    if "_val" in state:
        return state["_val"]
    return None


def to_plain(obj: Any) -> Any:
    """OmegaConf records -> dicts / lists / scalars, AttributeDicts -> dicts, recursively.

    Other records (tokenizers, ...) are returned unchanged.
    """
    if isinstance(obj, InertRecord):
        cls = type(obj)
        if cls.module.startswith("omegaconf"):
            return to_plain(_omega_content(obj))
        if (cls.module, cls.qualname) in _ATTRIBUTE_DICTS:
            return {to_plain(k): to_plain(v) for k, v in {**obj.items, **obj.state_dict()}.items()}
        return obj
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj) if isinstance(obj, list) else tuple(to_plain(v) for v in obj)
    return obj
