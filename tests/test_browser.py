"""End to end in a real browser: Debian's chromium driven by playwright against `streamlit run app.py`.

The first paint of a fresh server; then extract a small statement set, train a probe while watching
the live chart, run a small grid, open the truth directions, run the generalization analyses, compare two
results folders, steer the model, score a statement. Screenshots go to
cache/screenshots/ (git-ignored); set PROBING_SCREENSHOTS=docs/screenshots to refresh the README's.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import running_app

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(os.environ.get("PROBING_SCREENSHOTS", ROOT / "cache" / "screenshots"))
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
LONG = 480_000  # ms: generous, the machine may be busy with other work
PER_TOPIC = 12  # 72 statements: quick to extract even on a busy CPU
N = 6 * PER_TOPIC
EPOCHS = 500  # several seconds of training: the live chart redraws twice a second meanwhile

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")


@contextmanager
def streamlit_app(cache: Path, example: bool) -> Iterator[str]:
    """The app on the embedded model and a small built-in set, with its own cache folder; yields its URL.
    With ``example`` it opens the example study as a first start does, else its pages start live."""
    from probing import load_model

    load_model("embedded")  # converted once per machine
    env = {"PROBING_PER_TOPIC": str(PER_TOPIC), "PROBING_MODEL": "embedded", "PROBING_EXAMPLE": "1" if example else "0"}
    with running_app(cache, "--server.address", "127.0.0.1", "--server.headless", "true",
                     "--browser.gatherUsageStats", "false", env=env) as (url, _port):
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_app(tmp_path_factory.mktemp("browser-cache"), example=False) as url:
        yield url


@pytest.fixture
def fresh_server(tmp_path):
    """A server no browser has opened yet, as a user's first start: its first session is the one Streamlit
    treats differently, and it opens the example study."""
    with streamlit_app(tmp_path, example=True) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        tab = new_tab(browser)
        tab.goto(server)
        yield tab
        browser.close()


def new_tab(browser):
    """A 1440x900 tab with generous timeouts: the machine may be busy."""
    tab = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    tab.set_default_timeout(60_000)
    tab.set_default_navigation_timeout(60_000)
    return tab


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)  # let Vega finish drawing
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def go(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.get_by_role("heading", name=title).first.wait_for()


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


# What Streamlit would list as pages while a process has not yet run st.navigation: the entry
# point and every script in pages/, named after the file (leading underscores dropped).
PAGE_FILE_NAMES = {"app"} | {script.stem.lstrip("_") for script in (ROOT / "pages").glob("*.py")}

# Every distinct state of the sidebar (its text and links), recorded from the document's start.
RECORD_SIDEBAR = """
window.sidebarStates = [];
new MutationObserver(() => {
    const sidebar = document.querySelector('[data-testid="stSidebar"]');
    if (!sidebar) return;
    const state = {text: sidebar.innerText, links: [...sidebar.querySelectorAll('a')].map(
        a => ({text: a.innerText, href: a.getAttribute('href') || ''}))};
    const last = window.sidebarStates[window.sidebarStates.length - 1];
    if (JSON.stringify(last) !== JSON.stringify(state)) window.sidebarStates.push(state);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def file_names_shown(state: dict) -> set[str]:
    """File names of pages/ the sidebar state shows as a line of text, a link or a link's url path."""
    lines = {line.strip() for text in [state["text"], *(link["text"] for link in state["links"])]
             for line in text.splitlines()}
    paths = {link["href"].split("?")[0].rstrip("/").rsplit("/", 1)[-1] for link in state["links"]}
    return (lines | paths) & PAGE_FILE_NAMES


def test_first_paint_shows_only_the_real_navigation(fresh_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        tab = new_tab(browser)
        tab.add_init_script(RECORD_SIDEBAR)
        tab.goto(fresh_server, wait_until="commit")
        tab.wait_for_function("() => window.sidebarStates.some(s => s.text.trim() || s.links.length)",
                              polling="raf", timeout=LONG)
        SHOTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(SHOTS / "first-paint.png"))
        first = next(s for s in tab.evaluate("window.sidebarStates") if s["text"].strip() or s["links"])
        assert not file_names_shown(first), f"the first paint's sidebar lists pages/ files: {first}"
        # ...nor any later moment of the first run, which ends with the real navigation and the page
        tab.get_by_role("link", name="Train a probe").wait_for()  # drawn before anything slow
        tab.get_by_text("Does the model know what is true?").wait_for(timeout=LONG)
        states = tab.evaluate("window.sidebarStates")
        browser.close()
    shown = [names for names in map(file_names_shown, states) if names]
    assert not shown, f"the sidebar listed pages/ files during the first run: {shown}"


# When (ms since navigation start) the page first holds each landmark.
RECORD_LANDMARKS = """
window.landmarks = {};
const LANDMARKS = {
    title: () => [...document.querySelectorAll('h1')].some(h => h.innerText.includes('Does the model know')),
    navigation: () => [...document.querySelectorAll('[data-testid="stSidebar"] a')].some(
        a => a.innerText.includes('Train a probe')),
    sidebar: () => (document.querySelector('[data-testid="stSidebar"]')?.innerText || '').includes('Token position'),
    model: () => (document.querySelector('[data-testid="stSidebar"]')?.innerText || '').includes('Loaded: '),
};
new MutationObserver(() => {
    for (const [name, shown] of Object.entries(LANDMARKS))
        if (!(name in window.landmarks) && shown()) window.landmarks[name] = Math.round(performance.now());
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_first_paint_comes_before_the_model(fresh_server):
    """A fresh server's first page shows its title, navigation and sidebar before the model is loaded
    (the order is checked; the times are printed: the machine may be busy)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        tab = new_tab(browser)
        tab.add_init_script(RECORD_LANDMARKS)
        tab.goto(fresh_server, wait_until="commit")
        tab.wait_for_function("() => Object.keys(window.landmarks).length == 4", timeout=LONG)
        seen = tab.evaluate("window.landmarks")
        browser.close()
    print(f"first paint (ms from navigation start): {seen}")
    painted = max(seen["title"], seen["navigation"], seen["sidebar"])
    assert painted < seen["model"], f"the first page waited for the model: {seen}"


def test_a_first_start_shows_the_example_study_and_scores_a_typed_sentence(fresh_server):
    """No click but the navigation: the example study is open, the statement page scores what is typed, the
    trace of it draws (the README's screenshot), a passage is scored and the grid shows the study's accuracies."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        tab = new_tab(browser)
        tab.goto(fresh_server)
        tab.get_by_text("Does the model know what is true?").wait_for(timeout=LONG)
        tab.get_by_text(re.compile(r"embedded · builtin \(2400 statements\)")).first.wait_for()  # the example's caption
        go(tab, "Probe a statement")
        box = tab.get_by_label("Statement", exact=True)
        box.fill("The Danube flows into the Black Sea.")
        box.press("Control+Enter")
        caption = tab.get_by_text(re.compile(r"Most confident: .* P\(true\) = \d\.\d\d"))
        caption.wait_for(timeout=LONG)
        assert re.search(r"\b(20) probe\(s\)", caption.inner_text()), caption.inner_text()  # 4 kinds x 5 layers
        no_exception(tab)
        go(tab, "Trace a statement")
        tab.get_by_text(re.compile("P\\(true\\) from the linear probe at each token")).first.wait_for(
            state="attached", timeout=LONG)  # the chart's title
        tab.get_by_text("What the model answers about the statement up to each token").first.wait_for(state="attached")
        no_exception(tab)
        shot(tab, "trace")
        go(tab, "Score a passage")
        tab.get_by_role("button", name="Use an example").click()
        tab.get_by_text(re.compile("Background: orange-red where P\\(true\\) is near 0")).wait_for(timeout=LONG)
        tab.get_by_text("The chemical symbol for gold is Au.").first.wait_for()  # a sentence of the coloured text
        no_exception(tab)
        shot(tab, "passage")
        go(tab, "Accuracy grid")
        tab.get_by_text("Accuracy by layer").first.wait_for(timeout=LONG)
        no_exception(tab)
        browser.close()


def test_end_to_end(page):
    # Overview: the embedded model and the statements; extract the activations
    page.get_by_text("Does the model know what is true?").wait_for(timeout=LONG)
    page.get_by_text(f"0 of {N}").wait_for()
    page.get_by_role("button", name="Extract activations").click()
    page.get_by_text(f"{N} of {N}").wait_for(timeout=LONG)
    no_exception(page)
    assert page.get_by_text("576").first.is_visible()
    cut = page.eval_on_selector_all('[data-testid="stMetricValue"]', """cards => cards.filter(card =>
        [card, ...card.querySelectorAll("*")].some(part => part.scrollWidth > part.clientWidth + 1))
        .map(card => card.innerText)""")
    assert cut == [], f"metric cards whose value does not fit: {cut}"
    shot(page, "overview")

    # Train a probe and watch the live chart
    go(page, "Train a probe")
    from playwright.sync_api import expect

    page.locator('[data-testid="stSelectbox"]').filter(has_text="Probe").first.click()
    page.get_by_role("option", name="medium").click()
    epochs = page.get_by_role("spinbutton", name="Epochs")
    expect(epochs).to_be_enabled(timeout=30_000)
    epochs.fill(str(EPOCHS))
    epochs.press("Enter")
    page.wait_for_timeout(1500)
    expect(epochs).to_have_value(str(EPOCHS))
    # Record every caption the browser draws (the live chart's caption names the epoch): polling from
    # here can be slower than the redraws when training, server and browser share two cores.
    page.evaluate("""() => {
        window.captionsSeen = [];
        new MutationObserver(() => {
            for (const caption of document.querySelectorAll('[data-testid="stCaptionContainer"]'))
                window.captionsSeen.push(caption.innerText);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    page.get_by_role("button", name="Train", exact=True).click()
    finished = page.get_by_text("Held-out accuracy", exact=True)  # the result's metric, not the live caption
    took_live = False
    deadline = time.time() + 480
    while time.time() < deadline and not finished.count():
        if not took_live and page.get_by_text(re.compile(r"Training: [1-9]\d* / ")).count():
            shot(page, "train-live")
            took_live = True
        page.wait_for_timeout(150)
    finished.wait_for(timeout=LONG)
    texts = page.evaluate("window.captionsSeen")
    seen = {int(k) for text in texts for k in re.findall(rf"Epoch (\d+) / {EPOCHS}", text)}
    assert len(seen) >= 3, f"the live chart should redraw during training (epochs seen: {sorted(seen)})"
    no_exception(page)
    page.get_by_text("Confusion matrix").first.wait_for(state="attached")
    shot(page, "train")

    # A small accuracy grid
    go(page, "Accuracy grid")
    boxes = page.locator('[data-testid="stMultiSelect"]')
    for index, values in ((1, ["linear", "tiny"]),):  # the study's five layers stay
        box = boxes.nth(index)
        box.get_by_role("combobox").click(force=True)
        for _ in range(6):  # remove the default choices, last first
            page.keyboard.press("Backspace")
            page.wait_for_timeout(300)
        for value in values:
            page.keyboard.type(value)
            page.wait_for_timeout(300)
            page.keyboard.press("Enter")
            page.wait_for_timeout(500)
        page.keyboard.press("Escape")
        page.wait_for_timeout(800)
    page.get_by_role("button", name=re.compile(r"Run grid \(70 probes\)")).click()
    page.get_by_role("button", name="Download CSV").wait_for(timeout=LONG)
    no_exception(page)
    assert page.get_by_text("Click a cell to see its per-topic accuracy").count() == 1
    shot(page, "grid")

    # Truth directions from the grid's linear probes
    go(page, "Truth directions")
    page.get_by_text("Cosine similarity between the directions").wait_for()
    no_exception(page)
    shot(page, "directions")

    # Generalization: the topic matrix, the polarity transfer and CCS of the default settings
    go(page, "Generalization")
    page.get_by_role("button", name="Run the analyses").click()
    page.get_by_text("Click a cell to list the statements that probe got wrong.").wait_for(timeout=LONG)
    page.get_by_text("Trained on the affirmative statements of most facts").wait_for()  # the polarity chart's caption
    no_exception(page)
    shot(page, "generalization")

    # Compare studies: the grid's folder against the trained probe's (other settings: shown when asked)
    go(page, "Compare studies")
    page.get_by_text(re.compile("Cannot compare: these studies are not comparable")).wait_for(timeout=LONG)
    page.get_by_text("Show even if they differ").click()
    page.get_by_text(re.compile("Not comparable, shown anyway")).first.wait_for(timeout=LONG)
    page.get_by_text("Mean accuracy over the category splits; both on the same colour scale").wait_for()
    no_exception(page)
    shot(page, "compare")

    # Steer: move the alpha slider and watch the model's answer move
    go(page, "Steer")
    answer = page.get_by_text(re.compile(r"without steering, [+-]\d\.\d{4} at alpha = 0\."))
    answer.wait_for(timeout=LONG)
    before = answer.inner_text()
    page.get_by_role("slider", name="alpha").focus()
    for _ in range(8):  # 8 steps of 0.5
        page.keyboard.press("ArrowRight")
    moved = page.get_by_text(re.compile(r"at alpha = 4\."))
    moved.wait_for(timeout=LONG)
    values = [float(v) for v in re.findall(r"([+-]\d\.\d{4})", moved.inner_text())]
    assert values[0] == float(re.findall(r"([+-]\d\.\d{4})", before)[0]) and values[1] != values[0]
    no_exception(page)
    shot(page, "steer")

    # Probe a statement
    go(page, "Probe a statement")
    page.get_by_role("button", name="The city of Paris is located in France.").click()
    caption = page.get_by_text(re.compile(r"Most confident: .* P\(true\) = \d\.\d\d"))
    caption.wait_for()
    p_true = float(re.search(r"P\(true\) = (\d\.\d\d)", caption.inner_text()).group(1))
    assert 0 <= p_true <= 1
    page.get_by_text("What the model answers").first.wait_for(state="attached")
    no_exception(page)
    shot(page, "statement")

    go(page, "Activations")
    page.get_by_text(re.compile("PC1 and PC2 explain")).wait_for()
    no_exception(page)
    shot(page, "activations")
    page.get_by_text("Truth subspace (t_G, t_P)").click()
    page.get_by_text(re.compile("statements projected on t_G and t_P")).wait_for()
    no_exception(page)
    shot(page, "truth-subspace")
