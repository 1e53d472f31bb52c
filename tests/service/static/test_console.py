"""The web console in a real headless Chromium (Debian's package, driven by Playwright) against a real
`cgd serve` on 127.0.0.1 with a write and a read key, and real caltech101 photos: adding, browsing,
searching, an item, a hostile label, a non-image upload, the key flow, a tiny training job followed
live, every view at a phone's width, the keyboard, and /docs and /redoc with the network cut off
(test_console_firefox.py runs the key flows in Firefox).

One server and one browser for the module; each test has its own browser context (fresh session
storage). Every page is watched: no response of 500 or more, no uncaught exception, and no console
error except the "Failed to load resource" line of a 4xx that the test itself provokes. Screenshots
go to a temporary folder (`CONSOLE_SCREENSHOTS` names it: `make screenshots` copies them into docs/).
Skips with the reason when Chromium, Playwright or the photos are missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.service.conftest import Photo
from tests.service.static.conftest import (
    FITS_THE_WIDTH,
    HOSTILE_LABEL,
    HOSTILE_NOTE,
    LABELS,
    LAPTOP,
    PER_LABEL,
    PHONE,
    READ_KEY,
    STICKING_OUT,
    TRAIN_TIMEOUT_S,
    UI_TIMEOUT_S,
    WRITE_KEY,
    batch_report,
    gallery_counts_text,
    phone_views,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The smallest job the API admits on 3 labels of 4 photos: 2 epochs at 64 px, 8 images a step.
TRAIN_FIELDS = {"epochs": "2", "image_size": "64", "batch_size": "8", "val_fraction": "0.4",
                "max_minutes": "1"}
UI_TIMEOUT_MS = UI_TIMEOUT_S * 1000
MAX_TABS = 60  # Tab presses allowed to reach an element from the top of the page
# Every status (and phase) the job view shows, in order: proof that the page follows the job live.
RECORD_JOB_STATES = """() => {
  window.jobStates = [];
  const record = () => {
    const status = document.querySelector("[data-testid=job-status]")?.textContent;
    const phase = document.querySelector("[data-testid=job-phase]")?.textContent;
    const state = status && `${status}/${phase}`;
    if (state && state !== window.jobStates.at(-1)) window.jobStates.push(state);
  };
  new MutationObserver(record).observe(document.querySelector("[data-testid=job-detail]"),
                                       {childList: true, subtree: true, characterData: true});
}"""

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
expect = playwright_api.expect
pytestmark = pytest.mark.slow


@dataclass
class Watch:
    """What went wrong on one page: 5xx responses, uncaught exceptions, console errors."""

    allowed_statuses: set[int] = field(default_factory=set)
    server_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    loads: int = 0

    def attach(self, page) -> None:
        page.on("response", lambda response: self.server_errors.append(f"{response.status} {response.url}")
                if response.status >= 500 else None)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", lambda message: self.console_errors.append(message.text)
                if message.type == "error" else None)
        page.on("load", lambda _: setattr(self, "loads", self.loads + 1))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        if dialog.type == "alert":  # nothing of the console alerts: an alert means injected script ran
            self.page_errors.append(f"alert ran: {dialog.message}")
        dialog.accept()

    def check(self) -> None:
        assert not self.server_errors, self.server_errors
        assert not self.page_errors, self.page_errors
        allowed = re.compile(r"Failed to load resource: the server responded with a status of "
                             rf"({'|'.join(str(s) for s in sorted(self.allowed_statuses)) or 'none'})\b")
        unexpected = [text for text in self.console_errors if not allowed.search(text)]
        assert not unexpected, unexpected


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (.ci/run installs it as root)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def payload(photo: Photo) -> dict:
    return {"name": photo.name, "mimeType": "image/jpeg", "buffer": photo.data}


@pytest.fixture
def open_console(chromium, server):
    """`open_console(hash, key=WRITE_KEY) -> (page, watch)`: a fresh context, the key in its session
    storage (as the key dialog leaves it); every page is checked by its Watch at teardown."""
    opened: list[tuple[object, Watch]] = []

    def _open(hash_: str = "#/search", key: str | None = WRITE_KEY, allowed: set[int] | None = None):
        context = chromium.new_context(viewport=LAPTOP, base_url=str(server.client.base_url))
        context.set_default_timeout(UI_TIMEOUT_MS)
        if key is not None:
            context.add_init_script(f"sessionStorage.setItem('cgd-api-key', {json.dumps(key)})")
        page = context.new_page()
        watch = Watch(allowed_statuses=allowed or set())
        watch.attach(page)
        page.goto(f"/{hash_}")
        opened.append((context, watch))
        return page, watch

    yield _open
    for context, watch in opened:
        context.close()
        watch.check()


@pytest.fixture(scope="module")
def console_gallery(chromium, server, photos) -> dict[str, list[dict]]:
    """The photos added through the gallery view, one label at a time; returns the stored items by label."""
    context = chromium.new_context(viewport=LAPTOP, base_url=str(server.client.base_url))
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.add_init_script(f"sessionStorage.setItem('cgd-api-key', {json.dumps(WRITE_KEY)})")
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    page.goto("/#/gallery")
    for count, label in enumerate(LABELS, start=1):
        page.fill("[data-testid=add-label]", label)
        page.set_input_files("[data-testid=add-files]", [payload(p) for p in photos[label]])
        page.click("[data-testid=add-submit]")
        expect(page.locator("[data-testid=gallery-counts]")).to_have_text(
            gallery_counts_text(count * PER_LABEL, count))  # the batch is stored and the view refreshed
        assert page.locator("[data-testid=add-report] li").all_inner_texts() == [batch_report(photos[label])]
        progress = page.locator("[data-testid=add-progress]")
        assert progress.get_attribute("value") == progress.get_attribute("max") == str(PER_LABEL)
    context.close()
    watch.check()
    headers = {"X-API-Key": READ_KEY}
    return {label: server.client.get("/gallery", params={"label": label}, headers=headers).json()["items"]
            for label in LABELS}


def card_texts(page) -> list[dict[str, str]]:
    """Score (when shown) and label of each result card, in order."""
    cards = []
    for card in page.locator("[data-testid=card]").all():
        score = card.locator("[data-testid=score]")
        cards.append({"label": card.locator("[data-testid=label]").inner_text(),
                      "score": score.inner_text() if score.count() else None,
                      "id": card.get_attribute("data-item-id")})
    return cards


def test_the_page_and_its_files_are_public_and_sent_with_the_policy(server):
    client = server.client
    for path in ("/", "/static/js/main.js", "/static/console.css", "/docs", "/redoc",
                 "/static/vendor/swagger-ui-5.35.0/LICENSE"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:200])
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'self'" in policy
        assert "unsafe-eval" not in policy
    page = client.get("/").text
    assert WRITE_KEY not in page and READ_KEY not in page
    assert client.get("/gallery").status_code == 401  # the data behind the page is not public


def test_gallery_shows_the_images_added_through_the_page(open_console, console_gallery, screenshots):
    page, _ = open_console("#/gallery")
    grid = page.locator("[data-testid=gallery-grid] [data-testid=card]")
    expect(grid).to_have_count(len(LABELS) * PER_LABEL)
    options = page.locator("[data-testid=gallery-filter] option").all_inner_texts()
    assert options[0] == f"all labels ({len(LABELS) * PER_LABEL})"
    assert sorted(options[1:]) == sorted(f"{label} ({PER_LABEL})" for label in LABELS)
    page.select_option("[data-testid=gallery-filter]", "stop_sign")
    expect(grid).to_have_count(PER_LABEL)
    assert {card["label"] for card in card_texts(page)} == {"stop_sign"}
    expect(page.locator("[data-testid=gallery-page]")).to_have_text(f"items 1–{PER_LABEL} of {PER_LABEL}")
    page.select_option("[data-testid=gallery-filter]", "")
    expect(grid).to_have_count(len(LABELS) * PER_LABEL)
    wait_for_images(page)
    page.screenshot(path=screenshots / "gallery.png", full_page=True)


def wait_for_images(page) -> None:
    """Every thumbnail of the view loaded (they arrive as blob URLs fetched with the key)."""
    for image in page.locator("img.thumb").all():
        expect(image).to_have_attribute("src", re.compile(r"^blob:"))
        wait_until_loaded(image)


def wait_until_loaded(image) -> None:
    """The <img> has finished loading (Playwright's own retrying assertion) and decoded a picture."""
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") > 0, "the image did not decode"


def test_searching_with_a_gallery_photo_finds_it_first_then_its_label(open_console, console_gallery,
                                                                      photos, server, screenshots):
    page, _ = open_console("#/search")
    query = photos["stop_sign"][0]
    with page.expect_file_chooser() as chooser:  # the drop zone works from the keyboard
        page.focus("[data-testid=dropzone]")
        page.keyboard.press("Enter")
    chooser.value.set_files(payload(query))
    page.locator("[data-testid=card]").first.wait_for()
    cards = card_texts(page)
    assert cards[0]["label"] == "stop_sign" and float(cards[0]["score"]) > 0.999, cards
    assert [card["label"] for card in cards[1:PER_LABEL]] == ["stop_sign"] * (PER_LABEL - 1), cards
    version = server.client.get("/ready").json()["model_version"]
    expect(page.locator("[data-testid=search-status]")).to_contain_text(
        f"answered by model {version}")
    wait_for_images(page)
    page.screenshot(path=screenshots / "search.png", full_page=True)

    second = cards[1]
    page.locator("[data-testid=card]").nth(1).click()  # search by a result
    expect(page.locator("[data-testid=search-status]")).to_contain_text(f"answered by model {version}")
    expect(page.locator(".query-image figcaption")).to_have_text(
        f"similar to item #{second['id']} (stop_sign)")
    similar = card_texts(page)
    assert second["id"] not in [card["id"] for card in similar]
    assert similar[0]["label"] == "stop_sign", similar


def test_an_item_opens_with_its_image_and_is_searched_by(open_console, console_gallery):
    page, _ = open_console("#/gallery")
    item = console_gallery["sunflower"][1]
    page.locator(f"[data-testid=card][data-item-id='{item['id']}']").click()
    expect(page.locator("[data-testid=item-label]")).to_have_text("sunflower")
    image = page.locator("img.full")
    expect(image).to_have_attribute("src", re.compile(r"^blob:"))
    wait_until_loaded(image)
    page.click("[data-testid=item-similar]")
    expect(page.locator(".query-image figcaption")).to_have_text(
        f"similar to item #{item['id']} (sunflower)")
    assert card_texts(page)[0]["label"] == "sunflower"


def test_a_hostile_label_is_shown_as_text_and_runs_nothing(open_console, console_gallery, photos, server):
    page, _ = open_console("#/gallery")
    page.fill("[data-testid=add-label]", HOSTILE_LABEL)
    page.fill("[data-testid=add-metadata]", json.dumps({"note": HOSTILE_NOTE}))
    page.set_input_files("[data-testid=add-files]", payload(photos["soccer_ball"][-1]))
    page.click("[data-testid=add-submit]")
    expect(page.locator("[data-testid=add-report] li")).to_contain_text("1 added")
    card = page.locator("[data-testid=card]", has_text=HOSTILE_LABEL)
    expect(card.locator("[data-testid=label]")).to_have_text(HOSTILE_LABEL)
    expect(card.locator(".metadata")).to_contain_text(HOSTILE_NOTE)
    assert page.locator("img[src='x'], main script").count() == 0
    item_id = card.get_attribute("data-item-id")
    card.click()
    expect(page.locator("[data-testid=item-label]")).to_have_text(HOSTILE_LABEL)
    thumbnails = Path(server.log).parent / "data" / "thumbnails"
    assert list(thumbnails.rglob(f"{item_id}-*.jpg")), "the card's thumbnail is cached"
    page.click("[data-testid=item-delete]")  # the confirmation is accepted
    expect(page).to_have_url(re.compile(r"#/gallery$"))
    expect(page.locator("[data-testid=gallery-counts]")).to_have_text(
        gallery_counts_text(len(LABELS) * PER_LABEL, len(LABELS)))
    assert not list(thumbnails.rglob(f"{item_id}-*.jpg")), "the thumbnail is removed with the item"


def test_a_non_image_upload_shows_the_api_error(open_console, server):
    page, _ = open_console("#/gallery", allowed={400})
    notes = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image at all"}
    expected = server.client.post("/gallery", files=[("files", ("notes.txt", notes["buffer"], "text/plain"))],
                                  headers={"X-API-Key": WRITE_KEY}).json()
    page.set_input_files("[data-testid=add-files]", notes)
    page.click("[data-testid=add-submit]")
    expect(page.locator("[data-testid=add-report] li")).to_have_text(
        f"batch 1 of 1 (1 file, notes.txt…): nothing added: 400 {expected['code']}: {expected['detail']}")


def test_without_a_key_the_console_asks_for_one(open_console):
    page, watch = open_console("#/gallery", key=None, allowed={401, 403})
    notice = page.locator("[data-testid=notice]")
    expect(notice).to_contain_text("This service needs an API key")
    dialog = page.locator("[data-testid=key-dialog]")
    expect(dialog).to_be_visible()
    page.fill("[data-testid=key-input]", "not-the-key")
    page.click("[data-testid=key-save]")
    expect(notice).to_contain_text("The API key does not grant this operation")
    page.click("[data-testid=key-button]")
    page.fill("[data-testid=key-input]", READ_KEY)
    with page.expect_request(lambda request: request.url.endswith("/gallery/labels")) as sent:
        page.click("[data-testid=key-save]")
    assert sent.value.headers.get("x-api-key") == READ_KEY  # sent as X-API-Key
    expect(page.locator("[data-testid=gallery-counts]")).to_contain_text("items")
    expect(notice).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('cgd-api-key')") == READ_KEY
    assert watch.loads == 1


def test_a_tiny_training_job_runs_to_success_with_its_curves_and_the_new_model(open_console, console_gallery,
                                                                                server, screenshots):
    page, watch = open_console("#/training")
    version = page.locator("[data-testid=model-version]")
    expect(version).not_to_have_text("…")
    before = version.inner_text()
    form = page.locator("[data-testid=train-form]")
    for name, value in TRAIN_FIELDS.items():
        form.locator(f"[name={name}]").fill(value)
    form.locator("[name=promote]").select_option("always")
    page.evaluate(RECORD_JOB_STATES)
    page.click("[data-testid=train-submit]")
    status = page.locator("[data-testid=job-status]")
    expect(status).to_have_text(re.compile(r"^(succeeded|failed|cancelled)$"), timeout=TRAIN_TIMEOUT_S * 1000)
    assert status.inner_text() == "succeeded", page.locator("[data-testid=job-detail]").inner_text()
    states = page.evaluate("window.jobStates")  # followed live: from queued or running to succeeded
    assert len(states) >= 2 and states[0].split("/")[0] in ("queued", "running"), states
    assert states[-1].startswith("succeeded/"), states
    assert page.locator("[data-testid=loss-chart]").get_attribute("data-points") == "2"
    assert page.locator("[data-testid=validation-chart]").get_attribute("data-points") == "4"
    assert page.locator("[data-testid=loss-chart] polyline").count() == 1
    assert page.locator("[data-testid=validation-chart] polyline").count() == 2  # MAP@R and R@1
    metrics = page.locator("[data-testid=job-metrics]").inner_text()
    assert "map@r" in metrics and "recall@1" in metrics
    new_version = page.locator("[data-testid=job-model-version]").inner_text()
    assert new_version not in (before, "–")
    expect(version).to_have_text(new_version)  # the header follows without a reload
    assert watch.loads == 1
    page.screenshot(path=screenshots / "training.png", full_page=True)


def test_every_view_fits_a_phone(open_console, console_gallery, photos):
    page, _ = open_console("#/search")
    page.set_viewport_size(PHONE)
    page.set_input_files("[data-testid=search-files]", payload(photos["sunflower"][0]))
    page.locator("[data-testid=card]").first.wait_for()
    assert page.evaluate(FITS_THE_WIDTH), ("#/search", page.evaluate(STICKING_OUT))
    for view, heading, shown in phone_views(console_gallery["sunflower"][0]["id"]):
        page.evaluate(f"location.hash = {json.dumps(view)}")
        expect(page.locator("main h2")).to_have_text(heading)
        expect(page.locator(shown).first).to_be_attached()
        assert page.evaluate(FITS_THE_WIDTH), (view, page.evaluate(STICKING_OUT))
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 14


def test_the_console_is_usable_from_the_keyboard(open_console, console_gallery):
    page, _ = open_console("#/search")
    tab_to(page, "nav a[data-view=gallery]")
    page.keyboard.press("Enter")
    expect(page.locator("[data-testid=gallery-grid] [data-testid=card]")).not_to_have_count(0)
    tab_to(page, "[data-testid=gallery-grid] [data-testid=card]")
    item_id = page.evaluate("document.activeElement.dataset.itemId")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(f"#/gallery/item/{item_id}$"))
    expect(page.locator("[data-testid=item-label]")).not_to_be_empty()
    tab_to(page, "[data-testid=item-similar]")
    page.keyboard.press("Enter")
    expect(page.locator(".query-image figcaption")).to_contain_text(f"similar to item #{item_id}")
    page.click("[data-testid=key-button]")
    expect(page.locator("[data-testid=key-dialog]")).to_be_visible()
    page.keyboard.press("Escape")  # the dialog closes from the keyboard, the key unchanged
    expect(page.locator("[data-testid=key-dialog]")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('cgd-api-key')") == WRITE_KEY


def tab_to(page, selector: str) -> None:
    """Press Tab until the focus is on an element matching `selector`."""
    for _ in range(MAX_TABS):
        page.keyboard.press("Tab")
        if page.evaluate(f"document.activeElement?.matches({json.dumps(selector)}) ?? false"):
            return
    raise AssertionError(f"{selector} not reached in {MAX_TABS} Tab presses")


def test_docs_and_redoc_render_with_the_network_cut_off(chromium, server):
    context = chromium.new_context(viewport=LAPTOP, base_url=str(server.client.base_url))
    context.set_default_timeout(UI_TIMEOUT_MS)
    local = urlparse(str(server.client.base_url)).netloc
    outside: list[str] = []

    def only_local(route) -> None:
        if urlparse(route.request.url).netloc in (local, ""):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    page.goto("/docs")
    expect(page.locator(".opblock-summary-path", has_text="/search/batch")).to_be_visible()
    page.goto("/redoc")
    expect(page.get_by_role("heading", name=re.compile("CGD image retrieval"))).to_be_visible()
    context.close()
    assert not outside, outside
    watch.check()
