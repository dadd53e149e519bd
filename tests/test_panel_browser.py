"""The editor's panel, used end to end in headless Chromium (Debian's, driven by Playwright)
against one real `selva-rt serve --variant tiny --token ...` for the module: the token prompt,
an upload dropped on the page with two prompts, progress to done, both stems decoded and
playing with the picture, mute and solo, downloads equal to the server's files, the history,
a cancel, a refused request shown as the API's one line, and a label for every control.

SELVA_RT_SCREENSHOTS=DIR also writes the README's screenshots of the panel into DIR.
"""

import base64
import io
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason="playwright (dev extra) is not installed")
pytest.importorskip("starlette", reason="the serve extra is not installed")
import soundfile  # noqa: E402
from servers import Server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
TOKEN = "panel-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHOTS = os.environ.get("SELVA_RT_SCREENSHOTS")


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright launches this: the system's chromium, never a downloaded one, with
    nothing that reaches out of the machine."""
    if not Path(CHROMIUM).exists():  # .ci/run installs it: in CI its absence is a failure
        missing = f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    args = ["--headless", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--no-first-run", "--disable-sync"]
    args += ["--autoplay-policy=no-user-gesture-required"]  # the player's audio, unattended
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # chromium refuses to run as root with its sandbox
    return {"executable_path": CHROMIUM, "args": args}


@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_clip):
    root = tmp_path_factory.mktemp("panel")
    clips = root / "clips"
    clips.mkdir()
    (clips / "street.mp4").write_bytes(sample_clip.read_bytes())
    (root / "notes.txt").write_text("not a video")
    server = Server(clips, root / "out", "--token", TOKEN)
    server.client.headers.update(AUTH)
    server.root = root
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(browser, served):
    """One page for the module, its tests in order, as one editor's session."""
    context = browser.new_context(viewport={"width": 900, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served.url + "/")
    yield page
    context.close()
    assert not errors, errors  # no script error in the whole session


def shoot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def test_the_token_prompt_then_the_server_answers(page):
    page.wait_for_selector("#token-form:not([hidden])")
    assert "access token" in page.inner_text("#error")
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    page.wait_for_function("document.getElementById('clip-select').length > 1")
    assert page.inner_text("#server").startswith("tiny on cpu")
    assert page.is_hidden("#error") and page.is_hidden("#token-form")
    assert page.eval_on_selector_all("#clip-select option", "o => o.map(x => x.text)")[1:] == [
        "street.mp4"
    ]


def test_every_control_has_a_label(page):
    unnamed = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, progress')]
            .filter(e => !e.closest('[hidden]'))
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                         && !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unnamed == []


def test_upload_by_drop_two_prompts_progress_to_done(page, served, sample_clip):
    data = base64.b64encode(sample_clip.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], 'take 1.mp4', {type: 'video/mp4'}));
            return transfer;
        }""",
        data,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    assert page.inner_text("#clip-chosen").startswith("upload: take 1.mp4")
    page.fill("#prompt-1", "dog barking")
    page.click("#add-prompt")  # by keyboard below: the new field has the focus
    page.keyboard.type("car horn")
    page.click("#advanced summary")
    page.fill("#steps", "12")
    page.fill("#duration", "1.5")
    page.check("#otio")
    page.click("#submit")
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        # Both in one evaluation: two reads could straddle the panel's update (0.9, "done").
        value, state = page.evaluate(
            "() => { const p = document.querySelector('#progress');"
            " return [Number(p.getAttribute('value') || 0), p.dataset.state || null]; }"
        )
        seen.append((float(value), state))
        if state in ("done", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert seen[-1] == (1.0, "done"), (seen[-1], page.inner_text("#error"))
    values = [v for v, _ in seen]
    assert values == sorted(values)  # progress only grows, and reads 1.0 only when done
    assert all(v < 1.0 for v, state in seen if state != "done")
    page.wait_for_selector("#player:not([hidden])")
    record = served.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert record["job"]["prompts"] == ["dog barking", "car horn"] and record["job"]["otio"]
    assert [o["audio"] for o in record["outputs"]] == [
        "take 1_dog_barking.wav",
        "take 1_car_horn.wav",
    ]
    assert list((served.root / "out" / "uploads").iterdir()) == []  # the upload is gone


def stem_seconds(served, record: dict) -> list[float]:
    """The length of each stem file, as the server wrote it."""
    seconds = []
    for output in record["outputs"]:
        data = served.client.get(f"/v1/jobs/{record['id']}/files/{output['audio']}").content
        info = soundfile.info(io.BytesIO(data))
        seconds.append(round(info.frames / info.samplerate, 3))
    return seconds


def test_both_stems_decode_and_play_with_the_picture(page, served):
    record = served.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    stems = page.eval_on_selector_all(".stem", "s => s.map(e => Number(e.dataset.duration))")
    assert stems == stem_seconds(served, record)  # each decoded by the browser, whole
    assert all(1.4 < s <= 1.5 for s in stems)  # the 1.5 s asked for, to the picture's frame
    assert page.eval_on_selector_all(".stem canvas", "c => c.length") == 2
    page.click("#play")
    page.wait_for_function("Number(document.getElementById('player').dataset.position) > 0.5")
    assert page.get_attribute("#player", "data-playing") == "true"
    picture = page.evaluate("document.getElementById('picture').currentTime")
    assert picture > 0.3  # the picture runs with the stems
    shoot(page, "panel-player.png")
    if page.get_attribute("#player", "data-playing") == "true":
        page.click("#play")  # pause (the stem may have ended meanwhile)
    assert page.get_attribute("#player", "data-playing") == "false"
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("Space")  # the editor's key, with no control focused: play
    page.wait_for_function("document.getElementById('player').dataset.playing === 'true'")
    page.keyboard.press("Space")  # ... and pause (or it ended by itself: paused too)
    page.wait_for_function("document.getElementById('player').dataset.playing === 'false'")


def test_mute_and_solo(page):
    def gains():
        return page.eval_on_selector_all(".stem", "s => s.map(e => e.dataset.gain)")

    assert gains() == ["1", "1"]
    page.click("button[aria-label='Mute dog barking']")
    assert gains() == ["0", "1"]
    page.click("button[aria-label='Solo dog barking']")  # solo wins over mute
    assert gains() == ["1", "0"]
    page.click("button[aria-label='Solo car horn']")
    assert gains() == ["1", "1"]
    page.click("button[aria-label='Solo dog barking']")
    assert gains() == ["0", "1"]
    page.click("button[aria-label='Solo car horn']")
    page.click("button[aria-label='Mute dog barking']")
    assert gains() == ["1", "1"]
    assert page.get_attribute("button[aria-label='Mute dog barking']", "aria-pressed") == "false"


def test_downloads_are_the_servers_files(page, served, tmp_path):
    job_id = served.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]["id"]
    names = page.eval_on_selector_all("#downloads button", "b => b.map(x => x.dataset.file)")
    assert names == [
        "take 1_dog_barking.wav",
        "take 1_dog_barking.mp4",
        "take 1_car_horn.wav",
        "take 1_car_horn.mp4",
        "take 1.otio",
    ]
    for name in names:
        with page.expect_download() as download:
            page.click(f"#downloads button[data-file='{name}']")
        saved = tmp_path / name
        download.value.save_as(saved)
        assert download.value.suggested_filename == name
        served_bytes = served.client.get(f"/v1/jobs/{job_id}/files/{name}").content
        assert saved.read_bytes() == served_bytes, name
    audio, rate = soundfile.read(tmp_path / "take 1_car_horn.wav")
    assert rate == 16000 and 0.01 < abs(audio).max() <= 1.0


def test_cancel_a_running_job(page, served):
    page.select_option("#clip-select", label="street.mp4")
    page.fill("#steps", "1000")
    page.fill("#duration", "")
    page.click("#submit")
    page.wait_for_function("/generating/.test(document.getElementById('stage').textContent)")
    assert page.is_enabled("#cancel")
    page.click("#cancel")
    page.wait_for_function("document.getElementById('progress').dataset.state === 'cancelled'")
    job = served.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert job["state"] == "cancelled" and job["job"]["steps"] == 1000
    assert page.is_disabled("#cancel") and page.is_hidden("#player")


def test_a_refused_request_is_shown_as_the_apis_line(page, served):
    page.set_input_files("#clip-file", str(served.root / "notes.txt"))
    page.fill("#steps", "2")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert "notes.txt" in message and "uploads" not in message, message  # the user's file
    assert list((served.root / "out" / "uploads").iterdir()) == []  # refused: not kept
    page.fill("#steps", "0")  # the server's own range check, word for word
    page.select_option("#clip-select", label="street.mp4")
    page.click("#submit")
    page.wait_for_function("/steps/.test(document.getElementById('error').textContent)")
    api = served.client.post(
        "/v1/jobs",
        json={"clip": str(served.root / "clips" / "street.mp4"), "prompts": ["x"], "steps": 0},
    )
    assert api.status_code == 422 and page.inner_text("#error") == api.json()["error"]


def test_the_history_reopens_a_finished_job(page, served):
    page.fill("#steps", "2")
    rows = page.eval_on_selector_all("#history tbody tr", "r => r.map(x => x.cells[3].textContent)")
    assert rows == ["cancelled", "done"]  # newest first, from the journal
    page.click("#history tbody tr:nth-child(2) button")
    page.wait_for_selector("#player:not([hidden])")
    assert page.eval_on_selector_all(".stem .name", "s => s.map(e => e.textContent)") == [
        "dog barking",
        "car horn",
    ]
    shoot(page, "panel.png")
    newest = page.get_attribute("#history tbody tr", "data-id")
    assert served.client.get(f"/v1/jobs/{newest}").json()["state"] == "cancelled"
