"""``lumos demo``: the checks and cancelling of :class:`lumos.demo.DemoApp` in-process, then the
app itself in a subprocess on a free localhost port: the ``/generate`` API through
``gradio_client``, and the page in a real headless browser (Debian's chromium through its
chromedriver; no browser is downloaded). Skips when Gradio, Selenium or chromium is missing
(``.ci/run`` installs them)."""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lumos.cli.main import main
from lumos.data.video_io import read_video, write_video
from lumos.data.world import Scene, WorldObject, render
from lumos.demo import LIVE_HEIGHT, Cancelled, DemoApp, Limits, contact_sheet
from lumos.errors import LumosError
from lumos.evaluation.analyser import analyse

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def pipe():
    from lumos.generation.pipeline import LumosPipeline

    return LumosPipeline.from_pretrained()


# ---- in-process: checks, uploads, cancel -------------------------------------------------------


def test_check_limits(pipe, tmp_path):
    app = DemoApp(pipe, tmp_path, Limits(max_frames=17, max_side=96, max_steps=20))
    ok = app.check("a red circle moves to the left", 9, 64, 80, 8, 3.0, 0.5, 7)
    assert ok.seed == 7 and ok.kwargs["num_frames"] == 9 and ok.kwargs["width"] == 80
    assert app.check("a red circle", 9.0, 64, 64, 8, 3.0).kwargs["num_frames"] == 9
    seeds = {app.check("a red circle", 9, 64, 64, 8, 3.0, seed=-1).seed for _ in range(4)}
    assert len(seeds) > 1  # a negative or missing seed is drawn at random
    assert (
        app.check("a red circle", 9, 64, 64, 8, 3.0, mode="text-to-image").kwargs["num_frames"] == 1
    )
    bad = [
        (("  ", 9, 64, 64, 8, 3.0), "the prompt is empty"),
        (("x" * 501, 9, 64, 64, 8, 3.0), "at most 500 are allowed"),
        (("a red circle", 1000, 64, 64, 8, 3.0), "frames must be an integer 1..17, got 1000"),
        (("a red circle", 8, 64, 64, 8, 3.0), "1 + 4k"),
        (("a red circle", 9, 128, 64, 8, 3.0), "height must be an integer 8..96"),
        (("a red circle", 9, 60, 64, 8, 3.0), "multiples of 8"),
        (("a red circle", 9, 64, 64, 21, 3.0), "steps must be an integer 1..20"),
        (("a red circle", 9, 64, 64, 8, float("nan")), "guidance must be a finite number"),
        (("a red circle", 9, 64, 64, 8, 3.0, 1.0), "history mask ratio"),
    ]
    for args, message in bad:
        with pytest.raises(LumosError, match=message.replace("+", r"\+")):
            app.check(*args)
    with pytest.raises(LumosError, match="needs a start image"):
        app.check("a red circle", 9, 64, 64, 8, 3.0, mode="image-to-video")


def test_uploads(pipe, tmp_path):
    app = DemoApp(pipe, tmp_path / "work", Limits(max_upload_mb=1))
    rng = np.random.default_rng()
    image = tmp_path / "start.png"
    write_video(image, rng.integers(0, 256, (1, 48, 100, 3), dtype=np.uint8), 1)
    req = app.check("a red circle", 9, 64, 80, 4, 3.0, upload=str(image), mode="image-to-video")
    assert req.kwargs["image"].shape == (64, 80, 3) and req.kwargs["image"].dtype == np.uint8
    made = [e[1] for e in app.run(req) if e[0] == "frames"]  # the given frame comes first
    assert [f.shape for f in made] == [(1, 64, 80, 3), (4, 64, 80, 3), (4, 64, 80, 3)]
    clip = tmp_path / "clip.mp4"  # a red circle moving left, to continue
    scene = Scene((WorldObject("circle", "red", "large", "left", 0.6, 0.5),), "grey")
    write_video(clip, render(scene, 48, 60, 9), 4)
    req = app.check("a red circle moves to the left", 13, 64, 80, 4, 3.0, upload=str(clip),
                    mode="video continuation")  # fmt: skip
    assert req.kwargs["video"].shape == (9, 64, 80, 3)
    made = [e[1] for e in app.run(req) if e[0] == "frames"]  # the kept end of the clip first
    assert [len(f) for f in made] == [5, 4, 4]
    assert [o.color for o in analyse(np.concatenate(made)).objects] == ["red"]
    with pytest.raises(LumosError, match="video continuation needs a video: upload one"):
        app.check("a red circle", 9, 64, 64, 4, 3.0, mode="video continuation")
    text = tmp_path / "notes.png"  # an image by its name only
    text.write_text("not an image\n")
    with pytest.raises(LumosError, match="notes.png is not an image or video"):
        app.read_upload(text, 64, 64)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(LumosError, match=r"big.mp4 is 2.0 MB; at most 1 MB"):
        app.read_upload(big, 64, 64)


def test_run_streams_and_cancel_stops_within_a_step(pipe, tmp_path):
    app = DemoApp(pipe, tmp_path)
    req = app.check("a blue square moves up", 9, 64, 64, 4, 3.0, seed=3)
    events = list(app.run(req))
    frames = [e[1] for e in events if e[0] == "frames"]
    assert [len(f) for f in frames] == [1, 4, 4]  # one latent frame at a time
    assert sum(e[0] == "step" for e in events) == 3 * 4
    want = pipe("a blue square moves up", generator=[__import__("torch").Generator().manual_seed(3)],
                **req.kwargs).frames[0]  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(frames), want)

    long = app.check("a blue square moves up", 33, 64, 64, 50, 3.0, seed=1)
    run = app.run(long, session="s")
    assert next(run)[0] == "step"
    steps_done = []
    assert app.cancel("s") and not app.cancel("other")
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        for event in run:
            steps_done.append(event)
    assert time.perf_counter() - t0 < 10.0  # a step takes ~0.05 s (more when busy); 450 asked
    assert len(steps_done) < 10
    assert app._lock.acquire(timeout=2.0)  # the model is free again
    app._lock.release()
    # Closing the reader (a closed page, Gradio's cancel) stops the worker too.
    run = app.run(long)
    next(run)
    run.close()
    assert app._lock.acquire(timeout=2.0)
    app._lock.release()


def test_prompt_schedule_and_negative_prompt(pipe, tmp_path):
    """The schedule's segments and a negative prompt reach the pipeline; the frames are the
    pipeline's own; a malformed schedule is refused by check, a bad start frame when the job
    starts."""
    import torch

    app = DemoApp(pipe, tmp_path)
    text = "0:a red circle moves to the right;9:a red circle moves to the left"
    req = app.check(text, 17, 64, 64, 2, 3.0, seed=5, mode="prompt schedule")
    assert req.prompt == ["a red circle moves to the right", "a red circle moves to the left"]
    assert req.kwargs["segment_frames"] == [0, 9]
    frames = np.concatenate([e[1] for e in app.run(req) if e[0] == "frames"])
    want = pipe(req.prompt, generator=[torch.Generator().manual_seed(5)], **req.kwargs).frames[0]
    np.testing.assert_array_equal(frames, want)
    steered = app.check("a red circle moves up", 9, 64, 64, 2, 3.0, seed=5,
                        negative_prompt=" a red circle moves down ")  # fmt: skip
    assert steered.kwargs["negative_prompt"] == "a red circle moves down"
    assert "negative_prompt" not in app.check("a red circle", 9, 64, 64, 2, 3.0,
                                              negative_prompt="  ").kwargs  # fmt: skip
    frames = np.concatenate([e[1] for e in app.run(steered) if e[0] == "frames"])
    want = pipe(steered.prompt, generator=[torch.Generator().manual_seed(5)],
                **steered.kwargs).frames[0]  # fmt: skip
    np.testing.assert_array_equal(frames, want)
    with pytest.raises(LumosError, match="negative prompt has 501 characters"):
        app.check("a red circle", 9, 64, 64, 2, 3.0, negative_prompt="x" * 501)
    with pytest.raises(LumosError, match="not FRAME:PROMPT"):
        app.check("a red circle moves up", 17, 64, 64, 2, 3.0, mode="prompt schedule")
    bad = app.check("0:a red circle;6:a blue square", 17, 64, 64, 2, 3.0, mode="prompt schedule")
    with pytest.raises(LumosError, match="segments start on latent frames"):
        list(app.run(bad))


def test_contact_sheet():
    rng = np.random.default_rng()
    frames = [rng.integers(0, 256, (t, 40, 24, 3), dtype=np.uint8) for t in (1, 4, 4, 4, 4)]
    video = np.concatenate(frames)  # 17 frames of 24x40
    sheet = contact_sheet(frames, columns=9)
    s = -(-LIVE_HEIGHT // 40)  # enlarged to at least LIVE_HEIGHT
    assert sheet.shape == (2 * 40 * s, 9 * 24 * s, 3)
    for k in (0, 8, 9, 16):
        r, c = divmod(k, 9)
        np.testing.assert_array_equal(
            sheet[r * 40 * s : (r + 1) * 40 * s : s, c * 24 * s :: s][:, :24], video[k]
        )
    assert (sheet[40 * s :, 8 * 24 * s :] == 255).all()  # the unused slot is white
    assert contact_sheet(frames[:1]).shape == (40 * s, 24 * s, 3)


def test_cli_errors(capsys):
    assert main(["demo", "--port", "70000"]) == 2
    assert "--port: must be an integer 1..65535" in capsys.readouterr().err
    if importlib.util.find_spec("gradio") is None:  # said before any model is loaded
        assert main(["demo"]) == 2
        assert 'needs Gradio; install it with pip install -e ".[demo]"' in capsys.readouterr().err
        return
    assert main(["demo", "--checkpoint", "/nonexistent/lumos"]) == 2
    assert "checkpoint path /nonexistent/lumos does not exist" in capsys.readouterr().err
    assert main(["demo", "--device", "tpu:x"]) == 2
    assert "unknown device 'tpu:x'" in capsys.readouterr().err


# ---- the served app ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``lumos demo`` on a free port, with its own TMPDIR, HOME and working directory; on
    teardown it is stopped with SIGTERM and must have left nothing in any of them."""
    pytest.importorskip("gradio")
    root = tmp_path_factory.mktemp("demo")
    tmp, cwd, home = root / "tmp", root / "cwd", root / "home"
    for folder in (tmp, cwd, home):
        folder.mkdir()
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), HOME=str(home), PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "lumos.cli.main",
        "demo",
        "--port",
        str(port),
        "--queue-size",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Running on local URL" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(90):
        proc.kill()
        pytest.fail("the demo did not start:\n" + "".join(lines))
    assert f"http://127.0.0.1:{port}" in "".join(lines)
    yield f"http://127.0.0.1:{port}/"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, "".join(lines)
    assert not list(tmp.iterdir()), list(tmp.rglob("*"))  # its temporary directory is gone
    assert not list(cwd.iterdir()), list(cwd.rglob("*"))
    assert not list(home.iterdir()), list(home.rglob("*"))
    assert "Traceback" not in "".join(lines), "".join(lines)


def test_api_generate(server, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(server, verbose=False, download_files=str(tmp_path))
    t0 = time.perf_counter()
    mp4 = client.predict(
        "a red circle moves to the left", 9, 64, 80, 16, 3.0, 11, api_name="/generate"
    )
    print(f"/generate: 9 frames of 80x64 in {time.perf_counter() - t0:.1f} s")
    frames, _ = read_video(mp4)
    assert frames.shape == (9, 64, 80, 3)
    assert [o.color for o in analyse(frames).objects] == ["red"]
    with pytest.raises(gradio_client.exceptions.AppError, match="frames must be an integer 1..33"):
        client.predict("a red circle", 1000, 64, 64, 16, 3.0, 0, api_name="/generate")


def test_queue_is_bounded(server, tmp_path):
    from gradio_client import Client
    from gradio_client.utils import Status

    client = Client(server, verbose=False, download_files=str(tmp_path))
    running = client.submit("a red circle", 17, 64, 64, 40, 3.0, 0, api_name="/generate")
    wait_for(None, lambda: running.status().code == Status.PROCESSING, 30)
    waiting = [client.submit("a red circle", 1, 64, 64, 1, 3.0, 0, api_name="/generate")
               for _ in range(2)]  # fmt: skip
    for job in waiting:
        wait_for(None, lambda job=job: job.status().code == Status.IN_QUEUE, 30)
    refused = client.submit("a red circle", 1, 64, 64, 1, 3.0, 0, api_name="/generate")
    with pytest.raises(Exception, match="Queue is full"):
        refused.result(timeout=30)
    assert not running.done()  # refused while the first still ran
    for job in [running, *waiting]:  # the queued ones are served in turn
        assert read_video(job.result(timeout=60))[0].shape[1:] == (64, 64, 3)


# ---- the page in a real browser ----------------------------------------------------------------


@pytest.fixture
def browser(server):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1250"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get(server)
    wait_for(driver, lambda: driver.find_elements("css selector", "#prompt textarea"), 30)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(0.05)
    if driver is None:
        raise AssertionError("timed out")
    raise AssertionError(f"timed out; page status: {status(driver)!r}; page: {page_text(driver)}")


def status(driver) -> str:
    return driver.find_element("css selector", "#status").text


def page_text(driver) -> str:
    return driver.find_element("css selector", "body").text


def set_value(driver, selector: str, value: str) -> None:
    box = driver.find_element("css selector", selector)
    box.clear()
    box.send_keys(value)


def generate(driver, prompt: str, frames: int = 9, steps: int = 16, side: int = 64) -> None:
    set_value(driver, "#prompt textarea", prompt)
    set_value(driver, "#frames input", str(frames))
    set_value(driver, "#height input", str(side))
    set_value(driver, "#width input", str(side))
    set_value(driver, "#steps input[type=number]", str(steps))
    driver.find_element("css selector", "#generate").click()


def video_src(driver) -> str | None:
    videos = driver.find_elements("css selector", "#video video")
    return videos[0].get_attribute("src") if videos else None


WATCH = """
window.seen = {live: null, video: null};
new MutationObserver(() => {
  const img = document.querySelector('#live img'), v = document.querySelector('#video video');
  if (img && img.src && window.seen.live === null) window.seen.live = performance.now();
  if (v && v.src && window.seen.video === null) window.seen.video = performance.now();
}).observe(document.body, {subtree: true, childList: true, attributes: true});
"""


def test_browser_live_frames_then_video(browser, tmp_path):
    browser.execute_script(WATCH)
    t0 = time.perf_counter()
    generate(browser, "a blue square moves up", frames=17)
    wait_for(browser, lambda: status(browser).startswith("Done"), 60)
    print(f"page: 17 frames in {time.perf_counter() - t0:.1f} s; {status(browser)}")
    seen = browser.execute_script("return window.seen")
    assert seen["live"] is not None and seen["video"] is not None, seen
    assert seen["live"] < seen["video"], seen  # a live frame was shown before the video
    assert video_src(browser)
    state = wait_for(browser, lambda: browser.execute_script(
        "const v = document.querySelector('#video video');"
        "return v.readyState >= 2 && !v.error ? [v.duration, v.videoWidth, v.videoHeight] : null"
    ), 10)  # fmt: skip
    assert state[1:] == [64, 64] and state[0] > 0  # the browser decoded it: playable
    assert "17 frames of 64x64 px" in status(browser)
    seed = browser.find_element("css selector", "#seed input").get_attribute("value")
    assert seed in status(browser)  # the random seed is shown after the run
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "demo.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if out := os.environ.get("LUMOS_DEMO_SCREENSHOT"):  # docs/demo.png is made this way
        shutil.copy(shot, out)


def test_browser_bad_input_then_next_request(browser, tmp_path):
    generate(browser, "   ")
    wait_for(browser, lambda: "the prompt is empty" in page_text(browser), 20)
    generate(browser, "a red circle moves to the left", frames=1000)
    wait_for(browser, lambda: "frames must be an integer 1..33, got 1000" in page_text(browser), 20)
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an image\n")
    browser.find_element("css selector", "label[data-testid='image-to-video-radio-label']").click()
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (21 * 2**20))
    browser.find_element("css selector", "#upload input[type=file]").send_keys(str(big))
    wait_for(browser, lambda: "exceed the maximum allowed size" in page_text(browser), 20)
    browser.find_element("css selector", "#upload input[type=file]").send_keys(str(notes))
    generate(browser, "a red circle moves to the left")
    wait_for(browser, lambda: "Invalid file type" in page_text(browser), 20)
    # The app still serves: a text-to-video request right after.
    browser.find_element("css selector", "label[data-testid='text-to-video-radio-label']").click()
    generate(browser, "a green circle moves right")
    wait_for(browser, lambda: status(browser).startswith("Done"), 60)
    assert video_src(browser)


def test_browser_image_to_video(browser, tmp_path):
    start = tmp_path / "start.png"  # a red circle on grey, 96x72: fitted to 64x64 by the app
    scene = Scene((WorldObject("circle", "red", "large", "left", 0.6, 0.5),), "grey")
    write_video(start, render(scene, 72, 96, 1), 1)
    browser.find_element("css selector", "label[data-testid='image-to-video-radio-label']").click()
    browser.find_element("css selector", "#upload input[type=file]").send_keys(str(start))
    wait_for(browser, lambda: "start\n.png" in page_text(browser), 20)  # uploaded
    generate(browser, "a red circle moves to the left")
    wait_for(browser, lambda: status(browser).startswith("Done"), 60)
    assert "9 frames of 64x64 px" in status(browser)
    mp4 = tmp_path / "out.mp4"  # the video the page plays, fetched from the app
    mp4.write_bytes(urllib.request.urlopen(video_src(browser), timeout=30).read())
    frames, _ = read_video(mp4)
    assert frames.shape == (9, 64, 64, 3)
    assert [o.color for o in analyse(frames).objects] == ["red"]


def test_browser_cancel_frees_the_queue(browser):
    browser.execute_script(WATCH)
    t0 = time.perf_counter()
    generate(browser, "a yellow star moves down", frames=33, steps=50, side=128)
    wait_for(browser, lambda: browser.execute_script("return window.seen.live"), 30)
    first = time.perf_counter() - t0  # one latent frame of the nine asked for
    browser.find_element("css selector", "#cancel").click()
    wait_for(browser, lambda: status(browser) == "Cancelled.", 10)
    t0 = time.perf_counter()
    generate(browser, "a red circle moves to the left")
    wait_for(browser, lambda: status(browser).startswith("Done"), 60)
    after = time.perf_counter() - t0
    print(f"cancel: first latent frame after {first:.1f} s; next request done in {after:.1f} s")
    # Had the cancelled run gone on, the next one would wait for its 8 other latent frames.
    assert after < 4 * first + 5


def test_browser_prompt_schedule(browser):
    label = "label[data-testid='prompt schedule-radio-label']"
    browser.find_element("css selector", label).click()
    generate(browser, "0:a red circle moves to the right;9:a red circle moves to the left",
             frames=17, steps=4)  # fmt: skip
    wait_for(browser, lambda: status(browser).startswith("Done"), 60)
    assert "17 frames of 64x64 px" in status(browser) and video_src(browser)
