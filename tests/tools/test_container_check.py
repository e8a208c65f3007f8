"""The Dockerfile's build checks, emulated on CPU: its pins, and its import check run from outside the source
tree against an installed copy of the package (and failing against the checkout, the old bug)."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import container_check  # noqa: E402


def dockerfile() -> str:
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        return f.read()


def run_lines(text: str) -> list:
    """The RUN instructions with line continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line[4:].strip() for line in joined.splitlines() if line.startswith("RUN ")]


def args(text: str) -> dict:
    return dict(re.findall(r"^ARG (\w+)=\"?([^\"\n]*)\"?$", text, re.M))


def test_pins_go_together():
    text = dockerfile()
    base = re.search(r"^FROM (\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base), base      # a dated NGC tag
    pins = args(text)
    assert re.fullmatch(r"\d+\.\d+\.\d+", pins["MEGATRON_CORE_VERSION"])
    runs = run_lines(text)
    assert any('pip install --no-deps "megatron-core==${MEGATRON_CORE_VERSION}"' in r for r in runs)
    assert any(re.search(r"pip install .*\btokenizers\b", r) for r in runs)
    # megamid itself: a real install (not -e), against the image's torch, after the sources are copied
    install = [r for r in runs if r.startswith("pip install --no-build-isolation")]
    assert install == ["pip install --no-build-isolation --no-deps ."]
    assert text.index("COPY . /opt/megamid") < text.index(install[0])
    # the TE range is what this megatron-core declares for its TE extra
    from importlib.metadata import requires, version

    te_req = next(r for r in requires("megatron-core") if r.startswith("transformer-engine"))
    if version("megatron-core") == pins["MEGATRON_CORE_VERSION"]:
        assert f">={pins['TE_MIN']}" in te_req and f"<{pins['TE_BELOW']}" in te_req, te_req


def check_command(text: str, cuda: bool) -> list:
    """The Dockerfile's check as an argv for this machine: /opt/megamid -> this checkout, ARGs expanded,
    the GPU-image-only parts (CUDA kernels, TE) dropped where this machine has neither."""
    (line,) = [r for r in run_lines(text) if "container_check.py" in r]
    assert line.startswith("cd / && python /opt/megamid/tools/container_check.py")
    for name, value in args(text).items():
        line = line.replace("${" + name + "}", value)
    argv = shlex.split(line.split("&&", 1)[1])[1:]
    argv = [a.replace("/opt/megamid", ROOT) for a in argv]
    drop = {"--te-min", "--te-below"}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if a == "--cuda-kernels" and not cuda:
            continue
        out.append(a)
    return [sys.executable] + out


@pytest.fixture
def installed(tmp_path):
    """An installed copy of the package (what `pip install .` puts in site-packages), compiled modules included."""
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "megamid"), site / "megamid",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_import_check_passes_outside_the_tree_against_the_installed_package(installed, tmp_path):
    argv = check_command(dockerfile(), cuda=False)
    env = dict(os.environ, PYTHONPATH=str(installed))
    result = subprocess.run(argv, cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"from {installed / 'megamid'}" in result.stdout


def test_import_check_fails_inside_the_source_tree():
    """The old Dockerfile ran its check in WORKDIR /opt/megamid: it imported the checkout."""
    argv = check_command(dockerfile(), cuda=False)
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "import megamid found the source tree" in result.stderr


def test_check_names_each_missing_piece(installed, monkeypatch):
    for name in list(sys.modules):
        if name == "megamid" or name.startswith("megamid."):
            monkeypatch.delitem(sys.modules, name)
    (installed / "megamid" / "_C.py").write_text("raise ImportError('not built')\n")
    for so in (installed / "megamid").glob("_C*.so"):
        so.unlink()
    monkeypatch.syspath_prepend(str(installed))
    failures = container_check.check(source_tree=ROOT, cuda_kernels=True, megatron_core="0.0.1",
                                     te_min="2.9", te_below="2.12")
    text = "\n".join(failures)
    assert "import megamid._C failed (not built)" in text
    assert "megamid._cuda not found" in text
    assert "megatron-core 0.16.1 installed, the image pins 0.0.1" in text or "the image pins 0.0.1" in text
    assert "Transformer Engine is not installed" in text


def test_version_ranges():
    v = container_check._version_tuple
    assert v("2.9.0+a1b2c3") >= v("2.9") and v("2.11.0") < v("2.12") and not v("2.12.0.dev0") < v("2.12")
    assert v("2.8.1") < v("2.9")
