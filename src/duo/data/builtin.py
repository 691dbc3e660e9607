"""The built-in corpus: English documentation that ships with every CPython.

It needs no network and no download, so a laptop can train a small model in minutes.
Text comes from ``pydoc_data.topics`` (the language reference topics behind ``help()``)
and from docstrings of a fixed list of standard-library modules. Everything is
deterministic for a given Python build: modules, members and documents are visited in
sorted order and deduplicated by exact text, and nothing depends on PYTHONHASHSEED.

Live module attributes are process state: pytest swaps ``threading.excepthook`` and
``pdb.set_trace``, logging may swap ``warnings.showwarning``. So the documents are
collected by running this file in a fresh, isolated interpreter (``python -I -S``: no
site-packages, no environment), which sees only pristine standard-library objects. This
file therefore imports nothing outside the standard library.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import subprocess
import sys
import warnings
from types import ModuleType

__all__ = ["BUILTIN_MODULES", "MIN_DOC_CHARS", "builtin_documents", "collect_documents"]

# Pure-python or always-present C modules whose import has no side effects (no GUI, no
# network, no easter eggs such as `this` or `antigravity`). Optional ones (sqlite3, ssl,
# ctypes, ...) may be missing from a build and are skipped.
BUILTIN_MODULES: tuple[str, ...] = tuple(
    sorted(
        """
abc argparse ast asyncio asyncio.base_events asyncio.events asyncio.futures asyncio.locks
asyncio.queues asyncio.streams asyncio.subprocess asyncio.tasks base64 bdb binascii bisect
builtins bz2 calendar cmath cmd code codecs codeop collections collections.abc colorsys
concurrent.futures configparser contextlib contextvars copy copyreg csv ctypes dataclasses
datetime decimal difflib dis doctest email email.headerregistry email.message email.policy
email.utils enum errno filecmp fileinput fnmatch fractions ftplib functools gc getopt getpass
gettext glob graphlib gzip hashlib heapq hmac html html.parser http http.client
http.cookiejar http.cookies http.server imaplib importlib importlib.abc importlib.machinery
importlib.metadata importlib.resources importlib.util inspect io ipaddress itertools json
json.decoder json.encoder keyword linecache locale logging logging.config logging.handlers
lzma mailbox marshal math mimetypes multiprocessing multiprocessing.connection
multiprocessing.managers multiprocessing.pool multiprocessing.shared_memory netrc numbers
operator optparse os os.path pathlib pdb pickle pickletools pkgutil platform plistlib poplib
pprint profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter
runpy sched secrets select selectors shelve shlex shutil signal smtplib socket socketserver
sqlite3 ssl stat statistics string struct subprocess symtable sys sysconfig tabnanny tarfile
tempfile textwrap threading time timeit token tokenize tomllib trace traceback tracemalloc
types typing unicodedata unittest unittest.case unittest.mock unittest.result unittest.suite
urllib.error urllib.parse urllib.request urllib.robotparser uuid warnings weakref wave
xml.dom xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree xml.sax xml.sax.handler
xml.sax.saxutils xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
""".split()
    )
)

# One-line docstrings ("Return self.") teach nothing and would dominate the document count.
MIN_DOC_CHARS = 64


def _member_docs(module: ModuleType) -> list[str]:
    """Docstrings of a module, its public classes/functions and their public methods."""
    objects: list[object] = [module]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        if inspect.isclass(obj):
            objects.append(obj)
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(member, (classmethod, staticmethod)):
                    member = member.__func__
                if inspect.isroutine(member) or inspect.isdatadescriptor(member):
                    objects.append(member)
        elif inspect.isroutine(obj):
            objects.append(obj)
    docs = []
    for obj in objects:
        try:
            doc = inspect.getdoc(obj)
        except Exception:  # a broken __doc__ property must not take the corpus down
            continue
        if doc:
            docs.append(doc)
    return docs


def collect_documents() -> list[str]:
    """Collect the documents in this process (use :func:`builtin_documents` instead)."""
    from pydoc_data.topics import topics

    docs = [topics[key].strip() for key in sorted(topics)]
    for name in BUILTIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # optional modules (sqlite3, ssl, ...) absent from this build
            continue
        docs.extend(_member_docs(module))
    seen: set[str] = set()
    unique = []
    for doc in docs:
        # inspect.getdoc inherits docstrings, so the same text shows up many times.
        if len(doc) >= MIN_DOC_CHARS and doc not in seen:
            seen.add(doc)
            unique.append(doc)
    return unique


@functools.lru_cache(maxsize=1)
def builtin_documents() -> tuple[str, ...]:
    """All built-in documents in a fixed order (about 1.5 MB of text on CPython 3.11)."""
    cmd = [sys.executable, "-I", "-S", "-W", "ignore", __file__]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=120)
        return tuple(json.loads(out.stdout.decode("utf-8")))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        # Still correct, only possibly different text: caches key on the content hash.
        warnings.warn(f"isolated collection of the builtin corpus failed ({exc}); collecting in-process", stacklevel=2)
        return tuple(collect_documents())


if __name__ == "__main__":
    sys.stdout.buffer.write(json.dumps(collect_documents()).encode("utf-8"))
