"""The labelling page in a real headless Chromium: log in, label with the keyboard, undo, and a
text holding markup shown as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from textloop.artifacts.feedback import FeedbackStore
from textloop.runs import load_run
from textloop.serving.label_app import create_label_app
from textloop.serving.label_queue import read_queue
from textloop.serving.label_session import LabelSession

from .browser import headless_chromium, missing_browser, serve_in_thread
from .test_label import KEY, XSS, write_queue

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(missing_browser() is not None, reason=f"browser test: {missing_browser()}"),
]
TEXTS = ["the staff was lovely", "the room was awful", XSS, "the view was nice"]


def test_keyboard_labelling_undo_and_escaped_text_in_chromium(label_run: Path, tmp_path: Path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = FeedbackStore(tmp_path / "labels.sqlite")
    items = read_queue(str(write_queue(tmp_path / "queue.jsonl", TEXTS)))
    session = LabelSession(items, load_run(label_run), store, "reviews", "ana", explain_steps=8)
    with serve_in_thread(create_label_app(session, KEY)) as url, headless_chromium() as driver:
        wait = WebDriverWait(driver, 30)

        def progress_is(text: str) -> None:
            wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith(text))

        driver.get(url + "/")
        key = wait.until(lambda d: d.find_element(By.ID, "key"))
        key.send_keys("not-the-key-not-the-key")
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        wait.until(lambda d: "not accepted" in d.find_element(By.ID, "login-error").text)
        assert not driver.find_element(By.ID, "work").is_displayed()  # no text without the key

        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        progress_is("0 of 4 labelled")
        # record every element ever put into the text box: only highlight spans may appear
        driver.execute_script(
            "window.added = [];"
            "new MutationObserver((ms) => ms.forEach((m) => m.addedNodes.forEach((n) => {"
            "  if (n.nodeType === 1 && n.tagName !== 'SPAN') window.added.push(n.tagName); }))"
            ").observe(document.getElementById('text'), {childList: true, subtree: true});"
        )
        assert driver.find_element(By.ID, "text").text == TEXTS[0]
        shown = driver.find_element(By.ID, "labels").text
        assert "neg" in shown and "pos" in shown and "1" in shown and "p" in shown  # the keys
        keys = ActionChains(driver)
        for press, done in (("p", 1), ("1", 2), ("2", 3)):  # letter and digit shortcuts
            keys.send_keys(press).perform()
            progress_is(f"{done} of 4 labelled")
        keys.send_keys("\ue003").perform()  # Backspace: undo the third label
        progress_is("2 of 4 labelled")
        assert driver.execute_script("return document.body.dataset.index") == "2"

        rows = FeedbackStore(store.path).feedback("reviews")
        assert [(r["text"], r["label"], r["user"]) for r in rows] == [
            (TEXTS[0], "pos", "ana"),
            (TEXTS[1], "neg", "ana"),
        ]

        # the undone item is the text holding markup: shown as text, before and after the
        # word highlights replace it with shaded pieces
        for _ in range(2):
            text = driver.find_element(By.ID, "text")
            assert "<script>" in text.text and "<img src=x id=injected" in text.text
            assert not driver.find_elements(By.CSS_SELECTOR, "#text script, #text img")
            assert not driver.find_elements(By.ID, "injected")
            assert driver.title == "textloop · labelling"  # the script never ran
            wait.until(lambda d: d.find_element(By.ID, "legend").text.startswith("green"))
        assert driver.find_elements(By.CSS_SELECTOR, "#text span")  # highlighted words
        assert driver.execute_script("return window.added") == []  # never, not even briefly
        assert not [e for e in driver.get_log("browser") if "Content Security" in e["message"]]
