"""The web console in a real headless Firefox (Debian's firefox-esr, driven over WebDriver BiDi by
`firefox.py` beside this file) against a real `cgd serve` on 127.0.0.1 with a write and a read key and
real caltech101 photos: the key flow, labelled images added through the page and listed by the gallery,
a search by an uploaded photo that shows its neighbours, a hostile label shown as text, the API's error
for a non-image upload, every view at a phone's width, the keyboard, and /docs and /redoc with nothing
fetched from outside.

Each test has its own tab (fresh session storage); every tab is checked at teardown: no JavaScript or
console error, no response of 500 or more, no alert. Skips with the reason when Firefox or the photos
are missing (.ci/run installs firefox-esr as root).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Photo, Server
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
    UI_TIMEOUT_S,
    WRITE_KEY,
    batch_report,
    gallery_counts_text,
    phone_views,
)

FIREFOX = Path("/usr/bin/firefox-esr")
MAX_TABS = 60  # Tab presses allowed to reach an element from the top of the page

pytest.importorskip("websockets.sync.client", reason="websockets is not installed (dev extra)")
from tests.service.static.firefox import Firefox, Tab  # noqa: E402 - needs websockets

pytestmark = pytest.mark.slow


def q(selector: str) -> str:
    """JavaScript for the first element matching `selector`."""
    return f"document.querySelector({json.dumps(selector)})"


def count(selector: str) -> str:
    return f"document.querySelectorAll({json.dumps(selector)}).length"


ALL_IMAGES_LOADED = ("[...document.querySelectorAll('img.thumb, img.full')].every("
                     "(img) => img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0)")
CARDS = ("[...document.querySelectorAll('[data-testid=card]')].map((card) => ({id: card.dataset.itemId, "
         "label: card.querySelector('[data-testid=label]').textContent, "
         "score: card.querySelector('[data-testid=score]')?.textContent ?? null}))")


@pytest.fixture(scope="module")
def firefox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Firefox]:
    if not FIREFOX.exists():
        pytest.skip(f"Debian's firefox-esr is not installed at {FIREFOX} (.ci/run installs it as root)")
    root = tmp_path_factory.mktemp("firefox")
    browser = Firefox(FIREFOX, root / "profile", root / "firefox.log")
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def photo_files(photos: dict[str, list[Photo]],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The photos as files, for the file inputs."""
    root = tmp_path_factory.mktemp("photos")
    files: dict[str, list[Path]] = {}
    for label, chosen in photos.items():
        (root / label).mkdir()
        files[label] = [root / label / photo.name for photo in chosen]
        for path, photo in zip(files[label], chosen, strict=True):
            path.write_bytes(photo.data)
    return files


def open_tab(firefox: Firefox, server: Server, path: str, *, key: str | None = WRITE_KEY,
             viewport: dict[str, int] = LAPTOP) -> Tab:
    tab = Tab(firefox, str(server.client.base_url), key=key, viewport=viewport)
    tab.goto(path)
    return tab


@pytest.fixture
def tabs(firefox: Firefox, server: Server) -> Iterator[list[tuple[Tab, tuple[str, ...]]]]:
    """Tabs a test opened, with the prompts it answers; each is closed and checked at teardown."""
    opened: list[tuple[Tab, tuple[str, ...]]] = []
    yield opened
    for tab, allowed_prompts in opened:
        tab.close()
        tab.check(allowed_prompts=allowed_prompts)


@pytest.fixture
def tab_at(firefox: Firefox, server: Server, tabs):
    """`tab_at(path, key=WRITE_KEY, viewport=LAPTOP, allowed_prompts=()) -> Tab`."""
    def _open(path: str, *, key: str | None = WRITE_KEY, viewport: dict[str, int] = LAPTOP,
              allowed_prompts: tuple[str, ...] = ()) -> Tab:
        tab = open_tab(firefox, server, path, key=key, viewport=viewport)
        tabs.append((tab, allowed_prompts))
        return tab

    return _open


def add_through_the_page(tab: Tab, label: str, files: list[Path], metadata: str | None = None) -> None:
    tab.type_into("[data-testid=add-label]", label)
    if metadata is not None:
        tab.type_into("[data-testid=add-metadata]", metadata)
    tab.set_files("[data-testid=add-files]", files)
    tab.click("[data-testid=add-submit]")


@pytest.fixture(scope="module")
def firefox_gallery(firefox: Firefox, server: Server, photo_files: dict[str, list[Path]],
                    photos: dict[str, list[Photo]]) -> dict[str, list[dict]]:
    """The photos added through Firefox's gallery view, a label at a time; the stored items by label."""
    tab = open_tab(firefox, server, "/#/gallery")
    counts = q("[data-testid=gallery-counts]")
    for number, label in enumerate(LABELS, start=1):
        add_through_the_page(tab, label, photo_files[label])
        expected = gallery_counts_text(number * PER_LABEL, number)
        tab.wait_for(f"{counts}.textContent === {json.dumps(expected)}", f"the counts after adding {label}",
                     UI_TIMEOUT_S)
        assert tab.texts("[data-testid=add-report] li") == [batch_report(photos[label])]
        assert tab.evaluate(f"[{q('[data-testid=add-progress]')}.value, "
                            f"{q('[data-testid=add-progress]')}.max]") == [PER_LABEL, PER_LABEL]
    tab.close()
    tab.check()
    headers = {"X-API-Key": READ_KEY}
    return {label: server.client.get("/gallery", params={"label": label}, headers=headers).json()["items"]
            for label in LABELS}


def test_without_a_key_the_console_asks_for_one(tab_at):
    tab = tab_at("/#/gallery", key=None)
    tab.wait_for(f"{q('[data-testid=notice]')}.textContent.includes('This service needs an API key')",
                 "the notice asking for a key", UI_TIMEOUT_S)
    tab.wait_for(f"{q('[data-testid=key-dialog]')}.open", "the key dialog", UI_TIMEOUT_S)
    tab.type_into("[data-testid=key-input]", "not-the-key")
    tab.click("[data-testid=key-save]")
    tab.wait_for(f"{q('[data-testid=notice]')}.textContent.includes('The API key does not grant')",
                 "the notice of a 403", UI_TIMEOUT_S)
    tab.click("[data-testid=key-button]")
    tab.type_into("[data-testid=key-input]", READ_KEY)
    tab.press("Enter")  # submits the dialog's form: Save is its first button
    tab.wait_for(f"{q('[data-testid=gallery-counts]')}.textContent.includes('items')", "the gallery counts",
                 UI_TIMEOUT_S)
    assert tab.evaluate(f"{q('[data-testid=notice]')}.hidden")
    assert tab.evaluate("sessionStorage.getItem('cgd-api-key')") == READ_KEY
    assert tab.loads == 1


def test_the_gallery_lists_the_images_added_through_the_page(tab_at, firefox_gallery):
    tab = tab_at("/#/gallery")
    grid = "[data-testid=gallery-grid] [data-testid=card]"
    tab.wait_for(f"{count(grid)} === {len(LABELS) * PER_LABEL}", "every item in the grid", UI_TIMEOUT_S)
    options = tab.texts("[data-testid=gallery-filter] option")
    assert options[0] == f"all labels ({len(LABELS) * PER_LABEL})"
    assert sorted(options[1:]) == sorted(f"{label} ({PER_LABEL})" for label in LABELS)
    tab.wait_for(ALL_IMAGES_LOADED, "every thumbnail loaded", UI_TIMEOUT_S)
    tab.evaluate(f"(() => {{ const f = {q('[data-testid=gallery-filter]')}; f.value = 'stop_sign'; "
                 "f.dispatchEvent(new Event('change')); })()")
    tab.wait_for(f"{count(grid)} === {PER_LABEL}", "the stop_sign items only", UI_TIMEOUT_S)
    assert {card["label"] for card in tab.evaluate(CARDS)} == {"stop_sign"}
    assert tab.texts("[data-testid=gallery-page]") == [f"items 1–{PER_LABEL} of {PER_LABEL}"]


def test_searching_with_an_uploaded_photo_shows_its_neighbours(tab_at, firefox_gallery, photo_files, server,
                                                               screenshots):
    tab = tab_at("/#/search")
    tab.set_files("[data-testid=search-files]", [photo_files["stop_sign"][0]])
    cards = tab.wait_for(f"{count('[data-testid=card]')} && {CARDS}", "the neighbour grid", UI_TIMEOUT_S)
    assert cards[0]["label"] == "stop_sign" and float(cards[0]["score"]) > 0.999, cards
    assert [card["label"] for card in cards[1:PER_LABEL]] == ["stop_sign"] * (PER_LABEL - 1), cards
    version = server.client.get("/ready").json()["model_version"]
    assert f"answered by model {version}" in tab.texts("[data-testid=search-status]")[0]
    tab.wait_for(ALL_IMAGES_LOADED, "every thumbnail loaded", UI_TIMEOUT_S)
    tab.screenshot(screenshots / "firefox-search.png")

    second = cards[1]
    tab.click(f"[data-testid=card][data-item-id='{second['id']}']")  # search by a result
    caption = f"similar to item #{second['id']} (stop_sign)"
    tab.wait_for(f"{q('.query-image figcaption')}?.textContent === {json.dumps(caption)}",
                 "the search by the result", UI_TIMEOUT_S)
    similar = tab.evaluate(CARDS)
    assert second["id"] not in [card["id"] for card in similar]
    assert similar[0]["label"] == "stop_sign", similar


def test_a_hostile_label_is_shown_as_text_and_runs_nothing(tab_at, firefox_gallery, photo_files):
    tab = tab_at("/#/gallery", allowed_prompts=("confirm",))  # the delete's confirmation
    add_through_the_page(tab, HOSTILE_LABEL, photo_files["soccer_ball"][-1:],
                         json.dumps({"note": HOSTILE_NOTE}))
    hostile_card = ("[...document.querySelectorAll('[data-testid=card]')].find((card) => "
                    f"card.querySelector('[data-testid=label]').textContent === {json.dumps(HOSTILE_LABEL)})")
    item_id = tab.wait_for(f"{hostile_card}?.dataset.itemId", "the card of the hostile label", UI_TIMEOUT_S)
    assert HOSTILE_NOTE in tab.evaluate(f"{hostile_card}.querySelector('.metadata').textContent")
    assert tab.evaluate(count("img[src='x'], main script")) == 0
    tab.click(f"[data-testid=card][data-item-id='{item_id}']")
    tab.wait_for(f"{q('[data-testid=item-label]')}?.textContent === {json.dumps(HOSTILE_LABEL)}",
                 "the item view", UI_TIMEOUT_S)
    tab.click("[data-testid=item-delete]")  # the confirmation is accepted
    expected = gallery_counts_text(len(LABELS) * PER_LABEL, len(LABELS))
    tab.wait_for(f"location.hash === '#/gallery' && {q('[data-testid=gallery-counts]')}.textContent === "
                 f"{json.dumps(expected)}", "the gallery without the item", UI_TIMEOUT_S)


def test_a_non_image_upload_shows_the_api_error(tab_at, server, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"not an image at all")
    upload = [("files", ("notes.txt", notes.read_bytes(), "text/plain"))]
    expected = server.client.post("/gallery", files=upload, headers={"X-API-Key": WRITE_KEY}).json()
    tab = tab_at("/#/gallery")
    tab.set_files("[data-testid=add-files]", [notes])
    tab.click("[data-testid=add-submit]")
    report = (f"batch 1 of 1 (1 file, notes.txt…): nothing added: 400 {expected['code']}: "
              f"{expected['detail']}")
    tab.wait_for(f"{q('[data-testid=add-report] li')}?.textContent === {json.dumps(report)}",
                 "the API's error in the report", UI_TIMEOUT_S)


def test_every_view_fits_a_phone(tab_at, firefox_gallery, photo_files):
    tab = tab_at("/#/search", viewport=PHONE)
    tab.set_files("[data-testid=search-files]", [photo_files["sunflower"][0]])
    tab.wait_for(f"{count('[data-testid=card]')} > 0", "the search results", UI_TIMEOUT_S)
    assert tab.evaluate(FITS_THE_WIDTH), ("#/search", tab.evaluate(STICKING_OUT))
    for view, heading, shown in phone_views(firefox_gallery["sunflower"][0]["id"]):
        tab.evaluate(f"location.hash = {json.dumps(view)}")
        tab.wait_for(f"{q('main h2')}?.textContent === {json.dumps(heading)} && {q(shown)}", f"{view} drawn",
                     UI_TIMEOUT_S)
        assert tab.evaluate(FITS_THE_WIDTH), (view, tab.evaluate(STICKING_OUT))
    assert tab.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 14


def test_the_console_is_usable_from_the_keyboard(tab_at, firefox_gallery):
    tab = tab_at("/#/search")
    tab_to(tab, "nav a[data-view=gallery]")
    tab.press("Enter")
    tab.wait_for(f"{count('[data-testid=gallery-grid] [data-testid=card]')} > 0", "the gallery", UI_TIMEOUT_S)
    tab_to(tab, "[data-testid=gallery-grid] [data-testid=card]")
    item_id = tab.evaluate("document.activeElement.dataset.itemId")
    tab.press("Enter")
    tab.wait_for(f"location.hash === '#/gallery/item/{item_id}' && {q('[data-testid=item-label]')}",
                 "the item opened", UI_TIMEOUT_S)


def tab_to(tab: Tab, selector: str) -> None:
    """Press Tab until the focus is on an element matching `selector`."""
    for _ in range(MAX_TABS):
        tab.press("Tab")
        if tab.evaluate(f"document.activeElement?.matches({json.dumps(selector)}) ?? false"):
            return
    raise AssertionError(f"{selector} not reached in {MAX_TABS} Tab presses")


def test_docs_and_redoc_render_with_nothing_from_outside(tab_at, server):
    tab = tab_at("/docs", key=None)
    tab.wait_for("[...document.querySelectorAll('.opblock-summary-path')].some("
                 "(e) => e.textContent.includes('/search/batch'))", "Swagger UI's operations", UI_TIMEOUT_S)
    tab.goto("/redoc")
    tab.wait_for("[...document.querySelectorAll('h1')].some((e) => e.textContent.includes('CGD image'))",
                 "ReDoc's title", UI_TIMEOUT_S)
    base = str(server.client.base_url).rstrip("/")
    outside = [url for url in tab.requested if not url.startswith((f"{base}/", "data:", "blob:"))]
    assert not outside, outside
