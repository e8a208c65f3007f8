"""A multi-domain corpus from text already on the machine (no download), for the demo and tests.

Run through the CLI: `megamid data demo-corpus OUT [--size tiny|small] [--seed 0] [--tokenizer byte]`.

Domains (one JSONL file each, then one indexed dataset OUT/<domain>_text_document each):
  code      Python standard-library source files, one file per document
  prose     docstrings of standard-library modules (one module's docstrings per document) and the
            package descriptions in the environment's *.dist-info/METADATA files
  math      generated arithmetic and word problems, each with its worked answer
  long      repository-level documents (all files of one stdlib package concatenated, with file
            headers) and synthetic long retrieval documents (key-value facts in filler, a question
            and its answer at the end)
  pretrain  a disjoint share of stdlib code and docstrings: the replay source of the demo recipe
Deterministic for a seed on a given machine: file lists are sorted, every choice uses a seeded RNG.
"""

import ast
import itertools
import json
import os
import random
import sysconfig

# characters per domain; with the byte tokenizer tokens ~= bytes, so 'tiny' is ~2.3M tokens in all
SIZES = {
    "test": {"code": 60_000, "prose": 40_000, "math": 30_000, "long": 100_000, "pretrain": 40_000},
    "tiny": {"code": 400_000, "prose": 300_000, "math": 200_000, "long": 1_000_000, "pretrain": 400_000},
    "small": {"code": 3_000_000, "prose": 2_000_000, "math": 1_000_000, "long": 6_000_000, "pretrain": 3_000_000},
}
SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__", "ensurepip",
             "dist-packages", "config-3.11-x86_64-linux-gnu"}
MAX_FILE_CHARS = 40_000  # longer stdlib files go to the long domain only, as part of their package
LONG_DOC_CHARS = (16_000, 64_000)  # a long document's length range (characters)


def stdlib_files() -> list:
    """Sorted relative paths of the standard library's .py files, tests and tooling left out."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in sorted(filenames) if f.endswith(".py")]
    return sorted(out)


def _read(rel: str):
    try:
        with open(os.path.join(sysconfig.get_paths()["stdlib"], rel), encoding="utf-8") as f:
            return f.read()
    except (UnicodeDecodeError, OSError):
        return None


def module_docstrings(source: str) -> str:
    """The module's, classes' and functions' docstrings of one source file, as one prose text."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 80:
                title = getattr(node, "name", None)
                parts.append(f"{title}\n\n{doc}" if title else doc)
    return "\n\n".join(parts)


def package_descriptions():
    """Long descriptions from installed packages' METADATA (documentation text), sorted by path."""
    for base in sorted({p for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])}):
        if not os.path.isdir(base):
            continue
        for d in sorted(os.listdir(base)):
            path = os.path.join(base, d, "METADATA")
            if d.endswith(".dist-info") and os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    body = f.read().split("\n\n", 1)
                if len(body) == 2 and len(body[1]) >= 500:
                    yield {"text": body[1], "origin": f"{d}/METADATA"}


def _interleave(first, second, rng: random.Random):
    """Documents of two iterables in a seeded random interleaving, drawn lazily."""
    streams = [iter(first), iter(second)]
    while streams:
        k = rng.randrange(len(streams))
        try:
            yield next(streams[k])
        except StopIteration:
            streams.pop(k)


def _take(docs, budget: int) -> list:
    out, used = [], 0
    for doc in docs:
        if used >= budget:
            break
        out.append(doc)
        used += len(doc["text"])
    return out


def math_problem(rng: random.Random) -> str:
    kind = rng.randrange(4)
    a, b, c = rng.randint(2, 999), rng.randint(2, 99), rng.randint(2, 50)
    if kind == 0:
        return f"Compute {a} + {b} * {c}.\nAnswer: {b} * {c} = {b * c}, and {a} + {b * c} = {a + b * c}."
    if kind == 1:
        q, r = divmod(a, c)
        return f"Divide {a} by {c} with remainder.\nAnswer: {a} = {c} * {q} + {r}, so the quotient is {q} and the remainder {r}."
    name = rng.choice(["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "John"])
    item = rng.choice(["apples", "books", "marbles", "stamps", "coins", "pencils"])
    if kind == 2:
        return (f"{name} has {a} {item} and buys {c} boxes with {b} {item} in each. How many {item} does "
                f"{name} have now?\nAnswer: {c} * {b} = {c * b} new {item}; {a} + {c * b} = {a + c * b}.")
    x = rng.randint(-50, 50)
    return f"Solve for x: {c}x + {b} = {c * x + b}.\nAnswer: {c}x = {c * x + b} - {b} = {c * x}, so x = {x}."


def retrieval_document(rng: random.Random, filler: list, n_chars: int) -> str:
    """Filler sentences with key-value facts at random depths; the question asks for one of them."""
    keys = [f"{rng.choice(['red', 'blue', 'green', 'amber', 'violet'])}-{rng.randint(100, 999)}" for _ in range(8)]
    values = [rng.randint(10_000, 99_999) for _ in keys]
    lines, used = [], 0
    while used < n_chars:
        line = rng.choice(filler)
        lines.append(line)
        used += len(line) + 1
    for k, v in zip(keys, values):
        lines.insert(rng.randrange(len(lines) + 1), f"The value of key {k} is {v}.")
    j = rng.randrange(len(keys))
    return "\n".join(lines) + f"\n\nQuestion: what is the value of key {keys[j]}?\nAnswer: {values[j]}"


def build_documents(size: str = "tiny", seed: int = 0) -> dict:
    """{domain: [ {text, origin}, ... ]}: pure function of (size, seed) and the machine's files."""
    if size not in SIZES:
        raise ValueError(f"size={size!r} is invalid: expected one of {', '.join(SIZES)}")
    budget, rng = SIZES[size], random.Random(seed)
    files = stdlib_files()
    sources = {rel: _read(rel) for rel in files}
    sources = {rel: text for rel, text in sources.items() if text and text.strip()}
    order = sorted(sources)
    rng.shuffle(order)
    half = len(order) * 2 // 3  # two thirds for mid-training code/prose, the rest for pretrain replay
    mid, pre = order[:half], order[half:]
    short = lambda rels: [r for r in rels if len(sources[r]) <= MAX_FILE_CHARS]  # noqa: E731
    docstrings = lambda rels: ({"text": d, "origin": r} for r in rels  # noqa: E731 (lazy: ast is slow)
                               if len(d := module_docstrings(sources[r])) >= 300)

    code = _take(({"text": sources[r], "origin": r} for r in short(mid)), budget["code"])
    prose = _take(_interleave(docstrings(mid), package_descriptions(), rng), budget["prose"])
    pretrain = _take(_interleave(({"text": sources[r], "origin": r} for r in short(pre)), docstrings(pre), rng),
                     budget["pretrain"])

    math = _take(({"text": "\n\n".join(math_problem(rng) for _ in range(rng.randint(4, 16))), "origin": "generated"}
                  for _ in itertools.count()), budget["math"])

    packages = sorted({r.split(os.sep)[0] for r in files if os.sep in r})
    rng.shuffle(packages)
    repo_cap = max(LONG_DOC_CHARS[0], min(2 * LONG_DOC_CHARS[1], budget["long"] // 4))
    repo_docs = []
    for pkg in packages:
        text = "".join(f"# file: {r}\n{sources[r]}\n" for r in files if r.startswith(pkg + os.sep) and r in sources)
        if len(text) >= LONG_DOC_CHARS[0]:
            repo_docs.append({"text": text[:repo_cap], "origin": f"repo:{pkg}"})
    filler = [s.strip() for d in prose + pretrain for s in d["text"].split(". ") if 40 <= len(s.strip()) <= 200]
    filler = sorted(set(filler))
    long_docs, used, k = [], 0, 0
    while used < budget["long"]:
        if k % 2 == 0 and repo_docs:
            doc = repo_docs.pop(0)
        else:
            doc = {"text": retrieval_document(rng, filler, rng.randint(*LONG_DOC_CHARS)), "origin": "retrieval"}
        long_docs.append(doc)
        used += len(doc["text"])
        k += 1
    return {"code": code, "prose": prose, "math": math, "long": long_docs, "pretrain": pretrain}


def write_corpus(out_dir: str, size: str = "tiny", seed: int = 0, tokenizer: str = "byte",
                 workers: int = 1) -> dict:
    """Write OUT/<domain>.jsonl, tokenize each to OUT/<domain>_text_document; returns the manifest."""
    from megamid.data.prepare import prepare  # local: megatron loads only when tokenizing

    os.makedirs(out_dir, exist_ok=True)
    manifest = {"size": size, "seed": seed, "tokenizer": tokenizer, "domains": {}}
    for domain, docs in build_documents(size, seed).items():
        path = os.path.join(out_dir, f"{domain}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps({"text": doc["text"], "domain": domain, "origin": doc["origin"]}) + "\n")
        entry = {"jsonl": path, "documents": len(docs), "chars": sum(len(d["text"]) for d in docs)}
        if tokenizer:
            prefix = os.path.join(out_dir, f"{domain}_text_document")
            stats = prepare([path], tokenizer, prefix, workers=workers)
            entry.update(prefix=prefix, tokens=stats["total"]["tokens"], kept_documents=stats["total"]["documents"])
        manifest["domains"][domain] = entry
    with open(os.path.join(out_dir, "corpus.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
