"""The span viewer, opened in headless Chromium as a person would."""

import shutil
import subprocess

import pytest

from mycelium.data import load
from mycelium.store import TraceStore
from mycelium.teacher import TeacherConfig
from mycelium.trace import TraceConfig
from mycelium.tracer import run_traces
from mycelium.viewer import page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def traced(tmp_path_factory, tiny_teacher_dir):
    out = tmp_path_factory.mktemp("run") / "traces"
    cfg = TraceConfig(teacher=TeacherConfig(model=tiny_teacher_dir), shard_size=4)
    run_traces(load("gsm8k", "train")[:2], cfg, out, progress=False)
    return TraceStore(out)


def test_page_has_regions_boundaries_and_curve(traced):
    html = page(traced.get("gsm8k/train/0"))
    assert html.startswith("<!doctype html>") and "gsm8k/train/0" in html
    assert 'class="region"' in html and 'class="boundary"' in html and 'class="gold"' in html
    assert 'id="jsd" alt="JSD curve" src="data:image/png;base64,' in html
    assert "http://" not in html and "https://" not in html  # self-contained


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by `make test`")
def test_page_in_headless_chromium(traced, tmp_path):
    path = tmp_path / "page.html"
    path.write_text(page(traced.get("gsm8k/train/0")))
    user = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user}", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    for element in ('id="problem"', 'id="solution"', 'id="steps"', 'id="jsd"', 'class="region"', 'class="boundary"'):
        assert element in dom, element
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={user}", f"--screenshot={shot}", "--window-size=1100,1400",
                    path.as_uri()], capture_output=True, timeout=120)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05  # not blank
    # the step colours are painted: some pixels are strongly coloured, not grey
    assert (pixels.max(-1) - pixels.min(-1) > 0.3).mean() > 0.002
